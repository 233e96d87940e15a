//! Forwarding the supervisor's SIGINT and SIGTERM to the container's PID 1 while it runs
//! (docker's `--sig-proxy`). The handlers are signal-hook's self-pipes; once removed, the
//! process ignores these signals (signal-hook cannot restore the default), which suits the
//! `skiff` binary: it exits as soon as its container has.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::process::Container;
use super::{Error, ExitStatus};

/// The signals forwarded, docker's proxied set minus the ones a terminal sends only to
/// foreground jobs.
pub const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

pub struct Forwarder {
    pipes: Vec<(Signal, UnixStream, signal_hook::SigId)>,
}

impl Forwarder {
    /// Installs the handlers; signals that arrive before [`wait_forwarding`] are kept for it.
    pub fn install() -> Result<Forwarder, Error> {
        let mut pipes = Vec::new();
        for signal in FORWARDED {
            let err = |source| Error::SignalHandler { signal, source };
            let (read, write) = UnixStream::pair().map_err(err)?;
            read.set_nonblocking(true).map_err(err)?;
            let id = signal_hook::low_level::pipe::register(signal as i32, write).map_err(err)?;
            pipes.push((signal, read, id));
        }
        Ok(Forwarder { pipes })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for (_, _, id) in &self.pipes {
            signal_hook::low_level::unregister(*id);
        }
    }
}

/// Waits for `container` while relaying [`FORWARDED`] signals to its PID 1.
pub fn wait_forwarding(container: &mut Container, mut forwarder: Forwarder) -> Result<ExitStatus, Error> {
    loop {
        let mut fds = vec![PollFd::new(container.exit_fd(), PollFlags::POLLIN)];
        fds.extend(forwarder.pipes.iter().map(|(_, read, _)| PollFd::new(read.as_fd(), PollFlags::POLLIN)));
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(source) => return Err(Error::Syscall { step: "poll", source }),
            Ok(_) => {}
        }
        let exited = fds[0].any().unwrap_or(true);
        drop(fds);
        for (signal, read, _) in &mut forwarder.pipes {
            let mut drained = [0u8; 16];
            if matches!(read.read(&mut drained), Ok(n) if n > 0) {
                container.signal(*signal)?;
            }
        }
        if exited {
            drop(forwarder);
            return container.wait();
        }
    }
}
