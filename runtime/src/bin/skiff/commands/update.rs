//! `skiff update`: a container's memory, CPU (time, weight, which CPUs) and process limits
//! changed, at once if it runs and for its later starts, as docker update changes them.

use anyhow::{bail, Context as _};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    resources: super::run::ResourceFlags,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    if !args.resources.any() {
        bail!("nothing to update: give --memory, --memory-swap, --memory-reservation, --cpus, --cpu-shares, --cpuset-cpus, --cpuset-mems or --pids-limit");
    }
    let containers = super::run::containers(ctx)?;
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        let resources = args
            .resources
            .apply(state.spec.resources.clone())
            .with_context(|| format!("updating {input}"))?;
        skiff::container::update(&containers, &state, resources)
            .with_context(|| format!("updating {input}"))?;
        println!("{input}");
    }
    Ok(())
}
