//! `skiff exec`: runs a command in a running container and exits with its code.

use std::path::PathBuf;
use std::process::ExitCode;

use skiff::container::ExecRequest;

use super::run::{code, failed};
use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<PathBuf>,
    /// User (name|uid[:group|gid]).
    #[arg(short, long)]
    user: Option<String>,
    /// Extended privileges for the command.
    #[arg(long)]
    privileged: bool,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> ExitCode {
    let exec = || -> anyhow::Result<ExitCode> {
        let containers = super::run::containers(ctx)?;
        let state = containers.find(&args.container)?;
        let request = ExecRequest {
            args: args.command.clone(),
            env: args.env.clone(),
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            interactive: args.interactive,
            tty: args.tty,
            privileged: args.privileged,
        };
        Ok(code(skiff::container::exec(&state, &request)?.code()))
    };
    exec().unwrap_or_else(failed)
}
