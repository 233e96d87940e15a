//! A container's stdio as the supervisor wires it: pipes (or, with `-t`, a pty) between the
//! container and the supervisor, whose threads copy the output to the log and, when a user is
//! attached, to the user's terminal — and the user's stdin (`-i`) to the container.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::fcntl::OFlag;

use super::log::{LogFile, Stream, StreamLog};
use crate::sandbox::pty::{self, Pty, RawMode};
use crate::sandbox::Stdio;

/// Where a container's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wiring {
    /// Relay to and from this process's own stdio (else only to the log).
    pub attached: bool,
    pub tty: bool,
    /// Give the container a stdin: this process's (attached) or one held open (detached).
    pub interactive: bool,
}

/// The supervisor's ends of a container's stdio, live until [`Wired::finish`].
pub struct Wired {
    relays: Vec<JoinHandle<()>>,
    /// Descriptors that keep the container's stdin open while nobody writes to it.
    _held: Vec<OwnedFd>,
    raw: Option<RawMode>,
    winch: Option<signal_hook::iterator::Handle>,
}

fn host_stdin() -> io::Result<OwnedFd> {
    io::stdin().as_fd().try_clone_to_owned()
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(File::open("/dev/null")?.into())
}

/// Makes the container's [`Stdio`] and starts the threads that serve the other ends; `log`
/// gets every line of output.
pub fn wire(wiring: Wiring, log: Option<Arc<LogFile>>) -> io::Result<(Stdio, Wired)> {
    let mut wired = Wired { relays: Vec::new(), _held: Vec::new(), raw: None, winch: None };
    if wiring.tty {
        let pty = Pty::open().map_err(io::Error::other)?;
        let stdio = Stdio {
            stdin: Some(pty.slave.try_clone()?),
            stdout: Some(pty.slave.try_clone()?),
            stderr: Some(pty.slave),
        };
        let master = pty.master;
        if wiring.attached {
            let stdin = host_stdin()?;
            pty::copy_window_size(stdin.as_fd(), master.as_fd());
            wired.winch = Some(forward_window_size(stdin.try_clone()?, master.try_clone()?)?);
            wired.raw = RawMode::enable(stdin.as_fd()).map_err(io::Error::other)?;
            if wiring.interactive {
                spawn_input(stdin, master.try_clone()?);
            }
        }
        wired.relays.push(relay(master, wiring.attached.then_some(Stream::Stdout), log, Stream::Stdout));
        return Ok((stdio, wired));
    }
    let stdin = match (wiring.interactive, wiring.attached) {
        (false, _) => dev_null()?,
        (true, true) => host_stdin()?,
        (true, false) => {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            wired._held.push(write);
            read
        }
    };
    let mut ends = Vec::new();
    for stream in [Stream::Stdout, Stream::Stderr] {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        wired.relays.push(relay(read, wiring.attached.then_some(stream), log.clone(), stream));
        ends.push(write);
    }
    let stderr = ends.pop();
    let stdout = ends.pop();
    Ok((Stdio { stdin: Some(stdin), stdout, stderr }, wired))
}

impl Wired {
    /// Waits until the container's output has been copied out (its processes have all gone)
    /// and gives the user's terminal its mode back.
    pub fn finish(self) {
        for relay in self.relays {
            let _ = relay.join();
        }
        if let Some(handle) = self.winch {
            handle.close();
        }
        drop(self.raw);
    }
}

/// Copies `from` to the log (as `stream`) and to this process's `echo` stream, until EOF (or
/// EIO: a pty whose every slave is closed), or until the reader of `echo` is gone.
fn relay(from: OwnedFd, echo: Option<Stream>, log: Option<Arc<LogFile>>, stream: Stream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = File::from(from);
        let mut log = log.map(|l| StreamLog::new(l, stream));
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let bytes = &buf[..n];
            let echoed = match echo {
                Some(Stream::Stdout) => write_out(&mut io::stdout().lock(), bytes),
                Some(Stream::Stderr) => write_out(&mut io::stderr().lock(), bytes),
                None => Ok(()),
            };
            match echoed {
                // Whoever read this output is gone (`skiff run … | head`): so is the reading
                // end of the container's, as in a pipeline on the host. Its next write fails
                // (EPIPE, or SIGPIPE) instead of going on, unread, into the log without end.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => tracing::debug!(error = %e, "writing the container's output to the terminal"),
                Ok(()) => {}
            }
            if let Some(log) = &mut log {
                if let Err(e) = log.feed(bytes) {
                    tracing::warn!(error = %e, "writing the container's log");
                }
            }
        }
    })
}

fn write_out(out: &mut dyn Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

/// Copies the user's stdin to the container's pty until either side closes. Not joined: a
/// read of a terminal cannot be interrupted, and the process ends soon after its container.
fn spawn_input(stdin: OwnedFd, to: OwnedFd) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut File::from(stdin), &mut File::from(to));
    });
}

/// Copies the terminal's window size to the pty on every SIGWINCH.
fn forward_window_size(terminal: OwnedFd, pty: OwnedFd) -> io::Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            pty::copy_window_size(terminal.as_fd(), pty.as_fd());
        }
    });
    Ok(handle)
}
