use crate::context::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Bytes used and budget, hits, misses and fills since the cache was opened.
    Stats {
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Remove every cached chunk no running container holds.
    Prune,
}

pub fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let cache = ctx.cache()?;
    match command {
        Command::Stats { format } => {
            let stats = cache.stats();
            let totals = skiff::usage::read(ctx.root());
            if format == "json" {
                let out = serde_json::json!({
                    "bytes_used": stats.bytes_used,
                    "budget": stats.budget,
                    "chunks": stats.chunks,
                    "hit_ratio": totals.hit_ratio(),
                    "totals": totals,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{:<18} {}", "bytes used", stats.bytes_used);
                println!("{:<18} {}", "budget", stats.budget);
                println!("{:<18} {}", "chunks", stats.chunks);
                println!("{:<18} {:.1}%", "hit ratio", totals.hit_ratio() * 100.0);
                println!(
                    "{:<18} {} ({} requests)",
                    "bytes fetched", totals.registry_bytes, totals.registry_requests
                );
                println!("{:<18} {}", "bytes streamed", totals.streamed_bytes);
                println!("{:<18} {} (compressed)", "bytes read", totals.read_compressed_bytes);
                println!("{:<18} {} ({} bytes)", "chunks filled", totals.fills, totals.bytes_filled);
                println!("{:<18} {}", "evictions", totals.evictions);
                println!("{:<18} {}", "corrupt chunks", totals.corrupt);
            }
        }
        Command::Prune => {
            let freed = cache.prune()?;
            println!("Freed {freed} bytes");
        }
    }
    Ok(())
}
