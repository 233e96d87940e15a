//! The sandbox launcher in real namespaces: what a container sees (through the probe), what it
//! cannot do, how it ends, and what it leaves behind. Needs root and /bin/busybox.

use std::os::unix::process::CommandExt;
use std::path::Path;

use skiff::sandbox::{self, CapabilityOptions, ExitStatus, Signal, Volume};
use skiff_tests::sandbox::{available, capture, run, TestRootfs};

const DOCKER_CAPS: &str = "00000000a80425fb";

#[test]
fn probe_is_pid_1_with_its_hostname_and_sees_no_host_process() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["/probe"]);
    spec.hostname = "probe-host".into();
    let out = run(&root, &spec).unwrap();
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let probe = out.probe();
    assert_eq!(probe["pid"], "1");
    assert_eq!(probe["hostname"], "probe-host");
    // The probe itself and the one `$(...)` subshell at most.
    assert!(probe["procs"].parse::<u32>().unwrap() <= 2, "host processes visible: {}", probe["procs"]);
    assert_eq!(probe["uid"], "0");
    let root_mount = out.all("mount");
    assert!(root_mount.iter().any(|m| m.starts_with("proc /proc proc")), "{root_mount:?}");
    assert!(root_mount.iter().any(|m| m.starts_with("devpts /dev/pts devpts")), "{root_mount:?}");
    assert!(root_mount.iter().any(|m| m.starts_with("sysfs /sys sysfs ro")), "{root_mount:?}");
}

#[test]
fn capabilities_seccomp_and_no_new_privs_match_docker_defaults() {
    if !available() {
        return;
    }
    assert_eq!(
        format!("{:016x}", sandbox::capability_mask(&CapabilityOptions::default()).unwrap()),
        DOCKER_CAPS
    );
    let root = TestRootfs::new();
    let out = run(&root, &root.spec(&["/probe"])).unwrap();
    let probe = out.probe();
    assert_eq!(probe["CapEff"], DOCKER_CAPS);
    assert_eq!(probe["CapPrm"], DOCKER_CAPS);
    assert_eq!(probe["CapBnd"], DOCKER_CAPS);
    assert_eq!(probe["CapInh"], "0000000000000000");
    assert_eq!(probe["CapAmb"], "0000000000000000");
    assert_eq!(probe["Seccomp"], "2");
    assert_eq!(probe["NoNewPrivs"], "0");
    let mut strict = root.spec(&["/probe"]);
    strict.no_new_privileges = true;
    assert_eq!(run(&root, &strict).unwrap().probe()["NoNewPrivs"], "1");
}

#[test]
fn privileged_gives_every_capability_skiff_holds_and_no_seccomp_filter() {
    if !available() {
        return;
    }
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_permitted = own.lines().find_map(|l| l.strip_prefix("CapPrm:")).unwrap().trim().to_string();
    let root = TestRootfs::new();
    let mut spec = root.spec(&["/probe"]);
    spec.capabilities = CapabilityOptions { privileged: true, ..Default::default() };
    let out = run(&root, &spec).unwrap();
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let probe = out.probe();
    assert_eq!(probe["CapEff"], own_permitted);
    assert_eq!(probe["Seccomp"], "0");
}

#[test]
fn non_root_user_keeps_only_the_bounding_set() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["/probe"]);
    spec.user = Some("app".into());
    let probe = run(&root, &spec).unwrap().probe();
    assert_eq!(probe["uid"], "1000");
    assert_eq!(probe["CapEff"], "0000000000000000");
    assert_eq!(probe["CapBnd"], DOCKER_CAPS);
}

#[test]
fn dropped_capabilities_cannot_mount() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let out = run(&root, &root.spec(&["mount", "-t", "tmpfs", "none", "/tmp"])).unwrap();
    assert_ne!(out.status, ExitStatus::Exited(0), "mount succeeded inside the container: {out:?}");
    assert!(out.stderr.contains("not permitted") || out.stderr.contains("denied"), "{out:?}");
    // Adding CAP_SYS_ADMIN (as docker's --cap-add) lifts both the capability and seccomp block.
    let mut spec = root.spec(&["mount", "-t", "tmpfs", "none", "/tmp"]);
    spec.capabilities = CapabilityOptions { add: vec!["SYS_ADMIN".into()], ..Default::default() };
    let out = run(&root, &spec).unwrap();
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
}

#[test]
fn exit_code_is_the_commands() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let out = run(&root, &root.spec(&["sh", "-c", "exit 3"])).unwrap();
    assert_eq!(out.status, ExitStatus::Exited(3));
    assert_eq!(out.status.code(), 3);
}

#[test]
fn sigkill_from_outside_exits_137() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let (stdio, _, _) = capture(&root);
    let mut container = sandbox::spawn(&root.spec(&["sleep", "60"]), stdio).unwrap();
    container.signal(Signal::SIGKILL).unwrap();
    let status = container.wait().unwrap();
    assert_eq!(status, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(status.code(), 137);
}

#[test]
fn init_reaper_forwards_sigterm_and_reports_signal_deaths() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["sh", "-c", "kill -9 $$"]);
    spec.init = true;
    assert_eq!(run(&root, &spec).unwrap().status.code(), 137);

    let mut spec = root.spec(&["sleep", "60"]);
    spec.init = true;
    let (stdio, _, _) = capture(&root);
    let mut container = sandbox::spawn(&spec, stdio).unwrap();
    // Give the reaper time to fork the command before the signal arrives.
    std::thread::sleep(std::time::Duration::from_millis(200));
    container.signal(Signal::SIGTERM).unwrap();
    assert_eq!(container.wait().unwrap().code(), 143);
}

#[test]
fn missing_command_is_an_exec_error() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    match run(&root, &root.spec(&["no-such-command"])) {
        Err(sandbox::Error::Exec { program, source }) => {
            assert_eq!(program, "no-such-command");
            assert_eq!(source, sandbox::Errno::ENOENT);
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
}

#[test]
fn memory_hog_is_killed_at_the_memory_limit() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]);
    spec.resources.memory = Some(32 << 20);
    let out = run(&root, &spec).unwrap();
    assert_eq!(out.status, ExitStatus::Signaled(Signal::SIGKILL), "{out:?}");
    // The limit is what the container sees in its cgroup.
    let mut spec = root.spec(&["/probe"]);
    spec.resources.memory = Some(32 << 20);
    spec.resources.pids = Some(50);
    let probe = run(&root, &spec).unwrap().probe();
    let limit = probe.get("cgroup.memory/memory.limit_in_bytes").or(probe.get("cgroup.memory.max"));
    assert_eq!(limit.map(String::as_str), Some("33554432"), "{probe:?}");
    let pids = probe.get("cgroup.pids/pids.max").or(probe.get("cgroup.pids.max"));
    assert_eq!(pids.map(String::as_str), Some("50"));
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let script = "(i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; \
                  set -- /proc/[0-9]*; echo procs=$#";
    let mut spec = root.spec(&["sh", "-c", script]);
    spec.resources.pids = Some(16);
    let out = run(&root, &spec).unwrap();
    let procs: u32 = out.probe()["procs"].parse().unwrap();
    assert!((2..=16).contains(&procs), "{procs} processes under a pids limit of 16: {out:?}");
}

#[test]
fn read_only_rootfs_cannot_be_written() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["/probe"]);
    spec.read_only_rootfs = true;
    let probe = run(&root, &spec).unwrap().probe();
    assert_eq!(probe["rootfs"], "ro");
    let probe = run(&root, &root.spec(&["/probe"])).unwrap().probe();
    assert_eq!(probe["rootfs"], "rw");
}

#[test]
fn masked_and_read_only_proc_paths() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let probe = run(&root, &root.spec(&["/probe"])).unwrap().probe();
    assert!(std::fs::read_to_string("/proc/interrupts").is_ok_and(|s| !s.is_empty()));
    assert_eq!(probe["interrupts_bytes"], "0", "/proc/interrupts is not masked");
    assert_eq!(probe["sys_firmware_entries"], "0", "/sys/firmware is not masked");
    assert_eq!(probe["proc_sys"], "ro");
}

#[test]
fn network_none_has_only_lo_and_it_is_up() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let probe = run(&root, &root.spec(&["/probe"])).unwrap().probe();
    assert_eq!(probe["netdevs"].trim(), "lo");
    let flags = u32::from_str_radix(probe["lo_flags"].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: flags {flags:#x}");
}

#[test]
fn bind_volumes_are_visible_and_ro_is_enforced() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let data = root.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hello"), "from the host\n").unwrap();
    let mut spec =
        root.spec(&["sh", "-c", "cat /data/hello; touch /data/new && echo wrote; echo x > /rw/new"]);
    spec.volumes = vec![
        format!("{}:/data:ro", data.display()).parse::<Volume>().unwrap(),
        Volume { host: data.clone(), container: "/rw".into(), read_only: false },
    ];
    let out = run(&root, &spec).unwrap();
    assert!(out.stdout.contains("from the host"), "{out:?}");
    assert!(!out.stdout.contains("wrote"), "wrote to a read-only volume: {out:?}");
    assert!(data.join("new").is_file(), "the rw volume's write is not on the host");
}

#[test]
fn absolute_symlinks_in_the_rootfs_do_not_escape_to_the_host() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let host = root.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    // An image whose /etc files point at absolute paths that exist on the host.
    std::os::unix::fs::symlink(host.join("hostname"), root.rootfs.join("etc/hostname")).unwrap();
    std::os::unix::fs::symlink(host.join("resolv/resolv.conf"), root.rootfs.join("etc/resolv.conf")).unwrap();
    std::os::unix::fs::symlink(&host, root.rootfs.join("vol")).unwrap();
    let data = root.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut spec = root.spec(&["cat", "/etc/hostname"]);
    spec.hostname = "inside".into();
    spec.volumes = vec![Volume { host: data, container: "/vol/mnt".into(), read_only: true }];
    let out = run(&root, &spec).unwrap();
    assert_eq!(out.stdout, "inside\n", "{out:?}");
    let leaked: Vec<_> = std::fs::read_dir(&host).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(leaked.is_empty(), "the launcher wrote to the host through a rootfs symlink: {leaked:?}");
    let inside = root.rootfs.join(host.strip_prefix("/").unwrap());
    assert!(inside.join("hostname").is_file(), "the symlink's target was not created inside the rootfs");
}

#[test]
fn cgroup_is_removed_afterwards() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let mut spec = root.spec(&["sleep", "60"]);
    spec.resources.memory = Some(64 << 20);
    spec.resources.cpus = Some(0.5);
    spec.resources.pids = Some(20);
    let (stdio, _, _) = capture(&root);
    let mut container = sandbox::spawn(&spec, stdio).unwrap();
    let dirs = container.cgroup_dirs().to_vec();
    assert!(!dirs.is_empty());
    for dir in &dirs {
        assert!(dir.is_dir(), "{} missing while the container runs", dir.display());
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(procs.contains(&container.pid().to_string()), "{}: {procs}", dir.display());
    }
    container.signal(Signal::SIGKILL).unwrap();
    container.wait().unwrap();
    for dir in &dirs {
        assert!(!Path::new(dir).exists(), "{} left behind", dir.display());
    }
}

/// The half of the forwarding tests that runs in a child process (so that the signal hits no
/// other test): a container whose PID 1 traps SIGTERM and SIGINT and exits 42.
#[test]
#[ignore = "run by the forwarding tests below in a process of its own"]
fn forwarded_signal_child() {
    let Some(dir) = std::env::var_os("SKIFF_FORWARD_DIR") else { return };
    let root = TestRootfs::new();
    let ready = Path::new(&dir).join("ready");
    let mut spec =
        root.spec(&["sh", "-c", "trap 'exit 42' TERM INT; touch /out/ready; while :; do sleep 0.1; done"]);
    spec.volumes = vec![Volume { host: dir.into(), container: "/out".into(), read_only: false }];
    let out = run(&root, &spec).unwrap();
    assert!(ready.exists());
    assert_eq!(out.status, ExitStatus::Exited(42), "{out:?}");
}

/// Runs `forwarded_signal_child` in a process group of its own, sends `kill` the `target`
/// arguments once its container is up (`{pid}` is the child's pid), and checks that the
/// container got the signal and the supervisor its exit status.
fn forward_to_child(signal: &str, target: &str) {
    if !available() {
        return;
    }
    let dir = skiff_tests::temp_dir();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "forwarded_signal_child", "--ignored", "--nocapture"])
        .env("SKIFF_FORWARD_DIR", dir.path())
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dir.path().join("ready").exists() {
        assert!(std::time::Instant::now() < deadline, "the container never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let target = target.replace("{pid}", &child.id().to_string());
    let killed = std::process::Command::new("kill").args([signal, "--", &target]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut output = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut output).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut output).unwrap();
    assert!(status.success(), "the child supervisor failed: {output}");
    assert!(output.contains("1 passed"), "{output}");
}

#[test]
fn sigterm_to_the_supervisor_is_forwarded() {
    forward_to_child("-TERM", "{pid}");
}

/// A Ctrl-C in a terminal signals the whole foreground process group: the supervisor and the
/// sandbox's intermediate process alike. The container still gets it once, through the
/// supervisor, and its exit status comes back.
#[test]
fn sigint_to_the_supervisors_process_group_is_forwarded() {
    forward_to_child("-INT", "-{pid}");
}

#[test]
fn a_frozen_container_makes_no_progress_until_thawed() {
    if !available() {
        return;
    }
    let root = TestRootfs::new();
    let spec = root.spec(&["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; done"]);
    let (stdio, _, _) = capture(&root);
    let mut container = sandbox::spawn(&spec, stdio).unwrap();
    let counter = root.rootfs.join("tmp/n");
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    skiff_tests::wait_for("the counter", || !read().is_empty());
    let frozen = sandbox::freeze(&spec.id).unwrap().expect("the container's cgroup has a freezer");
    let before = read();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(read(), before, "a frozen container wrote");
    drop(frozen);
    skiff_tests::wait_for("the counter to go on", || read() != before);
    container.signal(Signal::SIGKILL).unwrap();
    assert_eq!(container.wait().unwrap(), ExitStatus::Signaled(Signal::SIGKILL));
}

/// Where the unified (cgroup2) hierarchy is mounted, if anywhere.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].into())
    })
}

#[test]
fn the_cgroup2_device_filter_allows_only_its_rules() {
    if !available() {
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        skiff_tests::skip::<()>("no cgroup2 hierarchy is mounted");
        return;
    };
    let dir = mount.join(format!("skiff-test-devices-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let rules: Vec<sandbox::DeviceRule> =
        ["c 1:3 rw", "c *:* m"].iter().map(|r| r.parse().unwrap()).collect();
    sandbox::attach_device_filter(&dir, &rules).unwrap();
    // A shell that joins the cgroup, then tries /dev/null (allowed), /dev/zero (not) and
    // mknod of a char device (allowed) and a block device (not).
    let nodes = tempfile::tempdir().unwrap();
    let script = r#"echo $$ > "$1/cgroup.procs" && exec sh -c '
        head -c 0 /dev/null && echo null
        head -c 1 /dev/zero >/dev/null 2>&1 && echo zero
        mknod "$0/c" c 1 5 2>/dev/null && echo mknod-char
        mknod "$0/b" b 7 0 2>/dev/null && echo mknod-block
        true' "$2""#;
    let out = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", script, "sh"])
        .arg(&dir)
        .arg(nodes.path())
        .output()
        .unwrap();
    std::fs::remove_dir(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "null\nmknod-char\n");
    let bad = "c 1:x rw".parse::<sandbox::DeviceRule>().unwrap_err().to_string();
    assert!(bad.contains("device rule \"c 1:x rw\""), "{bad}");
}
