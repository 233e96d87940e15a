//! `BlobSource`: random access to the bytes of one blob, wherever they live.
//!
//! Implementations only need `size` and `read_at`; exact reads and multi-range reads have
//! defaults built on them. The registry client's range reader and [`FileSource`] implement it.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading bytes {start}..{end} of {blob}")]
    Read {
        blob: String,
        start: u64,
        end: u64,
        #[source]
        source: BoxError,
    },
    #[error("bytes {start}..{end} are outside {blob}, which has {size} bytes")]
    OutOfRange { blob: String, start: u64, end: u64, size: u64 },
    #[error("{blob} ended at byte {at}, before the {size} bytes it claims")]
    Truncated { blob: String, at: u64, size: u64 },
}

/// The shortest of the waits noted (for an answer to begin): how far a server is. Shared by
/// the threads whose requests note them.
#[derive(Debug)]
pub struct ShortestWait {
    /// In nanoseconds; `u64::MAX` before the first.
    nanos: AtomicU64,
}

impl Default for ShortestWait {
    fn default() -> ShortestWait {
        ShortestWait { nanos: AtomicU64::new(u64::MAX) }
    }
}

impl ShortestWait {
    pub fn note(&self, wait: Duration) {
        self.nanos.fetch_min(wait.as_nanos().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// `None` before the first wait noted.
    pub fn get(&self) -> Option<Duration> {
        let nanos = self.nanos.load(Ordering::Relaxed);
        (nanos != u64::MAX).then(|| Duration::from_nanos(nanos))
    }
}

/// Random-access reads of one immutable blob.
pub trait BlobSource: Send + Sync {
    /// What this blob is, for errors and logs: its digest and where it is read from.
    fn name(&self) -> String;

    /// The blob's size in bytes.
    fn size(&self) -> u64;

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 only at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError>;

    /// Fills `buf` from `offset`, or fails; a range past the end is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let end = offset + buf.len() as u64;
        if end > self.size() {
            return Err(SourceError::OutOfRange { blob: self.name(), start: offset, end, size: self.size() });
        }
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(SourceError::Truncated {
                    blob: self.name(),
                    at: offset + done as u64,
                    size: self.size(),
                });
            }
            done += n;
        }
        Ok(())
    }

    /// The bytes `start..end` as a stream, so that a caller can use the first bytes of a large
    /// range before the last have arrived. Sources that can stream override it; the default
    /// reads the whole range first. A stream that ends early fails with `UnexpectedEof`.
    fn read_streamed(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        self.read_exact_at(start, &mut buf)?;
        Ok(Box::new(std::io::Cursor::new(buf)))
    }

    /// The shortest time any request of this source (or of others to the same server, as
    /// far as it knows) has waited for its answer to begin: how far the server is. `None`
    /// when not known, or when the bytes are local.
    fn delay(&self) -> Option<Duration> {
        None
    }

    /// Fills several ranges. Sources that can fetch many ranges in one round trip override it.
    fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> Result<(), SourceError> {
        for (offset, buf) in ranges.iter_mut() {
            self.read_exact_at(*offset, buf)?;
        }
        Ok(())
    }
}

/// A blob in a local file.
pub struct FileSource {
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> std::io::Result<FileSource> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource { path: path.to_path_buf(), file, size })
    }
}

impl BlobSource for FileSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        self.file.read_at(buf, offset).map_err(|e| SourceError::Read {
            blob: self.name(),
            start: offset,
            end: offset + buf.len() as u64,
            source: e.into(),
        })
    }
}

/// Sources for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use super::{BlobSource, SourceError};

    /// A blob in memory that logs the ranges read from it.
    pub(crate) struct LoggedBlob {
        pub blob: Vec<u8>,
        reads: Mutex<Vec<(u64, u64)>>,
    }

    impl LoggedBlob {
        pub fn new(blob: Vec<u8>) -> LoggedBlob {
            LoggedBlob { blob, reads: Mutex::default() }
        }

        /// The ranges read since the last call.
        pub fn take_reads(&self) -> Vec<(u64, u64)> {
            std::mem::take(&mut *self.reads.lock().unwrap())
        }
    }

    impl BlobSource for LoggedBlob {
        fn name(&self) -> String {
            "logged blob".into()
        }

        fn size(&self) -> u64 {
            self.blob.len() as u64
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
            let start = (offset as usize).min(self.blob.len());
            let n = buf.len().min(self.blob.len() - start);
            self.reads.lock().unwrap().push((offset, offset + n as u64));
            buf[..n].copy_from_slice(&self.blob[start..start + n]);
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_reads_exact_ranges_and_rejects_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").unwrap();
        let src = FileSource::open(&path).unwrap();
        assert_eq!(src.size(), 10);

        let mut a = [0u8; 3];
        let mut b = [0u8; 2];
        src.read_ranges(&mut [(2, &mut a[..]), (8, &mut b[..])]).unwrap();
        assert_eq!(&a, b"234");
        assert_eq!(&b, b"89");

        let mut c = [0u8; 4];
        let err = src.read_exact_at(8, &mut c).unwrap_err();
        assert!(matches!(err, SourceError::OutOfRange { start: 8, end: 12, size: 10, .. }));
    }
}
