//! A model server's output: its stdout and stderr lines in a bounded ring, mirrored to a file
//! the agent reads (`GET /v1/models/{name}/logs`), which outlives the worker, so the lines
//! that explain a failed load stay readable.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Lines kept per server.
pub(crate) const MAX_LINES: usize = 2000;
/// Bytes kept of one line (the rest is cut, marked with `…`).
pub(crate) const MAX_LINE_BYTES: usize = 4096;
/// How often the file is brought up to date while lines arrive.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> char {
        match self {
            Self::Stdout => 'O',
            Self::Stderr => 'E',
        }
    }

    /// `stdout` or `stderr`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<(Stream, String)>,
    dropped: u64,
    dirty: bool,
}

/// The ring of one server, shared by its reader threads and the flusher.
#[derive(Clone)]
pub(crate) struct ServerLogs {
    ring: Arc<Mutex<Ring>>,
    file: PathBuf,
}

impl ServerLogs {
    /// An empty ring mirrored to `file` (created, with its directory, at once).
    pub(crate) fn new(file: PathBuf) -> Self {
        let logs = Self {
            ring: Arc::default(),
            file,
        };
        logs.ring.lock().unwrap().dirty = true;
        logs.flush();
        let flusher = logs.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                // The last reference is this thread's: the server is gone.
                if Arc::strong_count(&flusher.ring) == 1 {
                    flusher.flush();
                    return;
                }
                flusher.flush();
            }
        });
        logs
    }

    /// Reads `source` line by line into the ring, on a thread of its own, until it closes.
    pub(crate) fn capture(&self, stream: Stream, source: impl Read + Send + 'static) {
        let logs = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => logs.push(stream, &buf),
                }
            }
        });
    }

    fn push(&self, stream: Stream, raw: &[u8]) {
        let mut text = String::from_utf8_lossy(raw).trim_end().to_string();
        if text.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let mut ring = self.ring.lock().unwrap();
        if ring.lines.len() == MAX_LINES {
            ring.lines.pop_front();
            ring.dropped += 1;
        }
        ring.lines.push_back((stream, text));
        ring.dirty = true;
    }

    /// The last `n` lines of `stream`, oldest first.
    pub(crate) fn tail(&self, stream: Stream, n: usize) -> Vec<String> {
        let ring = self.ring.lock().unwrap();
        let mut lines: Vec<String> = ring
            .lines
            .iter()
            .rev()
            .filter(|(s, _)| *s == stream)
            .take(n)
            .map(|(_, l)| l.clone())
            .collect();
        lines.reverse();
        lines
    }

    /// Writes the ring to its file now if it changed (a new file, renamed over the old one,
    /// so a reader never sees half of it).
    pub(crate) fn flush(&self) {
        let text = {
            let mut ring = self.ring.lock().unwrap();
            if !ring.dirty {
                return;
            }
            ring.dirty = false;
            let mut text = format!("# dropped {}\n", ring.dropped);
            for (stream, line) in &ring.lines {
                text.push(stream.tag());
                text.push(' ');
                text.push_str(line);
                text.push('\n');
            }
            text
        };
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.file.with_extension("log.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.file);
        }
    }
}

/// One line of a server's log, as read back from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// Where it came from.
    pub stream: Stream,
    /// The line, without its newline.
    pub text: String,
}

/// The file a server's log of model `model` is mirrored to.
pub(crate) fn log_file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.log"))
}

/// Reads a log file back: its lines and how many older ones the ring dropped. `None` when
/// the model never ran a server.
pub(crate) fn read_log(file: &Path) -> Option<(Vec<LogLine>, u64)> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut dropped = 0;
    let mut lines = vec![];
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("# dropped ") {
            dropped = n.parse().unwrap_or(0);
        } else if let Some((tag, text)) = line.split_at_checked(2) {
            let stream = match tag {
                "O " => Stream::Stdout,
                "E " => Stream::Stderr,
                _ => continue,
            };
            lines.push(LogLine {
                stream,
                text: text.to_string(),
            });
        }
    }
    Some((lines, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_and_the_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = log_file(dir.path(), "m");
        let logs = ServerLogs::new(file.clone());
        for i in 0..MAX_LINES + 5 {
            logs.push(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        logs.push(Stream::Stderr, "x".repeat(MAX_LINE_BYTES + 10).as_bytes());
        logs.push(Stream::Stderr, b"boom\n");
        logs.flush();
        let (lines, dropped) = read_log(&file).unwrap();
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(dropped, 7);
        assert_eq!(lines[0].text, "line 7");
        assert_eq!(lines.last().unwrap().text, "boom");
        assert_eq!(lines.last().unwrap().stream, Stream::Stderr);
        let long = &lines[lines.len() - 2].text;
        assert!(long.ends_with('…') && long.len() <= MAX_LINE_BYTES + 3);
        assert_eq!(logs.tail(Stream::Stderr, 1), ["boom"]);
        assert_eq!(read_log(&dir.path().join("none.log")), None);
    }
}
