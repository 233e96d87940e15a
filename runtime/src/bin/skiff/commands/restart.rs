//! `skiff restart`: containers stopped (their stop signal, then SIGKILL after `-t`) and
//! started again in the background, as docker restart.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to wait for each to stop before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        skiff::container::stop(&containers, &state, std::time::Duration::from_secs(args.time))
            .with_context(|| format!("stopping {input}"))?;
        let stopped = containers.load(&state.id)?;
        let started = super::run::start_detached(ctx, &containers, &stopped)
            .with_context(|| format!("starting {input}"))?;
        if started != ExitCode::SUCCESS {
            anyhow::bail!("{input} did not start again");
        }
        println!("{input}");
    }
    Ok(())
}
