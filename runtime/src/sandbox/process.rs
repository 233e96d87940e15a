//! The supervisor side of a container's processes: fork of the intermediate (which joins the
//! cgroup, unshares the namespaces and forks the container's PID 1), the pipes between them,
//! and [`Container`], the handle that signals and waits.
//!
//! ```text
//! supervisor ──fork──▶ intermediate ──unshare(ns…), fork──▶ init (PID 1) ──execve──▶ command
//!      ◀── sync: "cgroup joined" ──┘        │                   │
//!      ◀── report: init's host pid, then its wait status        │
//!      ◀── error: setup/exec failure, or EOF when exec succeeded┘
//! ```
//! Forking through glibc's `fork` keeps the allocator usable in the children of a
//! multi-threaded supervisor; the children touch no other lock.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{kill, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::cgroups::Cgroup;
use super::init::{self, exit_now, InitPlan, REPORT_EXEC};
use super::namespaces;
use super::spec::Network;
use super::{Error, ExitStatus, Stdio};

/// A started container: its PID 1 runs the command (or the `--init` reaper).
#[derive(Debug)]
pub struct Container {
    init: Pid,
    intermediate: Pid,
    report: std::fs::File,
    cgroup: Option<Cgroup>,
    status: Option<ExitStatus>,
    /// Whether the OOM killer killed any of its processes, known once it has ended.
    oom_killed: bool,
}

fn sys(step: &'static str) -> impl Fn(Errno) -> Error {
    move |source| Error::Syscall { step, source }
}

/// Forks the container's processes; returns once the command has been exec'd.
pub fn start(plan: &InitPlan, cgroup: Cgroup, stdio: Stdio) -> Result<Container, Error> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe2"));
    let (sync_r, sync_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (error_r, error_w) = pipe()?;
    let (userns_r, userns_w) = pipe()?;
    // SAFETY: glibc's fork resets the allocator's locks in the child; the child touches no
    // other lock (no stdio, no env) and ends in execve or _exit.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() }.map_err(sys("fork"))?;
    let intermediate = match forked {
        ForkResult::Child => {
            drop((sync_w, report_r, error_r, userns_r));
            let pipes = Pipes { sync: sync_r, report: report_w, error: error_w, userns: userns_w };
            intermediate_main(plan, pipes, stdio)
        }
        ForkResult::Parent { child } => child,
    };
    drop((sync_r, report_w, error_w, userns_w, stdio));
    let mut sync_w = std::fs::File::from(sync_w);
    let mut report = std::fs::File::from(report_r);
    let abort = |e: Error| {
        let _ = kill(intermediate, Signal::SIGKILL);
        let _ = waitpid(intermediate, None);
        e
    };
    if let Err(e) = cgroup.add(intermediate) {
        return Err(abort(e.into()));
    }
    sync_w.write_all(b"g").map_err(|source| abort(Error::Pipe { source }))?;
    if let (Some(ids), init::InitMode::Create { .. }) = (&plan.spec.user_namespace, &plan.mode) {
        // The intermediate says when it has its user namespace (EOF: it failed before, and
        // says why on the error pipe); its maps are written from out here, as only a process
        // outside the namespace may.
        let mut unshared = [0u8; 1];
        if std::fs::File::from(userns_r).read_exact(&mut unshared).is_ok() {
            write_id_maps(intermediate, ids).map_err(abort)?;
            sync_w.write_all(b"m").map_err(|source| abort(Error::Pipe { source }))?;
        }
    }
    let mut pid = [0u8; 4];
    let init_pid = report.read_exact(&mut pid).ok().map(|()| Pid::from_raw(i32::from_ne_bytes(pid)));
    if init_pid.is_some() {
        if let Err(e) = cgroup.release(intermediate) {
            return Err(abort(e.into()));
        }
    }
    let mut failure = Vec::new();
    std::fs::File::from(error_r).read_to_end(&mut failure).map_err(|source| abort(Error::Pipe { source }))?;
    match (init_pid, failure.len()) {
        (Some(init), 0) => Ok(Container {
            init,
            intermediate,
            report,
            cgroup: Some(cgroup),
            status: None,
            oom_killed: false,
        }),
        (_, n) if n >= 5 => {
            let _ = waitpid(intermediate, None);
            let errno = Errno::from_raw(i32::from_ne_bytes([failure[1], failure[2], failure[3], failure[4]]));
            let message = String::from_utf8_lossy(&failure[5..]).into_owned();
            Err(if failure[0] == REPORT_EXEC {
                Error::Exec { program: plan.spec.args[0].clone(), source: errno }
            } else {
                Error::Setup { id: plan.spec.id.clone(), message }
            })
        }
        _ => {
            Err(abort(Error::Setup { id: plan.spec.id.clone(), message: "the container's init died".into() }))
        }
    }
}

struct Pipes {
    sync: OwnedFd,
    report: OwnedFd,
    error: OwnedFd,
    /// Written once the intermediate has its user namespace.
    userns: OwnedFd,
}

/// Writes `/proc/PID/uid_map` and `gid_map` of `pid`'s new user namespace.
fn write_id_maps(pid: Pid, ids: &skiff_fs::IdMap) -> Result<(), Error> {
    for (file, ranges) in [("uid_map", &ids.uids), ("gid_map", &ids.gids)] {
        let text: String = ranges.iter().map(skiff_fs::IdRange::proc_line).collect();
        let path = format!("/proc/{pid}/{file}");
        // The kernel takes a map in one write only.
        std::fs::write(&path, text.as_bytes()).map_err(|source| Error::IdMap { path, source })?;
    }
    Ok(())
}

/// The intermediate: waits until the supervisor moved it into the cgroup, enters the
/// namespaces, forks PID 1, reports its pid and later its exit status.
fn intermediate_main(plan: &InitPlan, pipes: Pipes, stdio: Stdio) -> ! {
    reset_signals();
    // The signals the supervisor forwards stay blocked here: a Ctrl-C in a terminal (or
    // `timeout`) signals the whole process group, and an intermediate killed by it would
    // take PID 1 down with it (its parent-death signal) and lose its exit status. PID 1
    // unblocks them; the supervisor relays them to it.
    let forwarded: SigSet = super::signals::FORWARDED.into_iter().collect();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Descriptors above 9 so that moving them onto 0, 1, 2 later cannot clobber each other.
    let stdio: Vec<(RawFd, OwnedFd)> = [(0, stdio.stdin), (1, stdio.stdout), (2, stdio.stderr)]
        .into_iter()
        .filter_map(|(target, fd)| Some((target, fd?)))
        .filter_map(|(target, fd)| {
            let raw = nix::fcntl::fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(10)).ok()?;
            // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing else owns.
            #[allow(unsafe_code)]
            let dup = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            Some((target, dup))
        })
        .collect();
    let mut keep: Vec<RawFd> = vec![
        0,
        1,
        2,
        pipes.sync.as_raw_fd(),
        pipes.report.as_raw_fd(),
        pipes.error.as_raw_fd(),
        pipes.userns.as_raw_fd(),
    ];
    keep.extend(stdio.iter().map(|(_, fd)| fd.as_raw_fd()));
    if let init::InitMode::Join { namespaces } = &plan.mode {
        keep.extend(namespaces.iter().map(|(_, fd)| fd.as_raw_fd()));
    }
    close_other_fds(&mut keep);

    let fail = |e: init::InitError| -> ! {
        init::report(&pipes.error, &e);
        exit_now(1)
    };
    let mut sync = std::fs::File::from(pipes.sync);
    let mut go = [0u8; 1];
    if sync.read_exact(&mut go).is_err() {
        exit_now(1);
    }
    let entered = match &plan.mode {
        init::InitMode::Create { .. } => {
            if plan.spec.user_namespace.is_some() {
                if let Err(e) = namespaces::enter(&[nix::sched::CloneFlags::CLONE_NEWUSER]) {
                    fail(e.into());
                }
                let told = std::fs::File::from(pipes.userns).write_all(b"u");
                if told.is_err() || sync.read_exact(&mut go).is_err() {
                    exit_now(1);
                }
                if let Err(e) = namespaces::become_root() {
                    fail(e.into());
                }
            } else {
                drop(pipes.userns);
            }
            namespaces::enter(&namespaces::namespaces(&plan.spec.network, plan.spec.host_namespaces))
                .and_then(|()| match &plan.spec.network {
                    Network::Join(path) => namespaces::join_network(path),
                    _ => Ok(()),
                })
        }
        init::InitMode::Join { namespaces: list } => {
            drop(pipes.userns);
            namespaces::join(list)
        }
    };
    if let Err(e) = entered {
        fail(e.into());
    }
    // SAFETY: this process is single-threaded (a fork), so the child may run arbitrary code.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked {
        Err(e) => fail(init::InitError::Syscall { step: "fork of the container's init", source: e }),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            for (target, fd) in &stdio {
                let moved = match target {
                    0 => nix::unistd::dup2_stdin(fd),
                    1 => nix::unistd::dup2_stdout(fd),
                    _ => nix::unistd::dup2_stderr(fd),
                };
                if let Err(source) = moved {
                    fail(init::InitError::Syscall { step: "dup2 of the container's stdio", source });
                }
            }
            drop((stdio, pipes.report));
            init::run(plan, pipes.error)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(stdio);
            let mut report = std::fs::File::from(pipes.report);
            let _ = report.write_all(&child.as_raw().to_ne_bytes());
            drop(pipes.error);
            let record = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break [0, code],
                    Ok(WaitStatus::Signaled(_, signal, _)) => break [1, signal as i32],
                    Err(Errno::EINTR) | Ok(_) => continue,
                    Err(_) => exit_now(1),
                }
            };
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&record[0].to_ne_bytes());
            bytes[4..].copy_from_slice(&record[1].to_ne_bytes());
            let _ = report.write_all(&bytes);
            exit_now(0)
        }
    }
}

/// Default dispositions and an empty mask: the supervisor's handlers (signal-hook's, or
/// Rust's ignored SIGPIPE) must not leak into the container.
fn reset_signals() {
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        #[allow(unsafe_code)]
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Closes every descriptor not in `keep`: a multi-threaded supervisor may have other pipes
/// open, and an intermediate holding them would delay their EOF for as long as it lives.
fn close_other_fds(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next = 0u32;
    for &fd in keep.iter() {
        let fd = fd as u32;
        if fd > next {
            // SAFETY: close_range only closes descriptors; none of those in the range is used
            // again by this process.
            #[allow(unsafe_code)]
            unsafe {
                libc::syscall(libc::SYS_close_range, next, fd - 1, 0);
            }
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        libc::syscall(libc::SYS_close_range, next, u32::MAX, 0);
    }
}

impl Container {
    /// The host pid of the container's PID 1.
    pub fn pid(&self) -> Pid {
        self.init
    }

    /// Sends `signal` to the container's PID 1 (which, like any PID 1, ignores the signals it
    /// has no handler for, except SIGKILL).
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(self.init, signal).map_err(sys("kill"))
    }

    /// The container's cgroup directories (one per v1 hierarchy); gone after [`Container::wait`].
    pub fn cgroup_dirs(&self) -> &[std::path::PathBuf] {
        self.cgroup.as_ref().map_or(&[], |c| c.dirs())
    }

    /// The descriptor that becomes readable when PID 1 has exited.
    pub fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.report.as_fd()
    }

    /// Waits for PID 1 to exit (every other container process dies with it), then removes the
    /// cgroup.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let mut record = [0u8; 8];
        let read = self.report.read_exact(&mut record);
        let _ = waitpid(self.intermediate, None);
        read.map_err(|source| Error::Pipe { source })?;
        let tag = i32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
        let value = i32::from_ne_bytes([record[4], record[5], record[6], record[7]]);
        let status = if tag == 0 {
            ExitStatus::Exited(value)
        } else {
            ExitStatus::Signaled(Signal::try_from(value).map_err(sys("decoding the exit signal"))?)
        };
        self.status = Some(status);
        if let Some(mut cgroup) = self.cgroup.take() {
            // Read before the cgroup, and its counters, go.
            self.oom_killed = cgroup.oom_kills() > 0;
            cgroup.remove()?;
        }
        Ok(status)
    }

    /// Whether the kernel's OOM killer killed any of the container's processes (docker's
    /// OOMKilled); false until [`Container::wait`] has returned.
    pub fn oom_killed(&self) -> bool {
        self.oom_killed
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = kill(self.init, Signal::SIGKILL);
            let _ = self.wait();
        }
    }
}
