//! A container's output log, `<dir>/log`: one JSON object per line, as docker's json-file
//! driver writes them — `{"stream":"stdout","time":"…","log":"text\n"}` — so `logs` can give
//! stdout back on stdout and stderr on stderr. Output is logged line by line; a line longer
//! than [`MAX_PARTIAL`] is cut into several records (docker's "partial" messages).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest record written before its line ends.
pub const MAX_PARTIAL: usize = 16 << 10;
/// How often `logs -f` looks for more.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub stream: Stream,
    pub time: DateTime<Utc>,
    pub log: String,
}

/// The log file, shared by the streams that write to it.
pub struct LogFile {
    file: Mutex<File>,
}

impl LogFile {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<LogFile>> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Arc::new(LogFile { file: Mutex::new(file) }))
    }

    fn append(&self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let record = Record { stream, time: Utc::now(), log: String::from_utf8_lossy(bytes).into_owned() };
        let mut line = serde_json::to_vec(&record).expect("a record serializes");
        line.push(b'\n');
        self.file.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line)
    }
}

/// One stream's writer: cuts what it is fed into lines.
pub struct StreamLog {
    log: Arc<LogFile>,
    stream: Stream,
    pending: Vec<u8>,
}

impl StreamLog {
    pub fn new(log: Arc<LogFile>, stream: Stream) -> StreamLog {
        StreamLog { log, stream, pending: Vec::new() }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..=end]);
            self.log.append(self.stream, &self.pending)?;
            self.pending.clear();
            bytes = &bytes[end + 1..];
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= MAX_PARTIAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Logs what is left of an unfinished line.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.log.append(self.stream, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Reads the log at `path`, giving each record to `out`. With `follow`, keeps reading new
/// records while `follow()` says the container runs, and returns once it has stopped and
/// everything it wrote has been read.
pub fn read(
    path: &Path,
    follow: Option<&dyn Fn() -> bool>,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow.is_none() => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        // Asked before reading, so nothing written before the container stopped is missed.
        let running = follow.is_some_and(|f| f());
        loop {
            let start = reader.stream_position()?;
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A record being written: read it whole next time.
                reader.seek(SeekFrom::Start(start))?;
                break;
            }
            if let Ok(record) = serde_json::from_str::<Record>(&line) {
                out(&record)?;
            }
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logged_per_stream_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogFile::open(&path).unwrap();
        let mut out = StreamLog::new(log.clone(), Stream::Stdout);
        let mut err = StreamLog::new(log, Stream::Stderr);
        out.feed(b"one\ntw").unwrap();
        err.feed(b"oops\n").unwrap();
        out.feed(b"o\nthree").unwrap();
        drop((out, err));
        let mut seen = Vec::new();
        read(&path, None, &mut |r| {
            seen.push((r.stream, r.log.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (Stream::Stdout, "one\n".to_string()),
                (Stream::Stderr, "oops\n".to_string()),
                (Stream::Stdout, "two\n".to_string()),
                (Stream::Stdout, "three".to_string()),
            ]
        );
    }
}
