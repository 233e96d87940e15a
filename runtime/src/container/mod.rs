//! Containers: their records under `<root>/containers/<id>/`, their supervision (the `skiff
//! run` process mounts the rootfs, runs the sandbox, relays and logs output, records the exit),
//! and the verbs on them: stop, kill, start, rm, logs, exec.
//!
//! Per container directory: `state.json` ([`State`]), `upper/` (its changes), `rootfs/` (the
//! mount point of its root filesystem), `log` (json lines, see [`log`]), and the generated
//! `hostname`, `hosts`, `resolv.conf`. Daemonless: a supervisor that dies leaves a record whose
//! supervisor is gone; the next command cleans what it left ([`Containers::open`]).

mod attach;
mod config;
mod copy;
mod exec;
pub mod health;
mod lifecycle;
pub mod log;
mod named;
pub mod ports;
mod rootfs;
mod state;
mod supervisor;
mod unpack;
mod volumes;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chrono::Utc;
use fs2::FileExt;

pub use config::{
    check_name, parse_signal, read_env_file, resolve as resolve_process, setting_lines, ConfigError,
    HealthOptions, Process, RunOptions, Security, Userns,
};
pub use copy::{
    archive, copy, export, make_dirs, private_mounts, unarchive, CopyError, CopyOptions, Place, Tree,
};
pub use exec::{exec, ExecRequest};
pub use lifecycle::{attach_output, kill, pause, remove, stop, unpause, update, wait, wait_exited};
pub use named::{NamedVolume, NamedVolumeError, NamedVolumes};
pub use rootfs::{
    remove_unused_unpacked, work_dir, LazyRootfs, MountedRootfs, PullMode, RootfsError, RootfsProvider,
    UnpackedRootfs,
};
pub use state::{ProcessId, RestartPolicy, State, Status};
pub use supervisor::{exit_code, supervise, Attach, Supervision};
pub use unpack::{apply_layer, LayerStats, UnpackError};
pub use volumes::VolumeError;

use crate::image::{ImageError, StoredImage};
use crate::sandbox::{self, ContainerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: std::io::Error },
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("{input:?} matches more than one container: {matches}")]
    Ambiguous { input: String, matches: String },
    #[error("the container name {name:?} is already in use by container {id}")]
    NameInUse { name: String, id: String },
    #[error("the container is named {name:?} already")]
    SameName { name: String },
    #[error("container {id} is running: stop it first, or remove it with -f")]
    Running { id: String },
    #[error("container {id} is not running")]
    NotRunning { id: String },
    #[error("container {id} is not paused")]
    NotPaused { id: String },
    #[error("container {id} is paused: unpause it first")]
    Paused { id: String },
    #[error("container {id} is already paused")]
    AlreadyPaused { id: String },
    #[error("container {id} cannot be paused: it was made by an earlier skiff, outside the freezer cgroup")]
    NoFreezer { id: String },
    #[error("container {id}: {source}")]
    Cgroup { id: String, source: sandbox::CgroupError },
    #[error("container {id} is already supervised by pid {pid}")]
    Supervised { id: String, pid: i32 },
    #[error("container {id} did not stop within {seconds} seconds of SIGKILL")]
    StopTimeout { id: String, seconds: u64 },
    #[error("container {id}: {source}")]
    Config { id: String, source: ConfigError },
    /// A bad option found before any container was made.
    #[error(transparent)]
    Invalid(ConfigError),
    #[error("container {id}: {source}")]
    Rootfs { id: String, source: Box<RootfsError> },
    #[error("{}", named(id, source))]
    Sandbox { id: String, source: Box<sandbox::Error> },
    #[error("container {id}: unmounting {path}: {source}")]
    Unmount { id: String, path: PathBuf, source: nix::errno::Errno },
    #[error("container {id}: signalling pid {pid}: {source}")]
    Signal { id: String, pid: i32, source: nix::errno::Errno },
    #[error("container {id}: {source}")]
    Volume { id: String, source: VolumeError },
    #[error("container {id}: {source}")]
    Publish { id: String, source: std::io::Error },
    #[error("container {id}: {other}, whose network it joins, is not running")]
    JoinedNetworkDown { id: String, other: String },
    #[error(transparent)]
    NamedVolume(#[from] NamedVolumeError),
    #[error(transparent)]
    Image(Box<ImageError>),
}

/// `error`'s message, led by the container's id unless it names the container already.
fn named(id: &str, error: &sandbox::Error) -> String {
    let message = error.to_string();
    if message.starts_with(&format!("container {id}")) {
        message
    } else {
        format!("container {id}: {message}")
    }
}

impl From<ImageError> for ContainerError {
    fn from(e: ImageError) -> Self {
        ContainerError::Image(Box::new(e))
    }
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io { step, path: path.to_path_buf(), source }
}

/// The files of one container.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub upper: PathBuf,
    pub rootfs: PathBuf,
    pub log: PathBuf,
    /// The anonymous volumes for the image's `VOLUME`s.
    pub volumes: PathBuf,
}

/// Every container of one skiff root.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    /// Opens `<root>/containers` and cleans up after supervisors that died (see
    /// [`lifecycle::reap`]).
    pub fn open(root: &Path) -> Result<Containers, ContainerError> {
        let containers = Containers { dir: root.join("containers") };
        fs::create_dir_all(&containers.dir).map_err(io_err("creating", &containers.dir))?;
        lifecycle::reap(&containers)?;
        Ok(containers)
    }

    pub fn paths(&self, id: &str) -> ContainerPaths {
        let dir = self.dir.join(id);
        ContainerPaths {
            state: dir.join("state.json"),
            upper: dir.join("upper"),
            rootfs: dir.join("rootfs"),
            log: dir.join("log"),
            volumes: dir.join("volumes"),
            dir,
        }
    }

    /// Held while a record is read, changed and written back, or a name is claimed.
    fn lock(&self) -> Result<File, ContainerError> {
        let path = self.dir.join(".lock");
        let file = crate::store::open_lock(&path).map_err(io_err("opening", &path))?;
        file.lock_exclusive().map_err(io_err("locking", &path))?;
        Ok(file)
    }

    /// The named volumes of the same skiff root.
    pub fn named_volumes(&self) -> NamedVolumes {
        NamedVolumes::open(self.dir.parent().unwrap_or(Path::new("/")))
    }

    /// The lock its supervisor holds while a container's rootfs is mounted; `None` when held.
    /// `skiff cp` holds it to mount a stopped container's rootfs, so the container cannot
    /// start on it meanwhile.
    pub(crate) fn try_lock_rootfs(&self, id: &str) -> Result<Option<File>, ContainerError> {
        let (path, file) = self.lock_file(id, "rootfs.lock")?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_err("locking", &path)(e)),
        }
    }

    /// As [`Containers::try_lock_rootfs`], waiting until the lock is free.
    pub(crate) fn lock_rootfs(&self, id: &str) -> Result<File, ContainerError> {
        let (path, file) = self.lock_file(id, "rootfs.lock")?;
        file.lock_exclusive().map_err(io_err("locking", &path))?;
        Ok(file)
    }

    /// Held shared by each `skiff wait` of the container, and exclusively by a `--rm`
    /// container's supervisor before it removes the container: every waiter has read the
    /// exit code by then.
    pub(crate) fn lock_waiters(&self, id: &str, exclusive: bool) -> Result<File, ContainerError> {
        let (path, file) = self.lock_file(id, "wait.lock")?;
        let locked = if exclusive { file.lock_exclusive() } else { FileExt::lock_shared(&file) };
        locked.map_err(io_err("locking", &path))?;
        Ok(file)
    }

    fn lock_file(&self, id: &str, name: &str) -> Result<(PathBuf, File), ContainerError> {
        let path = self.paths(id).dir.join(name);
        match crate::store::open_lock(&path) {
            Ok(file) => Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ContainerError::NotFound(id.to_string()))
            }
            Err(e) => Err(io_err("opening", &path)(e)),
        }
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<State>, ContainerError> {
        let mut all = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|n| n.len() == 64) else { continue };
            // A record being removed or not written yet is skipped.
            if let Ok(state) = state::read(&self.paths(id).state) {
                all.push(state);
            }
        }
        all.sort_by_key(|s| s.created);
        Ok(all)
    }

    /// A container by full id, name, or unique id prefix (as docker finds them).
    pub fn find(&self, input: &str) -> Result<State, ContainerError> {
        let all = self.list()?;
        if let Some(s) = all.iter().find(|s| s.id == input || s.name == input) {
            return Ok(s.clone());
        }
        let hits: Vec<&State> = all.iter().filter(|s| !input.is_empty() && s.id.starts_with(input)).collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ContainerError::NotFound(input.to_string())),
            many => Err(ContainerError::Ambiguous {
                input: input.to_string(),
                matches: many.iter().map(|s| s.short_id()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The current record of container `id`.
    pub fn load(&self, id: &str) -> Result<State, ContainerError> {
        let path = self.paths(id).state;
        state::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ContainerError::NotFound(id.to_string()),
            _ => ContainerError::Io { step: "reading", path, source: e },
        })
    }

    /// Gives container `id` the name `new`, which no other container may have.
    pub fn rename(&self, id: &str, new: &str) -> Result<State, ContainerError> {
        config::check_name(new).map_err(ContainerError::Invalid)?;
        let _lock = self.lock()?;
        if let Some(other) = self.list()?.into_iter().find(|s| s.name == new) {
            return Err(match other.id == id {
                true => ContainerError::SameName { name: new.to_string() },
                false => ContainerError::NameInUse { name: new.to_string(), id: other.id },
            });
        }
        let mut state = self.load(id)?;
        state.name = new.to_string();
        let path = self.paths(id).state;
        state::write(&path, &state).map_err(io_err("writing", &path))?;
        Ok(state)
    }

    /// Changes the record of `id` under the lock and returns it as written.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut State)) -> Result<State, ContainerError> {
        let _lock = self.lock()?;
        let mut state = self.load(id)?;
        change(&mut state);
        let path = self.paths(id).state;
        state::write(&path, &state).map_err(io_err("writing", &path))?;
        Ok(state)
    }

    /// Makes a new container of `image` (status created): its directory, record and name.
    pub fn create(&self, image: &StoredImage, options: &RunOptions) -> Result<State, ContainerError> {
        let id: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        let image_config = image.config()?;
        let process = config::resolve(&image.record.name, &image_config, options, &|k| std::env::var(k).ok())
            .map_err(ContainerError::Invalid)?;
        if let Some(name) = &options.name {
            config::check_name(name).map_err(ContainerError::Invalid)?;
        }
        if let Some(hostname) = &options.hostname {
            config::check_hostname(hostname).map_err(ContainerError::Invalid)?;
        }
        let paths = self.paths(&id);
        let mut spec = ContainerSpec::new(&id, &paths.rootfs, &paths.dir, process.args);
        spec.env = process.env;
        spec.cwd = process.cwd;
        spec.user = process.user;
        if let Some(hostname) = &options.hostname {
            spec.hostname = hostname.clone();
        }
        spec.read_only_rootfs = options.read_only;
        // Named volumes: made when missing, bound from their own directories.
        let named = self.named_volumes();
        spec.volumes = Vec::new();
        for volume in &options.volumes {
            let mut volume = volume.clone();
            if let Some(name) = volume.name().map(str::to_string) {
                named.create(&name)?;
                volume.host = named.data(&name);
            }
            spec.volumes.push(volume);
        }
        let declared = image_config.config().as_ref().and_then(|c| c.volumes().clone()).unwrap_or_default();
        spec.volumes.extend(volumes::anonymous(&declared, &options.volumes, &options.tmpfs, &paths.volumes));
        spec.tmpfs = options.tmpfs.clone();
        spec.network = options.network.clone();
        spec.capabilities = options.capabilities.clone();
        spec.resources = options.resources.clone();
        spec.init = options.init;
        spec.tty = options.tty;
        spec.rlimits = options.ulimits.clone();
        spec.extra_hosts = options.extra_hosts.clone();
        spec.dns = options.dns.clone();
        spec.group_add = options.group_add.clone();
        spec.oom_score_adj = options.oom_score_adj;
        let own_network = options.network == sandbox::Network::None && options.network_container.is_none();
        let host = options.host_namespaces;
        let conflict = |first, second| ContainerError::Invalid(ConfigError::Conflict { first, second });
        if host.uts && options.hostname.is_some() {
            return Err(conflict("--uts host", "--hostname"));
        }
        if host.pid && options.userns != Userns::Host {
            return Err(conflict("--pid host", "a user namespace"));
        }
        if host.uts {
            // Its /etc/hostname and /etc/hosts name the host, whose name it has.
            spec.hostname = nix::unistd::gethostname()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|_| spec.hostname.clone());
        }
        spec.host_namespaces = host;
        spec.seccomp = options.security.seccomp;
        spec.no_new_privileges = options.security.no_new_privileges;
        if let Some(key) =
            options.sysctls.keys().find(|k| !sandbox::is_namespaced_sysctl(k, own_network, !host.ipc))
        {
            return Err(ContainerError::Invalid(ConfigError::Sysctl { key: key.clone() }));
        }
        spec.sysctls = options.sysctls.clone();
        for device in &options.devices {
            sandbox::DeviceNode::of(&device.host)
                .map_err(|e| ContainerError::Invalid(ConfigError::Device(e)))?;
        }
        spec.devices = options.devices.clone();
        spec.shm_size = options.shm_size;
        // The image's labels, then the container's own over them, as docker merges them.
        let mut labels: std::collections::BTreeMap<String, String> = image_config
            .config()
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        labels.extend(options.labels.clone());
        let mut ports = options.ports.clone();
        if options.publish_all {
            let mut exposed =
                image_config.config().as_ref().and_then(|c| c.exposed_ports().clone()).unwrap_or_default();
            exposed.extend(options.expose.iter().cloned());
            ports.extend(ports::exposed(&exposed, &options.ports));
        }

        if options.auto_remove && options.restart != RestartPolicy::No {
            return Err(ContainerError::Invalid(ConfigError::RestartAndRemove));
        }
        if options.userns != Userns::Host && options.pull_mode == PullMode::Full {
            return Err(ContainerError::Invalid(ConfigError::UsernsNeedsLazy));
        }
        let network_container = match &options.network_container {
            Some(other) => {
                let conflict = |option| {
                    ContainerError::Invalid(ConfigError::JoinedNetwork { other: other.clone(), option })
                };
                if !ports.is_empty() {
                    return Err(conflict("publishing ports (-p, -P)"));
                }
                if options.userns != Userns::Host {
                    return Err(conflict("a user namespace"));
                }
                Some(self.find(other)?.id)
            }
            None => None,
        };
        let _lock = self.lock()?;
        let taken = self.list()?;
        spec.user_namespace = match &options.userns {
            Userns::Host => None,
            Userns::Map(map) => Some(map.clone()),
            Userns::Auto => {
                let used: Vec<skiff_fs::IdRange> = taken
                    .iter()
                    .filter_map(|st| st.spec.user_namespace.as_ref())
                    .flat_map(|map| map.uids.iter().chain(&map.gids).copied())
                    .collect();
                Some(config::free_id_range(&used))
            }
        };
        let name = match &options.name {
            Some(name) => {
                if let Some(other) = taken.iter().find(|s| &s.name == name) {
                    return Err(ContainerError::NameInUse { name: name.clone(), id: other.id.clone() });
                }
                name.clone()
            }
            None => config::generate_name(&|n| taken.iter().any(|s| s.name == n)),
        };
        let state = State {
            id: id.clone(),
            name,
            image: image.record.clone(),
            pull_mode: options.pull_mode,
            record_profile: options.record_profile,
            no_prefetch: options.no_prefetch,
            created: Utc::now(),
            status: Status::Created,
            supervisor: None,
            init: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            error: None,
            stop_signal: process.stop_signal,
            stop_timeout: options.stop_timeout,
            auto_remove: options.auto_remove,
            interactive: options.interactive,
            restart: options.restart,
            restart_count: 0,
            oom_killed: false,
            manually_stopped: false,
            healthcheck: options.health.resolve(image)?,
            health: None,
            labels,
            ports: if options.network == sandbox::Network::Host { Vec::new() } else { ports },
            network_container,
            log_rotation: options.log_rotation,
            published: Vec::new(),
            entrypoint_len: Some(process.entrypoint_len),
            spec,
        };
        fs::create_dir_all(&paths.rootfs).map_err(io_err("creating", &paths.rootfs))?;
        state::write(&paths.state, &state).map_err(io_err("writing", &paths.state))?;
        Ok(state)
    }
}
