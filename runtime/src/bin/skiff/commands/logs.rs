//! `skiff logs`: a container's output, stdout to stdout and stderr to stderr; `-f` follows it
//! until the container stops; `--tail N` gives only the last lines, `-t` their times.

use std::io::Write;

use anyhow::Context as _;
use skiff::container::log::{self, Stream};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    follow: bool,
    /// Print only the last N lines (`all`: every line).
    #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = parse_tail)]
    tail: Tail,
    /// Begin each line with the time it was written (RFC 3339, nanoseconds).
    #[arg(short, long)]
    timestamps: bool,
    container: String,
}

/// How much of the log `--tail` asks for.
#[derive(Clone, Copy)]
struct Tail(Option<usize>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    match s {
        "all" => Ok(Tail(None)),
        n => {
            n.parse().map(|n| Tail(Some(n))).map_err(|_| format!("{s:?} is not a number of lines, nor `all`"))
        }
    }
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(&args.container)?;
    let path = containers.paths(&state.id).log;
    let running = || containers.load(&state.id).is_ok_and(|s| s.supervisor.is_some_and(|p| p.is_alive()));
    let follow: Option<&dyn Fn() -> bool> = if args.follow { Some(&running) } else { None };
    let read = log::read(&path, args.tail.0, follow, &mut |record| {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        let sink: &mut dyn Write = match record.stream {
            Stream::Stdout => &mut out,
            Stream::Stderr => &mut err,
        };
        if args.timestamps {
            let time = record.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            write!(sink, "{time} ")?;
        }
        sink.write_all(record.log.as_bytes())?;
        sink.flush()
    });
    match read {
        // Whoever read the output stopped (`logs | head`): so does `logs`, as a shell expects.
        // Only a write can fail so: reading a file never does.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        read => read.with_context(|| format!("reading the log of {}", args.container)),
    }
}
