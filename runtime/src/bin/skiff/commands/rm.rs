//! `skiff rm`: removes containers (running ones only with `-f`, which kills them).

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Kill and remove running containers.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let mut images = Vec::new();
    let removed = super::run::for_each_container(ctx, &args.containers, "removing", |containers, state| {
        skiff::container::remove(containers, state, args.force)?;
        images.push(state.image.manifest);
        Ok(())
    });
    super::run::remove_unnamed_images(ctx, &images)?;
    removed
}
