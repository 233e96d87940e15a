use anyhow::Context as _;
use skiff::image::{convert, push, Quiet};
use skiff::registry::UploadOptions;
use skiff_fs::estargz::ConvertOptions;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Largest chunk of a file in the converted layers (K, M suffixes).
    #[arg(long, default_value = "512K", value_parser = skiff::size::parse_size)]
    chunk_size: u64,
    /// A file listing paths (one per line) to place first in each layer, ended by a
    /// `.prefetch.landmark`: the files a workload reads when it starts.
    #[arg(long, value_name = "FILE")]
    prioritize: Option<std::path::PathBuf>,
    /// Store the converted image without pushing it.
    #[arg(long)]
    no_push: bool,
    /// The image to convert (pulled first if it is not stored).
    source: String,
    /// The name of the converted image.
    destination: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let client = ctx.client()?;
    let dest = super::parse_reference(&args.destination)?;
    let record = super::stored_or_pulled(&store, &client, &args.source)?;
    let prioritized = match &args.prioritize {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prioritized file list {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    if args.chunk_size == 0 {
        anyhow::bail!("--chunk-size must be more than 0");
    }
    let options = ConvertOptions { chunk_size: args.chunk_size, prioritized, ..ConvertOptions::default() };
    let report = convert(&client, &store, &record, &dest, &options)
        .with_context(|| format!("converting {} to eStargz", record.name))?;
    for layer in &report.layers {
        println!(
            "{} -> {} ({} bytes, {} uncompressed)",
            layer.from, layer.to, layer.compressed_size, layer.uncompressed_size
        );
        for missing in &layer.missing_prioritized {
            tracing::debug!(layer = %layer.to, path = missing, "prioritized path not in this layer");
        }
    }
    if !args.no_push {
        push(&client, &store, &report.record, &dest, UploadOptions::default(), &Quiet)
            .with_context(|| format!("pushing {dest}"))?;
    }
    println!("Digest: {}", report.record.digest);
    println!("{}", report.record.name);
    Ok(())
}
