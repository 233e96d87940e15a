//! `skiff kill`: a signal (default SIGKILL) to the container's PID 1.

use anyhow::anyhow;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Signal name or number.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    containers: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let signal = skiff::container::parse_signal(&args.signal)
        .ok_or_else(|| anyhow!("invalid signal {:?}", args.signal))?;
    super::run::for_each_container(ctx, &args.containers, "killing", |containers, state| {
        // A kill that ends it, as `stop` does, keeps its restart policy from starting it again.
        let stop_signal = skiff::container::parse_signal(&state.stop_signal);
        if signal == skiff::sandbox::Signal::SIGKILL || Some(signal) == stop_signal {
            containers.update(&state.id, |st| st.manually_stopped = true)?;
        }
        skiff::container::kill(state, signal)?;
        Ok(())
    })
}
