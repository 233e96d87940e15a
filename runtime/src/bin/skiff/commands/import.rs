//! `skiff import`: a filesystem tarball (plain, gzip or zstd) as a new image of one layer, as
//! docker import makes it.

use std::path::PathBuf;

use anyhow::Context as _;
use skiff::image::{import, ImportOptions, LayerCompression};
use skiff::manifest::Platform;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// A Dockerfile instruction for the image's config (CMD, ENTRYPOINT, ENV, WORKDIR, USER,
    /// LABEL, EXPOSE, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD); repeatable.
    #[arg(short, long = "change")]
    changes: Vec<String>,
    /// Comment for the image's history entry.
    #[arg(short, long)]
    message: Option<String>,
    /// Layer format: `estargz` (lazy-pullable, the default) or `gzip`.
    #[arg(long, default_value = "estargz", value_parser = ["estargz", "gzip"])]
    format: String,
    /// The platform the image's config names (default: this machine's).
    #[arg(long)]
    platform: Option<Platform>,
    /// The tarball, or `-` for stdin.
    file: PathBuf,
    /// The new image's name.
    reference: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let dest = super::parse_reference(&args.reference)?;
    let store = ctx.store()?;
    let compression = if args.format == "gzip" { LayerCompression::Gzip } else { LayerCompression::Estargz };
    let options = ImportOptions {
        message: args.message,
        changes: args.changes,
        compression,
        platform: args.platform.unwrap_or_else(Platform::host),
    };
    let record = if args.file.as_os_str() == "-" {
        import(&store, &mut std::io::stdin().lock(), "the tarball on stdin", &dest, &options)?
    } else {
        let what = args.file.display().to_string();
        let mut file = std::fs::File::open(&args.file).with_context(|| format!("opening {what}"))?;
        import(&store, &mut file, &what, &dest, &options)?
    };
    println!("{}", record.digest);
    Ok(())
}
