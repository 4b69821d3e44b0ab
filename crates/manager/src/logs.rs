//! Task logs, read from the local agent's task directories.
//!
//! Every task's stdout and stderr are files in its directory on the node that
//! ran it. This manager serves the tasks of its own node; a line is sent once
//! it is complete (ends with a newline), except at the end of a non-follow
//! read, where a trailing partial line is sent as it is. With `follow`, the
//! files are read again every `FOLLOW_POLL_MS` until the client goes away,
//! and tasks that appear later (a replacement) join the stream.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::{LogLine, Task};
use shoal_store::Store;
use tokio::sync::mpsc;
use tonic::Status;

const FOLLOW_POLL_MS: u64 = 250;
/// A log larger than this is read from its last this-many bytes.
const MAX_BACKLOG_BYTES: u64 = 4 << 20;
/// Bytes read from one file per pass, so one chatty task cannot starve others.
const MAX_READ_BYTES: u64 = 1 << 20;
const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// Which tasks to read.
pub enum Selector {
    Service(String),
    Task(String),
}

struct Cursor {
    name: String,
    offset: Option<u64>,
    partial: Vec<u8>,
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

/// Streams the selected tasks' logs into `tx` until done (or, following,
/// until the receiver is dropped).
pub async fn stream(
    store: Arc<Store>,
    tasks_dir: PathBuf,
    node_id: String,
    selector: Selector,
    follow: bool,
    tx: mpsc::Sender<Result<LogLine, Status>>,
) {
    let mut cursors: BTreeMap<(u64, i64, String, &'static str), Cursor> = BTreeMap::new();
    loop {
        let tasks: Vec<Task> = {
            let view = store.view();
            match &selector {
                Selector::Service(id) => view.tasks_of_service(id).collect(),
                Selector::Task(id) => view.task(id).into_iter().collect(),
            }
        };
        for task in tasks.iter().filter(|t| t.node_id == node_id) {
            let created = task.meta.as_ref().map_or(0, |m| m.created_at_ms);
            for stream in STREAMS {
                cursors
                    .entry((task.slot, created, task.id.clone(), stream))
                    .or_insert_with(|| Cursor {
                        name: task_name(&store, task),
                        offset: None,
                        partial: Vec::new(),
                    });
            }
        }
        for ((_, _, task_id, stream), cursor) in cursors.iter_mut() {
            let path = tasks_dir.join(task_id).join(format!("{stream}.log"));
            for line in read_new_lines(&path, cursor, !follow) {
                let message = LogLine {
                    task_id: task_id.clone(),
                    task_name: cursor.name.clone(),
                    stream: stream.to_string(),
                    line,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)) => {}
        }
    }
}

/// The complete lines added to `path` since the cursor, and with `flush` a
/// trailing partial one. A file that shrank was rotated: read it from the
/// start.
fn read_new_lines(path: &std::path::Path, cursor: &mut Cursor, flush: bool) -> Vec<Vec<u8>> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let offset = match cursor.offset {
        None => len.saturating_sub(MAX_BACKLOG_BYTES),
        Some(o) if o > len => {
            cursor.partial.clear();
            0
        }
        Some(o) => o,
    };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = file.take(MAX_READ_BYTES).read_to_end(&mut buf);
    }
    cursor.offset = Some(offset + buf.len() as u64);
    cursor.partial.extend_from_slice(&buf);
    let mut lines = Vec::new();
    while let Some(end) = cursor.partial.iter().position(|b| *b == b'\n') {
        let rest = cursor.partial.split_off(end + 1);
        let mut line = std::mem::replace(&mut cursor.partial, rest);
        line.pop();
        lines.push(line);
    }
    if flush && !cursor.partial.is_empty() {
        lines.push(std::mem::take(&mut cursor.partial));
    }
    lines
}
