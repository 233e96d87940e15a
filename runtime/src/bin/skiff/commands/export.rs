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
    let Some(path) = args.output else { return exported(&mut std::io::stdout().lock()) };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    exported(file.as_file_mut())?;
    file.as_file().sync_all().with_context(|| format!("writing {}", path.display()))?;
    file.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
