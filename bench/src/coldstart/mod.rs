//! `skiff-bench coldstart`: HelloBench-style cold starts of real images, skiff lazy / with a
//! profile / full pull against podman, over unshaped loopback or a tbf-shaped link, in a
//! network namespace of the bench's own with its own registry.
//!
//! Order of work: build the images once (cached), start the namespace and registry, push and
//! convert once, shape the link, record profiles, then for each iteration and workload each
//! mode in rotated order, cold (fresh root, page cache dropped) then warm (same root).

mod images;
mod link;
mod modes;
mod proc;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use regex::Regex;

use images::{Builder, Variant, Workload};
pub use link::parse_rate;
use link::{Blobs, Link, Shape};
use modes::{Mode, Phase, Runner, SkiffFeatures};
use proc::{bail_if_interrupted, drop_page_cache, interrupted, remove_tree, Ready};
use report::{Failure, LinkInfo, Report};

#[derive(clap::Args)]
pub struct Args {
    /// Where images, the registry's storage and scratch roots live.
    #[arg(long, default_value = "/var/cache/skiff-bench")]
    cache_dir: PathBuf,
    /// Built workloads to run (python, gcc, jdk, postgres, busybox).
    #[arg(long, value_delimiter = ',', default_value = "python,gcc,jdk,postgres,busybox")]
    workloads: Vec<String>,
    /// Also run this image (skopeo syntax; a bare reference means docker://) with the command
    /// after `--`.
    #[arg(long, requires = "command")]
    image: Option<String>,
    /// Name of the --image workload in the report.
    #[arg(long, default_value = "custom")]
    name: String,
    /// The --image workload is ready when a line of its output matches (else: when it exits).
    #[arg(long, requires = "image")]
    ready: Option<String>,
    /// Modes to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "lazy,profile,optimized,full,podman")]
    modes: Vec<Mode>,
    /// Iterations (cold + warm run of every mode in each).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the warm runs.
    #[arg(long)]
    no_warm: bool,
    /// Leave the registry's files out of the page cache for cold runs too, as they are left
    /// after the drop (by default they are read back in: the registry is the link's far end).
    #[arg(long)]
    cold_registry: bool,
    /// Where blob bytes come from: `redirect`, the registry redirecting each blob GET to its
    /// storage, served by nginx (as public registries hand blobs to a CDN or object store);
    /// `registry`, docker-registry sending them itself.
    #[arg(long, value_enum, default_value = "redirect")]
    blobs: Blobs,
    /// Shape the link to this rate (tc units: 100mbit, 1gbit).
    #[arg(long, value_parser = link::parse_rate)]
    rate: Option<u64>,
    /// Add this many milliseconds of round-trip time, through a delay line (a relay in the
    /// namespace, which then also keeps the rate, each direction at it).
    #[arg(long)]
    delay: Option<u64>,
    /// busybox and python, one run, unshaped: a few minutes.
    #[arg(long, conflicts_with_all = ["rate", "delay", "runs", "workloads"])]
    quick: bool,
    /// The skiff binary (default: next to skiff-bench, else on PATH).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// `--network` of the containers.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    network: String,
    /// Give up on a start after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Build the images again: empties the bench's OCI layout and registry storage first.
    #[arg(long)]
    rebuild: bool,
    /// Debian mirror for debootstrap (default: apt's bookworm source).
    #[arg(long)]
    mirror: Option<String>,
    /// Convert the eStargz images with chunks of this many bytes (default: skiff convert's);
    /// each size is its own image in the bench's registry.
    #[arg(long, value_parser = skiff::size::parse_size)]
    chunk_size: Option<u64>,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write every sample as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Write an SVG bar chart.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// The command of the --image workload.
    #[arg(last = true)]
    command: Vec<String>,
}

fn find_skiff(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding skiff-bench's own path")?;
    let beside = exe.with_file_name("skiff");
    if beside.exists() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("skiff")).find(|p| p.exists()))
        .context("no skiff binary next to skiff-bench or on PATH; pass --skiff")
}

fn require_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !std::env::split_paths(&path).any(|d| d.join(tool).exists()))
        .map(|(tool, package)| format!("{tool} (apt-get install {package})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    Ok(())
}

/// A scratch directory removed (with whatever is mounted in it) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            eprintln!("warning: cleaning up {}: {e:#}", self.0.display());
        }
    }
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    proc::catch_interrupts()?;
    if args.quick {
        args.workloads = vec!["busybox".into(), "python".into()];
        args.runs = 1;
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    require_tools(&[
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
        ("debootstrap", "debootstrap"),
    ])?;
    if args.blobs == Blobs::Redirect {
        require_tools(&[("nginx", "nginx")])?;
    }
    let skiff = find_skiff(args.skiff.as_deref())?;
    let variants: Vec<Variant> =
        args.workloads.iter().map(|w| Variant::parse(w)).collect::<Result<_, _>>()?;

    // Which modes can run here.
    let features = SkiffFeatures::probe(&skiff);
    let mut skipped: Vec<(Mode, String)> = Vec::new();
    let mut modes: Vec<Mode> = Vec::new();
    for &mode in &args.modes {
        if modes.contains(&mode) {
            continue;
        }
        let why = match mode {
            Mode::Podman if !modes::podman_installed() => Some("podman is not installed"),
            _ => features.missing_for(mode),
        };
        match why {
            Some(why) => {
                eprintln!("skipping {}: {why}", mode.name());
                skipped.push((mode, why.to_string()));
            }
            None => modes.push(mode),
        }
    }

    // Images, built once.
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("creating {}", args.cache_dir.display()))?;
    let mirror = match args.mirror.clone().or_else(|| skiff_bench::apt::host_mirror("bookworm")) {
        Some(m) => m,
        None => bail!("no bookworm source in /etc/apt/sources.list*; pass --mirror"),
    };
    if args.rebuild {
        for dir in ["oci", "registry"] {
            remove_tree(&args.cache_dir.join(dir))?;
        }
    }
    let builder = Builder::new(&args.cache_dir, mirror)?;
    let mut workloads: Vec<Workload> = Vec::new();
    for &v in &variants {
        builder.ensure(v).with_context(|| format!("building the {} image", v.name()))?;
        workloads.push(Workload::built(v));
    }
    if let Some(image) = &args.image {
        let name = args.name.as_str();
        if variants.iter().any(|v| v.name() == name || v.tag() == name) || name == "base" {
            bail!("--name {name} is taken by a built workload");
        }
        builder.import(name, image)?;
        let ready = match &args.ready {
            Some(re) => Ready::Line(Regex::new(re).with_context(|| format!("--ready {re:?}"))?),
            None => Ready::Exit,
        };
        workloads.push(Workload::custom(name, args.command.clone(), ready));
    }

    // The link, the registry, the images in it.
    let work = Scratch(args.cache_dir.join(format!("run-{}", std::process::id())));
    remove_tree(&work.0)?;
    std::fs::create_dir_all(&work.0)?;
    proc::spread_roots(&work.0);
    let mut link = Link::start(&args.cache_dir.join("registry"), &work.0, args.blobs, args.delay.is_some())?;
    if let Some(size) = args.chunk_size {
        for w in &mut workloads {
            w.set_chunk_size(size);
        }
    }
    for w in &workloads {
        builder.publish(&link, &skiff, &args.cache_dir.join("convert-root"), w)?;
    }
    let shape = Shape { rate_bits_per_s: args.rate, delay_ms: args.delay };
    link.shape(&shape)?;
    let short_dir = Scratch(PathBuf::from(format!("/run/skiff-bench-{}", std::process::id())));

    let podman_conf = work.0.join("containers.conf");
    modes::write_podman_conf(&podman_conf)?;
    let runner = Runner {
        link: &link,
        skiff,
        podman_conf: Some(podman_conf),
        network: args.network.clone(),
        timeout: Duration::from_secs(args.timeout),
        profiles: work.0.join("profiles"),
        short_dir: short_dir.0.clone(),
    };

    let mut samples = Vec::new();
    let mut failures = Vec::new();
    if modes.iter().any(|m| m.has_profile()) {
        for w in &workloads {
            if let Err((mode, e)) = record_profiles(&runner, &builder, &modes, &args.cache_dir, &work.0, w) {
                bail_if_interrupted()?;
                eprintln!("  failed: {e:#}");
                failures.push(Failure {
                    workload: w.name.clone(),
                    mode,
                    phase: Phase::Cold,
                    iteration: 0,
                    error: format!("recording the profile: {e:#}"),
                });
            }
        }
    }
    remove_tree(&args.cache_dir.join("convert-root"))?;

    let mut dropped_page_cache = true;
    for i in 0..args.runs {
        for w in &workloads {
            for mode in modes::rotation(&modes, i) {
                if mode.has_profile() && !runner.profile_dir(w, mode).exists() {
                    continue;
                }
                let root = work.0.join(format!("{}-{}-{i}", w.name, mode.name()));
                runner.remove_root(&root)?;
                runner.prepare_root(&root, mode, w)?;
                let phases: &[Phase] =
                    if args.no_warm { &[Phase::Cold] } else { &[Phase::Cold, Phase::Warm] };
                for &phase in phases {
                    if phase == Phase::Cold {
                        dropped_page_cache &= drop_page_cache();
                        if !args.cold_registry {
                            link.warm_registry(mode.image(w))?;
                        }
                    }
                    let result = runner.measure(w, mode, phase, &root, i);
                    bail_if_interrupted()?;
                    match result {
                        Ok(s) => {
                            eprintln!(
                                "run {}/{} {:<9} {:<13} {}: {:.2} s, {:.1} MB in {} requests",
                                i + 1,
                                args.runs,
                                w.name,
                                mode.name(),
                                phase.name(),
                                s.ready_s,
                                s.blob_bytes as f64 / 1e6,
                                s.blob_requests
                            );
                            samples.push(s);
                        }
                        Err(e) => {
                            eprintln!(
                                "run {}/{} {} {} {}: failed: {e:#}",
                                i + 1,
                                args.runs,
                                w.name,
                                mode.name(),
                                phase.name()
                            );
                            failures.push(Failure {
                                workload: w.name.clone(),
                                mode,
                                phase,
                                iteration: i,
                                error: format!("{e:#}"),
                            });
                            break;
                        }
                    }
                }
                runner.remove_root(&root)?;
            }
        }
    }
    if interrupted() {
        bail!("interrupted");
    }

    let report = Report::new(
        LinkInfo {
            rate_bits_per_s: args.rate,
            delay_ms: args.delay,
            cold_registry: args.cold_registry,
            blobs: args.blobs,
        },
        dropped_page_cache,
        skipped,
        samples,
        failures,
    );
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report.csv()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The profile a recording run saved in `dir` (a copy of its root's `profiles/`): the
/// `<digest>.json`, not the `<digest>.plan.json` of its first batch skiff keeps beside it.
fn recorded_profile(dir: &Path) -> anyhow::Result<PathBuf> {
    let names = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in names {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".json") && !name.ends_with(".plan.json") {
            return Ok(path);
        }
    }
    bail!("no profile in {}", dir.display())
}

/// Records the profile of `w` on its eStargz image; for the optimized mode, converts the
/// image with it (keeping a copy of the profile used). The mode that failed, if one did.
fn record_profiles(
    runner: &Runner<'_>,
    builder: &Builder,
    modes: &[Mode],
    cache_dir: &Path,
    work: &Path,
    w: &Workload,
) -> Result<(), (Mode, anyhow::Error)> {
    eprintln!("recording the prefetch profile of {}", w.name);
    let scratch = Scratch(work.join(format!("record-{}", w.name)));
    runner.record_profile(w, &scratch.0).map_err(|e| (Mode::Profile, e))?;
    if !modes.contains(&Mode::Optimized) {
        return Ok(());
    }
    let optimize = || -> anyhow::Result<()> {
        let profile = recorded_profile(&runner.profile_dir(w, Mode::Profile))?;
        builder.optimize(runner.link, &runner.skiff, &cache_dir.join("convert-root"), w, &profile)?;
        let kept = runner.profile_dir(w, Mode::Optimized);
        std::fs::create_dir_all(&kept)?;
        std::fs::copy(&profile, kept.join("converted-with.json"))?;
        Ok(())
    };
    optimize().map_err(|e| (Mode::Optimized, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_profile_is_the_json_beside_its_plan() {
        let dir = tempfile::tempdir().unwrap();
        let empty = recorded_profile(dir.path()).unwrap_err();
        assert!(empty.to_string().contains("no profile in"), "{empty}");
        std::fs::write(dir.path().join("ab12.plan.json"), "{}").unwrap();
        assert!(recorded_profile(dir.path()).is_err(), "a plan is not a profile");
        std::fs::write(dir.path().join("ab12.json"), "{}").unwrap();
        assert_eq!(recorded_profile(dir.path()).unwrap(), dir.path().join("ab12.json"));
    }
}
