//! Reading one task's logs on the node that ran it, for the log broker
//! (a subscription asks; [`crate::log_publisher`] sends what this reads).
//!
//! A task's stdout and stderr are files in its directory, each line
//! stamped by the agent with the time it read it from the task
//! ([`shoal_api::log_time`]). A read starts at the beginning of each file,
//! or with `tail` at its last lines, keeps the lines stamped at or after
//! `since`, and runs to the end the file had when the read began, whatever
//! its size: the newest line is always shown. The stamp travels beside the
//! line, not in it. A line is sent once it is complete (ends with a
//! newline), except at the end of a non-follow read, where a trailing
//! partial line is sent as it is. Following, each read takes what was
//! written since the last; a file that shrank was rotated and is read from
//! its start. Every read is bounded ([`MAX_READ_BYTES`] per file), and an
//! endless line is cut into pieces of [`MAX_LINE_BYTES`].

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use shoal_api::LogLine;

/// Bytes read from one file per read, so one chatty task cannot hold the
/// agent (or the message) for long.
pub const MAX_READ_BYTES: u64 = 1 << 20;
/// A line longer than this is sent in pieces of this size: a task that
/// writes without newlines cannot make anyone buffer without bound.
pub const MAX_LINE_BYTES: usize = 256 << 10;
/// Bytes scanned backwards per read when looking for the last lines.
const TAIL_SCAN_BYTES: u64 = 64 << 10;
/// A task's streams, in the order a read sends them.
const STREAMS: [&str; 2] = ["stderr", "stdout"];

/// What to read of each file.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Keep reading what is written after the end.
    pub follow: bool,
    /// Start at the last this-many lines (all when `None`).
    pub tail: Option<u64>,
    /// Only lines written at or after this time (ns since the epoch); 0:
    /// all.
    pub since_unix_nano: i64,
}

/// One line (or piece of an endless one) and when it was written (0: its
/// log does not say).
type Line = (i64, Vec<u8>);

struct Cursor {
    offset: Option<u64>,
    partial: Vec<u8>,
    /// Whether `partial` starts a line of the file (and so its stamp).
    line_start: bool,
    /// The time of the line `partial` continues.
    line_time: i64,
    /// Where the first read starts: the last this-many lines, or all.
    tail: Option<u64>,
}

impl Cursor {
    fn new(tail: Option<u64>) -> Cursor {
        Cursor {
            offset: None,
            partial: Vec::new(),
            line_start: true,
            line_time: 0,
            tail,
        }
    }
}

/// Where a stream's read takes up: after the lines stamped before
/// `after`, and the first `shown_at_after` stamped at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resume {
    pub after: i64,
    pub shown_at_after: u64,
}

/// A read of one task's two streams.
pub struct TaskLogReader {
    dir: PathBuf,
    task_id: String,
    task_name: String,
    reading: Reading,
    /// Per stream, where a read asked again takes up.
    resume: std::collections::HashMap<String, Resume>,
    /// Per stream: its cursor, and (not following) the end it reads to.
    streams: Vec<(&'static str, Cursor, Option<u64>)>,
    /// The stream being read, not following (one runs to its end first).
    current: usize,
}

impl TaskLogReader {
    /// A read of the task whose directory is `dir`.
    pub fn new(dir: PathBuf, task_id: String, task_name: String, reading: Reading) -> Self {
        Self::resuming(dir, task_id, task_name, reading, Default::default())
    }

    /// As [`TaskLogReader::new`], taking each stream up where `resume`
    /// says (streams not in it are read as `reading` says).
    pub fn resuming(
        dir: PathBuf,
        task_id: String,
        task_name: String,
        reading: Reading,
        resume: std::collections::HashMap<String, Resume>,
    ) -> Self {
        let streams = STREAMS
            .iter()
            .map(|stream| {
                let end = (!reading.follow).then(|| file_len(&dir.join(format!("{stream}.log"))));
                (*stream, Cursor::new(reading.tail), end)
            })
            .collect();
        TaskLogReader {
            dir,
            task_id,
            task_name,
            reading,
            resume,
            streams,
            current: 0,
        }
    }

    /// The next lines, and whether the read is done (never, following).
    /// Not following, each stream is read to its end before the next.
    pub fn read(&mut self) -> (Vec<LogLine>, bool) {
        let mut out = Vec::new();
        let range = if self.reading.follow {
            0..self.streams.len()
        } else {
            self.current..(self.current + 1).min(self.streams.len())
        };
        let mut exhausted = false;
        for i in range {
            let (stream, cursor, end) = &mut self.streams[i];
            let path = self.dir.join(format!("{stream}.log"));
            let (lines, more) = read_new_lines(&path, cursor, self.reading, *end);
            exhausted = !more;
            for (time, line) in lines {
                if self.reading.since_unix_nano > 0 && time < self.reading.since_unix_nano {
                    continue;
                }
                if let Some(resume) = self.resume.get_mut(*stream) {
                    if time < resume.after {
                        continue;
                    }
                    if time == resume.after && resume.shown_at_after > 0 {
                        resume.shown_at_after -= 1;
                        continue;
                    }
                }
                out.push(LogLine {
                    task_id: self.task_id.clone(),
                    task_name: self.task_name.clone(),
                    stream: stream.to_string(),
                    line,
                    time_unix_nano: time,
                });
            }
        }
        if self.reading.follow {
            return (out, false);
        }
        if exhausted {
            self.current += 1;
        }
        (out, self.current >= self.streams.len())
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Where the last `lines` lines of the file begin (a trailing partial line
/// counts as one). Reads backwards in bounded chunks, so it costs what the
/// lines take, not what the file holds.
fn tail_offset(file: &mut std::fs::File, len: u64, lines: u64) -> u64 {
    if lines == 0 {
        return len;
    }
    let mut end = len;
    let mut newlines = 0u64;
    // A final newline ends the last line; it does not start one.
    let mut skip_final = true;
    let mut buf = vec![0u8; TAIL_SCAN_BYTES as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_SCAN_BYTES);
        let chunk = &mut buf[..(end - start) as usize];
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_exact(chunk).is_err() {
            return 0;
        }
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_final = false;
                continue;
            }
            if skip_final {
                skip_final = false;
                continue;
            }
            newlines += 1;
            if newlines == lines {
                return start + i as u64 + 1;
            }
        }
        end = start;
    }
    0
}

/// The complete lines added to `path` since the cursor, and whether more
/// is left to read (below `end`, when given). The last read of a
/// non-follow read also sends a trailing partial line. A file that shrank
/// was rotated: read it from the start.
fn read_new_lines(
    path: &Path,
    cursor: &mut Cursor,
    reading: Reading,
    end: Option<u64>,
) -> (Vec<Line>, bool) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), false);
    };
    let len = end.unwrap_or_else(|| file.metadata().map_or(0, |m| m.len()));
    let offset = match cursor.offset {
        None => match cursor.tail {
            None => 0,
            Some(n) => tail_offset(&mut file, len, n),
        },
        Some(o) if o > file.metadata().map_or(0, |m| m.len()) => {
            cursor.partial.clear();
            cursor.line_start = true;
            0
        }
        Some(o) => o,
    };
    let want = MAX_READ_BYTES.min(len.saturating_sub(offset));
    let mut buf = Vec::new();
    if want > 0 && file.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = file.take(want).read_to_end(&mut buf);
    }
    cursor.offset = Some(offset + buf.len() as u64);
    let more = !buf.is_empty() && offset + (buf.len() as u64) < len;
    cursor.partial.extend_from_slice(&buf);
    // Each line is copied out once and what was consumed is dropped once:
    // splitting the buffer per line would copy its rest for every line.
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(len) = cursor.partial[start..].iter().position(|b| *b == b'\n') {
        lines.push(cursor.piece(start, start + len, true));
        start += len + 1;
    }
    while cursor.partial.len() - start > MAX_LINE_BYTES {
        lines.push(cursor.piece(start, start + MAX_LINE_BYTES, false));
        start += MAX_LINE_BYTES;
    }
    cursor.partial.drain(..start);
    if !reading.follow && !more && !cursor.partial.is_empty() {
        let end = cursor.partial.len();
        lines.push(cursor.piece(0, end, true));
        cursor.partial.clear();
    }
    (lines, more)
}

impl Cursor {
    /// `partial[from..to]` as a line with its time: its own stamp when it
    /// starts a line of the file, else the time of the line it continues.
    /// `ends` says whether the line ends with it.
    fn piece(&mut self, from: usize, to: usize, ends: bool) -> Line {
        let bytes = &self.partial[from..to];
        let line = if self.line_start {
            match shoal_api::log_time::split_stamp(bytes) {
                Some((time, text)) => (time, text.to_vec()),
                // A log written before lines were stamped.
                None => (0, bytes.to_vec()),
            }
        } else {
            (self.line_time, bytes.to_vec())
        };
        self.line_time = line.0;
        self.line_start = ends;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(text: &str, n: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, text).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let at = tail_offset(&mut f, text.len() as u64, n);
        text[at as usize..].to_string()
    }

    #[test]
    fn tail_starts_at_the_last_lines_whatever_the_file_ends_with() {
        assert_eq!(tail_of("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_of("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_of("a\nb\nc\n", 10), "a\nb\nc\n");
        assert_eq!(tail_of("a\nb\n", 0), "");
        assert_eq!(tail_of("", 3), "");
        // Across the backward scan's chunks.
        let long: String = (0..50_000).map(|i| format!("{i}\n")).collect();
        assert_eq!(tail_of(&long, 2), "49998\n49999\n");
    }

    /// Every line of the file at `path`, as a read without follow sends it.
    fn read_whole(path: &Path) -> Vec<Line> {
        let mut cursor = Cursor::new(None);
        let reading = Reading {
            follow: false,
            tail: None,
            since_unix_nano: 0,
        };
        let end = Some(file_len(path));
        let mut lines = Vec::new();
        loop {
            let (got, more) = read_new_lines(path, &mut cursor, reading, end);
            lines.extend(got);
            if !more {
                return lines;
            }
        }
    }

    #[test]
    fn a_read_without_follow_runs_to_the_end_and_splits_endless_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text: String = (0..400_000).map(|i| format!("{i}\n")).collect();
        text.push_str(&"x".repeat(MAX_LINE_BYTES + 10));
        std::fs::write(&path, &text).unwrap();
        let lines = read_whole(&path);
        assert_eq!(lines.len(), 400_002);
        assert_eq!(lines[399_999].1, b"399999");
        assert_eq!(lines[400_000].1.len(), MAX_LINE_BYTES);
        assert_eq!(lines[400_001].1.len(), 10);
    }

    #[test]
    fn a_task_read_sends_stderr_then_stdout_from_their_last_lines_and_keeps_the_stamp_beside() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = |ns| shoal_api::log_time::format_stamp(ns);
        std::fs::write(
            dir.path().join("stdout.log"),
            format!("{} o1\n{} o2\n{} o3\n", stamp(1), stamp(2), stamp(3)),
        )
        .unwrap();
        std::fs::write(dir.path().join("stderr.log"), format!("{} e1\n", stamp(5))).unwrap();
        let reading = Reading {
            follow: false,
            tail: Some(2),
            since_unix_nano: 2,
        };
        let mut reader = TaskLogReader::new(
            dir.path().to_path_buf(),
            "t1".into(),
            "web.1".into(),
            reading,
        );
        let mut lines = Vec::new();
        loop {
            let (got, done) = reader.read();
            lines.extend(got);
            if done {
                break;
            }
        }
        let shown: Vec<(String, String, i64)> = lines
            .iter()
            .map(|l| {
                (
                    l.stream.clone(),
                    String::from_utf8(l.line.clone()).unwrap(),
                    l.time_unix_nano,
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("stderr".into(), "e1".into(), 5),
                ("stdout".into(), "o2".into(), 2),
                ("stdout".into(), "o3".into(), 3),
            ]
        );
        assert!(lines
            .iter()
            .all(|l| l.task_name == "web.1" && l.task_id == "t1"));
    }

    #[test]
    fn a_read_asked_again_takes_each_stream_up_after_what_was_shown_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = |ns| shoal_api::log_time::format_stamp(ns);
        // Three stdout lines read together share a stamp; stderr is older.
        std::fs::write(
            dir.path().join("stdout.log"),
            format!(
                "{} a\n{} b\n{} c\n{} d\n",
                stamp(5),
                stamp(5),
                stamp(5),
                stamp(6)
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("stderr.log"), format!("{} e\n", stamp(1))).unwrap();
        let reading = Reading {
            follow: false,
            tail: None,
            since_unix_nano: 0,
        };
        // Shown before: two of the lines stamped 5 on stdout, nothing of
        // stderr.
        let resume = std::collections::HashMap::from([(
            "stdout".to_string(),
            Resume {
                after: 5,
                shown_at_after: 2,
            },
        )]);
        let mut reader = TaskLogReader::resuming(
            dir.path().to_path_buf(),
            "t1".into(),
            "web.1".into(),
            reading,
            resume,
        );
        let mut shown = Vec::new();
        loop {
            let (lines, done) = reader.read();
            shown.extend(
                lines
                    .into_iter()
                    .map(|l| String::from_utf8(l.line).unwrap()),
            );
            if done {
                break;
            }
        }
        assert_eq!(shown, vec!["e", "c", "d"]);
    }

    #[test]
    fn a_followed_read_takes_what_was_written_since_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout.log");
        std::fs::write(&out, "a\n").unwrap();
        let reading = Reading {
            follow: true,
            tail: None,
            since_unix_nano: 0,
        };
        let mut reader = TaskLogReader::new(
            dir.path().to_path_buf(),
            "t1".into(),
            "web.1".into(),
            reading,
        );
        let (first, done) = reader.read();
        assert!(!done);
        assert_eq!(first.len(), 1);
        assert!(reader.read().0.is_empty());
        std::fs::write(&out, "a\nb\npartial").unwrap();
        let next: Vec<Vec<u8>> = reader.read().0.into_iter().map(|l| l.line).collect();
        assert_eq!(
            next,
            vec![b"b".to_vec()],
            "a partial line waits for its end"
        );
    }

    #[test]
    fn each_line_carries_its_stamp_beside_it_and_pieces_of_a_long_line_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = shoal_api::log_time::format_stamp(1_000);
        let second = shoal_api::log_time::format_stamp(2_000);
        // Longer than one read: it comes out in pieces.
        let long = "y".repeat(MAX_READ_BYTES as usize + 5);
        std::fs::write(
            &path,
            format!("{first} a\nunstamped\n{second} {long}\n{second} tail"),
        )
        .unwrap();
        let lines = read_whole(&path);
        assert!(lines.len() > 4, "the long line came in pieces");
        let (head, rest) = lines.split_at(2);
        assert_eq!(head, [(1_000, b"a".to_vec()), (0, b"unstamped".to_vec())]);
        let (last, pieces) = rest.split_last().unwrap();
        assert_eq!(last, &(2_000, b"tail".to_vec()));
        assert!(pieces.iter().all(|(t, _)| *t == 2_000));
        let text: Vec<u8> = pieces.iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(
            text,
            long.as_bytes(),
            "the stamp is taken off the first piece only"
        );
    }
}
