//! `skiff attach`: a running container's output from now on, stdout to stdout and stderr to
//! stderr, until it stops; then its exit code, as docker attach. Output only: skiff has no
//! daemon holding a detached container's stdin. The signals this process gets (Ctrl-C's
//! SIGINT among them) go to the container, as docker's `--sig-proxy` has it; with
//! `--sig-proxy=false` Ctrl-C ends the attach and leaves the container running.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use signal_hook::consts::{SIGUSR1, SIGUSR2};
use skiff::container::log::Stream;
use skiff::container::{ContainerError, Containers};

use super::run::{code, failed};
use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Send the signals skiff gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) to the
    /// container; false: Ctrl-C ends the attach alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    sig_proxy: bool,
    container: String,
}

pub fn run(ctx: &Context, args: Args) -> ExitCode {
    attach(ctx, &args.container, args.sig_proxy).unwrap_or_else(failed)
}

/// Follows `input`'s output until it stops, and exits with its code; with `sig_proxy`, the
/// signals this process gets are the container's.
pub fn attach(ctx: &Context, input: &str, sig_proxy: bool) -> anyhow::Result<ExitCode> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(input)?;
    let proxy = if sig_proxy { Some(proxy_signals(&containers, &state.id)?) } else { None };
    let exit = skiff::container::attach_output(&containers, &state, &mut |record| {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        let sink: &mut dyn Write = match record.stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        sink.write_all(record.log.as_bytes())?;
        sink.flush()
    });
    if let Some(handle) = proxy {
        handle.close();
    }
    Ok(code(exit.with_context(|| format!("attaching to {input}"))?))
}

/// Sends each signal docker's attach proxies to container `id`'s PID 1 from now on, until the
/// returned handle is closed. A container that ended meanwhile is no error: the attach sees
/// its end.
fn proxy_signals(containers: &Containers, id: &str) -> anyhow::Result<signal_hook::iterator::Handle> {
    // Those `run` passes on to its container, and the two user signals.
    let proxied = skiff::sandbox::FORWARDED.iter().map(|s| *s as i32).chain([SIGUSR1, SIGUSR2]);
    let mut signals = signal_hook::iterator::Signals::new(proxied)
        .context("installing the signal handlers of the attach")?;
    let handle = signals.handle();
    let (containers, id) = (containers.clone(), id.to_string());
    std::thread::spawn(move || {
        for number in signals.forever() {
            let Ok(signal) = nix::sys::signal::Signal::try_from(number) else { continue };
            let sent = containers.load(&id).and_then(|state| skiff::container::kill(&state, signal));
            match sent {
                Ok(()) | Err(ContainerError::NotRunning { .. }) => {}
                Err(e) => eprintln!("skiff: passing {signal} on to the container: {e}"),
            }
        }
    });
    Ok(handle)
}
