//! `skiff stop`: the container's stop signal, then SIGKILL after `-t` seconds.

use std::time::Duration;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to wait before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    super::run::for_each_container(ctx, &args.containers, "stopping", |containers, state| {
        skiff::container::stop(containers, state, Duration::from_secs(args.time))?;
        Ok(())
    })
}
