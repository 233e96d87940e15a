//! Where chunk bytes live on disk: `<dir>/sha256/<2 hex>/<64 hex>`, each file written under
//! `<dir>/tmp/` and renamed into place, so a chunk path only ever names a complete file.
//!
//! The store knows nothing of pins, budgets or flights (`state` does). It takes an exclusive
//! lock on `<dir>/lock` for its life, because byte accounting and temp-file cleanup assume a
//! single process owns the directory.
//!
//! A chunk file whose bytes this store wrote or hashed carries a mark (the extended attribute
//! `user.skiff.verified`): the boot it happened in and the file's mtime then. Later processes
//! of the same boot trust a file whose mark matches instead of hashing it again. Chunk files
//! are not fsynced, and only losing the page cache (a crash, so a new boot) can tear one
//! without touching its mtime; any write through the filesystem changes the mtime. Where
//! extended attributes are not supported, every process hashes each chunk at its first use.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use xattr::FileExt as _;

use super::CacheError;
use crate::{Digest, Sha256Writer};

/// The extended attribute marking a chunk file as verified: `<boot id> <mtime in ns>`.
const VERIFIED_XATTR: &str = "user.skiff.verified";

/// The chunk files of one cache directory.
pub(super) struct ChunkStore {
    dir: PathBuf,
    chunks: PathBuf,
    tmp: PathBuf,
    /// This boot's id; none where the kernel does not tell it (nothing is then marked).
    boot: Option<String>,
    /// Held open for the store's life: closing it releases the directory lock.
    _lock: File,
    next_temp: AtomicU64,
}

/// A chunk file found on disk at open.
pub(super) struct Found {
    pub(super) digest: Digest,
    pub(super) len: u64,
    pub(super) modified: SystemTime,
}

/// A chunk written to a temporary file; deleted on drop unless installed.
pub(super) struct TempChunk {
    path: PathBuf,
    file: Option<File>,
}

impl Drop for TempChunk {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Best effort: a leftover temp file is removed at the next open anyway.
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`, locks it, deletes temp files left by a
    /// crashed process and lists the chunk files already there.
    pub(super) fn open(dir: &Path) -> Result<(ChunkStore, Vec<Found>), CacheError> {
        let chunks = dir.join("sha256");
        let tmp = dir.join("tmp");
        for path in [dir, &chunks, &tmp] {
            fs::create_dir_all(path).map_err(|source| CacheError::Setup { path: path.into(), source })?;
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| CacheError::Setup { path: lock_path.clone(), source })?;
        // Several processes (one per running container) share a cache directory: chunk files
        // are content-addressed and appear by rename, so they never conflict. Only the first
        // process in may remove temp files, which then cannot be another's fill in progress.
        let alone = match lock.try_lock_exclusive() {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(source) => return Err(CacheError::Setup { path: lock_path, source }),
        };
        let store = ChunkStore {
            dir: dir.into(),
            chunks,
            tmp,
            boot: boot_id(),
            _lock: lock,
            next_temp: AtomicU64::new(0),
        };
        if alone {
            store.remove_temp_files()?;
        }
        fs2::FileExt::lock_shared(&store._lock)
            .map_err(|source| CacheError::Setup { path: lock_path, source })?;
        let found = store.scan()?;
        Ok((store, found))
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn chunk_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.chunks.join(&hex[..2]).join(hex)
    }

    /// Writes `bytes` (hashed already, by the caller) to a new temporary file, marked verified.
    /// No fsync: a chunk from an earlier boot is hashed before its first use, so bytes torn by
    /// a crash are caught there.
    pub(super) fn write_temp(&self, digest: &Digest, bytes: &[u8]) -> Result<TempChunk, CacheError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let write_err =
            |path: &Path, source| CacheError::Write { digest: *digest, path: path.into(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| write_err(&path, e))?;
        // Made before the write so that a failed write deletes the file on drop.
        let temp = TempChunk { path, file: Some(file) };
        let mut writer = temp.file.as_ref().expect("a new temp chunk has its file");
        writer.write_all(bytes).map_err(|e| write_err(&temp.path, e))?;
        self.mark_verified(writer);
        Ok(temp)
    }

    /// Renames a temp chunk into place and returns its file, open for reading.
    pub(super) fn install(&self, digest: &Digest, mut temp: TempChunk) -> Result<File, CacheError> {
        let dest = self.chunk_path(digest);
        let renamed = match fs::rename(&temp.path, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let fan_out = dest.parent().expect("a chunk path has a fan-out directory");
                match fs::create_dir(fan_out) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                    _ => fs::rename(&temp.path, &dest),
                }
            }
            other => other,
        };
        renamed.map_err(|source| CacheError::Install { digest: *digest, path: dest, source })?;
        Ok(temp.file.take().expect("a temp chunk is installed once"))
    }

    /// Opens a chunk file after a cheap check that it still has `len` bytes. `None` means the
    /// file is missing or changed and must be verified again.
    pub(super) fn open_chunk(&self, digest: &Digest, len: u64) -> Option<File> {
        self.open_sized(digest, len).map(|(file, _)| file)
    }

    /// The chunk file of `digest` and its metadata, if it has `len` bytes.
    fn open_sized(&self, digest: &Digest, len: u64) -> Option<(File, fs::Metadata)> {
        let file = File::open(self.chunk_path(digest)).ok()?;
        let meta = file.metadata().ok()?;
        (meta.len() == len).then_some((file, meta))
    }

    /// Returns a chunk file, open, if it holds exactly the `len` bytes of `digest`: hashed,
    /// unless this boot's mark on it says it was already (see the module's doc). `None` if it
    /// is missing, unreadable or wrong. A good file's mtime is set to now, which is how the
    /// next process orders chunks by last use.
    pub(super) fn verify(&self, digest: &Digest, len: u64) -> Option<File> {
        let (mut file, meta) = self.open_sized(digest, len)?;
        if !self.marked_verified(&file, &meta) {
            let mut hasher = Sha256Writer::new(io::sink());
            io::copy(&mut file, &mut hasher).ok()?;
            if hasher.written() != len || hasher.finish().0 != *digest {
                return None;
            }
        }
        self.mark_verified(&file);
        Some(file)
    }

    /// Sets the mtime of `file`, whose bytes are known good, to now (precisely, so that no
    /// later write can leave it as it was) and marks it verified in this boot. Best effort:
    /// without the mark the next process hashes the file again, and without the mtime the
    /// recovered LRU order is less accurate.
    fn mark_verified(&self, file: &File) {
        let _ = file.set_modified(SystemTime::now());
        let Some(boot) = &self.boot else { return };
        if let Ok(mtime) = file.metadata().and_then(|m| m.modified()) {
            let _ = file.set_xattr(VERIFIED_XATTR, mark(boot, mtime).as_bytes());
        }
    }

    /// Whether `file` (whose metadata is `meta`) carries this boot's mark for its mtime.
    fn marked_verified(&self, file: &File, meta: &fs::Metadata) -> bool {
        let (Some(boot), Ok(mtime)) = (&self.boot, meta.modified()) else { return false };
        matches!(file.get_xattr(VERIFIED_XATTR), Ok(Some(v)) if v == mark(boot, mtime).as_bytes())
    }

    /// Deletes a chunk file; one already gone is not an error.
    pub(super) fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.chunk_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::Remove { path, source: e }),
            _ => Ok(()),
        }
    }

    fn remove_temp_files(&self) -> Result<(), CacheError> {
        let entries =
            fs::read_dir(&self.tmp).map_err(|source| CacheError::Scan { path: self.tmp.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| CacheError::Scan { path: self.tmp.clone(), source })?;
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            removed.map_err(|source| CacheError::Remove { path, source })?;
        }
        Ok(())
    }

    /// Lists `sha256/<2 hex>/<64 hex>` files. Anything else there is not ours and is ignored.
    fn scan(&self) -> Result<Vec<Found>, CacheError> {
        let scan_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Scan { path, source }
        };
        let mut found = Vec::new();
        for fan_out in fs::read_dir(&self.chunks).map_err(scan_err(&self.chunks))? {
            let fan_out = fan_out.map_err(scan_err(&self.chunks))?;
            let fan_path = fan_out.path();
            if !fan_out.file_type().map_err(scan_err(&fan_path))?.is_dir() {
                continue;
            }
            let prefix = fan_out.file_name();
            for file in fs::read_dir(&fan_path).map_err(scan_err(&fan_path))? {
                let file = file.map_err(scan_err(&fan_path))?;
                let Some(digest) = file.file_name().to_str().and_then(|n| format!("sha256:{n}").parse().ok())
                else {
                    continue;
                };
                let digest: Digest = digest;
                if digest.hex()[..2] != *prefix {
                    continue;
                }
                let meta = file.metadata().map_err(scan_err(&file.path()))?;
                if !meta.is_file() {
                    continue;
                }
                let modified = meta.modified().map_err(scan_err(&file.path()))?;
                found.push(Found { digest, len: meta.len(), modified });
            }
        }
        Ok(found)
    }
}

/// This boot's id, as the kernel tells it.
fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|id| !id.is_empty())
}

/// A chunk file's verified mark: the boot and the file's mtime in nanoseconds.
fn mark(boot: &str, mtime: SystemTime) -> String {
    let ns = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{boot} {ns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lists_chunks_and_ignores_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"chunk");
        {
            let (store, found) = ChunkStore::open(dir.path()).unwrap();
            assert!(found.is_empty());
            let temp = store.write_temp(&digest, b"chunk").unwrap();
            store.install(&digest, temp).unwrap();
            fs::write(dir.path().join("sha256").join("README"), b"not a chunk").unwrap();
            let misplaced = Digest::of(b"elsewhere");
            fs::write(store.chunk_path(&digest).with_file_name(misplaced.hex()), b"elsewhere").unwrap();
        }
        let (store, found) = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].digest, found[0].len), (digest, 5));
        assert!(store.verify(&digest, 5).is_some());
        assert!(store.verify(&digest, 4).is_none());
    }

    #[test]
    fn a_dropped_temp_chunk_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = ChunkStore::open(dir.path()).unwrap();
        drop(store.write_temp(&Digest::of(b"x"), b"x").unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
