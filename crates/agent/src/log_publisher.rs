//! Answering the log reads a manager asks of this node (its log broker):
//! each subscription is read by a [`TaskLogReader`] and sent on a
//! `PublishLogs` stream of its own, until it is done, cancelled, or the
//! manager stops listening. The stream's flow control paces the reading:
//! a slow client slows this node's reading, nothing piles up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use shoal_api::log_broker_client::LogBrokerClient;
use shoal_api::{LogSubscription, PublishLogsMessage};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::log_reader::{Reading, TaskLogReader};

/// How often a followed read looks for new lines.
const FOLLOW_POLL_MS: u64 = 250;
/// Messages queued for the stream before the reader waits.
const PUBLISH_QUEUE: usize = 4;
/// Largest message on the stream (batches are at most a quarter of it).
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The reads running on this node, by subscription.
#[derive(Default)]
pub struct LogPublishers {
    running: HashMap<String, oneshot::Sender<()>>,
}

impl LogPublishers {
    /// Starts answering `subscription` on `channel`, reading the task's
    /// directory `dir` (`None`: this node keeps no logs).
    pub fn start(&mut self, channel: Channel, dir: Option<PathBuf>, subscription: LogSubscription) {
        self.running.retain(|_, cancel| !cancel.is_closed());
        let (cancel, cancelled) = oneshot::channel();
        self.running.insert(subscription.id.clone(), cancel);
        tokio::spawn(publish(channel, dir, subscription, cancelled));
    }

    /// Stops the read of `id`.
    pub fn cancel(&mut self, id: &str) {
        if let Some(cancel) = self.running.remove(id) {
            let _ = cancel.send(());
        }
    }

    /// Stops every read (the session they were asked on is gone).
    pub fn cancel_all(&mut self) {
        for (_, cancel) in self.running.drain() {
            let _ = cancel.send(());
        }
    }
}

/// Bytes of lines in one message at most (a line is at most
/// `MAX_LINE_BYTES`): well under what the manager accepts.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// What a line costs in a message beside its bytes (names, stamps).
const LINE_OVERHEAD_BYTES: usize = 96;

/// `lines` in messages of at most [`MAX_BATCH_BYTES`].
fn batches(lines: Vec<shoal_api::LogLine>) -> Vec<Vec<shoal_api::LogLine>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let size =
            line.line.len() + line.task_name.len() + line.task_id.len() + LINE_OVERHEAD_BYTES;
        if bytes + size > MAX_BATCH_BYTES && !batch.is_empty() {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(line);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

async fn publish(
    channel: Channel,
    dir: Option<PathBuf>,
    subscription: LogSubscription,
    mut cancelled: oneshot::Receiver<()>,
) {
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    let mut client = LogBrokerClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let call = tokio::spawn(async move {
        client
            .publish_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let id = subscription.id.clone();
    let message = |lines, close, error: String| PublishLogsMessage {
        subscription_id: id.clone(),
        lines,
        close,
        error,
    };
    let Some(dir) = dir else {
        let _ = tx
            .send(message(
                Vec::new(),
                true,
                "this node keeps no task logs".into(),
            ))
            .await;
        drop(tx);
        let _ = call.await;
        return;
    };
    let reading = Reading {
        follow: subscription.follow,
        tail: subscription.tail,
        since_unix_nano: subscription.since_unix_nano,
    };
    let task_id = subscription.task_id.clone();
    // First, the subscription's name alone: the manager knows which read
    // this stream answers even if no line ever comes.
    if tx
        .send(message(Vec::new(), false, String::new()))
        .await
        .is_err()
    {
        return;
    }
    let resume = subscription
        .resume
        .iter()
        .map(|r| {
            (
                r.stream.clone(),
                crate::log_reader::Resume {
                    after: r.after_unix_nano,
                    shown_at_after: r.shown_at_after,
                },
            )
        })
        .collect();
    let mut reader = TaskLogReader::resuming(
        dir,
        subscription.task_id,
        subscription.task_name,
        reading,
        resume,
    );
    // Each read is a user's command: its end is worth a line of the log.
    let ended =
        |why: &str| tracing::info!(subscription = %id, task = %task_id, "a log read ended: {why}");
    loop {
        // File reads off the runtime's threads: a large tail or a slow disk
        // must not hold up the agent's heartbeats.
        let read = tokio::task::spawn_blocking(move || {
            let read = reader.read();
            (reader, read)
        })
        .await;
        let Ok((returned, (lines, done))) = read else {
            let _ = tx
                .send(message(
                    Vec::new(),
                    true,
                    "reading the task's logs failed".into(),
                ))
                .await;
            return ended("the read failed");
        };
        reader = returned;
        let quiet = lines.is_empty();
        let mut batches = batches(lines);
        if done && batches.is_empty() {
            batches.push(Vec::new());
        }
        let count = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let last = done && i + 1 == count;
            tokio::select! {
                _ = &mut cancelled => return ended("cancelled"),
                sent = tx.send(message(batch, last, String::new())) => {
                    if sent.is_err() {
                        return ended("the manager stopped listening");
                    }
                }
            }
        }
        if done {
            ended("everything asked for was sent");
            break;
        }
        if quiet && reading.follow {
            tokio::select! {
                _ = &mut cancelled => return ended("cancelled"),
                _ = tx.closed() => return ended("the manager stopped listening"),
                _ = tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)) => {}
            }
        }
    }
    drop(tx);
    if let Ok(Err(e)) = call.await {
        tracing::debug!(error = %e, "publishing a log read failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_in_messages_of_a_bounded_size_in_order() {
        let line = |n: usize| shoal_api::LogLine {
            line: vec![b'x'; n],
            ..Default::default()
        };
        // Short lines: many per message, none over the bound.
        let short: Vec<_> = (0..100_000).map(|_| line(10)).collect();
        let split = batches(short);
        assert!(split.len() > 1);
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 100_000);
        for batch in &split {
            let bytes: usize = batch
                .iter()
                .map(|l| l.line.len() + LINE_OVERHEAD_BYTES)
                .sum();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        // A line as long as allowed still goes, alone.
        let long = batches(vec![line(MAX_BATCH_BYTES), line(1)]);
        assert_eq!(long.len(), 2);
        assert!(batches(Vec::new()).is_empty());
    }
}
