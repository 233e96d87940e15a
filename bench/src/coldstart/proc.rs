//! Processes the bench starts: checked helper commands, the timed start of a workload (until a
//! ready line or its exit, with the runtime's peak RSS sampled), stopping by pid, Ctrl-C, and
//! the on-disk chores around a run (unmounting what a runtime left, disk usage, page cache).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use regex::Regex;

/// Set by SIGINT/SIGTERM: the bench stops what runs, cleans up and exits. A signal is
/// process-wide, so is its flag.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Routes SIGINT and SIGTERM to the interrupted flag instead of ending the process at once,
/// so the guards (registry, namespace, mounts) get to run.
pub fn catch_interrupts() -> anyhow::Result<()> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(flag)).context("installing signal handlers")?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

pub fn bail_if_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a short helper command; its output is kept only for the error message.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let what = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {what}"))?;
    bail_if_interrupted()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!("{what}: {}: {}", out.status, tail(&format!("{stdout}{stderr}"), 10));
    }
    Ok(())
}

/// Runs a long helper command (debootstrap, apt-get) with its output appended to `log`.
pub fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let what = describe(cmd);
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {what}"))?;
    bail_if_interrupted()?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what}: {status}; the end of {}:\n{}", log.display(), tail(&text, 15));
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asks a child to stop (SIGTERM), waits up to `grace`, then kills it; always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// When a workload counts as started.
#[derive(Clone, Debug)]
pub enum Ready {
    /// A one-shot command: when it exits, successfully.
    Exit,
    /// A one-shot command: when it exits successfully, having printed a matching line (so a
    /// start that "succeeds" without doing the work is caught).
    ExitAfter(Regex),
    /// A server: when a line of its output (stdout or stderr) matches; it is stopped after.
    Line(Regex),
}

impl Ready {
    pub fn matches(&self, line: &str) -> bool {
        match self {
            Ready::Exit | Ready::ExitAfter(_) => false,
            Ready::Line(re) => re.is_match(line),
        }
    }
}

/// A timed start.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pub elapsed: Duration,
    /// Highest VmHWM of the started process itself (not its children), in KiB.
    pub peak_rss_kib: Option<u64>,
}

/// Starts `cmd` and times it until `ready`; a server is then stopped (SIGTERM, 20 s grace).
/// Fails if the command fails, exits before its ready line, or takes longer than `timeout`.
pub fn time_until_ready(cmd: &mut Command, ready: &Ready, timeout: Duration) -> anyhow::Result<Started> {
    let what = describe(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    let mut output: Vec<String> = Vec::new();
    let mut peak: Option<u64> = None;
    let mut expected_seen = false;
    let result = loop {
        // Lines first: a ready line that arrives with the exit still counts as ready.
        let mut matched = false;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
            if let Ready::ExitAfter(re) = ready {
                expected_seen |= re.is_match(&line);
            }
            matched |= ready.matches(&line);
            output.push(line);
            if matched {
                break;
            }
        }
        if matched {
            let elapsed = start.elapsed();
            stop_child(&mut child, Duration::from_secs(20));
            break Ok(elapsed);
        }
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = Some(peak.map_or(kib, |p| p.max(kib)));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let elapsed = start.elapsed();
                // The rest of its output, for the ready check and for errors.
                for line in rx.iter() {
                    matched |= ready.matches(&line);
                    if let Ready::ExitAfter(re) = ready {
                        expected_seen |= re.is_match(&line);
                    }
                    output.push(line);
                }
                break match ready {
                    Ready::Exit if status.success() => Ok(elapsed),
                    Ready::ExitAfter(_) if status.success() && expected_seen => Ok(elapsed),
                    Ready::ExitAfter(re) if status.success() => {
                        Err(anyhow::anyhow!("{what}: exited without printing a line matching /{re}/"))
                    }
                    Ready::ExitAfter(_) => Err(anyhow::anyhow!("{what}: {status}")),
                    Ready::Line(_) if matched => Ok(elapsed),
                    Ready::Exit => Err(anyhow::anyhow!("{what}: {status}")),
                    Ready::Line(re) => Err(anyhow::anyhow!("{what}: {status} before a line matched /{re}/")),
                };
            }
            Ok(None) => {}
            Err(e) => break Err(anyhow::Error::from(e).context(format!("waiting for {what}"))),
        }
        if interrupted() {
            stop_child(&mut child, Duration::from_secs(5));
            break Err(anyhow::anyhow!("interrupted"));
        }
        if start.elapsed() > timeout {
            stop_child(&mut child, Duration::from_secs(5));
            break Err(anyhow::anyhow!("{what}: not ready after {} s", timeout.as_secs()));
        }
    };
    drop(rx);
    for r in readers {
        // A reader ends when every holder of the pipe has exited; a stray grandchild could keep
        // it open, so do not wait on one that is still blocked.
        if r.is_finished() {
            let _ = r.join();
        }
    }
    match result {
        Ok(elapsed) => Ok(Started { elapsed, peak_rss_kib: peak }),
        Err(e) if output.is_empty() => Err(e),
        Err(e) => Err(anyhow::anyhow!("{e:#}; its last output:\n{}", tail(&output.join("\n"), 12))),
    }
}

/// VmHWM of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts whatever a runtime left mounted under `dir` (a FUSE mount of a killed skiff,
/// podman's overlay bind) and removes `dir`.
pub fn remove_tree(dir: &Path) -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for m in mounts_under(&info, dir) {
        if !Command::new("umount").arg(&m).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            run_checked(Command::new("umount").arg("-l").arg(&m))?;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Marks `dir` a top of directory hierarchies for ext4's block allocator (`chattr +T`), so
/// that each run's root made in it is put in a block group of its own choosing instead of
/// next to the root the run before removed. On an ext4 without a journal (as on these
/// machines), creating a file skips, one by one, the free inodes of its group that were
/// freed in the last 60 s: a cold postgres start right after the previous run's removal
/// spent 0.26-0.43 s on initdb's post-bootstrap step, more run after run, against 0.28-0.30 s
/// with the flag (four runs each, alternating), a leftover of the bench's own previous run
/// that a cold start should not carry. Says so and carries on where the flag cannot be set
/// (another file system).
pub fn spread_roots(dir: &Path) {
    let set = Command::new("chattr").arg("+T").arg(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !set.is_ok_and(|s| s.success()) {
        eprintln!(
            "note: could not mark {} a top directory (chattr +T): runs may create files among the inodes the run before them freed",
            dir.display()
        );
    }
}

/// Bytes allocated on disk below `dir` (hard links counted once, mounts not entered).
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return 0 };
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != top.dev() || (meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Writes back and drops the page cache, dentries and inodes; false if not allowed.
pub fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_match_the_regex_only() {
        let pg = Ready::Line(Regex::new("database system is ready to accept connections").unwrap());
        assert!(pg.matches(
            "2025-11-27 05:25:01.123 UTC [42] LOG:  database system is ready to accept connections"
        ));
        assert!(!pg.matches("LOG:  database system was shut down at 2025-11-27"));
        assert!(!Ready::Exit.matches("anything"));
        let anchored = Ready::Line(Regex::new("^hello$").unwrap());
        assert!(anchored.matches("hello"));
        assert!(!anchored.matches("hello world"));
    }

    #[test]
    fn a_server_is_timed_to_its_ready_line_and_stopped() {
        let ready = Ready::Line(Regex::new("^up$").unwrap());
        let started = time_until_ready(
            Command::new("sh").args(["-c", "echo starting; sleep 0.2; echo up >&2; exec sleep 60"]),
            &ready,
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(started.elapsed >= Duration::from_millis(200) && started.elapsed < Duration::from_secs(5));
        assert!(started.peak_rss_kib.is_some());
    }

    #[test]
    fn one_shot_commands_end_at_exit_and_failures_carry_output() {
        let ok = time_until_ready(Command::new("true").arg("x"), &Ready::Exit, Duration::from_secs(5));
        assert!(ok.is_ok());
        let err = time_until_ready(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            &Ready::Exit,
            Duration::from_secs(5),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit status: 3") && msg.contains("oops"), "{msg}");
        let hello = Ready::ExitAfter(Regex::new("^hello$").unwrap());
        assert!(time_until_ready(Command::new("echo").arg("hello"), &hello, Duration::from_secs(5)).is_ok());
        let silent = time_until_ready(&mut Command::new("true"), &hello, Duration::from_secs(5)).unwrap_err();
        assert!(format!("{silent:#}").contains("without printing"), "{silent:#}");
        let early = time_until_ready(
            Command::new("echo").arg("bye"),
            &Ready::Line(Regex::new("ready").unwrap()),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(format!("{early:#}").contains("before a line matched"));
    }

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        assert_eq!(parse_vm_hwm("Name:\tskiff\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\n"), Some(1234));
        assert_eq!(parse_vm_hwm("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn mounts_below_a_dir_deepest_first() {
        let info = "\
22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw
80 22 0:50 / /var/cache/b/run/1/podman/overlay rw - overlay overlay rw
81 22 0:51 / /var/cache/b/run/1/skiff/mnt\\040x rw - fuse.skiff skiff rw
82 80 0:52 / /var/cache/b/run/1/podman/overlay/l/merged rw - overlay overlay rw
83 22 0:53 / /var/cache/b/run/10 rw - tmpfs tmpfs rw
";
        let m = mounts_under(info, Path::new("/var/cache/b/run/1"));
        assert_eq!(
            m,
            vec![
                PathBuf::from("/var/cache/b/run/1/podman/overlay/l/merged"),
                PathBuf::from("/var/cache/b/run/1/podman/overlay"),
                PathBuf::from("/var/cache/b/run/1/skiff/mnt x"),
            ]
        );
    }

    #[test]
    fn a_scratch_dir_on_ext4_is_marked_a_top_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fs_type = Command::new("stat").args(["-f", "-c", "%T"]).arg(dir.path()).output().unwrap();
        if String::from_utf8_lossy(&fs_type.stdout).trim() != "ext2/ext3" {
            eprintln!("skipped: {} is not on ext4", dir.path().display());
            return;
        }
        let flags = |d: &Path| {
            let out = Command::new("lsattr").arg("-d").arg(d).output().unwrap();
            assert!(out.status.success(), "lsattr -d {}", d.display());
            String::from_utf8_lossy(&out.stdout).split(' ').next().unwrap_or("").to_string()
        };
        assert!(!flags(dir.path()).contains('T'), "{}", flags(dir.path()));
        spread_roots(dir.path());
        assert!(flags(dir.path()).contains('T'), "{}", flags(dir.path()));
    }
}
