//! A task's output on its way to its log file. The process writes into a
//! FIFO in its task directory; the agent reads it and appends what it reads
//! to the log, each line stamped with the time the agent read it
//! ([`shoal_api::log_time`]), which is what `service logs --timestamps` and
//! `--since` read back. A log past its size limit is renamed to `<log>.1`
//! (one kept) and a new one begun; the copy is the log's only writer, so
//! nothing written in between is lost.
//!
//! The process holds its end of the FIFO open for reading as well as
//! writing, so it never sees a closed pipe: while no agent reads (an agent
//! restart), its output waits in the pipe (1 MiB where the kernel allows
//! it), and a process that fills it waits too, as a container does while
//! dockerd restarts. The next agent opens the FIFO again and goes on where
//! the last one stopped; lines that waited get the time they were read.
//!
//! What can be lost: output still in the pipe when the task's last process
//! exits while no agent reads (the kernel drops a pipe's contents with its
//! last open end), and the one read in flight when the agent is killed
//! outright (an agent that stops on its own stops between a read and the
//! next, and loses nothing).

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// What one read takes from the FIFO at most.
const READ_BYTES: usize = 16 << 10;
/// The pipe's buffer: what a process may write while no agent reads.
const PIPE_BYTES: i32 = 1 << 20;

/// One stream (stdout or stderr) of a task: its FIFO and its log.
#[derive(Debug, Clone)]
pub(crate) struct LogPipe {
    pub(crate) fifo: PathBuf,
    pub(crate) log: PathBuf,
    /// A log past this many bytes is rotated.
    pub(crate) max_log_bytes: u64,
}

impl LogPipe {
    /// Makes the FIFO (replacing a stale one) and returns the end the
    /// process writes to.
    pub(crate) fn create(&self) -> std::io::Result<std::fs::File> {
        match std::fs::remove_file(&self.fifo) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        nix::unistd::mkfifo(
            &self.fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(std::io::Error::from)?;
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.fifo)?;
        // A smaller pipe only means a process waits sooner while no agent
        // reads: not worth failing the task over.
        let _ = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        Ok(writer)
    }

    /// Whether the FIFO exists (a process started by an agent before logs
    /// went through FIFOs writes to its log itself).
    pub(crate) fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.fifo).is_ok()
    }

    /// Starts copying from the FIFO into the log, until every writer of the
    /// FIFO has closed it (the task's processes are gone).
    pub(crate) fn copy(&self) -> std::io::Result<JoinHandle<()>> {
        let mut fifo = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&self.fifo)?;
        let mut log = LogWriter::open(self.log.clone(), self.max_log_bytes)?;
        Ok(tokio::spawn(async move {
            let mut buf = vec![0u8; READ_BYTES];
            loop {
                let read = match fifo.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                log.write(shoal_api::clock::now_ns(), &buf[..read]);
            }
        }))
    }
}

/// Appends a task's output to one log file, each line stamped, rotating the
/// file by size. The only writer of its file.
pub(crate) struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    max_bytes: u64,
    /// Whether the next byte starts a line (and gets a stamp).
    line_start: bool,
    warned: bool,
}

impl LogWriter {
    /// Opens (or creates) the log at `path` for appending.
    pub(crate) fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<LogWriter> {
        let file = open_log(&path)?;
        let line_start = ends_a_line(&path);
        Ok(LogWriter {
            path,
            file,
            max_bytes,
            line_start,
            warned: false,
        })
    }

    /// Appends `chunk`, read at `unix_ns`: a line that starts in it gets
    /// that stamp. A failed write drops the output rather than hold up the
    /// task, and is logged once.
    pub(crate) fn write(&mut self, unix_ns: i64, chunk: &[u8]) {
        let stamp = shoal_api::log_time::format_stamp(unix_ns);
        let mut out = Vec::with_capacity(chunk.len() + 40);
        stamp_lines(chunk, &stamp, &mut self.line_start, &mut out);
        let written = self.file.write_all(&out).and_then(|()| {
            if self.file.metadata()?.len() > self.max_bytes {
                self.rotate()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            if !self.warned {
                tracing::warn!(log = %self.path.display(), error = %e, "a task's output could not be written to its log");
                self.warned = true;
            }
        }
    }

    /// Renames the log to `<log>.1` (replacing the one kept before) and
    /// opens a new one, which starts with a stamp, even mid-line.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut kept = self.path.clone().into_os_string();
        kept.push(".1");
        std::fs::rename(&self.path, kept)?;
        self.file = open_log(&self.path)?;
        self.line_start = true;
        Ok(())
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Whether the log is empty or ends with a newline (the next byte starts a
/// line, and gets a stamp).
fn ends_a_line(log: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else {
        return true;
    };
    let mut last = [0u8; 1];
    match file.seek(SeekFrom::End(-1)) {
        Ok(_) => file.read_exact(&mut last).is_err() || last[0] == b'\n',
        Err(_) => true,
    }
}

/// Appends `chunk` to `out`, `stamp` and a space before every line that
/// starts in it.
fn stamp_lines(chunk: &[u8], stamp: &str, line_start: &mut bool, out: &mut Vec<u8>) {
    for piece in chunk.split_inclusive(|b| *b == b'\n') {
        if *line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(piece);
        *line_start = piece.last() == Some(&b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_one_stamp_however_the_reads_cut_it() {
        let mut out = Vec::new();
        let mut start = true;
        for chunk in [&b"one\ntw"[..], b"o\n", b"", b"three", b"\nfour\n"] {
            stamp_lines(chunk, "T", &mut start, &mut out);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "T one\nT two\nT three\nT four\n"
        );
        assert!(start);
    }
}
