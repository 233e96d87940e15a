//! `skiff attach`: a running container's output from now on, stdout to stdout and stderr to
//! stderr, until it stops; then its exit code, as docker attach. Output only: skiff has no
//! daemon holding a detached container's stdin. Ctrl-C leaves the container running.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use skiff::container::log::Stream;

use super::run::{code, failed};
use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    container: String,
}

pub fn run(ctx: &Context, args: Args) -> ExitCode {
    attach(ctx, &args.container).unwrap_or_else(failed)
}

/// Follows `input`'s output until it stops, and exits with its code.
pub fn attach(ctx: &Context, input: &str) -> anyhow::Result<ExitCode> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(input)?;
    let exit = skiff::container::attach_output(&containers, &state, &mut |record| {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        let sink: &mut dyn Write = match record.stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        sink.write_all(record.log.as_bytes())?;
        sink.flush()
    });
    Ok(code(exit.with_context(|| format!("attaching to {input}"))?))
}
