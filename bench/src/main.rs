//! `skiff-bench`: measurements of skiff against real registries.
//!
//! `coldstart` starts real workloads (python, gcc, jdk, postgres, busybox) from images the bench
//! builds, with skiff lazily, with a prefetch profile, after a full pull, and with podman, over a
//! shaped link in a namespace of its own, and reports time to ready, bytes fetched and memory.
//!
//! `pull-latency` times HTTP range reads of several sizes from an image's largest layer: the
//! request latency (p50/p90/p99) and throughput a lazy pull sees on a given link.

mod coldstart;
mod delayline;
mod latency;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "skiff-bench", version, about = "skiff's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Latency and throughput of range reads against a registry.
    PullLatency(latency::Args),
    /// Cold and warm container starts: skiff lazy, with a profile, full pull, and podman.
    Coldstart(Box<coldstart::Args>),
    /// A relay adding a delay and a rate (what `coldstart --delay` runs in its namespace).
    #[command(hide = true)]
    DelayLine(delayline::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::PullLatency(args) => latency::run(args),
        Command::Coldstart(args) => coldstart::run(*args),
        Command::DelayLine(args) => delayline::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
