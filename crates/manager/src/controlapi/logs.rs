//! Task logs, read where the tasks ran: each task's read is asked of its
//! node's agent through the log broker ([`crate::LogBroker`]), this
//! manager's own node included, so every node's tasks are read the same
//! way ([`shoal_agent::log_reader`] has what a read returns).
//!
//! Without `follow`, tasks are read one after another, in slot order and
//! then by age, each to the end its files had when its read began; a task
//! whose node has no session (down, unreachable) is left out. With
//! `follow`, every task is read at once and the service is looked at again
//! every `FOLLOW_POLL_MS`: tasks that appear (a replacement, a node that
//! came back) join the stream, until the client goes away, which cancels
//! every read at its agent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::{LogLine, LogSubscription, Task};
use shoal_store::Store;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{ApiError, ControlApi, EventStream, InvalidSpec, ReceiverStream, STREAM_BUFFER};
use crate::dispatcher::log_broker::{LogBroker, LogSubscriber, Published};
use shoal_api::ObjectKind;

const FOLLOW_POLL_MS: u64 = 250;
/// Tasks named in the message about those left out of a read, at most.
const MAX_NAMED_LEFT_OUT: usize = 10;

/// Which tasks to read.
pub enum Selector {
    Service(String),
    Task(String),
}

/// What to read of each task.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub follow: bool,
    pub tail: Option<u64>,
    pub since_unix_nano: i64,
}

fn task_name(store: &Store, task: &Task) -> String {
    let view = store.view();
    let service = view
        .service(&task.service_id)
        .and_then(|s| {
            s.spec
                .as_ref()?
                .annotations
                .as_ref()
                .map(|a| a.name.clone())
        })
        .unwrap_or_else(|| task.service_id.clone());
    if task.slot > 0 {
        format!("{service}.{}", task.slot)
    } else {
        format!("{service}.{}", task.node_id)
    }
}

/// The selected tasks, in the order a read without follow shows them.
fn selected(store: &Store, selector: &Selector) -> Vec<Task> {
    let view = store.view();
    let mut tasks: Vec<Task> = match selector {
        Selector::Service(id) => view.tasks_of_service(id).collect(),
        Selector::Task(id) => view.task(id).into_iter().collect(),
    };
    tasks.sort_by_key(|t| {
        (
            t.slot,
            t.meta.as_ref().map_or(0, |m| m.created_at_ms),
            t.id.clone(),
        )
    });
    tasks.retain(|t| !t.node_id.is_empty());
    tasks
}

/// Streams the selected tasks' logs into `tx` until done (or, following,
/// until the receiver is dropped).
pub async fn stream(
    store: Arc<Store>,
    broker: Arc<LogBroker>,
    mut ids: impl FnMut() -> String + Send,
    selector: Selector,
    reading: Reading,
    tx: mpsc::Sender<Result<LogLine, ApiError>>,
) {
    let subscribe = |task: &Task, follow: bool, tail: Option<u64>, since: i64, id: String| {
        broker.subscribe(
            &task.node_id,
            LogSubscription {
                id,
                task_id: task.id.clone(),
                task_name: task_name(&store, task),
                follow,
                tail,
                since_unix_nano: since,
            },
        )
    };
    if !reading.follow {
        // Tasks whose logs could not be read, and why: said at the end.
        let mut left_out: Vec<String> = Vec::new();
        for task in selected(&store, &selector) {
            let mut subscriber =
                match subscribe(&task, false, reading.tail, reading.since_unix_nano, ids()) {
                    Ok(s) => s,
                    Err(e) => {
                        left_out.push(format!("{} ({e})", task_name(&store, &task)));
                        continue;
                    }
                };
            loop {
                let published = tokio::select! {
                    _ = tx.closed() => return,
                    published = subscriber.recv() => published,
                };
                match published {
                    Some(Published::Lines(batch)) => {
                        for line in batch {
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Published::Closed(None)) => break,
                    Some(Published::Closed(Some(why))) => {
                        left_out.push(format!("{} ({why})", task_name(&store, &task)));
                        break;
                    }
                    None => {
                        left_out.push(format!(
                            "{} (node {} lost its session during the read)",
                            task_name(&store, &task),
                            task.node_id
                        ));
                        break;
                    }
                }
            }
        }
        if !left_out.is_empty() {
            let shown = left_out.len().min(MAX_NAMED_LEFT_OUT);
            let more = left_out.len() - shown;
            let mut message = format!(
                "the logs of {} task(s) could not be read: {}",
                left_out.len(),
                left_out[..shown].join("; ")
            );
            if more > 0 {
                message.push_str(&format!("; and {more} more"));
            }
            let _ = tx.send(Err(ApiError::Unavailable(message))).await;
        }
        return;
    }
    // `tail` applies to the tasks there when the read begins; a task that
    // joins later (a replacement) is shown from its first line.
    let mut tail = reading.tail;
    let mut open: tokio_stream::StreamMap<String, LogSubscriber> = tokio_stream::StreamMap::new();
    // Per task: the time of the last line shown, so a read asked again
    // (its node's session came back) starts after it instead of replaying.
    let mut shown_until: HashMap<String, i64> = HashMap::new();
    // Reads that follow (the others end by themselves), and tasks whose
    // logs were read to their end.
    let mut following: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    loop {
        let tasks = selected(&store, &selector);
        let wanted: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        // Reads of tasks gone from the store (history pruned) end.
        let gone: Vec<String> = open
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            open.remove(&id);
        }
        for task in &tasks {
            let ended = task.observed().is_terminal();
            if finished.contains(&task.id) {
                continue;
            }
            if open.contains_key(&task.id) {
                // An ended task's follow is swapped for a read to the end
                // of what it wrote, after the last line shown: nothing lost,
                // nothing twice, and the read then ends.
                if !(ended && following.contains(&task.id)) {
                    continue;
                }
                open.remove(&task.id);
            }
            let since = shown_until
                .get(&task.id)
                .map_or(reading.since_unix_nano, |t| {
                    (t + 1).max(reading.since_unix_nano)
                });
            // A node without a session is tried again at the next look.
            if let Ok(subscriber) = subscribe(task, !ended, tail, since, ids()) {
                open.insert(task.id.clone(), subscriber);
                if ended {
                    following.remove(&task.id);
                } else {
                    following.insert(task.id.clone());
                }
            }
        }
        finished.retain(|id| wanted.contains(id.as_str()));
        following.retain(|id| open.contains_key(id));
        tail = None;
        let look_again = tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS));
        tokio::pin!(look_again);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = &mut look_again => break,
                Some((task_id, published)) = open.next(), if !open.is_empty() => match published {
                    Published::Lines(batch) => {
                        if let Some(last) = batch.iter().map(|l| l.time_unix_nano).max() {
                            let at = shown_until.entry(task_id.clone()).or_default();
                            *at = (*at).max(last);
                        }
                        for line in batch {
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Published::Closed(_) => {
                        open.remove(&task_id);
                        if !following.contains(&task_id) {
                            finished.insert(task_id);
                        }
                    }
                },
            }
        }
        shown_until.retain(|id, _| wanted.contains(id.as_str()));
    }
}

impl ControlApi {
    pub async fn logs(
        &self,
        req: shoal_api::LogsRequest,
    ) -> Result<EventStream<shoal_api::LogLine>, ApiError> {
        let selector = match (req.service.is_empty(), req.task.is_empty()) {
            (false, true) => Selector::Service(self.service(&req.service)?.id),
            (true, false) => {
                Selector::Task(self.lookup(ObjectKind::Task, &req.task)?.id().to_string())
            }
            _ => {
                return Err(ApiError::from(InvalidSpec {
                    field: "logs".into(),
                    rule: "name one service or one task".into(),
                }))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let mut ids = self.id_source();
        tokio::spawn(stream(
            Arc::clone(self.replica.store()),
            Arc::clone(&self.config.logs),
            move || crate::identity::new_object_id(&mut ids),
            selector,
            Reading {
                follow: req.follow,
                tail: req.tail,
                since_unix_nano: req.since_unix_nano,
            },
            tx,
        ));
        Ok(ReceiverStream::new(rx))
    }
}
