//! The refusal a follower manager gives calls only the leader serves (an
//! agent's session, a log read): it names the leader's address when it
//! knows it, so the caller goes there next instead of trying every manager.

/// The metadata key that carries the leader's address.
const LEADER_KEY: &str = "shoal-leader";

/// The refusal of a manager that does not lead; `leader` is the leader's
/// address, when one is known.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    let message = match leader {
        Some(addr) => format!("this manager is not the leader; the leader is at {addr}"),
        None => {
            "this manager is not the leader, and no leader is known now (an election is under way)"
                .to_string()
        }
    };
    let mut status = tonic::Status::unavailable(message);
    if let Some(value) = leader.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// The leader's address a refusal names, if it names one.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    status
        .metadata()
        .get(LEADER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_refusal_names_the_leader_when_it_knows_it() {
        let refused = not_leader(Some("10.0.0.1:4242"));
        assert_eq!(leader_hint(&refused).as_deref(), Some("10.0.0.1:4242"));
        assert!(refused.message().contains("10.0.0.1:4242"));
        let unknown = not_leader(None);
        assert_eq!(leader_hint(&unknown), None);
        assert!(unknown.message().contains("election"));
        assert_eq!(leader_hint(&tonic::Status::unavailable("down")), None);
    }
}
