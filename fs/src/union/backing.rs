//! Which open files the kernel reads and writes by itself (FUSE passthrough). An upper file's
//! bytes are a host file's, so the kernel can go straight to that file instead of asking this
//! process for every read and write. The kernel wants one backing file per inode, shared by
//! all its passthrough opens, and refuses (EIO) to mix passthrough opens of an inode with
//! opens through its page cache: this table keeps both rules. It is generic over the kernel's
//! backing handle, so it is plain Rust.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Ino;

/// Why an open has no backing file.
#[derive(Debug)]
pub(crate) enum Unbacked {
    /// The host file would not open (this file only).
    File(io::Error),
    /// The kernel refused it: passthrough goes off for the mount.
    Kernel(io::Error),
}

pub(crate) struct Backings<B> {
    /// Off when the kernel offers no passthrough, or refused a backing file once.
    enabled: AtomicBool,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// Per inode: the backing its passthrough opens share, and how many they are.
    backed: HashMap<Ino, (Arc<B>, usize)>,
    /// Per inode: how many of its opens go through the page cache.
    cached: HashMap<Ino, usize>,
    /// Per open file handle: its inode, and whether it is a passthrough open.
    opens: HashMap<u64, (Ino, bool)>,
}

impl<B> Backings<B> {
    pub fn new() -> Backings<B> {
        Backings {
            enabled: AtomicBool::new(false),
            state: Mutex::new(State {
                backed: HashMap::new(),
                cached: HashMap::new(),
                opens: HashMap::new(),
            }),
        }
    }

    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Registers open `fh` of the upper file `ino`. Returns the backing to reply with, made by
    /// `make` if the inode has none yet; `None` means the open goes through the page cache
    /// (passthrough is off, making the backing failed, or the inode has cached opens).
    pub fn open_upper(
        &self,
        ino: Ino,
        fh: u64,
        make: impl FnOnce() -> Result<B, Unbacked>,
    ) -> Option<Arc<B>> {
        let mut s = self.state.lock().unwrap();
        // Opens of an inode with a backing must share it, even if passthrough is now off.
        let shared = s.backed.get_mut(&ino).map(|(backing, opens)| {
            *opens += 1;
            backing.clone()
        });
        let backing = match shared {
            Some(backing) => backing,
            None if !self.enabled.load(Ordering::Relaxed) || s.cached.contains_key(&ino) => {
                s.add_cached(ino, fh);
                return None;
            }
            None => match make() {
                Ok(b) => {
                    let backing = Arc::new(b);
                    s.backed.insert(ino, (backing.clone(), 1));
                    backing
                }
                Err(Unbacked::File(e)) => {
                    tracing::debug!(ino, error = %e, "no backing file; this open goes through skiff");
                    s.add_cached(ino, fh);
                    return None;
                }
                Err(Unbacked::Kernel(e)) => {
                    tracing::info!(ino, error = %e, "no passthrough: reads and writes of upper files go through skiff");
                    self.enable(false);
                    s.add_cached(ino, fh);
                    return None;
                }
            },
        };
        s.opens.insert(fh, (ino, true));
        Some(backing)
    }

    /// Registers open `fh` of `ino`, served through the page cache.
    pub fn open_cached(&self, ino: Ino, fh: u64) {
        self.state.lock().unwrap().add_cached(ino, fh);
    }

    /// Open `fh` is closed; the last passthrough open of an inode lets go of its backing.
    pub fn release(&self, fh: u64) {
        let mut s = self.state.lock().unwrap();
        let Some((ino, backed)) = s.opens.remove(&fh) else { return };
        let counts = if backed { s.backed.get_mut(&ino).map(|(_, n)| n) } else { s.cached.get_mut(&ino) };
        let last = counts.is_some_and(|n| {
            *n -= 1;
            *n == 0
        });
        if last {
            if backed {
                s.backed.remove(&ino);
            } else {
                s.cached.remove(&ino);
            }
        }
    }
}

impl<B> State<B> {
    fn add_cached(&mut self, ino: Ino, fh: u64) {
        *self.cached.entry(ino).or_default() += 1;
        self.opens.insert(fh, (ino, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_shares_one_backing_and_never_mixes_it_with_cached_opens() {
        let b: Backings<u32> = Backings::new();
        b.enable(true);
        let mut made = 0;
        let mut make = || {
            made += 1;
            Ok(made)
        };
        assert_eq!(b.open_upper(7, 1, &mut make).as_deref(), Some(&1));
        assert_eq!(b.open_upper(7, 2, &mut make).as_deref(), Some(&1), "the second open shares the backing");
        b.release(1);
        b.release(2);
        assert_eq!(b.open_upper(7, 3, &mut make).as_deref(), Some(&2), "released with its last open");
        b.release(3);

        // A cached open (a lower file before copy-up) keeps the inode out of passthrough.
        b.open_cached(8, 4);
        assert_eq!(b.open_upper(8, 5, &mut make), None);
        b.release(4);
        b.release(5);
        assert!(b.open_upper(8, 6, &mut make).is_some());
        b.release(6);
    }

    #[test]
    fn a_refused_backing_turns_passthrough_off_but_backed_inodes_keep_theirs() {
        let b: Backings<u32> = Backings::new();
        b.enable(true);
        assert!(b.open_upper(1, 1, || Ok(10)).is_some());
        let file_error = || Err(Unbacked::File(io::Error::from_raw_os_error(libc::ETXTBSY)));
        assert_eq!(b.open_upper(2, 2, file_error), None);
        assert!(b.open_upper(5, 5, || Ok(50)).is_some(), "one file's error leaves passthrough on");
        let refusal = || Err(Unbacked::Kernel(io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        assert_eq!(b.open_upper(6, 6, refusal), None);
        assert_eq!(b.open_upper(3, 3, || Ok(30)), None, "off after a refusal");
        assert_eq!(b.open_upper(1, 4, || Ok(11)).as_deref(), Some(&10), "inode 1 keeps its backing");
    }
}
