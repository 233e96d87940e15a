//! `skiff info`: what skiff holds and the host it runs on, as docker info shows them.

use serde::Serialize;

use super::images::human_size;
use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// `json` for the same as one JSON object.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Info {
    version: &'static str,
    containers: usize,
    containers_running: usize,
    containers_paused: usize,
    containers_stopped: usize,
    images: usize,
    volumes: usize,
    root_dir: String,
    chunk_cache_bytes: u64,
    chunk_cache_budget: u64,
    cgroup_version: Option<u8>,
    fuse: bool,
    kernel_version: String,
    operating_system: String,
    architecture: &'static str,
    cpus: usize,
    memory_bytes: u64,
    insecure_registries: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let states = containers.list()?;
    let running: Vec<_> = states.iter().filter(|s| s.is_running()).collect();
    let paused = running.iter().filter(|s| skiff::sandbox::is_paused(&s.id)).count();
    let cache = ctx.cache()?.stats();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let pretty = os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("unknown");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0);
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        containers: states.len(),
        containers_running: running.len() - paused,
        containers_paused: paused,
        containers_stopped: states.len() - running.len(),
        images: ctx.store()?.images()?.len(),
        volumes: containers.named_volumes().list()?.len(),
        root_dir: ctx.root().display().to_string(),
        chunk_cache_bytes: cache.bytes_used,
        chunk_cache_budget: cache.budget,
        cgroup_version: skiff::sandbox::cgroup_version().ok(),
        fuse: std::path::Path::new("/dev/fuse").exists(),
        kernel_version: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        operating_system: pretty.trim_matches('"').to_string(),
        architecture: std::env::consts::ARCH,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: memory_kib * 1024,
        insecure_registries: ctx.registry_options()?.insecure_registries.into_iter().collect(),
    };
    if args.format.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let cgroup = info.cgroup_version.map_or("none found".to_string(), |v| v.to_string());
    println!("Version: {}", info.version);
    println!("Containers: {}", info.containers);
    println!(" Running: {}", info.containers_running);
    println!(" Paused: {}", info.containers_paused);
    println!(" Stopped: {}", info.containers_stopped);
    println!("Images: {}", info.images);
    println!("Volumes: {}", info.volumes);
    println!("Root dir: {}", info.root_dir);
    println!("Pull modes: lazy (FUSE union of eStargz and gzip layers), full (overlayfs)");
    println!(
        "Chunk cache: {} of {}",
        human_size(info.chunk_cache_bytes),
        human_size(info.chunk_cache_budget)
    );
    println!("Cgroup version: {cgroup}");
    println!("FUSE: {}", if info.fuse { "/dev/fuse" } else { "missing (lazy pulls cannot mount)" });
    println!("Kernel version: {}", info.kernel_version);
    println!("Operating system: {}", info.operating_system);
    println!("Architecture: {}", info.architecture);
    println!("CPUs: {}", info.cpus);
    println!("Total memory: {}", super::stats::binary_size(info.memory_bytes));
    if !info.insecure_registries.is_empty() {
        println!("Insecure registries: {}", info.insecure_registries.join(", "));
    }
    Ok(())
}
