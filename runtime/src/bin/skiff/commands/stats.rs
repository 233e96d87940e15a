//! `skiff stats`: what running containers use (CPU, memory against its limit, network and
//! block I/O, processes), as docker stats shows it: refreshed every second, or once with
//! `--no-stream`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skiff::container::State;
use skiff::sandbox::Usage;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Every container (default: running ones); stopped ones show zeros.
    #[arg(short, long)]
    all: bool,
    /// Print one reading and end.
    #[arg(long)]
    no_stream: bool,
    /// Full 64-digit ids.
    #[arg(long)]
    no_trunc: bool,
    /// The containers (default: all).
    containers: Vec<String>,
}

/// How long CPU use is measured over: docker's interval.
const INTERVAL: Duration = Duration::from_secs(1);

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let named = !args.containers.is_empty();
    let list = || -> anyhow::Result<Vec<State>> {
        if named {
            // Named containers are read again each time: their state changes.
            let found = super::run::find_all(&containers, &args.containers)?;
            return Ok(found.into_iter().map(|(_, s)| s).collect());
        }
        let all = containers.list().context("listing containers")?;
        Ok(all.into_iter().filter(|s| args.all || s.is_running()).collect())
    };
    let terminal = std::io::stdout().is_terminal() && !args.no_stream;
    let mut before = sample(&list()?);
    let mut at = Instant::now();
    loop {
        std::thread::sleep(INTERVAL);
        let states = list()?;
        let now = sample(&states);
        let elapsed = at.elapsed();
        at = Instant::now();
        let mut table = vec![[
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS",
        ]
        .map(String::from)];
        for (state, usage) in states.iter().zip(&now) {
            let previous = before.iter().find(|(id, _)| *id == state.id).and_then(|(_, u)| u.as_ref());
            table.push(line(state, usage.1.as_ref(), previous, elapsed, args.no_trunc));
        }
        if terminal {
            // Each reading over the last, as docker draws it.
            print!("\x1b[2J\x1b[H");
        }
        super::print_table(&table);
        let _ = std::io::stdout().flush();
        if args.no_stream || (named && states.iter().all(|s| !s.is_running()) && !args.all) {
            return Ok(());
        }
        before = now;
    }
}

type Sample = (String, Option<(Usage, Option<(u64, u64)>)>);

/// Each container's usage, and its network's bytes; nothing for one not running.
fn sample(states: &[State]) -> Vec<Sample> {
    states
        .iter()
        .map(|s| {
            let reading = s.is_running().then(|| skiff::sandbox::usage(&s.id).ok()).flatten().map(|u| {
                let net = s.init.and_then(|p| skiff::sandbox::network_bytes(p.pid));
                (u, net)
            });
            (s.id.clone(), reading)
        })
        .collect()
}

fn line(
    s: &State,
    now: Option<&(Usage, Option<(u64, u64)>)>,
    before: Option<&(Usage, Option<(u64, u64)>)>,
    elapsed: Duration,
    no_trunc: bool,
) -> [String; 8] {
    let id = if no_trunc { s.id.clone() } else { s.short_id().to_string() };
    let Some((usage, net)) = now else {
        let zero = ["0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0"].map(String::from);
        return [
            id,
            s.name.clone(),
            zero[0].clone(),
            zero[1].clone(),
            zero[2].clone(),
            zero[3].clone(),
            zero[4].clone(),
            zero[5].clone(),
        ];
    };
    let cpu = match (usage.cpu_ns, before.and_then(|b| b.0.cpu_ns)) {
        (Some(now), Some(then)) if elapsed > Duration::ZERO => {
            format!("{:.2}%", now.saturating_sub(then) as f64 / elapsed.as_nanos() as f64 * 100.0)
        }
        _ => "--".to_string(),
    };
    let memory_percent = match usage.memory_limit {
        0 => "--".to_string(),
        limit => format!("{:.2}%", usage.memory as f64 / limit as f64 * 100.0),
    };
    let size = super::images::human_size;
    let (rx, tx) = net.unwrap_or((0, 0));
    [
        id,
        s.name.clone(),
        cpu,
        format!("{} / {}", binary_size(usage.memory), binary_size(usage.memory_limit)),
        memory_percent,
        format!("{} / {}", size(rx), size(tx)),
        format!("{} / {}", size(usage.block_read), size(usage.block_write)),
        usage.pids.to_string(),
    ]
}

/// Memory as docker shows it: binary units, four significant digits (`23.54GiB`).
pub fn binary_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    super::images::scaled(bytes, 1024.0, units, |value| 3usize.saturating_sub(value.log10().floor() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_read_as_dockers() {
        assert_eq!(binary_size(772 * 1024), "772KiB");
        assert_eq!(binary_size(1_994_000), "1.902MiB");
        assert_eq!(binary_size(25_276_000_000), "23.54GiB");
        assert_eq!(binary_size(64 << 20), "64MiB");
        assert_eq!(binary_size(512), "512B");
    }
}
