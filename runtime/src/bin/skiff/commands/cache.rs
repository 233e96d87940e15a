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
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let value = serde_json::to_value(stats)?;
                for (key, v) in value.as_object().into_iter().flatten() {
                    println!("{key:<14} {v}");
                }
            }
        }
        Command::Prune => {
            let freed = cache.prune()?;
            println!("Freed {freed} bytes");
        }
    }
    Ok(())
}
