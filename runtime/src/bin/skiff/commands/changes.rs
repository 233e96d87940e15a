//! `skiff diff` and `skiff commit`: what a container's (or a mount's, or an upper
//! directory's) changes are, and turning them into a new image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
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
    /// A container (name or id), a skiff mount point, or an upper directory.
    source: PathBuf,
    /// The new image's name.
    new_image: String,
}

/// The base image and the upper/work directories behind `source`.
fn resolve(ctx: &Context, source: &Path, image: Option<&str>) -> anyhow::Result<(ImageRecord, MountPaths)> {
    let store = ctx.store()?;
    let name = source.to_string_lossy();
    if !name.contains('/') {
        let containers = super::run::containers(ctx)?;
        if let Ok(state) = containers.find(&name) {
            let upper = containers.paths(&state.id).upper;
            let work = skiff::container::work_dir(&upper);
            return Ok((state.image, MountPaths { upper, work, record: PathBuf::new() }));
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
        return Ok((record, MountPaths { upper: m.upper, work: m.work, record: PathBuf::new() }));
    }
    let Some(image) = image else {
        bail!("{} is not a skiff mount; name its image with --image", path.display());
    };
    let record = store.find_image(image)?;
    Ok((record, MountPaths::new(ctx.root(), &path, Some(&path))))
}

pub fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<()> {
    let (record, paths) = resolve(ctx, &args.source, args.image.as_deref())?;
    let store = ctx.store()?;
    let image = StoredImage::load(&store, &record)?;
    let (_, union) = open_union(&ctx.client()?, &store, &ctx.cache()?, &image, &paths, None, &[])?;
    for change in union.changes().with_context(|| format!("reading {}", paths.upper.display()))? {
        println!("{change}");
    }
    Ok(())
}

pub fn commit_changes(ctx: &Context, args: CommitArgs) -> anyhow::Result<()> {
    let (base, paths) = resolve(ctx, &args.source, args.image.as_deref())?;
    let dest = super::parse_reference(&args.new_image)?;
    let store = ctx.store()?;
    let image = StoredImage::load(&store, &base)?;
    let (_, union) = open_union(&ctx.client()?, &store, &ctx.cache()?, &image, &paths, None, &[])?;
    let compression = if args.format == "gzip" { LayerCompression::Gzip } else { LayerCompression::Estargz };
    let options = CommitOptions { compression, message: args.message, author: args.author };
    let record = commit(&store, &base, &union, &dest, &options)
        .with_context(|| format!("committing {} onto {}", paths.upper.display(), base.name))?;
    println!("{}", record.digest);
    Ok(())
}
