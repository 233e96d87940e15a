//! `skiff top`: a running container's processes, as docker top shows them: the host's `ps`
//! (with the options given, `-ef` by default), its lines kept for the container's pids.

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    container: String,
    /// Options for ps (default: -ef); its output needs a PID column.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_options: Vec<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(&args.container)?;
    if !state.is_running() {
        bail!("container {} is not running", args.container);
    }
    let pids = skiff::sandbox::processes(&state.id)
        .with_context(|| format!("listing the processes of {}", args.container))?;
    let options = if args.ps_options.is_empty() { vec!["-ef".to_string()] } else { args.ps_options };
    let out = Command::new("ps").args(&options).output().context("running ps (procps)")?;
    if !out.status.success() {
        bail!("ps {}: {}", options.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let Some(column) = header.split_whitespace().position(|h| h == "PID") else {
        bail!("ps {} printed no PID column", options.join(" "));
    };
    println!("{header}");
    for line in lines {
        let pid = line.split_whitespace().nth(column).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}
