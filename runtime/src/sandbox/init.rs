//! The container's init: what runs inside the new namespaces, from the mount setup to
//! `execve`, in order — hostname, `lo`, rootfs and pivot, working directory, rlimits, bounding
//! set, `no_new_privs`, seccomp, user and capabilities, exec — plus the optional reaper that
//! stays PID 1 (`--init`). [`InitPlan`] is everything it needs, prepared by the supervisor
//! before forking, so the forked process only makes syscalls.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use caps::CapsHashSet;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::capabilities::{self, CapabilityError};
use super::cgroups::Layout;
use super::etc::EtcFiles;
use super::namespaces::{self, NamespaceError};
use super::rlimits::{self, RlimitError};
use super::rootfs::{self, RootfsError, RootfsPlan};
use super::seccomp::{Filters, SeccompError};
use super::spec::{ContainerSpec, Network};
use super::user::ExecUser;

/// Everything the container's init needs, resolved by the supervisor.
pub struct InitPlan {
    pub spec: ContainerSpec,
    pub user: ExecUser,
    pub capabilities: CapsHashSet,
    /// `None` with `--privileged`.
    pub seccomp: Option<Filters>,
    pub cgroups: Layout,
    pub command: CommandLine,
    pub mode: InitMode,
}

/// Whether the process starts a new container or joins a running one (`exec`).
pub enum InitMode {
    /// New namespaces and a new mount tree; `console` is the pty slave bound on `/dev/console`.
    Create { etc: EtcFiles, console: Option<PathBuf> },
    /// The namespaces of a running container, in the order they are joined.
    Join { namespaces: Vec<(CloneFlags, OwnedFd)> },
}

/// The command as execve takes it.
pub struct CommandLine {
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// Where `argv[0]` may be, in `PATH` order (the container's `PATH`, not the host's).
    pub program_candidates: Vec<CString>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Rlimit(#[from] RlimitError),
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("{step}: {source}")]
    Syscall { step: &'static str, source: Errno },
    #[error("exec {program}: {source}")]
    Exec { program: String, source: Errno },
}

/// Tags of the record an init writes to the error pipe when it fails.
pub const REPORT_SETUP: u8 = 0;
pub const REPORT_EXEC: u8 = 1;

/// Sets the container up and execs its command. On failure, reports the error on
/// `error_pipe` (the process's only copy, so the supervisor sees EOF exactly when the command
/// has been exec'd) and exits 127.
pub fn run(plan: &InitPlan, error_pipe: OwnedFd) -> ! {
    let prepared = match &plan.mode {
        InitMode::Create { etc, console } => setup(plan, etc, console.as_deref()),
        InitMode::Join { .. } => join_setup(plan),
    };
    if let Err(error) = prepared {
        report(&error_pipe, &error);
        exit_now(127)
    }
    if plan.spec.init {
        reaper(plan, error_pipe)
    }
    report(&error_pipe, &exec(plan));
    exit_now(127)
}

/// Writes `error` to the supervisor: a tag, the errno for exec failures, the message.
pub fn report(error_pipe: &OwnedFd, error: &InitError) {
    let (tag, errno) = match error {
        InitError::Exec { source, .. } => (REPORT_EXEC, *source as i32),
        _ => (REPORT_SETUP, 0),
    };
    let mut record = vec![tag];
    record.extend_from_slice(&errno.to_ne_bytes());
    record.extend_from_slice(error.to_string().as_bytes());
    let _ = std::fs::File::from(error_pipe.try_clone().expect("dup of the error pipe")).write_all(&record);
}

fn setup(plan: &InitPlan, etc: &EtcFiles, console: Option<&std::path::Path>) -> Result<(), InitError> {
    let sys = |step| move |source| InitError::Syscall { step, source };
    let spec = &plan.spec;
    nix::sys::stat::umask(Mode::empty());
    nix::unistd::setsid().map_err(sys("setsid"))?;
    if spec.tty {
        super::pty::make_controlling(std::io::stdin().as_fd()).map_err(sys("ioctl(TIOCSCTTY)"))?;
    }
    // The host's own name stays the host's.
    if !spec.host_namespaces.uts {
        namespaces::set_hostname(&spec.hostname)?;
    }
    if spec.network == Network::None {
        namespaces::loopback_up()?;
    }
    rootfs::setup(&RootfsPlan {
        rootfs: &spec.rootfs,
        etc,
        console,
        volumes: &spec.volumes,
        tmpfs: &spec.tmpfs,
        cgroups: &plan.cgroups,
        privileged: spec.capabilities.privileged,
        read_only: spec.read_only_rootfs,
        cwd: &spec.cwd,
        user_namespace: spec.user_namespace.is_some(),
        host_network: spec.network == Network::Host,
        shm_size: spec.shm_size,
        sysctls: &spec.sysctls,
        devices: &spec.devices,
    })?;
    nix::unistd::chdir(&spec.cwd).map_err(sys("chdir to the working directory"))?;
    restrict(plan)
}

/// A process joining a running container (`exec`): it is already in the container's
/// namespaces, so its root is the container's; only the working directory and the
/// privileges remain to set.
fn join_setup(plan: &InitPlan) -> Result<(), InitError> {
    let sys = |step| move |source| InitError::Syscall { step, source };
    let spec = &plan.spec;
    if spec.tty {
        nix::unistd::setsid().map_err(sys("setsid"))?;
        super::pty::make_controlling(std::io::stdin().as_fd()).map_err(sys("ioctl(TIOCSCTTY)"))?;
    }
    nix::unistd::chdir(&spec.cwd).map_err(sys("chdir to the working directory"))?;
    restrict(plan)
}

/// rlimits, OOM score, bounding set, `no_new_privs`, seccomp, user and capabilities, in that
/// order.
fn restrict(plan: &InitPlan) -> Result<(), InitError> {
    let sys = |step| move |source| InitError::Syscall { step, source };
    let spec = &plan.spec;
    rlimits::apply(&spec.rlimits)?;
    // While every capability is held: lowering it takes CAP_SYS_RESOURCE.
    if let Some(adj) = spec.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| InitError::Syscall {
            step: "writing /proc/self/oom_score_adj (lowering it takes CAP_SYS_RESOURCE)",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    }
    capabilities::drop_bounding(&plan.capabilities)?;
    if spec.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    }
    // Installed while CAP_SYS_ADMIN is still held, so it works without no_new_privs too; the
    // syscalls left to make (setuid, capset, execve) are all allowed by it.
    if let Some(filters) = &plan.seccomp {
        filters.install()?;
    }
    capabilities::switch_user(&plan.user, &plan.capabilities)?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    Ok(())
}

/// `execve` of the first candidate that exists, like `execvpe` but on the container's `PATH`.
fn exec(plan: &InitPlan) -> InitError {
    let mut error = Errno::ENOENT;
    let command = &plan.command;
    for candidate in &command.program_candidates {
        match nix::unistd::execve(candidate, &command.argv, &command.envp) {
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {}
            Err(e) => error = e,
        }
    }
    InitError::Exec { program: plan.spec.args[0].clone(), source: error }
}

/// PID 1 with `--init`: runs the command as its child, forwards every signal it gets to it,
/// reaps every orphan, and exits with the command's status (128+N if killed by signal N).
fn reaper(plan: &InitPlan, error_pipe: OwnedFd) -> ! {
    let fail = |e: InitError| -> ! {
        report(&error_pipe, &e);
        exit_now(127)
    };
    let sys = |step| move |source| InitError::Syscall { step, source };
    let mut all = SigSet::all();
    // Not blockable, and rejected by sigwait on some libcs.
    all.remove(Signal::SIGKILL);
    all.remove(Signal::SIGSTOP);
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None) {
        fail(sys("sigprocmask")(e));
    }
    // SAFETY: the init is single-threaded (it is a fork of a fork), so the child may run
    // arbitrary code.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    let child = match forked {
        Err(e) => fail(sys("fork of the command")(e)),
        Ok(ForkResult::Child) => {
            if let Err(e) =
                nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            {
                fail(sys("sigprocmask")(e));
            }
            fail(exec(plan))
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    // The command holds its own copy until it execs.
    drop(error_pipe);
    loop {
        let Ok(signal) = all.wait() else { continue };
        if signal != Signal::SIGCHLD {
            let _ = kill(child, signal);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => exit_now(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => exit_now(128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The command line as the supervisor prepares it: argv, envp with docker's defaults, and the
/// candidate paths of the program.
pub fn command_line(spec: &ContainerSpec, user: &ExecUser) -> Result<CommandLine, NulError> {
    let cstring = |s: &str| CString::new(s).map_err(|_| NulError { value: s.to_string() });
    let mut env = spec.env.clone();
    let has =
        |env: &[String], key: &str| env.iter().any(|e| e.split_once('=').is_some_and(|(k, _)| k == key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={}", super::spec::DEFAULT_PATH));
    }
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    let path = env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(super::spec::DEFAULT_PATH);
    let program = &spec.args[0];
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        path.split(':').filter(|d| d.starts_with('/')).map(|d| PathBuf::from(d).join(program)).collect()
    };
    let argv = spec.args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    let envp = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    let program_candidates =
        candidates.iter().map(|c| cstring(&c.to_string_lossy())).collect::<Result<_, _>>()?;
    Ok(CommandLine { argv, envp, program_candidates })
}

/// An argument or environment entry with a NUL byte, which execve cannot pass.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} contains a NUL byte")]
pub struct NulError {
    pub value: String,
}

/// `_exit(2)`: ends a forked process without running the parent's atexit handlers or flushing
/// its copy of the parent's stdio buffers.
#[allow(unsafe_code)]
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}
