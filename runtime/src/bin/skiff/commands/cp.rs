//! `skiff cp`: files between a container and the host, as docker cp copies them. One side is
//! `CONTAINER:PATH`, the other a host path, or `-` for a tar stream on stdin or stdout.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skiff::container::{Containers, CopyOptions, Place, State, Tree};
use skiff::image::StoredImage;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Keep the source's owners (uid and gid); else the destination's user owns the copy.
    #[arg(short, long)]
    archive: bool,
    /// Copy what a symlink at SRC points to, not the link itself.
    #[arg(short = 'L', long)]
    follow_link: bool,
    /// CONTAINER:PATH, a host path, or `-` (a tar stream on stdin, unpacked into DEST).
    src: String,
    /// CONTAINER:PATH, a host path, or `-` (SRC as a tar stream on stdout).
    dest: String,
}

/// One side of a copy, as the user wrote it.
enum Side<'a> {
    Host(&'a Path),
    Container { name: &'a str, path: &'a Path },
    Stream,
}

/// docker's reading: `NAME:PATH` names a container unless the colon comes after a `/` (a host
/// path; `./a:b` is one), and `-` is a stream.
fn side(arg: &str) -> Side<'_> {
    if arg == "-" {
        return Side::Stream;
    }
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            Side::Container { name, path: Path::new(if path.is_empty() { "/" } else { path }) }
        }
        _ => Side::Host(Path::new(arg)),
    }
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let (src, dest) = (side(&args.src), side(&args.dest));
    let (name, path) = match (&src, &dest) {
        (Side::Container { name, path }, Side::Host(_) | Side::Stream)
        | (Side::Host(_) | Side::Stream, Side::Container { name, path }) => (*name, *path),
        (Side::Container { .. }, Side::Container { .. }) => {
            bail!("copying between two containers is not supported")
        }
        (Side::Stream, Side::Stream) => bail!("SRC and DEST cannot both be `-`"),
        _ => bail!("one of SRC and DEST must be CONTAINER:PATH"),
    };
    let container = container_tree(ctx, name)?;
    let host = Tree::host()?;
    let in_container = Place { tree: &container, path, label: format!("{name}:{}", path.display()) };
    let options =
        CopyOptions { archive: args.archive, follow_link: args.follow_link, owner: None, mode: None };
    let on_host = |path: &'_ Path| -> anyhow::Result<PathBuf> {
        let absolute = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
        // `absolute` keeps a trailing slash out; docker's rules need it.
        Ok(if path.as_os_str().as_bytes().ends_with(b"/") { with_slash(&absolute) } else { absolute })
    };
    let copied = match (src, dest) {
        (_, Side::Stream) => {
            skiff::container::archive(&in_container, options, &mut std::io::stdout().lock())?;
            return Ok(());
        }
        (Side::Stream, _) => {
            skiff::container::unarchive(&in_container, options, &mut std::io::stdin().lock())?
        }
        (Side::Host(path), _) => {
            let path = on_host(path)?;
            let source = Place { tree: &host, path: &path, label: path.display().to_string() };
            skiff::container::copy(&source, &in_container, options)?
        }
        (_, Side::Host(path)) => {
            let path = on_host(path)?;
            let dest = Place { tree: &host, path: &path, label: path.display().to_string() };
            skiff::container::copy(&in_container, &dest, options)?
        }
        _ => unreachable!("one side is a container, checked above"),
    };
    eprintln!("Successfully copied {} to {}", super::images::human_size(copied), args.dest);
    Ok(())
}

/// The files of container `name`: a running one's as it sees them, a stopped one's mounted
/// for this process alone. Called before anything starts a thread (see
/// [`skiff::container::private_mounts`]).
pub fn container_tree(ctx: &Context, name: &str) -> anyhow::Result<Tree> {
    // A stopped container's rootfs is mounted where no one else sees it, and goes when this
    // process ends, however it ends.
    let containers = super::run::containers(ctx)?;
    skiff::container::private_mounts(&containers)?;
    let state = containers.find(name)?;
    tree_of(ctx, &containers, &state)
}

/// The files of container `state`: a running one's as it sees them, a stopped one's mounted
/// for this process (which has called [`skiff::container::private_mounts`]).
pub fn tree_of(ctx: &Context, containers: &Containers, state: &State) -> anyhow::Result<Tree> {
    let store = ctx.store()?;
    let image =
        StoredImage::load(&store, &state.image).with_context(|| format!("loading {}", state.image.name))?;
    // What a copy reads is no start-up: it records no profile and prefetches none.
    let quiet = State { record_profile: false, no_prefetch: true, ..state.clone() };
    let provider = super::run::provider(ctx, &quiet)?;
    Ok(Tree::container(containers, state, &*provider, &image)?)
}

fn with_slash(path: &Path) -> PathBuf {
    let mut bytes = path.as_os_str().as_bytes().to_vec();
    if !bytes.ends_with(b"/") {
        bytes.push(b'/');
    }
    PathBuf::from(OsStr::from_bytes(&bytes))
}
