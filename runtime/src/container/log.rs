//! A container's output log, `<dir>/log`: one JSON object per line, as docker's json-file
//! driver writes them — `{"stream":"stdout","time":"…","log":"text\n"}` — so `logs` can give
//! stdout back on stdout and stderr on stderr. Output is logged line by line; a line longer
//! than [`MAX_PARTIAL`] is cut into several records (docker's "partial" messages).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// `--log-opt max-size=…,max-file=…`: the log is rotated once it would grow past `max_size`
/// bytes, keeping `max_files` files in all (`log`, `log.1`, … the oldest highest), as
/// docker's json-file driver rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

/// The log file, shared by the streams that write to it.
pub struct LogFile {
    path: PathBuf,
    rotation: Option<Rotation>,
    /// The current file and how many bytes it holds.
    file: Mutex<(File, u64)>,
}

impl LogFile {
    /// Opens (appending to) the log at `path`, rotated as `rotation` says.
    pub fn open(path: &Path, rotation: Option<Rotation>) -> io::Result<Arc<LogFile>> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Arc::new(LogFile { path: path.to_path_buf(), rotation, file: Mutex::new((file, size)) }))
    }

    fn append(&self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let record = Record { stream, time: Utc::now(), log: String::from_utf8_lossy(bytes).into_owned() };
        let mut line = serde_json::to_vec(&record).expect("a record serializes");
        line.push(b'\n');
        let mut current = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.rotation {
            if current.1 > 0 && current.1 + line.len() as u64 > r.max_size {
                *current = (self.rotate(r)?, 0);
            }
        }
        current.0.write_all(&line)?;
        current.1 += line.len() as u64;
        Ok(())
    }

    /// Moves each file one number up (the oldest goes) and starts an empty current one.
    fn rotate(&self, r: Rotation) -> io::Result<File> {
        let kept = r.max_files.saturating_sub(1);
        if kept == 0 {
            return File::create(&self.path);
        }
        for n in (1..kept).rev() {
            match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        std::fs::OpenOptions::new().create(true).append(true).open(&self.path)
    }
}

/// The `n`th file rotated out of the log at `path` (`log.1` the newest).
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
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

/// Reads the log at `path` (after the files rotated out of it, oldest first), giving each
/// record to `out`: all of them, or with `tail` the last so many. With `follow`, keeps reading
/// new records while `follow()` says the container runs (through rotations too), and returns
/// once it has stopped and everything it wrote has been read.
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
    // The current file's last `tail` records, and before them as many as the rotated files
    // hold of the rest, oldest first.
    let in_current = match tail {
        Some(n) => {
            let (start, found) = tail_start(&file, n)?;
            file.seek(SeekFrom::Start(start))?;
            n - found
        }
        None => usize::MAX,
    };
    if in_current > 0 {
        let mut older: VecDeque<Record> = VecDeque::new();
        for n in (1..=rotated_count(path)).rev() {
            let Ok(rotated_file) = File::open(rotated(path, n)) else { continue };
            for line in BufReader::new(rotated_file).lines() {
                if let Ok(record) = serde_json::from_str::<Record>(&line?) {
                    // Without a tail each record goes out as read; with one, only the last
                    // `in_current` are kept.
                    if tail.is_none() {
                        out(&record)?;
                        continue;
                    }
                    older.push_back(record);
                    if older.len() > in_current {
                        older.pop_front();
                    }
                }
            }
        }
        for record in &older {
            out(record)?;
        }
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
        // Rotated away (and read to its end above): on with the file written after it.
        if follow.is_some() && !same_file(reader.get_ref(), path) {
            if let Some(next) = next_file(reader.get_ref(), path) {
                reader = BufReader::new(next);
                continue;
            }
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// How many files have been rotated out of the log at `path`.
fn rotated_count(path: &Path) -> u32 {
    (1..).take_while(|&n| rotated(path, n).exists()).count() as u32
}

/// The file written after `file`, which was rotated out of the log at `path`: the one a
/// number below it, or the current one. If it went altogether, every file left is newer:
/// the oldest of them.
fn next_file(file: &File, path: &Path) -> Option<File> {
    let count = rotated_count(path);
    let position = (1..=count).find(|&n| same_file(file, &rotated(path, n)));
    let next = match position {
        Some(1) => path.to_path_buf(),
        Some(n) => rotated(path, n - 1),
        None if count > 0 => rotated(path, count),
        None => path.to_path_buf(),
    };
    File::open(next).ok()
}

/// Whether `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => true,
    }
}

/// Where the last `n` whole records of the log start, found from its end (a record still
/// being written, without its newline yet, is not one of them), and how many there are (fewer
/// than `n` in a shorter log, which then starts at 0).
fn tail_start(file: &File, n: usize) -> io::Result<(u64, usize)> {
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
                return Ok((start + i as u64 + 1, n));
            }
            newlines += 1;
        }
        end = start;
    }
    Ok((0, newlines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logged_per_stream_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogFile::open(&path, None).unwrap();
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
    fn a_rotated_log_keeps_its_last_files_and_reads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let rotation = Rotation { max_size: 4096, max_files: 3 };
        let log = LogFile::open(&path, Some(rotation)).unwrap();
        let mut out = StreamLog::new(log, Stream::Stdout);
        for i in 0..1000 {
            out.feed(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(out);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for name in ["log", "log.1", "log.2"] {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 4096, "{name}");
        }
        let lines = |tail| {
            let mut seen = Vec::new();
            read(&path, tail, None, &mut |r| {
                seen.push(r.log.trim_end().trim_start_matches("line ").parse::<u32>().unwrap());
                Ok(())
            })
            .unwrap();
            seen
        };
        // Everything kept, oldest first and without a gap, up to the last line.
        let all = lines(None);
        assert_eq!(all.last(), Some(&999));
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
        assert!(all.len() > 100 && all.len() < 1000, "{}", all.len());
        // A tail longer than the current file reaches into the rotated ones.
        let tail: Vec<u32> = lines(Some(all.len() - 10));
        assert_eq!(tail, all[10..]);
        // One file: rotation starts it over.
        let one = dir.path().join("one");
        let log = LogFile::open(&one, Some(Rotation { max_size: 100, max_files: 1 })).unwrap();
        let mut out = StreamLog::new(log, Stream::Stdout);
        for i in 0..10 {
            out.feed(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(out);
        assert!(!dir.path().join("one.1").exists());
        assert!(std::fs::metadata(&one).unwrap().len() <= 100);
    }

    #[test]
    fn following_a_log_reads_on_through_its_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        // Files enough that none goes before the reader is done with it.
        let log = LogFile::open(&path, Some(Rotation { max_size: 2048, max_files: 30 })).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut seen = Vec::new();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut out = StreamLog::new(log, Stream::Stdout);
                for i in 0..400 {
                    out.feed(format!("line {i}\n").as_bytes()).unwrap();
                    if i % 40 == 0 {
                        std::thread::sleep(Duration::from_millis(60));
                    }
                }
                drop(out);
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let running = || !done.load(std::sync::atomic::Ordering::SeqCst);
            read(&path, Some(0), Some(&running), &mut |r| {
                seen.push(r.log.trim_end().trim_start_matches("line ").parse::<u32>().unwrap());
                Ok(())
            })
            .unwrap();
        });
        // From where it began to the end, without a gap or a record twice, through files
        // rotated while it read.
        assert_eq!(seen.last(), Some(&399));
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
        assert!(path.with_file_name("log.5").exists());
    }

    #[test]
    fn tail_gives_the_last_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogFile::open(&path, None).unwrap();
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
