//! Range-read latency against a registry: for each size, `count` reads at spread offsets of
//! the image's largest layer, one at a time, each timed from request to last byte.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use skiff::manifest::{Manifest, Platform};
use skiff::registry::{Client, RegistryOptions};
use skiff::size::parse_size;
use skiff::Reference;
use skiff_fs::BlobSource;

#[derive(clap::Args)]
pub struct Args {
    /// Image whose largest layer is read.
    image: String,
    /// Read sizes, with optional K/M suffix (KiB, MiB).
    #[arg(long, value_delimiter = ',', default_value = "4K,64K,1M,8M")]
    sizes: Vec<String>,
    /// Reads per size.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Registry (host[:port]) reached over plain HTTP or unverified HTTPS.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SizeReport {
    size: u64,
    reads: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_mib_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    image: String,
    layer: String,
    layer_size: u64,
    results: Vec<SizeReport>,
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reference: Reference = args.image.parse()?;
    let sizes = args.sizes.iter().map(|s| parse_size(s)).collect::<Result<Vec<u64>, _>>()?;
    let options =
        RegistryOptions { insecure_registries: args.insecure_registries, ..RegistryOptions::default() };
    let client = Arc::new(Client::new(options)?);
    let fetched = client.get_manifest(&reference)?;
    let what = format!("manifest {reference}");
    let manifest = match Manifest::parse(&what, &fetched.bytes, fetched.content_type.as_deref())? {
        Manifest::Image { manifest, .. } => manifest,
        Manifest::Index { index, .. } => {
            let child = index.select(&what, &Platform::host())?;
            let fetched = client.get_manifest(&reference.with_digest(child.digest))?;
            match Manifest::parse(&what, &fetched.bytes, fetched.content_type.as_deref())? {
                Manifest::Image { manifest, .. } => manifest,
                Manifest::Index { .. } => bail!("{what}: an index inside an index"),
            }
        }
    };
    let layer = manifest.layers.iter().max_by_key(|l| l.size).context("the image has no layers")?;
    let blob = client.blob_source(&reference, layer.digest, layer.size);

    // One warm-up read so connection setup and auth are not counted.
    let mut one = [0u8; 1];
    blob.read_exact_at(0, &mut one)?;

    let mut results = Vec::new();
    for size in sizes {
        if size == 0 || size > layer.size {
            bail!("read size {size} does not fit layer {} of {} bytes", layer.digest, layer.size);
        }
        let mut buf = vec![0u8; size as usize];
        let span = layer.size - size;
        let mut times = Vec::with_capacity(args.count);
        for i in 0..args.count {
            // Offsets spread over the layer by a golden-ratio walk: no two reads alike.
            let offset = if span == 0 { 0 } else { ((i as f64 * 0.618_034).fract() * span as f64) as u64 };
            let start = Instant::now();
            blob.read_exact_at(offset, &mut buf)?;
            times.push(start.elapsed().as_secs_f64());
        }
        let total: f64 = times.iter().sum();
        let mut ms: Vec<f64> = times.iter().map(|t| t * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        results.push(SizeReport {
            size,
            reads: args.count,
            p50_ms: percentile(&ms, 50.0),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
            mean_mib_per_s: (size as f64 * args.count as f64) / total / (1 << 20) as f64,
        });
    }
    let report = Report {
        image: reference.to_string(),
        layer: layer.digest.to_string(),
        layer_size: layer.size,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{} — layer {} ({} bytes)", report.image, report.layer, report.layer_size);
    println!("{:>10} {:>6} {:>9} {:>9} {:>9} {:>10}", "SIZE", "READS", "P50 ms", "P90 ms", "P99 ms", "MiB/s");
    for r in &report.results {
        println!(
            "{:>10} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
            r.size, r.reads, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_mib_per_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
    }
}
