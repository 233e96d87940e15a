//! `skiff export`: a container's filesystem as a tar stream, as docker export writes it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Write to this file (made whole, or not at all) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    container: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tar stream to a terminal: use -o FILE, or redirect stdout");
    }
    let tree = super::cp::container_tree(ctx, &args.container)?;
    let exported = |out: &mut dyn Write| {
        skiff::container::export(&tree, &args.container, out)
            .with_context(|| format!("exporting {}", args.container))
    };
    match &args.output {
        None => exported(&mut std::io::stdout().lock()),
        Some(path) => super::archive::write_whole(path, exported),
    }
}
