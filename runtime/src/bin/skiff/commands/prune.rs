//! `skiff container prune`, `skiff image prune`, `skiff system prune` and `skiff system df`:
//! what stopped containers and unused images hold, and removing it, as docker's commands do.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::bail;
use skiff::container::State;

use super::images::human_size;
use crate::context::Context;

#[derive(clap::Args)]
pub struct ForceArgs {
    /// Do not ask first.
    #[arg(short, long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct ImagePruneArgs {
    /// Every image no container uses, not only the unneeded ones.
    #[arg(short, long)]
    all: bool,
    /// Do not ask first.
    #[arg(short, long)]
    force: bool,
}

/// `container prune`.
pub fn container(ctx: &Context, args: ForceArgs) -> anyhow::Result<()> {
    if !confirm("This will remove all stopped containers.", args.force)? {
        return Ok(());
    }
    let freed = prune_containers(ctx)?;
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(())
}

/// `image prune`.
pub fn image(ctx: &Context, args: ImagePruneArgs) -> anyhow::Result<()> {
    let warning = match args.all {
        true => "This will remove all images without at least one container associated to them.",
        false => "This will remove the images and unpacked trees nothing needs.",
    };
    if !confirm(warning, args.force)? {
        return Ok(());
    }
    let freed = prune_images(ctx, args.all)?;
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(())
}

/// `system prune`.
pub fn system(ctx: &Context, args: ImagePruneArgs) -> anyhow::Result<()> {
    let images = if args.all { "all images without a container" } else { "images nothing needs" };
    let warning = format!(
        "This will remove:\n  - all stopped containers\n  - {images}\n  - cached chunks no running container holds"
    );
    if !confirm(&warning, args.force)? {
        return Ok(());
    }
    let mut freed = prune_containers(ctx)?;
    freed += prune_images(ctx, args.all)?;
    let chunks = ctx.cache()?.prune()?;
    println!("\nDeleted cached chunks: {}", human_size(chunks));
    freed += chunks;
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(())
}

/// Removes every container that is neither running nor starting; the bytes its files held.
fn prune_containers(ctx: &Context) -> anyhow::Result<u64> {
    let containers = super::run::containers(ctx)?;
    let mut freed = 0;
    let mut images = Vec::new();
    let mut header = false;
    for state in containers.list()?.iter().filter(|s| stopped(s)) {
        let size = du(&containers.paths(&state.id).dir);
        skiff::container::remove(&containers, state, false)?;
        if !header {
            println!("Deleted Containers:");
            header = true;
        }
        println!("{}", state.id);
        freed += size;
        images.push(state.image.manifest);
    }
    super::run::remove_unnamed_images(ctx, &images)?;
    Ok(freed)
}

/// Removes what no image or container needs (with `all`, every image no container uses too);
/// the bytes of the objects deleted.
fn prune_images(ctx: &Context, all: bool) -> anyhow::Result<u64> {
    let store = ctx.store()?;
    let containers = super::run::containers(ctx)?;
    let in_use = super::run::images_in_use(&containers.list()?);
    let names: Vec<String> = match all {
        true => {
            store.images()?.into_iter().filter(|r| !in_use.contains(&r.manifest)).map(|r| r.name).collect()
        }
        false => Vec::new(),
    };
    let sizes: std::collections::HashMap<_, _> =
        store.objects()?.into_iter().map(|d| (d, du(&store.path_of(&d)))).collect();
    let deleted = store.remove_images(&names, &in_use)?;
    for name in &names {
        println!("Untagged: {name}");
    }
    for digest in &deleted {
        println!("Deleted: {digest}");
    }
    skiff::container::remove_unused_unpacked(&store, &containers)?;
    Ok(deleted.iter().filter_map(|d| sizes.get(d)).sum())
}

/// `system df`.
pub fn df(ctx: &Context) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let containers = super::run::containers(ctx)?;
    let states = containers.list()?;
    let in_use = super::run::images_in_use(&states);
    let images = store.images()?;
    let active_images = images.iter().filter(|r| in_use.contains(&r.manifest)).count();
    let kept = store.reachable(&in_use);
    let (mut image_bytes, mut reclaimable_images) = (0, 0);
    for digest in store.objects()? {
        let size = du(&store.path_of(&digest));
        image_bytes += size;
        if !kept.contains(&digest) {
            reclaimable_images += size;
        }
    }
    let (mut container_bytes, mut reclaimable_containers) = (0, 0);
    for state in &states {
        let size = du(&containers.paths(&state.id).upper);
        container_bytes += size;
        if stopped(state) {
            reclaimable_containers += size;
        }
    }
    let named = containers.named_volumes();
    let (mut volume_bytes, mut unused_volume_bytes, mut used_volumes) = (0, 0, 0);
    let volumes = named.list()?;
    for volume in &volumes {
        let size = du(&volume.mountpoint);
        volume_bytes += size;
        match named.users(&volume.name, &states).is_empty() {
            true => unused_volume_bytes += size,
            false => used_volumes += 1,
        }
    }
    let cache = ctx.cache()?.stats();
    let share = |part: u64, whole: u64| match whole {
        0 => "0B".to_string(),
        _ => format!("{} ({}%)", human_size(part), part * 100 / whole),
    };
    let running = states.iter().filter(|s| s.is_running()).count();
    super::print_table(&[
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"].map(String::from),
        [
            "Images".into(),
            images.len().to_string(),
            active_images.to_string(),
            human_size(image_bytes),
            share(reclaimable_images, image_bytes),
        ],
        [
            "Containers".into(),
            states.len().to_string(),
            running.to_string(),
            human_size(container_bytes),
            share(reclaimable_containers, container_bytes),
        ],
        [
            "Local volumes".into(),
            volumes.len().to_string(),
            used_volumes.to_string(),
            human_size(volume_bytes),
            share(unused_volume_bytes, volume_bytes),
        ],
        [
            "Chunk cache".into(),
            cache.chunks.to_string(),
            "-".into(),
            human_size(cache.bytes_used),
            format!("(budget {})", human_size(cache.budget)),
        ],
    ]);
    Ok(())
}

/// Neither running nor being started by a live supervisor.
fn stopped(s: &State) -> bool {
    !s.is_running() && s.supervisor.is_none_or(|p| !p.is_alive())
}

/// The bytes of the files under `path` (itself, if a file), symlinks not followed.
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let entries = std::fs::read_dir(path).into_iter().flatten().flatten();
    meta.blocks() * 512 + entries.map(|e| du(&e.path())).sum::<u64>()
}

/// docker's question before a prune: `-f` answers yes; otherwise a `y` on stdin.
pub fn confirm(warning: &str, force: bool) -> anyhow::Result<bool> {
    if force {
        return Ok(true);
    }
    print!("WARNING! {warning}\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer)? == 0 && !std::io::stdin().is_terminal() {
        bail!("no answer on stdin: give -f to prune without asking");
    }
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
