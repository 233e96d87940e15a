//! cgroup v1: one hierarchy per controller group (`/sys/fs/cgroup/memory`, `…/cpu`, …).

use std::path::{Path, PathBuf};

use super::{create_dir, read_trimmed, write, Cgroup, CgroupError, Limits, PARENT};

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// Its mount options minus `rw`/`ro`: the controllers (`cpu`, `cpuacct`) and named
    /// hierarchies (`name=systemd`), as a new mount of the same hierarchy must name them.
    pub options: Vec<String>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.options.iter().any(|o| o == controller)
    }
}

/// The v1 hierarchies in this process's mount table.
pub fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path)
        .map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

fn parse_mountinfo_line(line: &str) -> Option<Hierarchy> {
    let (left, right) = line.split_once(" - ")?;
    let mountpoint = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    if right.next()? != "cgroup" {
        return None;
    }
    let options = right.nth(1)?.split(',').filter(|o| *o != "rw" && *o != "ro").map(str::to_string).collect();
    Some(Hierarchy { mountpoint: PathBuf::from(mountpoint), options })
}

/// The supervisor's own cgroup in hierarchy `h` (from `own`, `/proc/self/cgroup`).
pub fn home(h: &Hierarchy, own: &[(Vec<String>, String)]) -> PathBuf {
    let path = own
        .iter()
        .find(|(controllers, _)| controllers.iter().any(|c| h.has(c)))
        .map_or("/", |(_, path)| path.as_str());
    h.mountpoint.join(path.trim_start_matches('/'))
}

pub fn create(
    hierarchies: &[Hierarchy],
    own: &[(Vec<String>, String)],
    id: &str,
    limits: &Limits,
    cgroup: &mut Cgroup,
) -> Result<(), CgroupError> {
    let mut dir_for = |controller: &'static str| -> Result<PathBuf, CgroupError> {
        let h =
            hierarchies.iter().find(|h| h.has(controller)).ok_or(CgroupError::NoController { controller })?;
        let dir = h.mountpoint.join(PARENT).join(id);
        if !cgroup.dirs.contains(&dir) {
            let own_path = own
                .iter()
                .find(|(controllers, _)| controllers.iter().any(|c| c == controller))
                .map_or("/", |(_, path)| path.as_str());
            create_dir(&h.mountpoint.join(PARENT))?;
            create_dir(&dir)?;
            cgroup.push(dir.clone(), h.mountpoint.join(own_path.trim_start_matches('/')));
        }
        Ok(dir)
    };
    // Always joined, so every container process can be found (and killed) by its cgroup.
    for controller in ["pids", "memory", "cpu"] {
        dir_for(controller)?;
    }
    let devices = match &limits.devices {
        Some(rules) => Some((dir_for("devices")?, rules)),
        None => None,
    };
    // Joined where there is one, so `commit` can pause the container as docker's does,
    // `stats` can tell the CPU time and block I/O it used, and `update` can pin its CPUs.
    for controller in ["freezer", "cpuacct", "blkio", "cpuset"] {
        if hierarchies.iter().any(|h| h.has(controller)) {
            let dir = dir_for(controller)?;
            if controller == "cpuset" {
                // A v1 cpuset takes no task until it has CPUs and memory nodes; a new one
                // has none. `skiff/` starts with its parent's; `set_resources` below gives
                // the container's its own or `skiff/`'s.
                inherit_cpuset(dir.parent().expect("under the hierarchy"))?;
            }
        }
    }

    // The limits, as `update` sets them (no swap on top of a memory limit unless asked: a
    // hog is OOM-killed at the limit instead of swapping).
    cgroup.set_resources(&limits.resources)?;
    if let Some((dir, rules)) = devices {
        write(&dir.join("devices.deny"), "a")?;
        for rule in rules {
            write(&dir.join("devices.allow"), rule)?;
        }
    }
    Ok(())
}

/// Gives the cpuset `dir` its parent's CPUs and memory nodes where it has none.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let parent = dir.parent().expect("a cgroup has a parent");
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_trimmed(&dir.join(file))?.is_empty() {
            write(&dir.join(file), &read_trimmed(&parent.join(file))?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_mountinfo_lines() {
        let line = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct";
        let h = parse_mountinfo_line(line).unwrap();
        assert_eq!(h.mountpoint, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(h.options, ["cpu", "cpuacct"]);
        assert!(parse_mountinfo_line("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw").is_none());
    }
}
