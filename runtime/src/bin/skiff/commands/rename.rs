//! `skiff rename`: a container's new name, as docker rename; running or not.

use anyhow::Context as _;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    container: String,
    new_name: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(&args.container)?;
    containers.rename(&state.id, &args.new_name).with_context(|| format!("renaming {}", args.container))?;
    Ok(())
}
