//! The log broker (SwarmKit's): task logs are files on the node that ran
//! the task, so a read of them is asked of that node's agent through its
//! session, and the agent answers on a `PublishLogs` stream of its own.
//!
//! A subscription lives while its reader holds the [`LogSubscriber`]:
//! dropping it (the client went away) cancels it at the agent; a session
//! that ends ends its node's subscriptions. Each subscription's lines pass
//! through a bounded channel, so a slow client slows the agent's reading
//! (HTTP/2 flow control), never the manager's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_api::{LogLine, LogSubscription, PublishLogsMessage};
use tokio::sync::mpsc;
use tonic::Status;

use super::assignments::Inbox;

/// Batches buffered per subscription before the agent waits.
const SUBSCRIPTION_BUFFER: usize = 16;
/// Subscriptions open on one node at most: each holds a stream and a
/// reader on the agent.
pub const MAX_SUBSCRIPTIONS_PER_NODE: usize = 256;

/// What a subscription yields.
#[derive(Debug)]
pub enum Published {
    Lines(Vec<LogLine>),
    /// The agent sent all it was asked for; or it could not (the reason).
    Closed(Option<String>),
}

/// Why a read cannot be asked of a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error(
        "node {0} has no session (it is down or unreachable): its tasks' logs cannot be read now"
    )]
    NoSession(String),
    #[error("node {node} has {MAX_SUBSCRIPTIONS_PER_NODE} log reads open already; try again when one ends")]
    TooMany { node: String },
}

struct Subscription {
    node_id: String,
    tx: mpsc::Sender<Published>,
}

#[derive(Default)]
struct State {
    subscriptions: HashMap<String, Subscription>,
    /// Each node with an open session, and its session's inbox.
    sessions: HashMap<String, Arc<Inbox>>,
}

/// The broker, shared by the dispatcher (sessions, publishing) and the
/// control API (reads).
#[derive(Default)]
pub struct LogBroker {
    state: Mutex<State>,
}

impl std::fmt::Debug for LogBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("LogBroker")
            .field("subscriptions", &state.subscriptions.len())
            .field("sessions", &state.sessions.len())
            .finish()
    }
}

/// A reader's end of a subscription; dropping it cancels the read.
pub struct LogSubscriber {
    id: String,
    broker: Arc<LogBroker>,
    rx: mpsc::Receiver<Published>,
}

impl LogSubscriber {
    /// The next batch; `None` once the subscription ended (its session
    /// went).
    pub async fn recv(&mut self) -> Option<Published> {
        self.rx.recv().await
    }
}

/// The batches, ending when the subscription does.
impl tokio_stream::Stream for LogSubscriber {
    type Item = Published;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Published>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LogSubscriber {
    fn drop(&mut self) {
        self.broker.cancel(&self.id);
    }
}

impl LogBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks `node_id`'s agent for the lines `subscription` names.
    pub fn subscribe(
        self: &Arc<Self>,
        node_id: &str,
        subscription: LogSubscription,
    ) -> Result<LogSubscriber, SubscribeError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let id = subscription.id.clone();
        {
            let mut state = self.lock();
            let Some(inbox) = state.sessions.get(node_id).cloned() else {
                return Err(SubscribeError::NoSession(node_id.to_string()));
            };
            let open = state
                .subscriptions
                .values()
                .filter(|s| s.node_id == node_id)
                .count();
            if open >= MAX_SUBSCRIPTIONS_PER_NODE {
                return Err(SubscribeError::TooMany {
                    node: node_id.to_string(),
                });
            }
            state.subscriptions.insert(
                id.clone(),
                Subscription {
                    node_id: node_id.to_string(),
                    tx,
                },
            );
            inbox.post_log_subscription(subscription);
        }
        Ok(LogSubscriber {
            id,
            broker: Arc::clone(self),
            rx,
        })
    }

    /// Ends a subscription; its agent is told to stop reading.
    fn cancel(&self, id: &str) {
        let mut state = self.lock();
        if let Some(sub) = state.subscriptions.remove(id) {
            if let Some(inbox) = state.sessions.get(&sub.node_id) {
                inbox.post_log_cancellation(id.to_string());
            }
        }
    }

    /// A session opened: reads can be asked of the node through `inbox`.
    /// Reads asked on the node's earlier session end (its agent dropped
    /// them with that session): their readers see the end and may ask again.
    pub(super) fn session_opened(&self, node_id: &str, inbox: &Arc<Inbox>) {
        let mut state = self.lock();
        let replaced = state
            .sessions
            .insert(node_id.to_string(), Arc::clone(inbox))
            .is_some_and(|old| !Arc::ptr_eq(&old, inbox));
        if replaced {
            state.subscriptions.retain(|_, s| s.node_id != node_id);
        }
    }

    /// Ends the read `id` whose agent's stream broke (`why`).
    pub fn abandon(&self, id: &str, why: &str) {
        if let Some(sub) = self.lock().subscriptions.remove(id) {
            let _ = sub.tx.try_send(Published::Closed(Some(why.to_string())));
        }
    }

    /// The session of `inbox` ended: its node's reads end with it (their
    /// readers see the end), unless a newer session took its place.
    pub(super) fn session_closed(&self, node_id: &str, inbox: &Arc<Inbox>) {
        let mut state = self.lock();
        if state
            .sessions
            .get(node_id)
            .is_some_and(|i| Arc::ptr_eq(i, inbox))
        {
            state.sessions.remove(node_id);
            state.subscriptions.retain(|_, s| s.node_id != node_id);
        }
    }

    /// One message of a `PublishLogs` stream from `from` (the publishing
    /// node, when certified): handed to the subscription's reader, waiting
    /// while its buffer is full. An error ends the agent's stream (the
    /// subscription was cancelled, or is another node's).
    pub async fn publish(
        &self,
        from: Option<&str>,
        message: PublishLogsMessage,
    ) -> Result<(), Status> {
        let tx = {
            let state = self.lock();
            let sub = state
                .subscriptions
                .get(&message.subscription_id)
                .ok_or_else(|| Status::not_found("the log subscription ended"))?;
            if from.is_some_and(|n| n != sub.node_id) {
                return Err(Status::permission_denied(
                    "this log subscription was asked of another node",
                ));
            }
            sub.tx.clone()
        };
        if !message.lines.is_empty() && tx.send(Published::Lines(message.lines)).await.is_err() {
            return Err(Status::not_found("the log subscription ended"));
        }
        if message.close {
            let error = Some(message.error).filter(|e| !e.is_empty());
            let _ = tx.send(Published::Closed(error)).await;
            self.lock().subscriptions.remove(&message.subscription_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(id: &str) -> LogSubscription {
        LogSubscription {
            id: id.into(),
            task_id: "t1".into(),
            ..Default::default()
        }
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            line: text.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_read_is_asked_of_the_tasks_node_and_its_lines_reach_the_reader() {
        let broker = Arc::new(LogBroker::default());
        assert_eq!(
            broker.subscribe("n1", subscription("s1")).err(),
            Some(SubscribeError::NoSession("n1".into()))
        );
        let inbox = Arc::new(Inbox::default());
        broker.session_opened("n1", &inbox);
        let mut reader = broker.subscribe("n1", subscription("s1")).unwrap();
        let mail = inbox.take_logs();
        assert_eq!(mail.subscriptions, vec![subscription("s1")]);
        // Another node cannot answer it.
        let from_n2 = broker
            .publish(
                Some("n2"),
                PublishLogsMessage {
                    subscription_id: "s1".into(),
                    lines: vec![line("x")],
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(from_n2.unwrap_err().code(), tonic::Code::PermissionDenied);
        broker
            .publish(
                Some("n1"),
                PublishLogsMessage {
                    subscription_id: "s1".into(),
                    lines: vec![line("a"), line("b")],
                    close: true,
                    error: String::new(),
                },
            )
            .await
            .unwrap();
        match reader.recv().await {
            Some(Published::Lines(lines)) => assert_eq!(lines, vec![line("a"), line("b")]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(reader.recv().await, Some(Published::Closed(None))));
    }

    #[tokio::test]
    async fn a_reader_that_goes_cancels_the_read_at_the_agent_and_a_lost_session_ends_reads() {
        let broker = Arc::new(LogBroker::default());
        let inbox = Arc::new(Inbox::default());
        broker.session_opened("n1", &inbox);
        // Gone before its session message went out: never asked at all.
        drop(broker.subscribe("n1", subscription("s0")).unwrap());
        let mail = inbox.take_logs();
        assert!(mail.subscriptions.is_empty() && mail.cancellations.is_empty());
        let reader = broker.subscribe("n1", subscription("s1")).unwrap();
        assert_eq!(inbox.take_logs().subscriptions.len(), 1);
        drop(reader);
        assert_eq!(inbox.take_logs().cancellations, vec!["s1".to_string()]);
        let late = broker
            .publish(
                Some("n1"),
                PublishLogsMessage {
                    subscription_id: "s1".into(),
                    lines: vec![line("late")],
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(late.unwrap_err().code(), tonic::Code::NotFound);

        let mut reader = broker.subscribe("n1", subscription("s2")).unwrap();
        broker.session_closed("n1", &inbox);
        assert!(reader.recv().await.is_none());
        assert!(broker.subscribe("n1", subscription("s3")).is_err());

        // A new session before the old one is seen closing: the old
        // session's reads end, and its late close ends nothing new.
        broker.session_opened("n1", &inbox);
        let mut old_read = broker.subscribe("n1", subscription("s4")).unwrap();
        let newer = Arc::new(Inbox::default());
        broker.session_opened("n1", &newer);
        assert!(old_read.recv().await.is_none());
        let mut new_read = broker.subscribe("n1", subscription("s5")).unwrap();
        broker.session_closed("n1", &inbox);
        broker
            .publish(
                Some("n1"),
                PublishLogsMessage {
                    subscription_id: "s5".into(),
                    lines: vec![line("still")],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(matches!(new_read.recv().await, Some(Published::Lines(_))));
    }

    #[tokio::test]
    async fn a_node_has_a_bounded_number_of_reads_open() {
        let broker = Arc::new(LogBroker::default());
        let inbox = Arc::new(Inbox::default());
        broker.session_opened("n1", &inbox);
        let open: Vec<_> = (0..MAX_SUBSCRIPTIONS_PER_NODE)
            .map(|i| {
                broker
                    .subscribe("n1", subscription(&format!("s{i}")))
                    .unwrap()
            })
            .collect();
        let refused = broker.subscribe("n1", subscription("one more")).err();
        assert!(matches!(refused, Some(SubscribeError::TooMany { .. })));
        drop(open);
        assert!(broker.subscribe("n1", subscription("after")).is_ok());
    }
}
