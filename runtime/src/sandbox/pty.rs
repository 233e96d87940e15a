//! Pseudo-terminals for `-t`: a pty pair whose slave becomes the container's stdio (and its
//! controlling terminal, and `/dev/console`), the host terminal put in raw mode while a user is
//! attached, and window sizes copied from the host terminal to the pty.
//!
//! The pair is opened on the host's devpts (as runc does with a console socket the other way
//! round), so the supervisor holds the master before the container starts.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("{step}: {source}")]
    Syscall { step: &'static str, source: Errno },
}

fn sys(step: &'static str) -> impl Fn(Errno) -> PtyError {
    move |source| PtyError::Syscall { step, source }
}

/// A pty pair: the supervisor keeps `master`, the container gets `slave` as its stdio.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a new pair (`posix_openpt`, then the peer through `TIOCGPTPEER`, so no path of
    /// the slave is ever resolved).
    #[allow(unsafe_code)]
    pub fn open() -> Result<Pty, PtyError> {
        // SAFETY: posix_openpt has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        let raw = Errno::result(raw).map_err(sys("posix_openpt"))?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: unlockpt takes a valid descriptor.
        Errno::result(unsafe { libc::unlockpt(master.as_raw_fd()) }).map_err(sys("unlockpt"))?;
        // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
        let peer = unsafe {
            libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        let peer = Errno::result(peer).map_err(sys("ioctl(TIOCGPTPEER)"))?;
        // SAFETY: `peer` is a fresh descriptor owned by nobody else.
        let slave = unsafe { OwnedFd::from_raw_fd(peer) };
        Ok(Pty { master, slave })
    }
}

/// The `/dev/pts/N` path of a pty slave descriptor (for the `/dev/console` bind mount).
pub fn slave_path(slave: BorrowedFd<'_>) -> Result<PathBuf, PtyError> {
    nix::fcntl::readlink(format!("/proc/self/fd/{}", slave.as_raw_fd()).as_str())
        .map(PathBuf::from)
        .map_err(sys("readlink of the pty slave"))
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

/// Copies the window size of the terminal `from` to the pty `to`; does nothing when `from` is
/// not a terminal.
#[allow(unsafe_code)]
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    // SAFETY: winsize is plain old data; all-zero is a valid value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into memory we own.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } == 0 {
        // SAFETY: TIOCSWINSZ reads a winsize we own.
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    }
}

/// Sets the window size of the terminal `fd`.
#[allow(unsafe_code)]
pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, columns: u16) -> Result<(), PtyError> {
    let size = libc::winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) })
        .map(drop)
        .map_err(sys("ioctl(TIOCSWINSZ)"))
}

/// Makes `fd` (the container's stdin, a pty slave) the controlling terminal of the calling
/// process, which must be a session leader without one.
#[allow(unsafe_code)]
pub fn make_controlling(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int argument by value.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// The host terminal in raw mode while attached; the saved mode comes back when dropped.
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal `fd` in raw mode; `None` when `fd` is not a terminal. The descriptor
    /// must stay open as long as the guard lives (it is one of the process's stdio).
    #[allow(unsafe_code)]
    pub fn enable(fd: BorrowedFd<'_>) -> Result<Option<RawMode>, PtyError> {
        if !is_terminal(fd) {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; tcgetattr fills it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into memory we own.
        Errno::result(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut saved) }).map_err(sys("tcgetattr"))?;
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads a termios we own.
        Errno::result(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &raw) })
            .map_err(sys("tcsetattr"))?;
        Ok(Some(RawMode { fd: fd.as_raw_fd(), saved }))
    }
}

impl Drop for RawMode {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads a termios we own; a closed descriptor only yields EBADF.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn slave_writes_reach_the_master() {
        let pty = Pty::open().unwrap();
        assert!(is_terminal(pty.slave.as_fd()));
        assert!(slave_path(pty.slave.as_fd()).unwrap().starts_with("/dev/pts"));
        std::fs::File::from(pty.slave.try_clone().unwrap()).write_all(b"hi\n").unwrap();
        // The line discipline turns \n into \r\n; a read may return it in pieces (CI saw
        // "hi" alone).
        let mut master = std::fs::File::from(pty.master);
        let mut got = Vec::new();
        while got.len() < 4 {
            let mut buf = [0u8; 16];
            let n = master.read(&mut buf).unwrap();
            assert!(n > 0, "the pty closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hi\r\n");
    }
}
