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

/// Reads the log at `path`, giving each record to `out`: all of them, or with `tail` the
/// last so many. With `follow`, keeps reading new records while `follow()` says the
/// container runs, and returns once it has stopped and everything it wrote has been read.
pub fn read(
    path: &Path,
    tail: Option<usize>,
    follow: Option<&dyn Fn() -> bool>,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> io::Result<()> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow.is_none() => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(n) = tail {
        let start = tail_start(&file, n)?;
        file.seek(SeekFrom::Start(start))?;
    }
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

/// Where the last `n` whole records of the log start, found from its end (a record still
/// being written, without its newline yet, is not one of them).
fn tail_start(file: &File, n: usize) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut end = file.metadata()?.len();
    // Newlines seen from the end: the first ends the last whole record; each one after it
    // has one more whole record behind it.
    let mut newlines = 0;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        for (i, _) in chunk.iter().enumerate().rev().filter(|(_, b)| **b == b'\n') {
            if newlines == n {
                return Ok(start + i as u64 + 1);
            }
            newlines += 1;
        }
        end = start;
    }
    Ok(0)
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
        read(&path, None, None, &mut |r| {
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

    #[test]
    fn tail_gives_the_last_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogFile::open(&path).unwrap();
        let mut out = StreamLog::new(log, Stream::Stdout);
        // Enough records that the search from the end crosses its 64 KiB blocks.
        for i in 0..5000 {
            out.feed(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(out);
        // A record half written: not a whole one yet.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"stream\":").unwrap();
        let tail = |n| {
            let mut seen = Vec::new();
            read(&path, Some(n), None, &mut |r| {
                seen.push(r.log.trim_end().to_string());
                Ok(())
            })
            .unwrap();
            seen
        };
        assert_eq!(tail(2), ["line 4998", "line 4999"]);
        assert_eq!(tail(0), Vec::<String>::new());
        assert_eq!(tail(1200).first().map(String::as_str), Some("line 3800"));
        assert_eq!(tail(1200).len(), 1200);
        assert_eq!(tail(9999).len(), 5000);
    }
}
