//! `skiff logs`: a container's output, stdout to stdout and stderr to stderr; `-f` follows it
//! until the container stops; `--tail N` gives only the last lines, `--since`/`--until` those
//! of a time span, `-t` their times.

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
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
    /// Only lines written at or after this time: RFC 3339 (2026-12-01T10:00:00Z), Unix
    /// seconds, or a duration back from now (90s, 10m, 1h30m).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only lines written before this time (the forms --since takes).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    container: String,
}

/// docker's `--since`/`--until` forms: RFC 3339, Unix seconds (with a fraction), or a
/// duration back from now.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(seconds) = s.parse::<f64>() {
        let nanos = (seconds * 1e9) as i64;
        return Ok(DateTime::from_timestamp_nanos(nanos));
    }
    let back = skiff::size::parse_duration(s).map_err(|e| {
        format!("{s:?} is no time: expected RFC 3339, Unix seconds, or a duration such as 10m ({e})")
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(back).map_err(|e| format!("{s:?}: {e}"))?)
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
        if args.since.is_some_and(|t| record.time < t) || args.until.is_some_and(|t| record.time >= t) {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_dockers_forms() {
        assert_eq!(parse_time("2026-12-01T10:00:00Z").unwrap().to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!(parse_time("1700000000.5").unwrap().timestamp_millis(), 1_700_000_000_500);
        let back = Utc::now() - parse_time("1h30m").unwrap();
        assert!((back.num_seconds() - 5400).abs() <= 1, "{back}");
        assert!((Utc::now() - parse_time("90s").unwrap()).num_seconds() >= 89);
        for bad in ["yesterday", "10", "5x", "m"] {
            assert!(bad == "10" || parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse_time("10q").unwrap_err().contains("is no time"));
    }
}
