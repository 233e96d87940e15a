//! What a container's cgroup has used: CPU time, memory against its limit, processes, and
//! block I/O, read from whichever of v1's hierarchies or v2's files the host has.

use std::path::Path;

use super::{Cgroup, CgroupError};

/// One reading of a container's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the container started, in nanoseconds (`None`: no accounting).
    pub cpu_ns: Option<u64>,
    /// Memory in use, page cache that could be dropped left out (as docker counts it).
    pub memory: u64,
    /// The memory limit, or the host's memory when there is none.
    pub memory_limit: u64,
    pub pids: u64,
    pub block_read: u64,
    pub block_write: u64,
}

impl Cgroup {
    /// How many of its processes the kernel's OOM killer has killed for the memory limit: the
    /// `oom_kill` count of v1's `memory.oom_control` or v2's `memory.events` (0 where the
    /// kernel keeps neither).
    pub fn oom_kills(&self) -> u64 {
        self.dirs
            .iter()
            .flat_map(|dir| ["memory.oom_control", "memory.events"].map(|file| keyed(dir, file, "oom_kill")))
            .filter_map(|count| count.ok().flatten())
            .sum()
    }

    /// What the cgroup's processes use now.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let mut usage = Usage { memory_limit: host_memory(), ..Usage::default() };
        for dir in &self.dirs {
            let has = |name: &str| dir.join(name).exists();
            // v2 keeps every controller's files in one directory; v1 one per hierarchy.
            if has("cpu.stat") && !has("cpu.shares") {
                usage.cpu_ns = keyed(dir, "cpu.stat", "usage_usec")?.map(|us| us * 1000);
            }
            if has("cpuacct.usage") {
                usage.cpu_ns = Some(number(dir, "cpuacct.usage")?);
            }
            if has("memory.current") {
                let inactive = keyed(dir, "memory.stat", "inactive_file")?.unwrap_or(0);
                usage.memory = number(dir, "memory.current")?.saturating_sub(inactive);
                if let Some(limit) = limit(dir, "memory.max")? {
                    usage.memory_limit = limit.min(usage.memory_limit);
                }
            }
            if has("memory.usage_in_bytes") {
                let inactive = keyed(dir, "memory.stat", "total_inactive_file")?.unwrap_or(0);
                usage.memory = number(dir, "memory.usage_in_bytes")?.saturating_sub(inactive);
                if let Some(limit) = limit(dir, "memory.limit_in_bytes")? {
                    usage.memory_limit = limit.min(usage.memory_limit);
                }
            }
            if has("pids.current") {
                usage.pids = number(dir, "pids.current")?;
            }
            if has("blkio.throttle.io_service_bytes") {
                for line in read(dir, "blkio.throttle.io_service_bytes")?.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let bytes = || fields.get(2).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    match fields.get(1) {
                        Some(&"Read") => usage.block_read += bytes(),
                        Some(&"Write") => usage.block_write += bytes(),
                        _ => {}
                    }
                }
            }
            if has("io.stat") {
                let text = read(dir, "io.stat")?;
                for field in text.split_whitespace() {
                    let parsed =
                        |prefix: &str| field.strip_prefix(prefix).and_then(|v| v.parse::<u64>().ok());
                    usage.block_read += parsed("rbytes=").unwrap_or(0);
                    usage.block_write += parsed("wbytes=").unwrap_or(0);
                }
            }
        }
        Ok(usage)
    }
}

fn read(dir: &Path, name: &str) -> Result<String, CgroupError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })
}

fn number(dir: &Path, name: &str) -> Result<u64, CgroupError> {
    Ok(read(dir, name)?.trim().parse().unwrap_or(0))
}

/// A limit file's value: `None` for `max` or v1's "no limit" (a number near 2^63).
fn limit(dir: &Path, name: &str) -> Result<Option<u64>, CgroupError> {
    Ok(read(dir, name)?.trim().parse::<u64>().ok().filter(|v| *v < 1 << 62))
}

/// `key value` lines (`cpu.stat`, `memory.stat`): the value of `key`.
fn keyed(dir: &Path, name: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    if !dir.join(name).exists() {
        return Ok(None);
    }
    Ok(read(dir, name)?.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()))
}

fn host_memory() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_files() {
        let root = tempfile::tempdir().unwrap();
        let (v1_cpu, v1_mem, v2) =
            (root.path().join("cpuacct"), root.path().join("memory"), root.path().join("v2"));
        for (dir, files) in [
            (
                &v1_cpu,
                vec![
                    ("cpuacct.usage", "1500000\n"),
                    ("blkio.throttle.io_service_bytes", "8:0 Read 7\n8:0 Write 9\n8:0 Total 16\nTotal 16\n"),
                ],
            ),
            (
                &v1_mem,
                vec![
                    ("memory.usage_in_bytes", "9000\n"),
                    ("memory.stat", "cache 5\ntotal_inactive_file 1000\n"),
                    ("memory.limit_in_bytes", "9223372036854771712\n"),
                ],
            ),
            (
                &v2,
                vec![
                    ("cpu.stat", "usage_usec 250\nuser_usec 200\n"),
                    ("memory.current", "4096\n"),
                    ("memory.stat", "inactive_file 96\n"),
                    ("memory.max", "65536\n"),
                    ("pids.current", "3\n"),
                    ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=1 wbytes=2\n"),
                ],
            ),
        ] {
            std::fs::create_dir(dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        }
        let v1 = Cgroup { dirs: vec![v1_cpu, v1_mem], homes: Vec::new(), owned: false }.usage().unwrap();
        assert_eq!((v1.cpu_ns, v1.memory, v1.memory_limit), (Some(1_500_000), 8000, host_memory()));
        assert_eq!((v1.block_read, v1.block_write), (7, 9));
        let v2 = Cgroup { dirs: vec![v2], homes: Vec::new(), owned: false }.usage().unwrap();
        assert_eq!(
            v2,
            Usage {
                cpu_ns: Some(250_000),
                memory: 4000,
                memory_limit: 65536,
                pids: 3,
                block_read: 11,
                block_write: 22
            }
        );
    }
}
