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

    /// The term now, as this replica's raft says (for a single manager
    /// that leads, such as the simulator's).
    pub fn current(replica: Arc<Replica>) -> LeaderTerm {
        let term = replica.raft().metrics().borrow().current_term;
        LeaderTerm { replica, term }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The replica (reads, metrics, membership).
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
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

impl std::ops::Deref for LeaderTerm {
    type Target = Replica;

    fn deref(&self) -> &Replica {
        &self.replica
    }
}
