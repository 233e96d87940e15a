//! `skiff start`: runs a created or stopped container, with the changes it made kept — in the
//! background, or attached with `-a` (exiting with its code).

use std::process::ExitCode;

use anyhow::Context as _;
use skiff::container::Attach;

use super::run::{failed, start_detached, supervise_with};
use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Attach to the container's output and exit with its code.
    #[arg(short, long)]
    attach: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> ExitCode {
    start(ctx, args).unwrap_or_else(failed)
}

fn start(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let containers = super::run::containers(ctx)?;
    for input in &args.containers {
        let state = containers.find(input)?;
        if state.is_running() {
            // Running already: `-a` attaches to it, as docker start does.
            if args.attach {
                return super::attach::attach(ctx, input, true);
            }
            println!("{input}");
            continue;
        }
        if !args.attach {
            let started =
                start_detached(ctx, &containers, &state).with_context(|| format!("starting {input}"))?;
            if started != ExitCode::SUCCESS {
                return Ok(started);
            }
            // As docker start: the name as given.
            println!("{input}");
            continue;
        }
        return supervise_with(ctx, &containers, &state, Attach::Terminal);
    }
    Ok(ExitCode::SUCCESS)
}
