//! `skiff update`: a container's memory, CPU (time, weight, which CPUs) and process limits,
//! and its restart policy, changed at once if it runs and for its later starts, as docker
//! update changes them.

use anyhow::{bail, Context as _};
use skiff::container::RestartPolicy;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    resources: super::run::ResourceFlags,
    /// Its restart policy from now on: no, on-failure[:N], always, unless-stopped.
    #[arg(long)]
    restart: Option<RestartPolicy>,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    if !args.resources.any() && args.restart.is_none() {
        bail!("nothing to update: give --memory, --memory-swap, --memory-reservation, --cpus, --cpu-shares, --cpuset-cpus, --cpuset-mems, --pids-limit or --restart");
    }
    let containers = super::run::containers(ctx)?;
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        // As docker refuses it: the container is removed when it ends.
        if state.auto_remove && args.restart.is_some_and(|policy| policy != RestartPolicy::No) {
            bail!("updating {input}: its restart policy cannot change, as --rm removes it when it ends");
        }
        let resources = args
            .resources
            .apply(state.spec.resources.clone())
            .with_context(|| format!("updating {input}"))?;
        skiff::container::update(&containers, &state, resources, args.restart)
            .with_context(|| format!("updating {input}"))?;
        println!("{input}");
    }
    Ok(())
}
