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
    super::run::for_each_container(ctx, &args.containers, "removing", |containers, state| {
        skiff::container::remove(containers, state, args.force)?;
        Ok(())
    })
}
