//! The ways a workload is started, each from its own root so "cold" means empty: skiff lazy
//! (eStargz), skiff lazy with a recorded prefetch profile, the same on an image converted with
//! that profile, skiff with a full pull before start, and podman. One call of [`Runner::measure`] is one sample.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::images::Workload;
use super::link::{last_moment, Link, REGISTRY};
use super::proc::{disk_usage, remove_tree, run_checked, time_until_ready, Ready, Started};
use super::report::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// skiff run on the eStargz image: files fetched as they are read.
    Lazy,
    /// As lazy, with the profile of an earlier recorded run prefetched.
    Profile,
    /// The image converted with that profile (`skiff convert --prioritize`): the files read
    /// first in each layer, the bytes read in chunks of their own, the profile in the
    /// manifest. Started from a root with no profile of its own, as on another machine: the
    /// start prefetches the manifest's profile.
    Optimized,
    /// skiff run --pull-mode full on the gzip image: everything fetched and unpacked first.
    Full,
    /// podman pull + podman run on the gzip image.
    Podman,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Lazy => "skiff-lazy",
            Mode::Profile => "skiff-profile",
            Mode::Optimized => "skiff-optimized",
            Mode::Full => "skiff-full",
            Mode::Podman => "podman",
        }
    }

    pub fn color(self) -> &'static str {
        match self {
            Mode::Lazy => "#2e86de",
            Mode::Profile => "#10ac84",
            Mode::Optimized => "#0b6e4f",
            Mode::Full => "#8e44ad",
            Mode::Podman => "#e67e22",
        }
    }

    fn is_skiff(self) -> bool {
        self != Mode::Podman
    }

    /// The image the mode runs (`--pull-mode` aside).
    pub fn image(self, w: &Workload) -> &str {
        match self {
            Mode::Full | Mode::Podman => &w.gzip_ref,
            Mode::Optimized => &w.optimized_ref,
            Mode::Lazy | Mode::Profile => &w.estargz_ref,
        }
    }

    /// Whether the mode needs a recorded profile.
    pub fn has_profile(self) -> bool {
        matches!(self, Mode::Profile | Mode::Optimized)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Every cache empty: a fresh root, the page cache dropped.
    Cold,
    /// Right after a cold run, from the same root.
    Warm,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Warm => "warm",
        }
    }
}

/// What the skiff binary supports, probed with `skiff run … --help` (clap refuses an unknown
/// flag or value before it prints help).
#[derive(Clone, Debug, Default)]
pub struct SkiffFeatures {
    pub run: bool,
    pub lazy: bool,
    pub full: bool,
    pub record_profile: bool,
    /// `skiff convert --prioritize` takes a recorded profile.
    pub convert_profile: bool,
}

impl SkiffFeatures {
    pub fn probe(skiff: &Path) -> SkiffFeatures {
        let accepts = |args: &[&str]| {
            Command::new(skiff).arg("run").args(args).arg("--help").output().is_ok_and(|o| o.status.success())
        };
        SkiffFeatures {
            run: accepts(&[]),
            lazy: accepts(&["--pull-mode", "lazy"]),
            full: accepts(&["--pull-mode", "full"]),
            record_profile: accepts(&["--record-profile"]),
            convert_profile: Command::new(skiff)
                .args(["convert", "--help"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("prefetch profile")),
        }
    }

    /// Why `mode` cannot run with this skiff, if it cannot.
    pub fn missing_for(&self, mode: Mode) -> Option<&'static str> {
        match mode {
            Mode::Podman => None,
            _ if !self.run => Some("this skiff has no `run` verb yet"),
            Mode::Lazy | Mode::Profile | Mode::Optimized if !self.lazy => {
                Some("this skiff's `run` has no --pull-mode lazy yet")
            }
            Mode::Full if !self.full => Some("this skiff's `run` has no --pull-mode full yet"),
            Mode::Profile | Mode::Optimized if !self.record_profile => {
                Some("this skiff's `run` has no --record-profile yet")
            }
            Mode::Optimized if !self.convert_profile => {
                Some("this skiff's `convert --prioritize` takes no prefetch profile yet")
            }
            _ => None,
        }
    }
}

/// Everything a sample needs besides the workload and mode.
pub struct Runner<'a> {
    pub link: &'a Link,
    pub skiff: PathBuf,
    /// The containers.conf podman is pointed at (CONTAINERS_CONF).
    pub podman_conf: Option<PathBuf>,
    /// `--network` of the containers.
    pub network: String,
    pub timeout: Duration,
    /// Recorded profiles: `<dir>/<workload>/` holds a skiff root's `profiles/` files (profile
    /// mode), `<dir>/<workload>.optimized/` the one its optimized image was converted with.
    pub profiles: PathBuf,
    /// Where podman's run roots go: podman refuses one longer than 50 characters.
    pub short_dir: PathBuf,
}

impl Runner<'_> {
    fn podman_runroot(&self, root: &Path) -> PathBuf {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.short_dir.join(name.chars().take(24).collect::<String>())
    }

    /// Removes a root and podman's run root for it, unmounting what was left mounted there.
    pub fn remove_root(&self, root: &Path) -> anyhow::Result<()> {
        remove_tree(&self.podman_runroot(root))?;
        remove_tree(root)
    }

    fn skiff_run(&self, root: &Path, mode: Mode, w: &Workload, record: bool) -> Command {
        let skiff = self.skiff.to_string_lossy();
        let root = root.to_string_lossy();
        let mut argv: Vec<&str> = vec![
            &skiff,
            "--root",
            &root,
            "--insecure-registry",
            REGISTRY,
            "run",
            "--rm",
            "--network",
            &self.network,
        ];
        if record {
            argv.push("--record-profile");
        }
        // Named either way: skiff's default mode is not the bench's to assume.
        argv.extend(["--pull-mode", if mode == Mode::Full { "full" } else { "lazy" }]);
        argv.push(mode.image(w));
        argv.extend(w.command.iter().map(String::as_str));
        self.link.exec_command(&argv)
    }

    fn podman(&self, root: &Path, args: &[&str]) -> Command {
        let storage = root.join("storage");
        let run = self.podman_runroot(root);
        let tmp = root.join("tmp");
        let dirs = [storage.to_string_lossy(), run.to_string_lossy(), tmp.to_string_lossy()];
        let mut argv: Vec<&str> = vec![
            "podman",
            "--root",
            &dirs[0],
            "--runroot",
            &dirs[1],
            "--tmpdir",
            &dirs[2],
            "--storage-driver",
            "overlay",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ];
        argv.extend(args);
        let mut cmd = self.link.exec_command(&argv);
        if let Some(conf) = &self.podman_conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    /// Where the profiles of `w` for `mode`'s runs are kept.
    pub fn profile_dir(&self, w: &Workload, mode: Mode) -> PathBuf {
        match mode {
            Mode::Optimized => self.profiles.join(format!("{}.optimized", w.name)),
            _ => self.profiles.join(&w.name),
        }
    }

    /// Runs the workload once with `--record-profile` from a scratch root and keeps the
    /// profile it saved, for the profile mode's runs.
    pub fn record_profile(&self, w: &Workload, scratch: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(scratch)?;
        time_until_ready(&mut self.skiff_run(scratch, Mode::Profile, w, true), &w.ready, self.timeout)
            .with_context(|| format!("recording the profile of {}", w.name))?;
        let dest = self.profile_dir(w, Mode::Profile);
        std::fs::create_dir_all(&dest)?;
        let src = scratch.join("profiles");
        let mut copied = 0;
        for entry in
            std::fs::read_dir(&src).with_context(|| format!("no profile was saved in {}", src.display()))?
        {
            let entry = entry?;
            std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
            copied += 1;
        }
        anyhow::ensure!(copied > 0, "no profile was saved in {}", src.display());
        Ok(())
    }

    /// Readies a fresh root for `mode` (the profile mode gets its profile, nothing else).
    pub fn prepare_root(&self, root: &Path, mode: Mode, w: &Workload) -> anyhow::Result<()> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        if mode == Mode::Profile {
            let dest = root.join("profiles");
            std::fs::create_dir_all(&dest)?;
            for entry in std::fs::read_dir(self.profile_dir(w, mode)).context("reading recorded profiles")? {
                let entry = entry?;
                std::fs::copy(entry.path(), dest.join(entry.file_name()))?;
            }
        }
        Ok(())
    }

    /// One timed start of `w` in `mode` from `root` (fresh for cold, reused for warm).
    pub fn measure(
        &self,
        w: &Workload,
        mode: Mode,
        phase: Phase,
        root: &Path,
        iteration: usize,
    ) -> anyhow::Result<Sample> {
        let mark = self.link.access_log_mark();
        let read_before = mode.is_skiff().then(|| skiff_read_bytes(root));
        let lo_before = self.link.lo_bytes()?;
        let watch = self.link.watch();
        let registry_cpu_before = self.link.registry_cpu();
        let began = Instant::now();
        let (started, pull) = if mode.is_skiff() {
            (time_until_ready(&mut self.skiff_run(root, mode, w, false), &w.ready, self.timeout)?, None)
        } else {
            let pull = if phase == Phase::Cold {
                let mut cmd = self.podman(root, &["pull", "--quiet", "--tls-verify=false", mode.image(w)]);
                Some(time_until_ready(&mut cmd, &Ready::Exit, self.timeout).context("podman pull")?)
            } else {
                None
            };
            let mut args = vec!["run", "--rm", "--network", &self.network, mode.image(w)];
            args.extend(w.command.iter().map(String::as_str));
            let run = time_until_ready(&mut self.podman(root, &args), &w.ready, self.timeout)?;
            (combine(pull, run), pull)
        };
        let moved = watch.map(|w| w.finish()).unwrap_or_default();
        let last_byte = last_moment(&moved, began, began + started.elapsed);
        let registry_cpu = registry_cpu_before.zip(self.link.registry_cpu());
        let traffic = self.link.registry_traffic_since(&mark)?;
        let lo_after = self.link.lo_bytes()?;
        Ok(Sample {
            workload: w.name.clone(),
            mode,
            phase,
            iteration,
            ready_s: started.elapsed.as_secs_f64(),
            pull_s: pull.map(|p| p.elapsed.as_secs_f64()),
            last_byte_s: last_byte.map(|d| d.as_secs_f64()),
            registry_cpu_s: registry_cpu.map(|(before, after)| after.saturating_sub(before).as_secs_f64()),
            blob_bytes: traffic.blob_bytes,
            blob_requests: traffic.blob_requests,
            link_bytes: lo_after.saturating_sub(lo_before),
            peak_rss_kib: started.peak_rss_kib,
            disk_bytes: disk_usage(root),
            read_bytes: read_before.map(|before| skiff_read_bytes(root).saturating_sub(before)),
        })
    }
}

/// The compressed bytes read so far by skiff's mounts under `root` (its usage totals).
fn skiff_read_bytes(root: &Path) -> u64 {
    skiff::usage::read(root).read_compressed_bytes
}

/// A pull followed by a run, as one start: times add up, the peak RSS is the higher one.
fn combine(pull: Option<Started>, run: Started) -> Started {
    match pull {
        None => run,
        Some(p) => Started {
            elapsed: p.elapsed + run.elapsed,
            peak_rss_kib: match (p.peak_rss_kib, run.peak_rss_kib) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        },
    }
}

/// Writes the containers.conf podman needs on these machines (see DESIGN.md).
pub fn write_podman_conf(path: &Path) -> anyhow::Result<()> {
    std::fs::write(
        path,
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Whether podman is installed.
pub fn podman_installed() -> bool {
    run_checked(Command::new("podman").arg("--version")).is_ok()
}

/// The order of modes in iteration `i`: rotated, so no mode always runs first (or right after
/// the same other mode).
pub fn rotation(modes: &[Mode], i: usize) -> Vec<Mode> {
    let mut v = modes.to_vec();
    if !v.is_empty() {
        let n = v.len();
        v.rotate_left(i % n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_alternate_between_iterations() {
        let m = [Mode::Lazy, Mode::Profile, Mode::Podman];
        assert_eq!(rotation(&m, 0), m.to_vec());
        assert_eq!(rotation(&m, 1), vec![Mode::Profile, Mode::Podman, Mode::Lazy]);
        assert_eq!(rotation(&m, 3), m.to_vec());
        assert!(rotation(&[], 2).is_empty());
    }

    #[test]
    fn missing_features_skip_only_their_modes() {
        let none = SkiffFeatures::default();
        assert!(none.missing_for(Mode::Lazy).is_some());
        assert_eq!(none.missing_for(Mode::Podman), None);
        let full_only = SkiffFeatures { run: true, full: true, ..SkiffFeatures::default() };
        assert_eq!(full_only.missing_for(Mode::Full), None);
        assert!(full_only.missing_for(Mode::Lazy).unwrap().contains("lazy"));
        assert!(full_only.missing_for(Mode::Profile).unwrap().contains("lazy"));
        let no_profile = SkiffFeatures { run: true, lazy: true, full: true, ..SkiffFeatures::default() };
        assert_eq!(no_profile.missing_for(Mode::Lazy), None);
        assert!(no_profile.missing_for(Mode::Profile).unwrap().contains("--record-profile"));
        assert!(no_profile.missing_for(Mode::Optimized).unwrap().contains("--record-profile"));
        let list_only = SkiffFeatures { record_profile: true, ..no_profile };
        assert_eq!(list_only.missing_for(Mode::Profile), None);
        assert!(list_only.missing_for(Mode::Optimized).unwrap().contains("convert --prioritize"));
        let all = SkiffFeatures { convert_profile: true, ..list_only };
        assert_eq!(all.missing_for(Mode::Optimized), None);
    }

    #[test]
    fn a_pull_and_a_run_add_up() {
        let p = Started { elapsed: Duration::from_millis(700), peak_rss_kib: Some(50) };
        let r = Started { elapsed: Duration::from_millis(300), peak_rss_kib: Some(80) };
        let c = combine(Some(p), r);
        assert_eq!((c.elapsed, c.peak_rss_kib), (Duration::from_secs(1), Some(80)));
    }
}
