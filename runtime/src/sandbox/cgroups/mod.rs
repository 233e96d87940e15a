//! The container's cgroup, `skiff/<id>`: created with the spec's limits before the container's
//! process starts, joined by that process before it execs, removed once its processes are
//! gone. cgroup v1 (one directory per controller hierarchy, as on these hybrid machines, whose
//! cgroup2 mount has no controllers) and pure cgroup v2 are told apart as runc does: v2 only
//! when `/sys/fs/cgroup` itself is a cgroup2 mount.

mod device_filter;
mod stats;
pub use device_filter::{attach as attach_device_filter, FilterError, Rule as DeviceRule};

pub use stats::Usage;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::spec::Resources;

pub use v1::Hierarchy;

/// Where cgroup filesystems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup under each hierarchy's root that holds skiff's containers.
const PARENT: &str = "skiff";
/// CFS period for `--cpus`, docker's.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("creating cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("removing cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("no cgroup v1 hierarchy has the {controller} controller")]
    NoController { controller: &'static str },
    #[error("the processes of cgroup {path} did not freeze within {seconds} seconds")]
    FreezeTimeout { path: PathBuf, seconds: u64 },
    #[error(transparent)]
    DeviceFilter(#[from] FilterError),
}

/// Docker's default device allow-list: the devices `/dev` gets, ptys, and `mknod` of anything.
const ALLOWED_DEVICES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// How long [`Cgroup::freeze`] waits for every process to stop.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One hierarchy per controller group, from `/proc/self/mountinfo`.
    V1(Vec<Hierarchy>),
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

impl Layout {
    pub fn detect() -> Result<Layout, CgroupError> {
        let is_v2 = nix::sys::statfs::statfs(CGROUP_ROOT)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        if is_v2 {
            Ok(Layout::V2)
        } else {
            v1::hierarchies().map(Layout::V1)
        }
    }
}

/// What the cgroup enforces beyond the spec's [`Resources`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub resources: Resources,
    /// The device accesses allowed, all others denied (v1: the `devices` controller; v2: a
    /// BPF program attached to the cgroup): see [`allowed_devices`]. `None`: no restriction.
    pub devices: Option<Vec<String>>,
}

/// Docker's default device allow-list with `extra` rules (`c 10:229 rwm`) after it.
pub fn allowed_devices(extra: Vec<String>) -> Vec<String> {
    ALLOWED_DEVICES.iter().map(|r| r.to_string()).chain(extra).collect()
}

/// A created container cgroup: one directory per hierarchy (v1) or one directory (v2).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// For each of `dirs`, the supervisor's own cgroup in that hierarchy.
    homes: Vec<PathBuf>,
    /// Whether [`Cgroup::remove`] (and drop) removes it: not for a cgroup `exec` joins.
    owned: bool,
}

impl Cgroup {
    /// Creates `skiff/<id>` in every hierarchy the limits need and writes the limits.
    pub fn create(layout: &Layout, id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let mut cgroup = Cgroup { dirs: Vec::new(), homes: Vec::new(), owned: true };
        let own = own_cgroups()?;
        let result = match layout {
            Layout::V1(hierarchies) => v1::create(hierarchies, &own, id, limits, &mut cgroup),
            Layout::V2 => v2::create(Path::new(CGROUP_ROOT), &own, id, limits, &mut cgroup),
        };
        match result {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                // Best effort: the directories are empty, so the removal cannot hang.
                let _ = cgroup.remove();
                Err(e)
            }
        }
    }

    /// The cgroup of a container created earlier, as far as its directories still exist;
    /// `owned` makes [`Cgroup::remove`] remove them.
    pub fn existing(layout: &Layout, id: &str, owned: bool) -> Result<Cgroup, CgroupError> {
        let own = own_cgroups()?;
        let mut cgroup = Cgroup { dirs: Vec::new(), homes: Vec::new(), owned };
        match layout {
            Layout::V1(hierarchies) => {
                for h in hierarchies {
                    let dir = h.mountpoint.join(PARENT).join(id);
                    if dir.is_dir() {
                        cgroup.push(dir, v1::home(h, &own));
                    }
                }
            }
            Layout::V2 => {
                let root = Path::new(CGROUP_ROOT);
                let dir = root.join(PARENT).join(id);
                if dir.is_dir() {
                    let home = own.iter().find(|(c, _)| c.is_empty()).map_or("/", |(_, p)| p.as_str());
                    cgroup.push(dir, root.join(home.trim_start_matches('/')));
                }
            }
        }
        Ok(cgroup)
    }

    /// The cgroup of container `id` on this host's layout (see [`Cgroup::existing`]).
    pub fn of_container(id: &str, owned: bool) -> Result<Cgroup, CgroupError> {
        Cgroup::existing(&Layout::detect()?, id, owned)
    }

    /// Moves `pid` (with its future children) into the cgroup.
    pub fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` back into the supervisor's own cgroups: the intermediate process, once it
    /// has forked the container's init, must not count against (or be OOM-killed under) the
    /// container's limits.
    pub fn release(&self, pid: Pid) -> Result<(), CgroupError> {
        for home in &self.homes {
            write(&home.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn push(&mut self, dir: PathBuf, home: PathBuf) {
        self.dirs.push(dir);
        self.homes.push(home);
    }

    /// The host pids of the cgroup's processes, in the kernel's order.
    pub fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        // Every process is in every v1 hierarchy: the first one's list is the whole.
        let Some(dir) = self.dirs.first() else { return Ok(Vec::new()) };
        let path = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The cgroup's directories (one per v1 hierarchy).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Stops every process of the cgroup (the freezer: v1's `freezer.state`, v2's
    /// `cgroup.freeze`) and waits until all have. They go on when the returned guard is
    /// dropped, unless they were paused already (then they stay so). `None` when the cgroup
    /// has no freezer (a container made before skiff joined the v1 freezer hierarchy).
    pub fn freeze(&self) -> Result<Option<Frozen>, CgroupError> {
        let Some(freezer) = Freezer::of(self) else { return Ok(None) };
        if freezer.requested()? {
            return Ok(Some(Frozen { freezer, thaw: false }));
        }
        freezer.set(true)?;
        let guard = Frozen { freezer, thaw: true };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while !guard.freezer.frozen()? {
            if Instant::now() > deadline {
                let path = guard.freezer.dir.clone();
                return Err(CgroupError::FreezeTimeout { path, seconds: FREEZE_TIMEOUT.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Some(guard))
    }

    /// Lets the processes of a frozen cgroup go on; whether it was frozen.
    pub fn thaw(&self) -> Result<bool, CgroupError> {
        let Some(freezer) = Freezer::of(self) else { return Ok(false) };
        let thawed = freezer.requested().and_then(|frozen| {
            if frozen {
                freezer.set(false)?;
            }
            Ok(frozen)
        });
        match thawed {
            // Removed meanwhile, its processes gone (as after a SIGKILL): nothing to let go on.
            Err(CgroupError::Read { source, .. } | CgroupError::Write { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            other => other,
        }
    }

    /// Whether the cgroup is frozen (or being frozen).
    pub fn is_frozen(&self) -> bool {
        Freezer::of(self).is_some_and(|f| f.requested().unwrap_or(false))
    }

    /// Kills what is left in the cgroup and removes its directories, waiting up to two seconds
    /// for exiting processes to leave.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        if !self.owned {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(dir) = self.dirs.last() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    kill_all(dir);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(source) => return Err(CgroupError::Remove { path: dir.clone(), source }),
            }
            self.dirs.pop();
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned && !self.dirs.is_empty() {
            if let Err(e) = self.remove() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// This process's cgroup per hierarchy, from `/proc/self/cgroup`: (controllers, path), with
/// an empty controller list for the unified hierarchy.
fn own_cgroups() -> Result<Vec<(Vec<String>, String)>, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path)
        .map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let _id = fields.next()?;
            let controllers =
                fields.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((controllers, fields.next()?.to_string()))
        })
        .collect())
}

/// A cgroup's freezer: v1's `freezer.state` or v2's `cgroup.freeze`.
#[derive(Debug)]
struct Freezer {
    dir: PathBuf,
    v1: bool,
}

impl Freezer {
    fn of(cgroup: &Cgroup) -> Option<Freezer> {
        cgroup.dirs.iter().find_map(|dir| {
            if dir.join("freezer.state").exists() {
                Some(Freezer { dir: dir.clone(), v1: true })
            } else {
                dir.join("cgroup.freeze").exists().then(|| Freezer { dir: dir.clone(), v1: false })
            }
        })
    }

    fn control(&self) -> PathBuf {
        self.dir.join(if self.v1 { "freezer.state" } else { "cgroup.freeze" })
    }

    fn read(&self, name: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
    }

    fn set(&self, frozen: bool) -> Result<(), CgroupError> {
        let value = match (self.v1, frozen) {
            (true, true) => "FROZEN",
            (true, false) => "THAWED",
            (false, true) => "1",
            (false, false) => "0",
        };
        write(&self.control(), value)
    }

    /// Whether freezing was asked for (v1 says FREEZING until every process has stopped).
    fn requested(&self) -> Result<bool, CgroupError> {
        Ok(if self.v1 {
            self.read("freezer.state")?.trim() != "THAWED"
        } else {
            self.read("cgroup.freeze")?.trim() == "1"
        })
    }

    /// Whether every process has stopped.
    fn frozen(&self) -> Result<bool, CgroupError> {
        Ok(if self.v1 {
            self.read("freezer.state")?.trim() == "FROZEN"
        } else {
            self.read("cgroup.events")?.lines().any(|l| l == "frozen 1")
        })
    }
}

/// A frozen cgroup, thawed when dropped if this froze it.
#[derive(Debug)]
pub struct Frozen {
    freezer: Freezer,
    thaw: bool,
}

impl Frozen {
    /// Whether the cgroup was frozen before (then dropping the guard leaves it so).
    pub fn was_frozen(&self) -> bool {
        !self.thaw
    }

    /// Leaves the cgroup frozen (`skiff pause`).
    pub fn keep(mut self) {
        self.thaw = false;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.thaw {
            if let Err(e) = self.freezer.set(false) {
                tracing::warn!("thawing: {e}");
            }
        }
    }
}

fn kill_all(dir: &Path) {
    // A frozen process (a `commit` killed while it paused the container) dies only thawed.
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else { return };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// A cgroup file's value, without its newline.
fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(CgroupError::Create { path: path.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// v2's `cpu.weight` (1 to 10000, 100 by default) for docker's `--cpu-shares` (2 to 262144,
/// 1024 by default), as runc converts it.
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

impl Cgroup {
    /// Sets the limits of a container's cgroup to `resources` (`None`: no limit), as `update`
    /// changes them while it runs.
    pub fn set_resources(&self, resources: &Resources) -> Result<(), CgroupError> {
        let r = resources;
        for dir in &self.dirs {
            let has = |name: &str| dir.join(name).exists();
            let set = |name: &str, value: String| write(&dir.join(name), &value);
            if has("pids.max") {
                set("pids.max", r.pids.map_or("max".into(), |p| p.to_string()))?;
            }
            if has("memory.max") {
                set("memory.max", r.memory.map_or("max".into(), |m| m.to_string()))?;
                if has("memory.swap.max") {
                    // v2 counts swap apart from memory.
                    let swap = match (r.memory, r.memory_swap) {
                        (Some(_), None) => "0".into(),
                        (Some(m), Some(total)) if total >= 0 => (total as u64).saturating_sub(m).to_string(),
                        _ => "max".into(),
                    };
                    set("memory.swap.max", swap)?;
                }
                set("memory.low", r.memory_reservation.unwrap_or(0).to_string())?;
            }
            if has("memory.limit_in_bytes") {
                // memsw (memory and swap) may never be below the memory limit: lifted first,
                // set last.
                let memsw = match (r.memory, r.memory_swap) {
                    (Some(m), None) => m.to_string(),
                    (Some(_), Some(total)) if total >= 0 => total.to_string(),
                    _ => "-1".into(),
                };
                let has_memsw = has("memory.memsw.limit_in_bytes");
                if has_memsw {
                    set("memory.memsw.limit_in_bytes", "-1".into())?;
                }
                set("memory.limit_in_bytes", r.memory.map_or("-1".into(), |m| m.to_string()))?;
                if has_memsw {
                    set("memory.memsw.limit_in_bytes", memsw)?;
                }
                set(
                    "memory.soft_limit_in_bytes",
                    r.memory_reservation.map_or("-1".into(), |m| m.to_string()),
                )?;
            }
            if has("cpu.max") {
                let quota = r.cpus.map_or("max".into(), |c| cpu_quota(c).to_string());
                set("cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
                set("cpu.weight", r.cpu_shares.map_or(100, cpu_weight).to_string())?;
            }
            if has("cpu.cfs_quota_us") {
                set("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                set("cpu.cfs_quota_us", r.cpus.map_or("-1".into(), |c| cpu_quota(c).to_string()))?;
                set("cpu.shares", r.cpu_shares.unwrap_or(1024).to_string())?;
            }
            if has("cpuset.cpus") {
                // Unset: v2 takes "" as its parent's; a v1 cpuset needs the parent's written.
                let v1 = has("cpuset.cpu_exclusive");
                let parents = |file: &str| match v1 {
                    true => read_trimmed(&dir.parent().expect("a cgroup has a parent").join(file)),
                    false => Ok(String::new()),
                };
                let cpus = r.cpuset_cpus.clone().map_or_else(|| parents("cpuset.cpus"), Ok)?;
                let mems = r.cpuset_mems.clone().map_or_else(|| parents("cpuset.mems"), Ok)?;
                set("cpuset.cpus", cpus)?;
                set("cpuset.mems", mems)?;
            }
        }
        Ok(())
    }
}

/// CFS quota in microseconds per [`CPU_PERIOD_US`] for `cpus` CPUs.
fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}
