//! `skiff run` (this process supervises the container; `-d` hands it to a background one) and
//! the hidden `skiff supervise ID` that background supervisors run. Also the helpers the other
//! container verbs share.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use skiff::container::{
    exit_code, supervise, Attach, ContainerError, Containers, LazyRootfs, PullMode, RootfsProvider,
    RunOptions, State, Status, Supervision, UnpackedRootfs, Userns,
};
use skiff::image::StoredImage;
use skiff::mount::ProfileMode;
use skiff::sandbox::{CapabilityOptions, Network, Resources, TmpfsMount, Volume};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Run in the background and print the container's id.
    #[arg(short, long)]
    detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Assign a name to the container.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass skiff's own).
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind-mount a host path (HOST:CONTAINER[:ro]).
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volumes: Vec<Volume>,
    /// Mount a tmpfs (PATH[:OPTIONS]).
    #[arg(long)]
    tmpfs: Vec<TmpfsMount>,
    /// A mount, docker's way: type=bind|volume|tmpfs,source=…,target=…[,readonly]
    /// [,tmpfs-size=…][,tmpfs-mode=…]; repeatable.
    #[arg(long = "mount", value_parser = parse_mount, value_name = "type=…,source=…,target=…")]
    mounts: Vec<Mount>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Container host name.
    #[arg(long)]
    hostname: Option<String>,
    /// Network: none (own namespace with lo), host, or container:NAME (that running
    /// container's namespace).
    #[arg(long, default_value = "none", value_parser = parse_network)]
    network: NetworkMode,
    /// Publish a container port on the host: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp] (host port
    /// left out: any free one, see `skiff port`); repeatable.
    #[arg(short = 'p', long = "publish", value_name = "[IP:][HOST_PORT:]PORT")]
    publish: Vec<skiff::container::ports::PortMapping>,
    /// Publish every TCP port the image exposes, each on a free host port.
    #[arg(short = 'P', long)]
    publish_all: bool,
    /// Expose a port (PORT[/tcp]) as the image's EXPOSE does, for -P; repeatable.
    #[arg(long, value_name = "PORT")]
    expose: Vec<String>,
    /// Mount the volumes of another container too (NAME[:ro|:rw]); repeatable.
    #[arg(long = "volumes-from", value_name = "CONTAINER[:ro|:rw]")]
    volumes_from: Vec<String>,
    /// Write the container's id to this file (which must not exist).
    #[arg(long, value_name = "FILE")]
    cidfile: Option<PathBuf>,
    /// Add a capability to docker's default set (NET_ADMIN or CAP_NET_ADMIN; ALL for every
    /// one); repeatable.
    #[arg(long = "cap-add", value_parser = check_capability)]
    cap_add: Vec<String>,
    /// Drop a capability from the set (ALL for every one); repeatable.
    #[arg(long = "cap-drop", value_parser = check_capability)]
    cap_drop: Vec<String>,
    /// All capabilities, no seccomp filter, no masked paths.
    #[arg(long)]
    privileged: bool,
    #[command(flatten)]
    resources: ResourceFlags,
    /// Run a minimal init as PID 1 that forwards signals and reaps zombies.
    #[arg(long)]
    init: bool,
    /// Signal `stop` sends first (default: the image's, else SIGTERM).
    #[arg(long)]
    stop_signal: Option<String>,
    /// How the image's files are fetched: lazy (mount at once, fetch bytes when first read)
    /// or full (download and unpack every layer first, as docker does).
    #[arg(long, default_value = "lazy")]
    pull_mode: PullMode,
    /// User namespace: host (none of its own) or auto (65536 ids of its own, from a host
    /// range no other container uses). Needs --pull-mode lazy.
    #[arg(long, value_parser = ["host", "auto"])]
    userns: Option<String>,
    /// A user namespace with this uid mapping (CONTAINER:HOST:SIZE, repeatable).
    #[arg(long, value_parser = skiff_fs::IdRange::parse)]
    uidmap: Vec<skiff_fs::IdRange>,
    /// Its gid mapping (CONTAINER:HOST:SIZE, repeatable; default: the uid mapping).
    #[arg(long, value_parser = skiff_fs::IdRange::parse)]
    gidmap: Vec<skiff_fs::IdRange>,
    /// Save the files this run reads as the image's prefetch profile; later lazy runs
    /// prefetch them in the background from the start.
    #[arg(long)]
    record_profile: bool,
    /// Do not prefetch the image's profile (the one recorded here, else the one in its
    /// manifest): fetch only what is read.
    #[arg(long)]
    no_prefetch: bool,
    /// A resource limit, NAME=SOFT[:HARD] (nofile=1024:2048; -1 for none); repeatable.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<skiff::sandbox::Rlimit>,
    /// A line for /etc/hosts, NAME:IP; repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<skiff::sandbox::ExtraHost>,
    /// The size of /dev/shm (K, M, G suffixes; default 64M).
    #[arg(long, value_parser = parse_shm_size)]
    shm_size: Option<u64>,
    /// A DNS server for /etc/resolv.conf, instead of the host's; repeatable.
    #[arg(long = "dns", value_name = "IP")]
    dns: Vec<std::net::IpAddr>,
    /// A DNS search domain, instead of the host's; repeatable.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// A resolver option (ndots:2), instead of the host's; repeatable.
    #[arg(long = "dns-option", value_name = "OPTION")]
    dns_options: Vec<String>,
    /// A kernel parameter of the container's namespaces, KEY=VALUE (net.ipv4.ip_forward=1);
    /// repeatable.
    #[arg(long = "sysctl", value_name = "KEY=VALUE", value_parser = parse_sysctl)]
    sysctls: Vec<(String, String)>,
    /// A host device for the container, /HOST[:/CONTAINER][:PERMISSIONS] (of rwm, all by
    /// default); repeatable.
    #[arg(long = "device", value_name = "/HOST[:/CONTAINER][:rwm]")]
    devices: Vec<skiff::sandbox::Device>,
    /// A security option: seccomp=unconfined (no seccomp filter), no-new-privileges[=true|false]
    /// (off by default, as docker has it), apparmor=unconfined and label=disable (which skiff
    /// applies none of); repeatable.
    #[arg(long = "security-opt", value_name = "OPTION")]
    security_opts: Vec<String>,
    /// A log option, as docker's json-file takes them: max-size=SIZE (rotate past it),
    /// max-file=N (files kept, with max-size; 1 by default); repeatable.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    log_opts: Vec<String>,
    /// `host`: share the host's PID namespace (its processes show, and are seen).
    #[arg(long, value_parser = parse_host_namespace, value_name = "host")]
    pid: Option<bool>,
    /// `host`: share the host's IPC namespace (its shared memory and message queues).
    #[arg(long, value_parser = parse_host_namespace, value_name = "host")]
    ipc: Option<bool>,
    /// `host`: share the host's UTS namespace (its host name).
    #[arg(long, value_parser = parse_host_namespace, value_name = "host")]
    uts: Option<bool>,
    /// Another supplementary group for the container's processes (name or gid); repeatable.
    #[arg(long = "group-add", value_name = "GROUP")]
    group_add: Vec<String>,
    /// How readily the kernel's OOM killer picks the container's processes, -1000 (never) to
    /// 1000 (first).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    oom_score_adj: Option<i32>,
    /// Seconds `stop` waits for it before SIGKILL, unless given its own -t (default 10).
    #[arg(long, value_name = "SECONDS")]
    stop_timeout: Option<u64>,
    /// A label, KEY=VALUE (or KEY, empty); repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A file of labels, a KEY=VALUE line each (`#` comments), before the -l ones; repeatable.
    #[arg(long = "label-file", value_name = "FILE")]
    label_files: Vec<std::path::PathBuf>,
    /// Start it again when it ends: no, on-failure[:N], always, unless-stopped (until
    /// `stop` or `kill`).
    #[arg(long, default_value = "no")]
    restart: skiff::container::RestartPolicy,
    /// A shell command that tells the container is healthy (exit 0), run in it every
    /// --health-interval; over the image's HEALTHCHECK.
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between health checks (300ms, 30s, 1m30s).
    #[arg(long, value_parser = parse_duration)]
    health_interval: Option<Duration>,
    /// Time a health check may take before it counts as failed.
    #[arg(long, value_parser = parse_duration)]
    health_timeout: Option<Duration>,
    /// Failures in a row that make the container unhealthy.
    #[arg(long)]
    health_retries: Option<u32>,
    /// Time after the start during which failures do not count.
    #[arg(long, value_parser = parse_duration)]
    health_start_period: Option<Duration>,
    /// No health check, whatever the image says.
    #[arg(long)]
    no_healthcheck: bool,
    /// When to pull the image: missing (when not stored), always, or never.
    #[arg(long, default_value = "missing", value_parser = ["missing", "always", "never"])]
    pull: String,
    /// Platform to pull (os/arch[/variant]), for a multi-platform image.
    #[arg(long)]
    platform: Option<skiff::manifest::Platform>,
    /// The image, pulled first when it is not stored.
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `--network`: a namespace of the container's own or the host's, or another container's.
#[derive(Clone, Debug)]
enum NetworkMode {
    Own(Network),
    Container(String),
}

fn parse_network(s: &str) -> Result<NetworkMode, String> {
    match s {
        "none" => Ok(NetworkMode::Own(Network::None)),
        "host" => Ok(NetworkMode::Own(Network::Host)),
        "bridge" | "default" => Err(format!(
            "network {s:?}: skiff has no bridge network; a container has its own loopback (none, \
             the default, with -p to publish ports), the host's (host) or another's (container:NAME)"
        )),
        _ => match s.strip_prefix("container:") {
            Some(name) if !name.is_empty() => Ok(NetworkMode::Container(name.to_string())),
            _ => Err(format!("unsupported network {s:?} (expected none, host or container:NAME)")),
        },
    }
}

/// `--security-opt`s, as docker takes them (`:` or `=` between a key and its value).
fn security(options: &[String]) -> anyhow::Result<skiff::container::Security> {
    let mut security = skiff::container::Security::default();
    for option in options {
        let (key, value) = option.split_once(['=', ':']).unwrap_or((option.as_str(), ""));
        match (key, value) {
            ("seccomp", "unconfined") => security.seccomp = false,
            ("no-new-privileges", "" | "true") => security.no_new_privileges = true,
            ("no-new-privileges", "false") => security.no_new_privileges = false,
            ("apparmor", "unconfined") | ("label", "disable") => {}
            _ => bail!(
                "--security-opt {option}: unsupported (expected seccomp=unconfined, no-new-privileges[=false], apparmor=unconfined or label=disable)"
            ),
        }
    }
    Ok(security)
}

/// `--log-opt`s: max-size and max-file, as docker's json-file driver takes them.
fn log_rotation(options: &[String]) -> anyhow::Result<Option<skiff::container::log::Rotation>> {
    let (mut max_size, mut max_files) = (None, None);
    for option in options {
        match option.split_once('=') {
            Some(("max-size", size)) => {
                max_size = Some(skiff::size::parse_size(size).with_context(|| format!("--log-opt {option}"))?)
            }
            Some(("max-file", n)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => max_files = Some(n),
                _ => bail!("--log-opt {option}: expected a number of files, at least 1"),
            },
            _ => bail!("--log-opt {option}: unsupported (expected max-size=SIZE or max-file=N)"),
        }
    }
    match (max_size, max_files) {
        (Some(0), _) => bail!("--log-opt max-size must be above 0"),
        (Some(max_size), files) => {
            Ok(Some(skiff::container::log::Rotation { max_size, max_files: files.unwrap_or(1) }))
        }
        (None, Some(_)) => bail!("--log-opt max-file needs max-size"),
        (None, None) => Ok(None),
    }
}

/// `--pid`, `--ipc`, `--uts`: `host` (a namespace of its own is the default).
fn parse_host_namespace(s: &str) -> Result<bool, String> {
    match s {
        "host" => Ok(true),
        "" | "private" => Ok(false),
        other => Err(format!("unsupported mode {other:?} (expected host)")),
    }
}

fn parse_sysctl(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("invalid sysctl {s:?}: expected KEY=VALUE")),
    }
}

/// The resource limits `run`, `create` and `update` take, as docker's.
#[derive(clap::Args, Clone, Debug)]
pub struct ResourceFlags {
    /// Memory limit (K, M, G suffixes; at least 6M; 0 for none).
    #[arg(short, long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// Memory and swap together (K, M, G; -1 for swap without limit; default: no swap).
    #[arg(long, value_parser = parse_memory_swap, allow_negative_numbers = true)]
    memory_swap: Option<i64>,
    /// Memory the container is left under pressure, a soft limit (K, M, G; 0 for none).
    #[arg(long, value_parser = skiff::size::parse_size)]
    memory_reservation: Option<u64>,
    /// Number of CPUs (fractional, from 0.01 to the CPUs available; 0 for no limit).
    #[arg(long, value_parser = parse_cpus, allow_negative_numbers = true)]
    cpus: Option<f64>,
    /// CPU weight against the other containers (1024 by default; 0 for the default).
    #[arg(short = 'c', long)]
    cpu_shares: Option<u64>,
    /// Most processes the container may have (0 or -1 for no limit).
    #[arg(long, allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    /// CPUs the container may run on (`0-3`, `0,2`; "" for all).
    #[arg(long, value_parser = |s: &str| online_ids(s, "--cpuset-cpus", "/sys/devices/system/cpu/online"))]
    cpuset_cpus: Option<String>,
    /// Memory nodes the container may allocate from (`0`, `0-1`; "" for all).
    #[arg(long, value_parser = |s: &str| online_ids(s, "--cpuset-mems", "/sys/devices/system/node/online"))]
    cpuset_mems: Option<String>,
}

impl ResourceFlags {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.memory.is_some()
            || self.memory_swap.is_some()
            || self.memory_reservation.is_some()
            || self.cpus.is_some()
            || self.cpu_shares.is_some()
            || self.pids_limit.is_some()
            || self.cpuset_cpus.is_some()
            || self.cpuset_mems.is_some()
    }

    /// `base` with the limits given changed (0, and -1 for processes, lift one), checked as
    /// docker checks them.
    pub fn apply(&self, mut base: Resources) -> anyhow::Result<Resources> {
        if let Some(m) = self.memory {
            base.memory = Some(m).filter(|&m| m > 0);
        }
        if let Some(s) = self.memory_swap {
            base.memory_swap = Some(s).filter(|&s| s != 0);
        }
        if let Some(r) = self.memory_reservation {
            base.memory_reservation = Some(r).filter(|&r| r > 0);
        }
        if let Some(c) = self.cpus {
            base.cpus = Some(c).filter(|&c| c > 0.0);
        }
        if let Some(s) = self.cpu_shares {
            base.cpu_shares = Some(s).filter(|&s| s > 0);
        }
        if let Some(p) = self.pids_limit {
            base.pids = Some(p).filter(|&p| p > 0).map(|p| p as u64);
        }
        for (given, set) in
            [(&self.cpuset_cpus, &mut base.cpuset_cpus), (&self.cpuset_mems, &mut base.cpuset_mems)]
        {
            if let Some(list) = given {
                *set = Some(list.clone()).filter(|l| !l.is_empty());
            }
        }
        match (base.memory, base.memory_swap) {
            (None, Some(_)) => bail!("--memory-swap needs --memory: it is memory and swap together"),
            (Some(m), Some(total)) if total >= 0 && (total as u64) < m => {
                bail!("--memory-swap ({total}) must be at least --memory ({m}), or -1 for swap without limit")
            }
            _ => {}
        }
        if let (Some(m), Some(r)) = (base.memory, base.memory_reservation) {
            if r > m {
                bail!("--memory-reservation ({r}) must be at most --memory ({m})");
            }
        }
        Ok(base)
    }
}

/// `--memory-swap`: a size, or -1 for no limit.
fn parse_memory_swap(s: &str) -> Result<i64, String> {
    if s == "-1" {
        return Ok(-1);
    }
    let bytes = skiff::size::parse_size(s).map_err(|e| e.to_string())?;
    i64::try_from(bytes).map_err(|_| format!("--memory-swap {s}: too large"))
}

/// The least memory limit docker accepts.
const MIN_MEMORY: u64 = 6 << 20;

/// `--memory`: a size of at least [`MIN_MEMORY`], or 0 for none.
/// One `--mount`: a bind or named volume, or a tmpfs.
#[derive(Clone, Debug)]
pub enum Mount {
    Volume(Volume),
    Tmpfs(TmpfsMount),
}

/// docker's `--mount` syntax: comma-separated KEY=VALUE (a bare `readonly` too).
fn parse_mount(s: &str) -> Result<Mount, String> {
    let (mut kind, mut source, mut target, mut read_only) = ("volume", None, None, false);
    let mut tmpfs_options = vec!["noexec".to_string(), "nosuid".into(), "nodev".into()];
    for field in s.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key {
            "type" if ["bind", "volume", "tmpfs"].contains(&value) => kind = value,
            "type" => return Err(format!("type={value}: only bind, volume and tmpfs mounts are supported")),
            "source" | "src" => source = Some(value),
            "target" | "destination" | "dst" => target = Some(value),
            "readonly" | "ro" => read_only = matches!(value, "" | "true" | "1"),
            "tmpfs-size" => tmpfs_options.push(format!("size={value}")),
            "tmpfs-mode" => tmpfs_options.push(format!("mode={value}")),
            "bind-propagation" | "consistency" => {}
            other => return Err(format!("unknown field {other:?}")),
        }
    }
    let target = target.filter(|t| t.starts_with('/')).ok_or("target=/PATH is needed")?;
    let volume = |host: &str| -> Result<Mount, String> {
        let text = format!("{host}:{target}{}", if read_only { ":ro" } else { "" });
        text.parse::<Volume>().map(Mount::Volume).map_err(|e| e.to_string())
    };
    match (kind, source) {
        ("tmpfs", None) => {
            Ok(Mount::Tmpfs(TmpfsMount { path: target.into(), options: tmpfs_options.join(",") }))
        }
        ("tmpfs", Some(_)) => Err("a tmpfs mount takes no source".to_string()),
        ("bind", Some(host)) if host.starts_with('/') => volume(host),
        ("bind", _) => Err("type=bind needs source=/HOST/PATH".to_string()),
        ("volume", Some(name)) if skiff::sandbox::is_volume_name(name) => volume(name),
        ("volume", Some(name)) => Err(format!("source={name}: not a volume name")),
        _ => {
            Err("type=volume needs source=NAME (skiff makes anonymous volumes only for the image's VOLUMEs)"
                .to_string())
        }
    }
}

/// docker's durations, above zero: `300ms`, `30s`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match skiff::size::parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: a duration above zero is needed")),
        d => Ok(d),
    }
}

/// Runs a container's health check as `skiff exec` does, in a skiff of its own.
pub struct ExecProber {
    exe: std::path::PathBuf,
    global: Vec<std::ffi::OsString>,
}

impl ExecProber {
    pub fn new(ctx: &Context) -> anyhow::Result<ExecProber> {
        Ok(ExecProber {
            exe: std::env::current_exe().context("finding the skiff binary")?,
            global: ctx.global_args(),
        })
    }
}

impl skiff::container::health::Prober for ExecProber {
    fn probe(&self, id: &str, argv: &[String], timeout: Duration) -> (i32, String) {
        use std::io::{Read, Seek};
        let Ok(mut out) = tempfile::tempfile() else { return (-1, "no temp file for the output".into()) };
        let spawned = out.try_clone().and_then(|stdout| {
            let stderr = out.try_clone()?;
            Command::new(&self.exe)
                .args(&self.global)
                .args(["exec", id, "--"])
                .args(argv)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return (-1, format!("starting the check: {e}")),
        };
        let deadline = std::time::Instant::now() + timeout;
        let code = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.code().unwrap_or(-1),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    // Past its time: ended, as docker ends it (SIGTERM, which exec passes on;
                    // SIGKILL a second later).
                    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    let grace = std::time::Instant::now() + Duration::from_secs(1);
                    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < grace {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break -1;
                }
            }
        };
        let mut output = Vec::new();
        let _ = out
            .rewind()
            .and_then(|()| out.take(skiff::container::health::MAX_OUTPUT as u64).read_to_end(&mut output));
        (code, String::from_utf8_lossy(&output).into_owned())
    }
}

/// `--shm-size`: more than nothing.
fn parse_shm_size(s: &str) -> Result<u64, String> {
    match skiff::size::parse_size(s).map_err(|e| e.to_string())? {
        0 => Err("/dev/shm needs a size above 0".to_string()),
        n => Ok(n),
    }
}

pub fn parse_memory(s: &str) -> Result<u64, String> {
    match skiff::size::parse_size(s).map_err(|e| e.to_string())? {
        m if m > 0 && m < MIN_MEMORY => Err("the least memory limit allowed is 6M".to_string()),
        m => Ok(m),
    }
}

/// `--cpuset-cpus` and `--cpuset-mems`: the kernel's list syntax (`0-3,6`), or "" for all,
/// naming only ids the `online` file lists, as docker checks them.
fn online_ids(list: &str, flag: &str, online: &str) -> Result<String, String> {
    let wanted = ids_of(list)?;
    // A machine without NUMA nodes in sysfs has node 0.
    let online = std::fs::read_to_string(online).unwrap_or_else(|_| "0".into());
    let available = ids_of(online.trim())?;
    match wanted.iter().find(|id| !available.contains(id)) {
        Some(missing) => {
            Err(format!("{flag} {list}: {missing} is not available (online: {})", online.trim()))
        }
        None => Ok(list.to_string()),
    }
}

/// The ids a list such as `0-3,6` names ("" names none).
fn ids_of(list: &str) -> Result<std::collections::BTreeSet<u32>, String> {
    let mut ids = std::collections::BTreeSet::new();
    for part in list.split(',').filter(|_| !list.is_empty()) {
        let bad = || format!("{list:?} is not a list of ids such as 0-3,6");
        let id = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (id(a)?, id(b)?),
            None => (id(part)?, id(part)?),
        };
        if first > last || last - first > 1 << 16 {
            return Err(bad());
        }
        ids.extend(first..=last);
    }
    Ok(ids)
}

/// `--cpus`: from 0.01 to the CPUs this machine has, or 0 for no limit.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let cpus: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of CPUs"))?;
    let available = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if cpus == 0.0 || (0.01..=available).contains(&cpus) {
        Ok(cpus)
    } else {
        Err(format!("the CPUs range from 0.01 to {available:.2}, as there are {available} available"))
    }
}

/// A capability name, checked before any container is created.
fn check_capability(s: &str) -> Result<String, String> {
    skiff::sandbox::parse_capability(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

impl Args {
    fn userns(&self) -> anyhow::Result<Userns> {
        let mapped = !self.uidmap.is_empty() || !self.gidmap.is_empty();
        Ok(match self.userns.as_deref() {
            Some("auto") if mapped => bail!("--userns auto and --uidmap/--gidmap exclude each other"),
            Some("host") if mapped => bail!("--userns host and --uidmap/--gidmap exclude each other"),
            Some("auto") => Userns::Auto,
            _ if mapped => {
                let uids = if self.uidmap.is_empty() { self.gidmap.clone() } else { self.uidmap.clone() };
                let gids = if self.gidmap.is_empty() { self.uidmap.clone() } else { self.gidmap.clone() };
                Userns::Map(skiff_fs::IdMap { uids, gids })
            }
            _ => Userns::Host,
        })
    }

    fn options(&self) -> anyhow::Result<RunOptions> {
        // `-v` and `--tmpfs`, and the `--mount`s of each kind after them.
        let (mut volumes, mut tmpfs) = (self.volumes.clone(), self.tmpfs.clone());
        for mount in &self.mounts {
            match mount {
                Mount::Volume(v) => volumes.push(v.clone()),
                Mount::Tmpfs(t) => tmpfs.push(t.clone()),
            }
        }
        // Checked before anything is made, with the flag named (the mount would fail later,
        // with only the errno).
        if let Some(v) = volumes.iter().find(|v| v.name().is_none() && !v.host.exists()) {
            bail!(
                "-v {}:{}: {} does not exist on the host",
                v.host.display(),
                v.container.display(),
                v.host.display()
            );
        }
        for port in &self.expose {
            let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
            if number.parse::<u16>().is_err() || !matches!(protocol, "tcp" | "udp" | "sctp") {
                bail!("--expose {port}: expected PORT[/tcp]");
            }
        }
        let (network, network_container) = match &self.network {
            NetworkMode::Own(network) => (network.clone(), None),
            NetworkMode::Container(name) => (Network::None, Some(name.clone())),
        };
        if network == Network::Host && (!self.publish.is_empty() || self.publish_all) {
            eprintln!("WARNING: published ports are discarded with the host's network");
        }
        Ok(RunOptions {
            name: self.name.clone(),
            command: self.command.clone(),
            entrypoint: self.entrypoint.clone(),
            env: self.env.clone(),
            env_files: self.env_files.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            hostname: self.hostname.clone(),
            volumes,
            tmpfs,
            read_only: self.read_only,
            network,
            network_container,
            ports: self.publish.clone(),
            publish_all: self.publish_all,
            expose: self.expose.clone(),
            capabilities: CapabilityOptions {
                add: self.cap_add.clone(),
                drop: self.cap_drop.clone(),
                privileged: self.privileged,
            },
            resources: self.resources.apply(Resources::default())?,
            init: self.init,
            tty: self.tty,
            interactive: self.interactive,
            auto_remove: self.rm,
            pull_mode: self.pull_mode,
            record_profile: self.record_profile,
            no_prefetch: self.no_prefetch,
            userns: self.userns()?,
            stop_signal: self.stop_signal.clone(),
            ulimits: self.ulimits.clone(),
            extra_hosts: self.add_hosts.clone(),
            shm_size: self.shm_size,
            dns: skiff::sandbox::Dns {
                servers: self.dns.clone(),
                search: self.dns_search.clone(),
                options: self.dns_options.clone(),
            },
            group_add: self.group_add.clone(),
            oom_score_adj: self.oom_score_adj,
            sysctls: self.sysctls.iter().cloned().collect(),
            devices: self.devices.clone(),
            log_rotation: log_rotation(&self.log_opts)?,
            security: security(&self.security_opts)?,
            host_namespaces: skiff::sandbox::HostNamespaces {
                pid: self.pid.unwrap_or(false),
                ipc: self.ipc.unwrap_or(false),
                uts: self.uts.unwrap_or(false),
            },
            stop_timeout: self.stop_timeout,
            restart: self.restart,
            health: skiff::container::HealthOptions {
                cmd: self.health_cmd.clone(),
                interval: self.health_interval,
                timeout: self.health_timeout,
                start_period: self.health_start_period,
                retries: self.health_retries.filter(|&r| r > 0),
                disabled: self.no_healthcheck,
            },
            labels: self.all_labels()?,
        })
    }
}

impl Args {
    /// The labels of the --label-files, in order, then the -l ones; a later one of a key wins.
    fn all_labels(&self) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let mut lines = Vec::new();
        for path in &self.label_files {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the label file {}", path.display()))?;
            lines.extend(skiff::container::setting_lines(&text).map(|l| l.trim_end().to_string()));
        }
        lines.extend(self.labels.iter().cloned());
        Ok(lines
            .into_iter()
            .map(|l| l.split_once('=').map_or((l.clone(), String::new()), |(k, v)| (k.into(), v.into())))
            .collect())
    }
}

#[derive(clap::Args)]
pub struct SuperviseArgs {
    id: String,
}

/// Docker's exit code for a failure of skiff itself.
pub const RUNTIME_ERROR: u8 = 125;

/// The container store, cleaned of what dead supervisors left.
pub fn containers(ctx: &Context) -> anyhow::Result<Containers> {
    Containers::open(ctx.root()).context("opening the containers directory")
}

/// Deletes those of `images` (manifests of removed containers' images) that no name and no
/// container keeps: an image whose last name `rmi -f` removed stays for its containers, and
/// goes with the last of them.
pub fn remove_unnamed_images(ctx: &Context, images: &[skiff::Digest]) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let named = store.images()?;
    if images.iter().all(|m| named.iter().any(|r| r.manifest == *m)) {
        return Ok(());
    }
    let containers = containers(ctx)?;
    store.remove_images(&[], &images_in_use(&containers.list()?))?;
    skiff::container::remove_unused_unpacked(&store, &containers)?;
    Ok(())
}

/// What the images of `containers` reach must stay in the store, named or not.
pub fn images_in_use(containers: &[State]) -> Vec<skiff::Digest> {
    containers.iter().flat_map(|c| [c.image.digest, c.image.manifest]).collect()
}

/// The container each of `inputs` names, every one found before the caller acts on any.
pub fn find_all<'a>(
    containers: &Containers,
    inputs: &'a [String],
) -> anyhow::Result<Vec<(&'a String, State)>> {
    Ok(inputs.iter().map(|input| containers.find(input).map(|s| (input, s))).collect::<Result<_, _>>()?)
}

/// Does `verb` to each container named in `inputs`, printing each name once done, as docker
/// does; the first failure stops the loop and names its container.
pub fn for_each_container(
    ctx: &Context,
    inputs: &[String],
    verb: &str,
    mut act: impl FnMut(&Containers, &State) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let containers = containers(ctx)?;
    for input in inputs {
        let state = containers.find(input)?;
        act(&containers, &state).with_context(|| format!("{verb} {input}"))?;
        println!("{input}");
    }
    Ok(())
}

/// The rootfs provider of a container's pull mode.
pub fn provider(ctx: &Context, state: &State) -> anyhow::Result<Box<dyn RootfsProvider>> {
    Ok(match state.pull_mode {
        PullMode::Full => Box::new(UnpackedRootfs::new(ctx.client()?, ctx.store()?)),
        PullMode::Lazy => {
            let profile = ProfileMode { record: state.record_profile, prefetch: !state.no_prefetch };
            let ids = state.spec.user_namespace.clone().unwrap_or_default();
            Box::new(LazyRootfs::new(ctx.client()?, ctx.store()?, ctx.cache()?, profile, ids))
        }
    })
}

/// A process exit code from a container's (0–255).
pub fn code(value: i32) -> ExitCode {
    ExitCode::from(u8::try_from(value).unwrap_or(RUNTIME_ERROR))
}

/// Prints `error` and gives docker's code for it.
pub fn failed(error: anyhow::Error) -> ExitCode {
    super::print_error(format_args!("{}", super::error_message(&error)));
    let container = error.chain().find_map(|e| e.downcast_ref::<ContainerError>());
    code(container.map_or(RUNTIME_ERROR as i32, exit_code))
}

pub fn run(ctx: &Context, args: Args) -> ExitCode {
    run_container(ctx, args).unwrap_or_else(failed)
}

fn run_container(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    // In the foreground, this process mounts a lazy container's image next.
    let mounts_here = !args.detach && args.pull_mode == PullMode::Lazy;
    let (containers, state) = create_container(ctx, &args, mounts_here)?;
    if args.detach {
        let started = start_detached(ctx, &containers, &state)?;
        if started == ExitCode::SUCCESS {
            println!("{}", state.id);
        }
        return Ok(started);
    }
    let exit = supervise_with(ctx, &containers, &state, Attach::Terminal)?;
    // docker's client returns with the code and its daemon starts the container again; here
    // a background supervisor does.
    if let Ok(ended) = containers.load(&state.id) {
        if ended.exit_code.is_some_and(|code| ended.restarts_after(code)) {
            containers.update(&state.id, |st| st.restart_count += 1)?;
            start_detached(ctx, &containers, &ended)?;
        }
    }
    Ok(exit)
}

/// `skiff create`: the container `run` would start, made and not started; its id printed.
pub fn create(ctx: &Context, args: Args) -> ExitCode {
    let created = create_container(ctx, &args, false).map(|(_, state)| {
        println!("{}", state.id);
        ExitCode::SUCCESS
    });
    created.unwrap_or_else(failed)
}

/// A new container of `args`' image (pulled first if it is not stored), not started;
/// `mounts_here` when this process mounts its image lazily next.
fn create_container(ctx: &Context, args: &Args, mounts_here: bool) -> anyhow::Result<(Containers, State)> {
    let containers = containers(ctx)?;
    // The flags are checked before anything is pulled: none of them needs the image.
    let mut options = args.options()?;
    let store = ctx.store()?;
    let platform = args.platform.clone().unwrap_or_else(skiff::manifest::Platform::host);
    let pull = skiff::image::PullOptions { platform, full: false, tocs_ahead: mounts_here };
    let record = match args.pull.as_str() {
        "always" => super::pulled(&store, &ctx.client()?, &args.image, &pull)?,
        "never" => store
            .find_image(&args.image)
            .with_context(|| format!("{} is not stored, and --pull never forbids pulling it", args.image))?,
        _ => match store.find_image(&args.image) {
            Ok(record) => record,
            Err(_) => super::pulled(&store, &ctx.client()?, &args.image, &pull)?,
        },
    };
    let image = StoredImage::load(&store, &record).with_context(|| format!("loading {}", record.name))?;
    for from in &args.volumes_from {
        add_volumes_from(&containers, from, &mut options.volumes)?;
    }
    // Made before the container, so that a file already there stops the create, as under docker.
    let cidfile = match &args.cidfile {
        Some(path) => Some((
            std::fs::OpenOptions::new().write(true).create_new(true).open(path).with_context(|| {
                format!(
                    "--cidfile {}: cannot make it (a container whose id it holds may still run)",
                    path.display()
                )
            })?,
            path,
        )),
        None => None,
    };
    let state = match containers.create(&image, &options).context("creating the container") {
        Ok(state) => state,
        Err(e) => {
            if let Some((_, path)) = cidfile {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let Some((mut file, path)) = cidfile {
        use std::io::Write as _;
        file.write_all(state.id.as_bytes())
            .with_context(|| format!("writing --cidfile {}", path.display()))?;
    }
    Ok((containers, state))
}

/// `--volumes-from NAME[:ro|:rw]`: the volumes of container NAME, read-only or not as given
/// (else as they are there), but for those at a path `volumes` has already.
fn add_volumes_from(containers: &Containers, from: &str, volumes: &mut Vec<Volume>) -> anyhow::Result<()> {
    let (name, mode) = match from.rsplit_once(':') {
        Some((name, mode @ ("ro" | "rw"))) => (name, Some(mode == "ro")),
        _ => (from, None),
    };
    let other = containers.find(name).with_context(|| format!("--volumes-from {from}"))?;
    for volume in &other.spec.volumes {
        if volumes.iter().any(|v| v.container == volume.container) {
            continue;
        }
        if !volume.host.exists() {
            bail!(
                "--volumes-from {from}: its volume {} is made when {name} first starts; start it once first",
                volume.container.display()
            );
        }
        let read_only = mode.unwrap_or(volume.read_only);
        volumes.push(Volume { read_only, ..volume.clone() });
    }
    Ok(())
}

/// Supervises `state`'s container to its end in this process; its exit code.
pub fn supervise_with(
    ctx: &Context,
    containers: &Containers,
    state: &State,
    attach: Attach,
) -> anyhow::Result<ExitCode> {
    let image = StoredImage::load(&ctx.store()?, &state.image)
        .with_context(|| format!("loading {}", state.image.name))?;
    let provider = provider(ctx, state)?;
    let prober = ExecProber::new(ctx)?;
    let supervision = Supervision {
        containers,
        id: &state.id,
        image: &image,
        provider: &*provider,
        attach,
        prober: Some(&prober),
    };
    let status = supervise(supervision)?;
    if state.auto_remove {
        // Removed with its container (--rm), as `rm` removes it; the run itself went well.
        if let Err(e) = remove_unnamed_images(ctx, &[state.image.manifest]) {
            tracing::warn!(image = %state.image.name, error = %format!("{e:#}"), "removing the unnamed image");
        }
    }
    Ok(code(status.code()))
}

/// Starts a background supervisor for `state` and returns once the container runs (0) or
/// failed to start (its error and docker's code).
pub fn start_detached(ctx: &Context, containers: &Containers, state: &State) -> anyhow::Result<ExitCode> {
    // Forget the last run's end, so only this run's shows below.
    containers.update(&state.id, |st| {
        st.status = Status::Created;
        st.error = None;
    })?;
    let mut child = spawn_supervisor(ctx, containers, &state.id)?;
    loop {
        let current = match containers.load(&state.id) {
            Ok(st) => st,
            // Removed by --rm: it ran and is gone already.
            Err(ContainerError::NotFound(_)) => break,
            Err(e) => return Err(e.into()),
        };
        match (current.status, &current.error) {
            (Status::Exited, Some(error)) => {
                super::print_error(format_args!("{error}"));
                return Ok(code(current.exit_code.unwrap_or(RUNTIME_ERROR as i32)));
            }
            (Status::Running | Status::Exited, _) => break,
            (Status::Created, _) => {}
        }
        if let Some(exit) = child.try_wait()? {
            if containers.load(&state.id).is_ok_and(|st| st.status == Status::Created) {
                let log = containers.paths(&state.id).dir.join("supervisor.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "the supervisor of {} exited ({exit}) before the container started: {}",
                    state.id,
                    text.trim()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ExitCode::SUCCESS)
}

/// `skiff supervise ID` in the background: its own session, output to `supervisor.log`.
fn spawn_supervisor(ctx: &Context, containers: &Containers, id: &str) -> anyhow::Result<Child> {
    let log_path = containers.paths(id).dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    Command::new(std::env::current_exe().context("finding the skiff binary")?)
        .args(ctx.global_args())
        .arg("supervise")
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the container's supervisor")
}

pub fn supervise_detached(ctx: &Context, args: SuperviseArgs) -> ExitCode {
    // Out of the caller's session: its terminal's hangup must not reach this process.
    let _ = nix::unistd::setsid();
    let supervised = || -> anyhow::Result<ExitCode> {
        let containers = containers(ctx)?;
        let state = containers.load(&args.id)?;
        supervise_with(ctx, &containers, &state, Attach::Detached)
    };
    supervised().unwrap_or_else(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_node_lists_read_as_the_kernel_writes_them() {
        let ids = |s: &str| ids_of(s).map(|set| set.into_iter().collect::<Vec<_>>());
        assert_eq!(ids("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(ids("1"), Ok(vec![1]));
        assert_eq!(ids(""), Ok(vec![]));
        for bad in ["3-1", "a", "1,", ",1", "1-", "-1", "0-4294967295"] {
            assert!(ids(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn networks_parse_and_a_bridge_is_refused_with_what_there_is() {
        assert!(matches!(parse_network("none"), Ok(NetworkMode::Own(Network::None))));
        assert!(matches!(parse_network("host"), Ok(NetworkMode::Own(Network::Host))));
        assert!(matches!(parse_network("container:db"), Ok(NetworkMode::Container(n)) if n == "db"));
        assert!(parse_network("bridge").unwrap_err().contains("skiff has no bridge network"));
        assert!(parse_network("container:").unwrap_err().contains("unsupported network"));
        assert!(parse_network("mynet").unwrap_err().contains("unsupported network \"mynet\""));
    }

    #[test]
    fn durations_parse_as_docker_writes_them() {
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["30", "soon", "0s", "", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
