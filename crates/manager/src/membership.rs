//! Raft membership and the managers' status (DESIGN.md §7), on the leader.
//!
//! Owns: the raft group's members, and each manager node's
//! `manager_status` (its raft id and address come from its join; this
//! writes `leader` and `reachability`).
//!
//! The store says which nodes should be managers (role MANAGER with a raft
//! id); raft says which are members. [`decide`] brings raft to the store one
//! step at a time, never two changes at once: a manager not yet a member
//! joins as a learner; a learner that has caught up becomes a voter; a
//! member the store no longer wants goes, and when that member is the
//! leader itself it first hands leadership to a caught-up reachable voter.
//! Each voter change goes through openraft's joint consensus.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_api::{manager_status::Reachability, store_action, NodeRole, StoreAction, Transaction};
use shoal_raft::{LeaderTerm, Members, Replica};
use shoal_store::Tables;
use tokio::sync::watch;

/// Between two looks.
const TICK: Duration = Duration::from_millis(200);
/// A learner this close to the leader's last index has caught up: the rest
/// arrives with the next append.
const CAUGHT_UP_SLACK: u64 = 64;
/// How long one status write may take (without a quorum it never ends).
const STATUS_WRITE_WAIT: Duration = Duration::from_secs(5);
/// How long a hand-over may take before it is asked again.
const HAND_OVER_WAIT: Duration = Duration::from_secs(3);

/// What the leader knows of raft, besides the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub me: u64,
    pub members: Members,
    /// The last index each member holds, as the leader last heard.
    pub matched: BTreeMap<u64, u64>,
    pub last_log_index: u64,
    /// Members whose stream to the leader beats now (with the leader).
    pub reachable: BTreeSet<u64>,
}

/// One step towards the store's managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    AddLearner {
        raft_id: u64,
        addr: String,
    },
    Promote(u64),
    RemoveVoters(BTreeSet<u64>),
    RemoveLearners(BTreeSet<u64>),
    /// A member advertises another address now (it restarted with
    /// another port): raft dials it there.
    SetAddr {
        raft_id: u64,
        addr: String,
    },
    /// The leader must go: leadership moves to this voter first.
    HandOver(u64),
}

/// The managers the store wants in raft: raft id → address.
pub fn wanted(view: &Tables) -> BTreeMap<u64, String> {
    view.nodes()
        .filter(|n| n.role == NodeRole::Manager as i32)
        .filter(|n| n.spec.as_ref().map(|s| s.desired_role) != Some(NodeRole::Worker as i32))
        .filter_map(|n| n.manager_status.as_ref())
        .filter(|m| m.raft_id != 0 && !m.addr.is_empty())
        .map(|m| (m.raft_id, m.addr.clone()))
        .collect()
}

/// The next membership step, if any.
pub fn decide(wanted: &BTreeMap<u64, String>, raft: &RaftView) -> Option<Step> {
    let members = &raft.members;
    if members.changing || wanted.is_empty() {
        return None;
    }
    // A member the leader never heard from has caught up with nothing.
    let caught_up = |id: u64| {
        raft.matched
            .get(&id)
            .is_some_and(|m| m + CAUGHT_UP_SLACK >= raft.last_log_index)
    };
    // Removals first: a member that should not vote weighs on every quorum.
    let unwanted_voters: BTreeSet<u64> = members
        .voters
        .iter()
        .copied()
        .filter(|id| !wanted.contains_key(id))
        .collect();
    if unwanted_voters.contains(&raft.me) {
        // The reachable wanted voter furthest along: it wins the vote.
        let successor = members
            .voters
            .iter()
            .copied()
            .filter(|id| *id != raft.me && wanted.contains_key(id))
            .filter(|id| raft.reachable.contains(id) && caught_up(*id))
            .max_by_key(|id| {
                (
                    raft.matched.get(id).copied().unwrap_or(0),
                    std::cmp::Reverse(*id),
                )
            });
        return successor.map(Step::HandOver);
    }
    if !unwanted_voters.is_empty() && unwanted_voters.len() < members.voters.len() {
        let staying: BTreeSet<u64> = members
            .voters
            .difference(&unwanted_voters)
            .copied()
            .collect();
        // Only a change whose new voters can decide: a majority of them
        // reachable (the joint config needs the new set's quorum too).
        if reachable_majority(&staying, raft) {
            return Some(Step::RemoveVoters(unwanted_voters));
        }
        return None;
    }
    let unwanted_learners: BTreeSet<u64> = members
        .learners
        .iter()
        .copied()
        .filter(|id| !wanted.contains_key(id))
        .collect();
    if !unwanted_learners.is_empty() {
        return Some(Step::RemoveLearners(unwanted_learners));
    }
    let moved = wanted
        .iter()
        .find(|(id, addr)| members.addrs.get(id).is_some_and(|a| a != *addr));
    if let Some((id, addr)) = moved {
        return Some(Step::SetAddr {
            raft_id: *id,
            addr: addr.clone(),
        });
    }
    if let Some((id, addr)) = wanted
        .iter()
        .find(|(id, _)| !members.addrs.contains_key(id))
    {
        return Some(Step::AddLearner {
            raft_id: *id,
            addr: addr.clone(),
        });
    }
    // A learner votes once it has caught up and holds its stream to this
    // leader: one that cannot be reached would weigh on every quorum.
    let ready: Vec<u64> = members
        .learners
        .iter()
        .copied()
        .filter(|id| caught_up(*id) && raft.reachable.contains(id))
        .filter(|id| {
            let mut voters = members.voters.clone();
            voters.insert(*id);
            reachable_majority(&voters, raft)
        })
        .collect();
    if let Some(id) = ready.first() {
        return Some(Step::Promote(*id));
    }
    None
}

/// Whether a majority of `voters` is reachable from this leader now.
fn reachable_majority(voters: &BTreeSet<u64>, raft: &RaftView) -> bool {
    let reachable = voters
        .iter()
        .filter(|id| raft.reachable.contains(id))
        .count();
    reachable > voters.len() / 2
}

/// The updates of managers' `leader` and `reachability` that differ from
/// what the store says.
pub fn status_updates(view: &Tables, raft: &RaftView) -> Vec<StoreAction> {
    view.nodes()
        .filter(|n| n.role == NodeRole::Manager as i32)
        .filter_map(|n| {
            let status = n.manager_status.as_ref()?;
            // A learner is not a manager yet as far as quorums go: it
            // shows as reachable once it votes.
            let member = raft.members.voters.contains(&status.raft_id);
            let reachability = if !member {
                Reachability::Unknown
            } else if raft.reachable.contains(&status.raft_id) {
                Reachability::Reachable
            } else {
                Reachability::Unreachable
            };
            let leader = status.raft_id == raft.me;
            if status.leader == leader && status.reachability == reachability as i32 {
                return None;
            }
            let mut node = n.clone();
            if let Some(s) = node.manager_status.as_mut() {
                s.leader = leader;
                s.reachability = reachability as i32;
            }
            Some(StoreAction {
                kind: store_action::Kind::Update as i32,
                target: Some(node.into()),
            })
        })
        .collect()
}

/// Managers asked to be workers (`node demote`) that raft has let go:
/// each becomes a worker in the store, which its daemon waits for (its
/// certificate's renewal says worker) before it goes on as one. Never
/// while a change is under way: a member on its way out still votes.
pub fn demotions(view: &Tables, raft: &RaftView) -> Vec<StoreAction> {
    if raft.members.changing {
        return Vec::new();
    }
    view.nodes()
        .filter(|n| n.role == NodeRole::Manager as i32)
        .filter(|n| n.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Worker as i32))
        .filter(|n| {
            n.manager_status
                .as_ref()
                .is_none_or(|m| !raft.members.addrs.contains_key(&m.raft_id))
        })
        .map(|n| {
            let mut node = n.clone();
            node.role = NodeRole::Worker as i32;
            node.manager_status = None;
            StoreAction {
                kind: store_action::Kind::Update as i32,
                target: Some(node.into()),
            }
        })
        .collect()
}

fn raft_view(replica: &Replica) -> RaftView {
    RaftView {
        me: replica.id(),
        members: replica.members(),
        matched: replica.matched(),
        last_log_index: replica.last_log_index(),
        reachable: replica.reachable(),
    }
}

/// The loop: one step at a time while this manager leads, until `stop`.
pub async fn run(replica: LeaderTerm, mut stop: watch::Receiver<bool>) {
    let mut handed_over_at: Option<shoal_api::clock::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let view = replica.store().view();
        let raft = raft_view(replica.replica());
        let mut updates = status_updates(&view, &raft);
        updates.extend(demotions(&view, &raft));
        if !updates.is_empty() {
            // Each update carries the version it read: a node changed
            // meanwhile (its agent's session) fails alone, and the next
            // look writes it again.
            for update in updates {
                let written = tokio::time::timeout(
                    STATUS_WRITE_WAIT,
                    replica.propose(Transaction {
                        leader_term: 0,
                        actions: vec![update],
                        timestamp_ms: 0,
                    }),
                )
                .await;
                if !matches!(written, Ok(Ok(_))) {
                    tracing::debug!("a manager's status was not written; the next look writes it");
                }
            }
        }
        let step = decide(&wanted(&view), &raft);
        // Decided in this term: made only while this manager still leads
        // in it (a change is a raft entry of the leader's own).
        if let Some(step) = step.filter(|_| replica.leads()) {
            tracing::info!(?step, "raft membership");
            let leader = replica.replica();
            let done = match &step {
                Step::AddLearner { raft_id, addr } => leader.add_learner(*raft_id, addr).await,
                Step::Promote(id) => leader.promote(*id).await,
                Step::RemoveVoters(ids) => leader.remove_voters(ids.clone()).await,
                Step::RemoveLearners(ids) => leader.remove_learners(ids.clone()).await,
                Step::SetAddr { raft_id, addr } => leader.set_address(*raft_id, addr).await,
                Step::HandOver(to) => {
                    let due = handed_over_at.is_none_or(|at| at.elapsed() >= HAND_OVER_WAIT);
                    if due {
                        handed_over_at = Some(shoal_api::clock::Instant::now());
                        if !leader.hand_over(*to) {
                            tracing::info!(to, "the successor holds no stream to this leader yet");
                            handed_over_at = None;
                        }
                    }
                    Ok(())
                }
            };
            if let Err(e) = done {
                tracing::warn!(?step, error = %e, "a membership change failed; it is tried again");
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager_node(id: &str, raft_id: u64, desired: NodeRole) -> shoal_api::Node {
        shoal_api::Node {
            id: id.into(),
            role: NodeRole::Manager as i32,
            spec: Some(shoal_api::NodeSpec {
                desired_role: desired as i32,
                ..Default::default()
            }),
            manager_status: Some(shoal_api::ManagerStatus {
                raft_id,
                addr: format!("10.0.0.{raft_id}:4242"),
                ..Default::default()
            }),
            meta: Some(shoal_api::Meta {
                version: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tables_of(nodes: Vec<shoal_api::Node>) -> shoal_store::View {
        let store = shoal_store::Store::new();
        let batch = shoal_api::Batch {
            transactions: vec![Transaction {
                leader_term: 0,
                actions: nodes
                    .into_iter()
                    .map(|n| StoreAction {
                        kind: store_action::Kind::Create as i32,
                        target: Some(n.into()),
                    })
                    .collect(),
                timestamp_ms: 0,
            }],
        };
        assert!(store.apply(1, batch).iter().all(|r| r.is_ok()));
        store.view()
    }

    #[test]
    fn a_demoted_manager_becomes_a_worker_only_once_raft_let_it_go_and_no_change_is_under_way() {
        let view = tables_of(vec![
            manager_node("a", 1, NodeRole::Manager),
            manager_node("b", 2, NodeRole::Manager),
            manager_node("c", 3, NodeRole::Worker),
        ]);
        let in_raft = RaftView {
            me: 1,
            members: members(&[1, 2, 3], &[]),
            ..Default::default()
        };
        assert!(demotions(&view, &in_raft).is_empty(), "still a voter");
        let mut leaving = in_raft.clone();
        leaving.members = members(&[1, 2], &[]);
        leaving.members.changing = true;
        assert!(
            demotions(&view, &leaving).is_empty(),
            "the change is not done"
        );
        leaving.members.changing = false;
        let written = demotions(&view, &leaving);
        assert_eq!(written.len(), 1);
        let Some(shoal_api::object::Kind::Node(node)) =
            written[0].target.as_ref().and_then(|t| t.kind.clone())
        else {
            panic!("not a node: {written:?}");
        };
        assert_eq!(node.id, "c");
        assert_eq!(node.role, NodeRole::Worker as i32);
        assert_eq!(node.manager_status, None);
        assert_eq!(
            node.meta.map(|m| m.version),
            Some(1),
            "written over the version read"
        );
    }

    fn members(voters: &[u64], learners: &[u64]) -> Members {
        Members {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            addrs: voters
                .iter()
                .chain(learners)
                .map(|id| (*id, format!("10.0.0.{id}:4242")))
                .collect(),
            changing: false,
        }
    }

    fn wanted_of(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter()
            .map(|id| (*id, format!("10.0.0.{id}:4242")))
            .collect()
    }

    fn raft(voters: &[u64], learners: &[u64], matched: &[(u64, u64)]) -> RaftView {
        RaftView {
            me: 1,
            members: members(voters, learners),
            matched: matched.iter().copied().collect(),
            last_log_index: 1_000,
            reachable: voters.iter().chain(learners).copied().collect(),
        }
    }

    #[test]
    fn a_new_manager_joins_as_a_learner_and_votes_only_once_caught_up() {
        let want = wanted_of(&[1, 2]);
        assert_eq!(
            decide(&want, &raft(&[1], &[], &[])),
            Some(Step::AddLearner {
                raft_id: 2,
                addr: "10.0.0.2:4242".into()
            })
        );
        assert_eq!(decide(&want, &raft(&[1], &[2], &[(2, 10)])), None);
        assert_eq!(
            decide(&want, &raft(&[1], &[2], &[(2, 990)])),
            Some(Step::Promote(2))
        );
        assert_eq!(decide(&want, &raft(&[1, 2], &[], &[(2, 1_000)])), None);
    }

    #[test]
    fn a_learner_never_heard_from_or_out_of_reach_does_not_vote_even_on_a_young_log() {
        let want = wanted_of(&[1, 2]);
        let mut young = raft(&[1], &[2], &[]);
        young.last_log_index = 5;
        assert_eq!(decide(&want, &young), None, "nothing acknowledged yet");
        young.matched.insert(2, 5);
        young.reachable.remove(&2);
        assert_eq!(decide(&want, &young), None, "no stream to the leader");
        young.reachable.insert(2);
        assert_eq!(decide(&want, &young), Some(Step::Promote(2)));
    }

    #[test]
    fn a_removal_is_made_only_when_the_voters_left_have_a_reachable_majority() {
        // 3 of 5 go; of the 2 left, one is out of reach: no quorum after.
        let mut view = raft(&[1, 2, 3, 4, 5], &[], &[(2, 1_000)]);
        view.reachable = [1].into();
        assert_eq!(decide(&wanted_of(&[1, 2]), &view), None);
        view.reachable.insert(2);
        assert_eq!(
            decide(&wanted_of(&[1, 2]), &view),
            Some(Step::RemoveVoters([3, 4, 5].into()))
        );
    }

    #[test]
    fn a_leader_that_goes_hands_over_to_the_voter_furthest_along() {
        let view = raft(&[1, 2, 3], &[], &[(2, 990), (3, 1_000)]);
        assert_eq!(decide(&wanted_of(&[2, 3]), &view), Some(Step::HandOver(3)));
    }

    #[test]
    fn a_member_that_moved_is_dialled_where_it_is_now() {
        let mut want = wanted_of(&[1, 2]);
        want.insert(2, "10.0.0.2:5000".into());
        assert_eq!(
            decide(&want, &raft(&[1, 2], &[], &[(2, 1_000)])),
            Some(Step::SetAddr {
                raft_id: 2,
                addr: "10.0.0.2:5000".into()
            })
        );
    }

    #[test]
    fn nothing_moves_while_a_change_is_under_way() {
        let mut view = raft(&[1], &[2], &[(2, 1_000)]);
        view.members.changing = true;
        assert_eq!(decide(&wanted_of(&[1, 2, 3]), &view), None);
    }

    #[test]
    fn an_unwanted_voter_goes_before_anything_is_added() {
        let view = raft(&[1, 2, 3], &[], &[(2, 1_000), (3, 1_000)]);
        assert_eq!(
            decide(&wanted_of(&[1, 2, 4]), &view),
            Some(Step::RemoveVoters([3].into()))
        );
        let view = raft(&[1, 2], &[5], &[]);
        assert_eq!(
            decide(&wanted_of(&[1, 2]), &view),
            Some(Step::RemoveLearners([5].into()))
        );
    }

    #[test]
    fn a_leader_that_must_go_hands_over_to_a_caught_up_reachable_voter_first() {
        let mut view = raft(&[1, 2, 3], &[], &[(2, 10), (3, 1_000)]);
        assert_eq!(decide(&wanted_of(&[2, 3]), &view), Some(Step::HandOver(3)));
        view.reachable.remove(&3);
        assert_eq!(decide(&wanted_of(&[2, 3]), &view), None);
    }
}
