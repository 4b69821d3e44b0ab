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

use shoal_api::{LogLine, LogSubscription, StreamResume, Task};
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

/// What of a stream was shown: the last line's stamp and how many lines
/// carried it.
#[derive(Debug, Clone, Copy, Default)]
struct Resume {
    after: i64,
    count: u64,
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
    let subscribe =
        |task: &Task, follow: bool, tail: Option<u64>, resume: Vec<StreamResume>, id: String| {
            broker.subscribe(
                &task.node_id,
                LogSubscription {
                    id,
                    task_id: task.id.clone(),
                    task_name: task_name(&store, task),
                    follow,
                    tail,
                    since_unix_nano: reading.since_unix_nano,
                    resume,
                },
            )
        };
    if !reading.follow {
        // Tasks whose logs could not be read, and why: said at the end.
        let mut left_out: Vec<String> = Vec::new();
        for task in selected(&store, &selector) {
            let mut subscriber = match subscribe(&task, false, reading.tail, Vec::new(), ids()) {
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
    // Per task and stream: the stamp of the last line shown and how many
    // were shown with it, so a read asked again (its node's session came
    // back, or its follow swapped for a read to the end) takes each stream
    // up after what was shown: nothing twice, nothing skipped.
    let mut shown: HashMap<String, HashMap<String, Resume>> = HashMap::new();
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
            let resume = shown
                .get(&task.id)
                .map(|streams| {
                    streams
                        .iter()
                        .map(|(stream, r)| StreamResume {
                            stream: stream.clone(),
                            after_unix_nano: r.after,
                            shown_at_after: r.count,
                        })
                        .collect()
                })
                .unwrap_or_default();
            // A node without a session is tried again at the next look.
            if let Ok(subscriber) = subscribe(task, !ended, tail, resume, ids()) {
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
                        let streams = shown.entry(task_id.clone()).or_default();
                        for line in &batch {
                            let at = streams.entry(line.stream.clone()).or_default();
                            if line.time_unix_nano > at.after {
                                *at = Resume {
                                    after: line.time_unix_nano,
                                    count: 1,
                                };
                            } else if line.time_unix_nano == at.after {
                                at.count += 1;
                            }
                        }
                        for line in batch {
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Published::Closed(why) => {
                        open.remove(&task_id);
                        // Read to its end, or not readable there (asking
                        // again would fail the same way).
                        if why.is_some() || !following.contains(&task_id) {
                            if let Some(why) = why {
                                tracing::debug!(task = %task_id, %why, "a task's logs cannot be followed");
                            }
                            finished.insert(task_id);
                        }
                    }
                },
            }
        }
        shown.retain(|id, _| wanted.contains(id.as_str()));
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
