//! `skiff pause` and `skiff unpause`: every process of a running container stopped (by the
//! cgroup freezer), and let go on, as docker's commands do.

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn pause(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::run::for_each_container(ctx, &args.containers, "pausing", |_containers, state| {
        skiff::container::pause(state)?;
        Ok(())
    })
}

pub fn unpause(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::run::for_each_container(ctx, &args.containers, "unpausing", |_containers, state| {
        skiff::container::unpause(state)?;
        Ok(())
    })
}
