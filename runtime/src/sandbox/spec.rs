//! What a container is asked to be: [`ContainerSpec`] and the small types it is made of, with
//! parsers for docker's flag syntax (`-v HOST:CTR[:ro]`, `--tmpfs PATH[:OPTS]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The default `PATH` when neither the image nor the caller sets one (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the launcher needs to run one container. Build it with [`ContainerSpec::new`] and
/// set the public fields; every field has a docker-like default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id: names the cgroup (`skiff/<id>`).
    pub id: String,
    /// The root filesystem: a directory (later the FUSE mount).
    pub rootfs: PathBuf,
    /// A per-container directory the launcher owns: generated `/etc/hostname`, `/etc/hosts`,
    /// `/etc/resolv.conf` live here and are bind-mounted into the container.
    pub state_dir: PathBuf,
    /// The command and its arguments; `args[0]` is looked up on the container's `PATH`.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs. `PATH`, `HOSTNAME` and `HOME` are added when missing.
    pub env: Vec<String>,
    /// Working directory inside the container; created when missing (as docker does).
    pub cwd: PathBuf,
    /// `name|uid[:group|gid]`, resolved from the rootfs's `/etc/passwd` and `/etc/group`;
    /// `None` is root.
    pub user: Option<String>,
    pub hostname: String,
    pub read_only_rootfs: bool,
    pub volumes: Vec<Volume>,
    pub tmpfs: Vec<TmpfsMount>,
    pub network: Network,
    pub capabilities: CapabilityOptions,
    pub resources: Resources,
    pub rlimits: Vec<Rlimit>,
    /// Set `no_new_privs` before exec (off by default, as docker has it).
    pub no_new_privileges: bool,
    /// The container's stdin, stdout and stderr are a pty slave (which must be given as its
    /// stdin): it becomes the controlling terminal and `/dev/console`.
    pub tty: bool,
    /// Run a minimal reaper as PID 1 that forwards signals to the command and reaps zombies.
    pub init: bool,
    /// A user namespace of its own with these id maps (`--userns`, `--uidmap`, `--gidmap`);
    /// `None` shares the host's.
    #[serde(default)]
    pub user_namespace: Option<skiff_fs::IdMap>,
    /// `--add-host`: lines added to the generated `/etc/hosts`.
    #[serde(default)]
    pub extra_hosts: Vec<ExtraHost>,
    /// `--shm-size`: the size of `/dev/shm` (docker's 64 MiB when `None`).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// `--dns`, `--dns-search`, `--dns-option`: what replaces the host's in `resolv.conf`.
    #[serde(default)]
    pub dns: Dns,
    /// `--group-add`: more supplementary groups (names in the image's `/etc/group`, or gids),
    /// for the container's processes and those `exec` runs.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `--oom-score-adj`: how readily the kernel's OOM killer picks the container's processes
    /// (-1000 to 1000; theirs and those `exec` runs).
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// `--sysctl`: kernel parameters of the container's own namespaces, set as it starts.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// `--device`: host devices the container gets, and may use as their permissions say.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// docker's default seccomp filter (`--security-opt seccomp=unconfined` turns it off).
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// `--pid host`, `--ipc host`, `--uts host`: the host's namespaces instead of its own.
    #[serde(default)]
    pub host_namespaces: HostNamespaces,
}

fn yes() -> bool {
    true
}

/// Which of the host's namespaces a container shares (`--pid/--ipc/--uts host`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNamespaces {
    pub pid: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]`: a host device node made in the container (at
/// the host's path unless told), used as `PERMISSIONS` (of `rwm`, all by default) allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub host: PathBuf,
    pub container: PathBuf,
    pub permissions: String,
}

impl std::str::FromStr for Device {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Device { value: s.to_string() };
        let is_permissions = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
        let parts: Vec<&str> = s.split(':').collect();
        let (host, container, permissions) = match parts[..] {
            [host] => (host, host, "rwm"),
            [host, p] if is_permissions(p) => (host, host, p),
            [host, container] => (host, container, "rwm"),
            [host, container, p] if is_permissions(p) => (host, container, p),
            _ => return Err(bad()),
        };
        if !host.starts_with('/') || !container.starts_with('/') {
            return Err(bad());
        }
        Ok(Device { host: host.into(), container: container.into(), permissions: permissions.to_string() })
    }
}

/// Whether `key` (`net.ipv4.ip_forward`) is a kernel parameter of a namespace a container has
/// its own of, so that setting it changes nothing outside: docker's list (IPC and network
/// parameters; network ones only in a network namespace of its own).
pub fn is_namespaced_sysctl(key: &str, own_network: bool, own_ipc: bool) -> bool {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let safe_name = !key.is_empty() && key.split('.').all(|part| !part.is_empty() && !part.contains('/'));
    safe_name
        && ((own_ipc && (IPC.contains(&key) || key.starts_with("fs.mqueue.")))
            || (own_network && key.starts_with("net.")))
}

/// The container's resolver settings; an empty list keeps the host's lines of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<std::net::IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl ContainerSpec {
    /// A spec with docker's defaults: root user, `/` as working directory, hostname = the
    /// first 12 characters of `id`, network none, docker's capability set, and the supervisor's
    /// rlimits (as docker's containers inherit dockerd's).
    pub fn new(
        id: &str,
        rootfs: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        args: Vec<String>,
    ) -> Self {
        ContainerSpec {
            id: id.to_string(),
            rootfs: rootfs.into(),
            state_dir: state_dir.into(),
            args,
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            user: None,
            hostname: id.chars().take(12).collect(),
            read_only_rootfs: false,
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            network: Network::None,
            capabilities: CapabilityOptions::default(),
            resources: Resources::default(),
            rlimits: Vec::new(),
            no_new_privileges: false,
            tty: false,
            init: false,
            user_namespace: None,
            extra_hosts: Vec::new(),
            shm_size: None,
            dns: Dns::default(),
            group_add: Vec::new(),
            oom_score_adj: None,
            sysctls: std::collections::BTreeMap::new(),
            devices: Vec::new(),
            host_namespaces: HostNamespaces::default(),
            seccomp: true,
        }
    }
}

/// `--add-host NAME:IP` (or `NAME=IP`): a line of the container's `/etc/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    pub name: String,
    pub ip: std::net::IpAddr,
}

impl std::str::FromStr for ExtraHost {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Host { value: s.to_string() };
        let (name, ip) = s.split_once('=').or_else(|| s.split_once(':')).ok_or_else(bad)?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(ExtraHost { name: name.to_string(), ip: ip.parse().map_err(|_| bad())? })
    }
}

impl std::str::FromStr for Rlimit {
    type Err = SpecError;

    /// docker's `--ulimit NAME=SOFT[:HARD]`; -1 is unlimited.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::Ulimit { value: s.to_string(), why: why.to_string() };
        let (name, values) = s.split_once('=').ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
        let resource = match name {
            "core" => RlimitResource::Core,
            "cpu" => RlimitResource::Cpu,
            "data" => RlimitResource::Data,
            "fsize" => RlimitResource::Fsize,
            "locks" => RlimitResource::Locks,
            "memlock" => RlimitResource::Memlock,
            "msgqueue" => RlimitResource::Msgqueue,
            "nice" => RlimitResource::Nice,
            "nofile" => RlimitResource::Nofile,
            "nproc" => RlimitResource::Nproc,
            "rss" => RlimitResource::Rss,
            "rtprio" => RlimitResource::Rtprio,
            "rttime" => RlimitResource::Rttime,
            "sigpending" => RlimitResource::Sigpending,
            "stack" => RlimitResource::Stack,
            _ => return Err(bad("unknown name (core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)")),
        };
        let value = |v: &str| match v {
            "-1" | "unlimited" => Ok(u64::MAX),
            v => v.parse::<u64>().map_err(|_| bad("a limit is a number, or -1 for none")),
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(values)?, value(values)?),
        };
        if soft > hard {
            return Err(bad("the soft limit is above the hard one"));
        }
        Ok(Rlimit { resource, soft, hard })
    }
}

/// `--network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A network namespace of its own with only `lo`, brought up.
    None,
    /// The host's network namespace.
    Host,
    /// The network namespace at this path (another container's, `/proc/PID/ns/net`).
    Join(std::path::PathBuf),
}

/// A bind mount from the host, `-v HOST:CTR[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Volume { value: s.to_string() };
        let mut parts = s.split(':');
        let host = parts.next().filter(|p| p.starts_with('/') || is_volume_name(p)).ok_or_else(bad)?;
        let container = parts.next().filter(|p| p.starts_with('/')).ok_or_else(bad)?;
        let read_only = match parts.next() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Volume { host: host.into(), container: container.into(), read_only })
    }
}

impl Volume {
    /// The named volume it is (`-v NAME:/path`) until its directory is chosen; `None` for a
    /// host path.
    pub fn name(&self) -> Option<&str> {
        self.host.to_str().filter(|h| !h.starts_with('/'))
    }
}

/// docker's rule for a volume's name: a letter or digit, then at least one more of those or
/// `_.-`.
pub fn is_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A tmpfs mount, `--tmpfs PATH[:OPTIONS]` (options as mount(8) takes them, e.g.
/// `rw,size=64m,mode=1777`; docker's default is `noexec,nosuid,nodev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    pub path: PathBuf,
    pub options: String,
}

impl std::str::FromStr for TmpfsMount {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (path, options) = s.split_once(':').unwrap_or((s, "noexec,nosuid,nodev"));
        if !path.starts_with('/') {
            return Err(SpecError::Tmpfs { value: s.to_string() });
        }
        Ok(TmpfsMount { path: path.into(), options: options.to_string() })
    }
}

/// `--cap-add`, `--cap-drop` (names with or without `CAP_`, any case, or `ALL`), `--privileged`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityOptions {
    pub add: Vec<String>,
    pub drop: Vec<String>,
    /// All capabilities, no seccomp filter, no masked paths, no device restrictions.
    pub privileged: bool,
}

/// `--memory`, `--cpus`, `--pids-limit`, `--memory-swap`, `--memory-reservation`,
/// `--cpu-shares`, `--cpuset-cpus`, `--cpuset-mems`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes; swap on top of it only as `memory_swap` allows.
    pub memory: Option<u64>,
    /// Fractional CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Memory and swap together, in bytes (docker's `--memory-swap`); `Some(-1)`: swap
    /// without limit; `None` with a memory limit: no swap.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// The memory the container is left under pressure (a soft limit), in bytes.
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    /// Its CPU weight against the others' (docker's 1024 when `None`).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// The CPUs it may run on, in the kernel's list syntax (`0-3,6`); `None`: its parent's.
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// The memory nodes it may allocate from, as `cpuset_cpus`; `None`: its parent's.
    #[serde(default)]
    pub cpuset_mems: Option<String>,
}

/// One resource limit, `--ulimit NAME=SOFT[:HARD]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

/// The rlimits docker's `--ulimit` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RlimitResource {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

/// A spec value that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid volume {value:?}: expected /HOST:/CONTAINER[:ro|rw] or NAME:/CONTAINER[:ro|rw]")]
    Volume { value: String },
    #[error("invalid tmpfs mount {value:?}: expected /PATH[:OPTIONS]")]
    Tmpfs { value: String },
    #[error("invalid --add-host {value:?}: expected NAME:IP")]
    Host { value: String },
    #[error("invalid --ulimit {value:?}: {why}")]
    Ulimit { value: String, why: String },
    #[error("invalid --device {value:?}: expected /HOST[:/CONTAINER][:PERMISSIONS of rwm]")]
    Device { value: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_docker_writes_them() {
        let d = |s: &str| s.parse::<Device>().map(|d| (d.host, d.container, d.permissions));
        assert_eq!(d("/dev/fuse").unwrap(), ("/dev/fuse".into(), "/dev/fuse".into(), "rwm".into()));
        assert_eq!(d("/dev/sda:r").unwrap(), ("/dev/sda".into(), "/dev/sda".into(), "r".into()));
        assert_eq!(d("/dev/sda:/dev/xvdc").unwrap(), ("/dev/sda".into(), "/dev/xvdc".into(), "rwm".into()));
        assert_eq!(d("/dev/sda:/dev/xvdc:rw").unwrap(), ("/dev/sda".into(), "/dev/xvdc".into(), "rw".into()));
        for bad in ["dev/sda", "/dev/sda:xvdc", "/dev/sda:/dev/x:rwx", "/a:/b:r:extra", ""] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_parameters_of_the_containers_namespaces_are_set() {
        assert!(is_namespaced_sysctl("kernel.shmmax", true, true));
        assert!(is_namespaced_sysctl("fs.mqueue.msg_max", false, true));
        assert!(is_namespaced_sysctl("net.ipv4.ip_forward", true, true));
        assert!(!is_namespaced_sysctl("net.ipv4.ip_forward", false, true), "the host's network");
        assert!(!is_namespaced_sysctl("kernel.panic", true, true));
        assert!(!is_namespaced_sysctl("net..core", true, true));
        assert!(!is_namespaced_sysctl("net.core/x", true, true));
        assert!(!is_namespaced_sysctl("net.ipv4.conf.all../../../kernel/panic", true, true));
        assert!(!is_namespaced_sysctl("kernel.shmmax", true, false), "the host's IPC");
    }

    #[test]
    fn ulimits_and_extra_hosts_parse_docker_syntax() {
        let r: Rlimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!(r, Rlimit { resource: RlimitResource::Nofile, soft: 1024, hard: 2048 });
        assert_eq!("core=-1".parse::<Rlimit>().unwrap().hard, u64::MAX);
        assert!("nofile=2048:1024".parse::<Rlimit>().unwrap_err().to_string().contains("above"));
        assert!("files=1".parse::<Rlimit>().unwrap_err().to_string().contains("unknown name"));
        let h: ExtraHost = "db:10.0.0.2".parse().unwrap();
        assert_eq!((h.name.as_str(), h.ip.to_string().as_str()), ("db", "10.0.0.2"));
        assert_eq!("v6:::1".parse::<ExtraHost>().unwrap().ip.to_string(), "::1");
        assert_eq!("web=[fe80::1]".parse::<ExtraHost>().unwrap().ip.to_string(), "fe80::1");
        assert!("nohost".parse::<ExtraHost>().is_err() && "a:not-an-ip".parse::<ExtraHost>().is_err());
    }

    #[test]
    fn volume_parses_docker_syntax() {
        let v: Volume = "/data:/mnt/data:ro".parse().unwrap();
        assert_eq!(v, Volume { host: "/data".into(), container: "/mnt/data".into(), read_only: true });
        assert!(!"/a:/b".parse::<Volume>().unwrap().read_only);
        let named: Volume = "data:/var/lib/db".parse().unwrap();
        assert_eq!(named.name(), Some("data"));
        assert_eq!("/a:/b".parse::<Volume>().unwrap().name(), None);
        assert!("a:/b".parse::<Volume>().is_err(), "a name has two characters at least");
        assert!("-x:/b".parse::<Volume>().is_err() && "a b:/c".parse::<Volume>().is_err());
        assert!("/a:/b:rx".parse::<Volume>().is_err());
    }

    #[test]
    fn tmpfs_defaults_to_docker_options() {
        let t: TmpfsMount = "/run".parse().unwrap();
        assert_eq!(t.options, "noexec,nosuid,nodev");
        let t: TmpfsMount = "/run:size=1m".parse().unwrap();
        assert_eq!(t.options, "size=1m");
    }
}
