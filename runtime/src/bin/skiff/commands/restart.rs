//! `skiff restart`: containers stopped (their stop signal, then SIGKILL after `-t`) and
//! started again in the background, as docker restart.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::context::Context;

/// `stop`'s flags: the same wait before SIGKILL.
pub fn run(ctx: &Context, args: super::stop::Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        skiff::container::stop(&containers, &state, args.time.map(std::time::Duration::from_secs))
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
