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
/// Largest message on the stream (a read is at most a MiB per file).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

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
    let mut reader = TaskLogReader::new(dir, subscription.task_id, subscription.task_name, reading);
    // Each read is a user's command: its end is worth a line of the log.
    let ended =
        |why: &str| tracing::info!(subscription = %id, task = %task_id, "a log read ended: {why}");
    loop {
        let (lines, done) = reader.read();
        let quiet = lines.is_empty();
        if !quiet || done {
            tokio::select! {
                _ = &mut cancelled => return ended("cancelled"),
                sent = tx.send(message(lines, done, String::new())) => {
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
