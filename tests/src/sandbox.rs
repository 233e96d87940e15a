//! Test support for the sandbox launcher: a busybox rootfs in a temp directory, the probe
//! script that reports what a container sees, and a runner that captures the container's
//! output. Tests need root and `/bin/busybox` (Debian's busybox-static); without them they are
//! skipped with a message (or fail under `SKIFF_TEST_REQUIRE=1`).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use skiff::sandbox::{self, ContainerSpec, ExitStatus, Stdio};

/// The probe: a busybox shell script run as the container's command. It prints `key=value`
/// lines; `mount=` repeats, once per line of `/proc/self/mounts`.
pub const PROBE: &str = r#"#!/bin/sh
echo "pid=$$"
echo "hostname=$(hostname)"
set -- /proc/[0-9]*
echo "procs=$#"
echo "uid=$(id -u)"
while read -r key value rest; do
  case "$key" in
    CapInh:|CapPrm:|CapEff:|CapBnd:|CapAmb:|Seccomp:|NoNewPrivs:) echo "${key%:}=$value" ;;
  esac
done < /proc/self/status
for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us \
         memory.max pids.max cpu.max; do
  [ -f "/sys/fs/cgroup/$f" ] && echo "cgroup.$f=$(cat /sys/fs/cgroup/$f)"
done
if touch /.probe-write 2>/dev/null; then rm -f /.probe-write; echo "rootfs=rw"; else echo "rootfs=ro"; fi
if (echo probe > /proc/sys/kernel/hostname) 2>/dev/null; then echo "proc_sys=rw"; else echo "proc_sys=ro"; fi
echo "interrupts_bytes=$(wc -c < /proc/interrupts)"
echo "sys_firmware_entries=$(ls /sys/firmware | wc -l)"
echo "netdevs=$(ls /sys/class/net | tr '\n' ' ')"
echo "lo_flags=$(cat /sys/class/net/lo/flags)"
while read -r line; do echo "mount=$line"; done < /proc/self/mounts
"#;

/// Whether this machine can run the sandbox tests: root and `/bin/busybox`. Prints why not.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    let busybox = Path::new("/bin/busybox").is_file();
    let why = match (root, busybox) {
        (true, true) => return true,
        (false, _) => "sandbox tests need root",
        (_, false) => "sandbox tests need /bin/busybox (apt-get install busybox-static)",
    };
    crate::skip::<()>(why);
    false
}

/// A container's temp tree: `rootfs/` (busybox, its applets, `/etc/passwd` with `root` and
/// `app` (1000), `/probe`), `state/`, and room for anything else a test needs.
pub struct TestRootfs {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub state: PathBuf,
}

impl TestRootfs {
    pub fn new() -> TestRootfs {
        let dir = crate::temp_dir();
        let rootfs = dir.path().join("rootfs");
        let state = dir.path().join("state");
        for sub in ["bin", "etc", "tmp", "root", "home/app"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying /bin/busybox");
        let list = std::process::Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
        std::fs::write(rootfs.join("probe"), PROBE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rootfs.join("probe"), std::fs::Permissions::from_mode(0o755)).unwrap();
        TestRootfs { dir, rootfs, state }
    }

    /// A spec for `args` in this rootfs, with an id unique to the temp dir.
    pub fn spec(&self, args: &[&str]) -> ContainerSpec {
        let name = self.dir.path().file_name().unwrap().to_string_lossy().replace("skiff-test-", "t");
        ContainerSpec::new(&name, &self.rootfs, &self.state, args.iter().map(|a| a.to_string()).collect())
    }
}

impl Default for TestRootfs {
    fn default() -> Self {
        Self::new()
    }
}

/// What one container run produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The probe's `key=value` lines (the last value of a repeated key; see [`Output::all`]).
    pub fn probe(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    }
}

/// Files in `root.dir` that take a container's stdout and stderr.
pub fn capture(root: &TestRootfs) -> (Stdio, PathBuf, PathBuf) {
    let out = root.dir.path().join("stdout");
    let err = root.dir.path().join("stderr");
    let stdio = Stdio {
        stdin: Some(OwnedFd::from(std::fs::File::open("/dev/null").unwrap())),
        stdout: Some(OwnedFd::from(std::fs::File::create(&out).unwrap())),
        stderr: Some(OwnedFd::from(std::fs::File::create(&err).unwrap())),
    };
    (stdio, out, err)
}

/// Runs `spec` to completion with its output captured.
pub fn run(root: &TestRootfs, spec: &ContainerSpec) -> Result<Output, sandbox::Error> {
    let (stdio, out, err) = capture(root);
    let status = sandbox::run(spec, stdio)?;
    Ok(Output {
        status,
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    })
}
