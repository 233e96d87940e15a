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
    /// Set `no_new_privs` before exec (on by default).
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
            no_new_privileges: true,
            tty: false,
            init: false,
            user_namespace: None,
        }
    }
}

/// `--network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A network namespace of its own with only `lo`, brought up.
    None,
    /// The host's network namespace.
    Host,
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
        let host = parts.next().filter(|p| p.starts_with('/')).ok_or_else(bad)?;
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

/// `--memory`, `--cpus`, `--pids-limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes; swap is not allowed on top of it.
    pub memory: Option<u64>,
    /// Fractional CPUs, e.g. 0.5.
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
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
    #[error("invalid volume {value:?}: expected /HOST:/CONTAINER[:ro|rw]")]
    Volume { value: String },
    #[error("invalid tmpfs mount {value:?}: expected /PATH[:OPTIONS]")]
    Tmpfs { value: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_parses_docker_syntax() {
        let v: Volume = "/data:/mnt/data:ro".parse().unwrap();
        assert_eq!(v, Volume { host: "/data".into(), container: "/mnt/data".into(), read_only: true });
        assert!(!"/a:/b".parse::<Volume>().unwrap().read_only);
        assert!("a:/b".parse::<Volume>().is_err());
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
