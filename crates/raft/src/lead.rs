//! The stream each follower holds open to its leader (`Raft.Lead`).
//!
//! Both ends beat on it. The leader counts a follower reachable while its
//! beats arrive ([`Presence`]), which is what `node ls` shows. And a
//! follower learns at once that its leader's process is gone: the kernel
//! closes a dead process's connections, and the stream ends. Waiting for
//! an election timeout would not be enough on its own: every follower
//! refuses to vote while its leader lease (openraft's: the longest election
//! timeout after the last heartbeat) runs, so the first candidate is often
//! refused and waits a second timeout. A follower that saw the stream end
//! campaigns the moment the lease has run out on every follower, the first
//! in rank order right then and the next a step later if no leader came.
//!
//! Through the same stream a leader hands over ([`Presence::hand_over`]):
//! it tells a caught-up follower to campaign now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use shoal_api::clock::Instant;
use shoal_api::LeadBeat;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::network::{raft_client, Network};
use crate::Raft;

/// How often each end beats.
pub const BEAT: Duration = Duration::from_millis(250);
/// A follower is reachable while its last beat is this recent.
const REACHABLE_FOR: Duration = Duration::from_millis(1_500);
/// After the lease, how long a campaign waits per rank.
const RANK_STEP: Duration = Duration::from_millis(60);
/// Past the lease, the margin for clocks and scheduling.
const LEASE_MARGIN: Duration = Duration::from_millis(20);
/// Between attempts to open the stream, at first; doubled up to
/// [`RETRY_MAX`] while the same leader refuses or cannot be reached.
const RETRY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

struct Follower {
    last_beat: Instant,
    /// The stream this follower holds now (a newer one replaces it).
    stream: u64,
    to_follower: mpsc::Sender<Result<LeadBeat, tonic::Status>>,
}

/// The leader's record of the followers that hold a stream to it.
#[derive(Default)]
pub(crate) struct Presence {
    followers: Mutex<HashMap<u64, Follower>>,
    streams: std::sync::atomic::AtomicU64,
    /// On a follower: when it last took an append (a heartbeat or
    /// entries) from a leader. A stream that ends while these still come
    /// broke on its own: the leader lives, and nobody campaigns.
    appended: Mutex<Option<Instant>>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Follower>> {
        self.followers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The followers whose beats arrive now.
    pub(crate) fn reachable(&self) -> Vec<u64> {
        let now = Instant::now();
        let mut ids: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_beat) < REACHABLE_FOR)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Tells follower `id` to campaign now; false when it holds no stream.
    pub(crate) fn hand_over(&self, id: u64, term: u64) -> bool {
        let followers = self.lock();
        let Some(f) = followers.get(&id) else {
            return false;
        };
        f.to_follower
            .try_send(Ok(LeadBeat {
                term,
                take_over: true,
                raft_id: 0,
            }))
            .is_ok()
    }

    fn beat(
        &self,
        id: u64,
        stream: u64,
        to_follower: &mpsc::Sender<Result<LeadBeat, tonic::Status>>,
    ) {
        self.lock().insert(
            id,
            Follower {
                last_beat: Instant::now(),
                stream,
                to_follower: to_follower.clone(),
            },
        );
    }

    /// A leader's append that arrived `at` was taken.
    pub(crate) fn appended(&self, at: Instant) {
        let mut last = self.appended.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|l| l < at) {
            *last = Some(at);
        }
    }

    /// Whether an append arrived after `moment`.
    fn appended_after(&self, moment: Instant) -> bool {
        self.appended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at > moment)
    }

    fn ended(&self, id: u64, stream: u64) {
        let mut followers = self.lock();
        if followers.get(&id).is_some_and(|f| f.stream == stream) {
            followers.remove(&id);
        }
    }
}

/// The leader's half of one follower's stream: beats back until this
/// manager stops leading in the term it had when the stream opened.
pub(crate) fn serve(
    raft: &Raft,
    presence: &Arc<Presence>,
    mut incoming: tonic::Streaming<LeadBeat>,
) -> Result<ReceiverStream<Result<LeadBeat, tonic::Status>>, tonic::Status> {
    let mut metrics = raft.metrics();
    let term = {
        let m = metrics.borrow_and_update();
        if m.state != ServerState::Leader {
            return Err(tonic::Status::failed_precondition(
                "this manager is not the raft leader",
            ));
        }
        m.current_term
    };
    let (tx, rx) = mpsc::channel(4);
    let presence = Arc::clone(presence);
    let stream = presence
        .streams
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let mut follower = None;
        let mut tick = tokio::time::interval(BEAT);
        loop {
            tokio::select! {
                beat = incoming.message() => match beat {
                    Ok(Some(beat)) => {
                        follower = Some(beat.raft_id);
                        presence.beat(beat.raft_id, stream, &tx);
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    let beat = LeadBeat { term, take_over: false, raft_id: 0 };
                    if tx.send(Ok(beat)).await.is_err() {
                        break;
                    }
                }
                changed = metrics.changed() => {
                    let leading = changed.is_ok() && {
                        let m = metrics.borrow_and_update();
                        m.state == ServerState::Leader && m.current_term == term
                    };
                    if !leading {
                        break;
                    }
                }
            }
        }
        if let Some(id) = follower {
            presence.ended(id, stream);
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// How a follower's stream to its leader ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The leader is gone: the stream beat, then ended or broke (at this
    /// moment).
    LeaderGone(Instant),
    /// The leader asked this follower to campaign.
    TakeOver,
    /// Another leader is known now, or the stream never beat.
    Otherwise,
}

/// The follower's half, for the life of the replica: holds a stream to
/// each leader in turn, and campaigns when one is gone or hands over.
pub(crate) async fn follow(
    raft: Raft,
    me: u64,
    network: Network,
    lease: Duration,
    presence: Arc<Presence>,
) {
    let mut metrics = raft.metrics();
    let mut retry = RETRY;
    let mut last_tried = None;
    loop {
        // The next leader other than this manager, at an address known.
        let (leader, term, addr) = loop {
            let found = {
                let m = metrics.borrow_and_update();
                if m.running_state.is_err() {
                    return;
                }
                match m.current_leader {
                    Some(l) if l != me && m.state != ServerState::Leader => m
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| (l, m.current_term, n.addr.clone())),
                    _ => None,
                }
            };
            if let Some(found) = found {
                break found;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        };
        if last_tried != Some((leader, term)) {
            retry = RETRY;
            last_tried = Some((leader, term));
        }
        match hold(&raft, me, leader, term, &network, &addr).await {
            Ended::TakeOver => {
                tracing::info!(leader, "the leader hands over to this manager");
                // The leader stopped its heartbeats: once a lease has run
                // out everywhere, the others grant the vote. Not when
                // another leader, or another term, came meanwhile: the
                // hand-over is stale then.
                tokio::time::sleep(lease + LEASE_MARGIN).await;
                if same_leader(&raft, leader, term) {
                    let _ = raft.trigger().elect().await;
                }
            }
            Ended::LeaderGone(at) => {
                campaign_after_lease(&raft, me, (leader, term), at, lease, &presence).await
            }
            Ended::Otherwise => {
                // Cut short when another leader comes: its stream opens at
                // once.
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = metrics.changed() => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Holds the stream to `leader` at `addr` until it ends.
async fn hold(
    raft: &Raft,
    me: u64,
    leader: u64,
    term: u64,
    network: &Network,
    addr: &str,
) -> Ended {
    let Ok(channel) = network.channel(addr) else {
        return Ended::Otherwise;
    };
    let mut client = raft_client(channel);
    let (beats, outgoing) = mpsc::channel(2);
    let beating = tokio::spawn(async move {
        let mut tick = tokio::time::interval(BEAT);
        loop {
            tick.tick().await;
            let beat = LeadBeat {
                term,
                take_over: false,
                raft_id: me,
            };
            if beats.send(beat).await.is_err() {
                return;
            }
        }
    });
    let ended = async {
        let mut answers = match client.lead(ReceiverStream::new(outgoing)).await {
            Ok(answers) => answers.into_inner(),
            Err(_) => return Ended::Otherwise,
        };
        let mut metrics = raft.metrics();
        let mut beaten = false;
        loop {
            tokio::select! {
                answer = answers.message() => match answer {
                    Ok(Some(beat)) if beat.take_over => return Ended::TakeOver,
                    Ok(Some(_)) => beaten = true,
                    Ok(None) | Err(_) if beaten => return Ended::LeaderGone(Instant::now()),
                    Ok(None) | Err(_) => return Ended::Otherwise,
                },
                changed = metrics.changed() => {
                    // Another leader, or the same one elected again (its
                    // streams of the old term end): not a death.
                    let moved = changed.is_err() || {
                        let m = metrics.borrow_and_update();
                        m.current_leader != Some(leader) || m.current_term != term
                    };
                    if moved {
                        return Ended::Otherwise;
                    }
                }
            }
        }
    }
    .await;
    beating.abort();
    ended
}

/// Campaigns once every follower's lease on `leader` has run out, unless
/// a leader came meanwhile; voters take turns by rank, so two followers of
/// a dead leader do not split the vote.
async fn campaign_after_lease(
    raft: &Raft,
    me: u64,
    (leader, term): (u64, u64),
    ended_at: Instant,
    lease: Duration,
    presence: &Presence,
) {
    let rank = {
        let m = raft.metrics().borrow().clone();
        let mut voters: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != leader)
            .collect();
        voters.sort_unstable();
        match voters.iter().position(|id| *id == me) {
            Some(rank) => rank as u32,
            // A learner does not vote.
            None => return,
        }
    };
    tracing::info!(
        leader,
        term,
        rank,
        "the leader's stream ended; campaigning after its lease"
    );
    tokio::time::sleep(lease + LEASE_MARGIN + RANK_STEP * rank).await;
    // Still no other leader: this manager may have campaigned on its own
    // timeout meanwhile and been refused (a lease still ran elsewhere);
    // it campaigns again, now that none does.
    // And not while the leader's appends still arrive: the stream broke on
    // its own (a connection reset), the leader lives.
    if presence.appended_after(ended_at) {
        tracing::info!(leader, "the leader's appends still arrive: no campaign");
        return;
    }
    // A term moved on by this manager's own refused campaign still counts.
    let still = {
        let m = raft.metrics().borrow().clone();
        m.state != ServerState::Leader && m.current_leader.is_none_or(|l| l == leader)
    };
    if still {
        let _ = raft.trigger().elect().await;
    }
}

/// Whether this manager still follows `leader` of `term`, or none.
fn same_leader(raft: &Raft, leader: u64, term: u64) -> bool {
    let m = raft.metrics().borrow().clone();
    m.state != ServerState::Leader
        && m.current_leader.is_none_or(|l| l == leader)
        && m.current_term == term
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_append_that_arrived_after_the_stream_ended_holds_a_campaign_back() {
        let presence = Presence::default();
        let before = Instant::now();
        let ended = before + Duration::from_millis(10);
        assert!(!presence.appended_after(ended), "no append yet");
        // The dying leader's last append, taken late by a busy raft: it
        // arrived before the stream ended.
        presence.appended(before);
        assert!(!presence.appended_after(ended));
        // One that arrived after: the leader lives.
        presence.appended(ended + Duration::from_millis(1));
        assert!(presence.appended_after(ended));
        // An older arrival stamped later never moves the mark back.
        presence.appended(before);
        assert!(presence.appended_after(ended));
    }
}
