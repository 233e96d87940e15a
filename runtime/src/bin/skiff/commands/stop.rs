//! `skiff stop`: the container's stop signal, then SIGKILL after `-t` seconds; several
//! containers at once, as docker stops them, so each gets its own `-t` rather than waiting
//! out the ones before it.

use std::time::Duration;

use anyhow::Context as _;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to wait before SIGKILL (default: the container's --stop-timeout, else 10).
    #[arg(short = 't', long = "time")]
    pub time: Option<u64>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    // Every name is found before any container is stopped.
    let states = super::run::find_all(&containers, &args.containers)?;
    let timeout = args.time.map(Duration::from_secs);
    let stopped: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let stops: Vec<_> = states
            .iter()
            .map(|(input, state)| {
                let containers = &containers;
                scope.spawn(move || {
                    skiff::container::stop(containers, state, timeout)
                        .map(drop)
                        .with_context(|| format!("stopping {input}"))
                })
            })
            .collect();
        stops
            .into_iter()
            .map(|s| s.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a stop panicked"))))
            .collect()
    });
    // Each name once it stopped, in the order given; every failure said, the first returned.
    let mut failed = None;
    for ((input, _), result) in states.iter().zip(stopped) {
        match result {
            Ok(()) => println!("{input}"),
            Err(e) if failed.is_none() => failed = Some(e),
            Err(e) => super::print_error(format_args!("{e:#}")),
        }
    }
    failed.map_or(Ok(()), Err)
}
