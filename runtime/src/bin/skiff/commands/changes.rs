//! `skiff diff` and `skiff commit`: what a container's (or a mount's, or an upper
//! directory's) changes are, and turning them into a new image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skiff::container::State;
use skiff::image::{commit, CommitOptions, LayerCompression, StoredImage};
use skiff::mount::{mounts, open_union, MountPaths};
use skiff::store::ImageRecord;

use crate::context::Context;

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The image the upper directory belongs to (needed when SOURCE is not a skiff mount).
    #[arg(long)]
    image: Option<String>,
    /// A container (name or id), a skiff mount point, or an upper directory.
    source: PathBuf,
}

#[derive(clap::Args)]
pub struct CommitArgs {
    /// The image the upper directory belongs to (needed when SOURCE is not a skiff mount).
    #[arg(long)]
    image: Option<String>,
    /// Layer format: `estargz` (lazy-pullable, the default) or `gzip`.
    #[arg(long, default_value = "estargz", value_parser = ["estargz", "gzip"])]
    format: String,
    /// Comment for the new layer's history entry.
    #[arg(short, long)]
    message: Option<String>,
    #[arg(short, long)]
    author: Option<String>,
    /// A Dockerfile instruction for the new image's config (CMD, ENTRYPOINT, ENV, WORKDIR,
    /// USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD); repeatable.
    #[arg(short, long = "change")]
    changes: Vec<String>,
    /// Pause a running container while its changes are read, as docker does (`--pause
    /// false`: read them as they are being written).
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pause: bool,
    /// A container (name or id), a skiff mount point, or an upper directory.
    source: PathBuf,
    /// The new image's name.
    new_image: String,
}

/// Where a change set comes from: its base image, its directories, and its container if it
/// is one's.
struct Source {
    image: ImageRecord,
    paths: MountPaths,
    container: Option<State>,
}

/// The base image and the upper/work directories behind `source`.
fn resolve(ctx: &Context, source: &Path, image: Option<&str>) -> anyhow::Result<Source> {
    let store = ctx.store()?;
    let name = source.to_string_lossy();
    if !name.contains('/') {
        let containers = super::run::containers(ctx)?;
        if let Ok(state) = containers.find(&name) {
            let paths = container_paths(&containers, &state);
            return Ok(Source { image: state.image.clone(), paths, container: Some(state) });
        }
    }
    let path = match source.canonicalize() {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !name.contains('/') => {
            bail!("no such container: {name} (nor a directory of that name)")
        }
        Err(e) => return Err(e).with_context(|| format!("{}", source.display())),
    };
    if let Some((_, m)) = mounts(ctx.root()).into_iter().find(|(_, m)| m.target == path) {
        let record = store.find_image(&m.image)?;
        let paths = MountPaths { upper: m.upper, work: m.work, record: PathBuf::new() };
        return Ok(Source { image: record, paths, container: None });
    }
    let Some(image) = image else {
        bail!("{} is not a skiff mount; name its image with --image", path.display());
    };
    let record = store.find_image(image)?;
    Ok(Source { image: record, paths: MountPaths::new(ctx.root(), &path, Some(&path)), container: None })
}

pub fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<()> {
    let Source { image: record, paths, .. } = resolve(ctx, &args.source, args.image.as_deref())?;
    let store = ctx.store()?;
    let image = StoredImage::load(&store, &record)?;
    let (_, union) = open_union(&ctx.client()?, &store, &ctx.cache()?, &image, &paths, None, &[])?;
    for change in union.changes().with_context(|| format!("reading {}", paths.upper.display()))? {
        println!("{change}");
    }
    Ok(())
}

pub fn commit_changes(ctx: &Context, args: CommitArgs) -> anyhow::Result<()> {
    let Source { image: base, paths, container } = resolve(ctx, &args.source, args.image.as_deref())?;
    let dest = super::parse_reference(&args.new_image)?;
    // Paused until the layer is written: no file is caught half changed.
    let _paused = match container.filter(|c| args.pause && c.is_running()) {
        Some(c) => {
            let frozen =
                skiff::sandbox::freeze(&c.id).with_context(|| format!("pausing container {}", c.name))?;
            match frozen {
                Some(_) => tracing::info!(container = %c.name, "paused for the commit"),
                None => {
                    tracing::warn!(container = %c.name, "no freezer cgroup (made by an earlier skiff): committing it running")
                }
            }
            frozen
        }
        None => None,
    };
    let compression = if args.format == "gzip" { LayerCompression::Gzip } else { LayerCompression::Estargz };
    let options = CommitOptions {
        compression,
        message: args.message,
        author: args.author,
        changes: args.changes,
        created_by: None,
    };
    let record = commit_upper(ctx, &base, &paths, &dest, &options)?;
    println!("{}", record.digest);
    Ok(())
}

/// The image of `base` with the changes in `paths`' upper directory as a new layer.
pub fn commit_upper(
    ctx: &Context,
    base: &ImageRecord,
    paths: &MountPaths,
    dest: &skiff::Reference,
    options: &CommitOptions,
) -> anyhow::Result<ImageRecord> {
    let store = ctx.store()?;
    let image = StoredImage::load(&store, base)?;
    let (_, union) = open_union(&ctx.client()?, &store, &ctx.cache()?, &image, paths, None, &[])?;
    commit(&store, base, &union, dest, options)
        .with_context(|| format!("committing {} onto {}", paths.upper.display(), base.name))
}

/// The upper and work directories of container `state`, as a commit reads them.
pub fn container_paths(containers: &skiff::container::Containers, state: &State) -> MountPaths {
    let upper = containers.paths(&state.id).upper;
    let work = skiff::container::work_dir(&upper);
    MountPaths { upper, work, record: PathBuf::new() }
}
