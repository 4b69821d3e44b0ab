//! A session's heartbeats, sent from a task of their own.
//!
//! Why their own task: a status report is answered once the manager has
//! committed it, which takes seconds when the manager is loaded. Sent from
//! the same loop, a heartbeat waited behind that answer, the node missed its
//! TTL while alive, and the manager replaced every task of it: the more
//! loaded the manager, the more nodes it lost, the more work it made itself.
//! A heartbeat now never waits for anything but the previous heartbeat.

use std::time::Duration;

use shoal_api::dispatcher_client::DispatcherClient;
use shoal_api::HeartbeatRequest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A heartbeat unanswered for this many periods ends the session: by then
/// the dispatcher has counted the node down, and a new session is the way
/// back.
const ANSWER_WITHIN_PERIODS: u32 = 3;

/// The heartbeats of one session; they stop when this is dropped.
pub struct Heartbeat {
    /// True until a heartbeat is refused, fails or goes unanswered.
    alive: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Sends a heartbeat at once and then every `period_ms` (then every
    /// period the dispatcher answers with), all on one stream.
    pub fn start(
        client: DispatcherClient<Channel>,
        node_id: String,
        session_id: String,
        period_ms: u64,
    ) -> Heartbeat {
        let (alive_tx, alive) = watch::channel(true);
        let task = tokio::spawn(async move {
            beat_until_lost(client, node_id, session_id, period_ms).await;
            let _ = alive_tx.send(false);
        });
        Heartbeat { alive, task }
    }

    /// Resolves once the session is lost to its heartbeats; at once if it
    /// already is.
    async fn lost(&mut self) {
        // An error means the task is gone, which also ends the session.
        let _ = self.alive.wait_for(|alive| !*alive).await;
    }

    /// [`Heartbeat::lost`] once started; never before.
    pub async fn lost_once_started(beat: &mut Option<Heartbeat>) {
        match beat {
            Some(beat) => beat.lost().await,
            None => std::future::pending().await,
        }
    }
}

/// Sends the beats of one session until one is refused or unanswered, or
/// the stream ends; returns then, the session being lost.
async fn beat_until_lost(
    mut client: DispatcherClient<Channel>,
    node_id: String,
    session_id: String,
    period_ms: u64,
) {
    let mut period = Duration::from_millis(period_ms.max(1));
    let beat = || HeartbeatRequest {
        node_id: node_id.clone(),
        session_id: session_id.clone(),
    };
    let (beats, outbound) = mpsc::channel(1);
    // The first beat goes out with the stream's opening, not a period after
    // it: the session's TTL runs from its start, and on a loaded manager
    // opening the stream alone can take a good part of it.
    let _ = beats.try_send(beat());
    let opened = tokio::time::timeout(
        period * ANSWER_WITHIN_PERIODS,
        client.heartbeat(ReceiverStream::new(outbound)),
    )
    .await;
    let mut answers = match opened {
        Ok(Ok(answers)) => answers.into_inner(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "heartbeats refused; the session is over");
            return;
        }
        Err(_) => {
            tracing::debug!("heartbeats unanswered; the session is over");
            return;
        }
    };
    loop {
        let answer = tokio::time::timeout(period * ANSWER_WITHIN_PERIODS, answers.message()).await;
        match answer {
            Ok(Ok(Some(r))) => period = Duration::from_millis(r.period_ms.max(1)),
            Ok(Ok(None)) => {
                tracing::debug!("heartbeat stream ended; the session is over");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "heartbeat refused; the session is over");
                return;
            }
            Err(_) => {
                tracing::debug!("heartbeat unanswered; the session is over");
                return;
            }
        }
        tokio::time::sleep(period).await;
        if beats.send(beat()).await.is_err() {
            tracing::debug!("heartbeat stream closed; the session is over");
            return;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
