//! `skiff save` and `skiff load`: images as OCI layout tar archives, as docker save and docker
//! load move them without a registry.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skiff::manifest::Platform;

use crate::context::Context;
use crate::progress::Bars;

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Write to this file (made whole, or not at all) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Read from this file instead of stdin.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Platform to take from an archived multi-platform image (os/arch[/variant]).
    #[arg(long)]
    platform: Option<Platform>,
}

pub fn save(ctx: &Context, args: SaveArgs) -> anyhow::Result<()> {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal: use -o FILE, or redirect stdout");
    }
    let store = ctx.store()?;
    let records = args.images.iter().map(|i| store.find_image(i)).collect::<Result<Vec<_>, _>>()?;
    let client = ctx.client()?;
    let saved = |out: &mut dyn Write| {
        skiff::image::save(&client, &store, &records, out, &Bars::new())
            .with_context(|| format!("saving {}", args.images.join(", ")))
    };
    match &args.output {
        None => saved(&mut std::io::stdout().lock()),
        Some(path) => write_whole(path, saved),
    }
}

pub fn load(ctx: &Context, args: LoadArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let platform = args.platform.unwrap_or_else(Platform::host);
    let records = match &args.input {
        None => skiff::image::load(&store, &mut std::io::stdin().lock(), "the archive on stdin", &platform)?,
        Some(path) => {
            let mut file =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            skiff::image::load(&store, &mut file, &path.display().to_string(), &platform)?
        }
    };
    for record in records {
        println!("Loaded image: {}", record.name);
    }
    Ok(())
}

/// Writes `path` through `write`: into a temp file beside it, renamed over it once whole.
pub fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    write(file.as_file_mut())?;
    // As a file made by the user's umask would be, rather than the temp file's 0600.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    nix::sys::stat::umask(umask);
    let mode = 0o666 & !umask.bits();
    std::fs::set_permissions(file.path(), std::os::unix::fs::PermissionsExt::from_mode(mode))
        .with_context(|| format!("writing {}", path.display()))?;
    file.as_file().sync_all().with_context(|| format!("writing {}", path.display()))?;
    file.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
