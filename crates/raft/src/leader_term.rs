//! A term of leadership as the leader's own components hold it
//! (DESIGN.md §7: a deposed leader's writes fail).
//!
//! A component decides from the store as this replica sees it while it
//! leads. Its writes go through [`LeaderTerm`]: proposed on this replica
//! only (never forwarded to another leader, who would accept a decision
//! made on a stale view), only while it still leads in the same term, and
//! stamped with that term so the state machine refuses them when the
//! entry holding them was appended in another one
//! ([`shoal_store::TxnError::StaleTerm`]). The stamp closes the gap
//! between the check and the append: a leader that lost and won again
//! between them appends in a newer term.

use std::sync::Arc;

use shoal_api::Transaction;

use crate::proposer::ProposeError;
use crate::Replica;

/// The replica and the term its leader's components decide in.
#[derive(Clone)]
pub struct LeaderTerm {
    replica: Arc<Replica>,
    term: u64,
}

impl LeaderTerm {
    pub fn new(replica: Arc<Replica>, term: u64) -> LeaderTerm {
        LeaderTerm { replica, term }
    }

    /// The term now, as this replica's raft says, for a single manager
    /// that leads already (the simulator's, tests'); `None` when it does
    /// not lead.
    pub fn current(replica: Arc<Replica>) -> Option<LeaderTerm> {
        let term = {
            let m = replica.raft().metrics().borrow().clone();
            (m.state == openraft::ServerState::Leader).then_some(m.current_term)
        }?;
        Some(LeaderTerm { replica, term })
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The replica: reads, metrics and membership. Never for writes:
    /// those go through [`LeaderTerm::propose`], which no deposed leader
    /// gets through (there is deliberately no `Deref` to the replica, so a
    /// helper cannot forward a write by mistake).
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// The replicated store (read side).
    pub fn store(&self) -> &Arc<shoal_store::Store> {
        self.replica.store()
    }

    /// Whether this replica still leads in this term.
    pub fn leads(&self) -> bool {
        let m = self.replica.raft().metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && m.current_term == self.term
    }

    /// Proposes `txn` as this term's leader; see [`Replica::propose`] for
    /// the answer. Refused with `NotLeader` once this replica no longer
    /// leads in the term.
    pub async fn propose(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.replica.propose_in_term(self.term, txn, false).await
    }

    /// Proposes agents' status reports as this term's leader.
    pub async fn propose_report(&self, txn: Transaction) -> Result<u64, ProposeError> {
        self.replica.propose_in_term(self.term, txn, true).await
    }
}
