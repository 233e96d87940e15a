//! `skiff wait`: blocks until containers stop, then prints their exit codes, as docker wait.

use anyhow::Context as _;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    // Every name is found before any wait: a typo is not found after a long one.
    for (input, state) in super::run::find_all(&containers, &args.containers)? {
        let code =
            skiff::container::wait(&containers, &state.id).with_context(|| format!("waiting for {input}"))?;
        println!("{code}");
    }
    Ok(())
}
