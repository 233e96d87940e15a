//! `skiff update`: a container's memory, CPU and process limits changed, at once if it runs
//! and for its later starts, as docker update changes them.

use anyhow::{bail, Context as _};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Memory limit (K, M, G suffixes; at least 6M; 0 for none).
    #[arg(short, long, value_parser = super::run::parse_memory)]
    memory: Option<u64>,
    /// CPUs (fractional; 0 for no limit).
    #[arg(long, value_parser = super::run::parse_cpus, allow_negative_numbers = true)]
    cpus: Option<f64>,
    /// Most processes (0 or -1 for no limit).
    #[arg(long, allow_negative_numbers = true)]
    pids_limit: Option<i64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    if args.memory.is_none() && args.cpus.is_none() && args.pids_limit.is_none() {
        bail!("nothing to update: give --memory, --cpus or --pids-limit");
    }
    let containers = super::run::containers(ctx)?;
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        let mut resources = state.spec.resources;
        // 0 (and -1 for processes) is no limit, as `run` takes them.
        if let Some(m) = args.memory {
            resources.memory = Some(m).filter(|&m| m > 0);
        }
        if let Some(c) = args.cpus {
            resources.cpus = Some(c).filter(|&c| c > 0.0);
        }
        if let Some(p) = args.pids_limit {
            resources.pids = Some(p).filter(|&p| p > 0).map(|p| p as u64);
        }
        skiff::container::update(&containers, &state, resources)
            .with_context(|| format!("updating {input}"))?;
        println!("{input}");
    }
    Ok(())
}
