//! `skiff exec`: runs a command in a running container and exits with its code.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use skiff::container::{ContainerError, ExecRequest};

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
    /// Run the command in the background: nothing attached, skiff returns at once.
    #[arg(short, long)]
    detach: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass skiff's own).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines), before -e.
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
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
        let mut env = Vec::new();
        for path in &args.env_files {
            env.extend(skiff::container::read_env_file(path)?);
        }
        env.extend(args.env.iter().cloned());
        if args.detach {
            return detach(ctx, &state, &args, &env);
        }
        let request = ExecRequest {
            args: args.command.clone(),
            env,
            workdir: args.workdir.clone(),
            user: args.user.clone(),
            interactive: args.interactive,
            tty: args.tty,
            privileged: args.privileged,
        };
        Ok(code(skiff::container::exec(&state, &request)?.code()))
    };
    exec().unwrap_or_else(|error| {
        // A container that is there but not running (or paused) cannot take the command:
        // 126, as podman's exec says it, where other failures are 125.
        let wrong_state = error.chain().any(|e| {
            matches!(
                e.downcast_ref(),
                Some(ContainerError::NotRunning { .. } | ContainerError::Paused { .. })
            )
        });
        match failed(error) {
            _ if wrong_state => code(126),
            other => other,
        }
    })
}

/// `exec -d`: the same exec, refused here if it cannot start, run by a skiff of its own in the
/// background, with nothing attached.
fn detach(
    ctx: &Context,
    state: &skiff::container::State,
    args: &Args,
    env: &[String],
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    if !state.is_running() {
        return Err(skiff::container::ContainerError::NotRunning { id: args.container.clone() }.into());
    }
    if skiff::sandbox::is_paused(&state.id) {
        return Err(skiff::container::ContainerError::Paused { id: args.container.clone() }.into());
    }
    let mut argv: Vec<std::ffi::OsString> = ctx.global_args();
    argv.push("exec".into());
    for e in env {
        argv.extend(["-e".into(), e.into()]);
    }
    if let Some(w) = &args.workdir {
        argv.extend(["-w".into(), w.into()]);
    }
    if let Some(u) = &args.user {
        argv.extend(["-u".into(), u.into()]);
    }
    if args.privileged {
        argv.push("--privileged".into());
    }
    argv.push(state.id.clone().into());
    argv.push("--".into());
    argv.extend(args.command.iter().map(Into::into));
    std::process::Command::new(std::env::current_exe().context("finding the skiff binary")?)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // Out of the terminal's foreground group: Ctrl-C there does not reach it.
        .process_group(0)
        .spawn()
        .context("starting the detached exec")?;
    Ok(ExitCode::SUCCESS)
}
