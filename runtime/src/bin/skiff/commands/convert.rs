use std::collections::HashMap;

use anyhow::Context as _;
use skiff::image::{convert, push, Quiet};
use skiff::registry::UploadOptions;
use skiff_fs::estargz::{read_cuts, ConvertOptions};
use skiff_fs::union::ProfiledFile;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Largest chunk of a file in the converted layers (K, M suffixes).
    #[arg(long, default_value = "512K", value_parser = skiff::size::parse_size)]
    chunk_size: u64,
    /// The files a workload reads when it starts, to place first in each layer, ended by a
    /// `.prefetch.landmark`: a list of paths (one per line), or a prefetch profile as
    /// `--record-profile` saves it ($SKIFF_ROOT/profiles/<manifest digest>.json), whose
    /// byte ranges also cut the chunks, so that the bytes read fill chunks of their own.
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
    if args.chunk_size == 0 {
        anyhow::bail!("--chunk-size must be more than 0");
    }
    let mut options = ConvertOptions { chunk_size: args.chunk_size, ..ConvertOptions::default() };
    let mut profile = None;
    if let Some(path) = &args.prioritize {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the prioritized file list {}", path.display()))?;
        profile = prioritize(&mut options, &text)
            .with_context(|| format!("reading the profile {}", path.display()))?;
    }
    let record = super::stored_or_pulled(&store, &client, &args.source, &Default::default())?;
    let report = convert(&client, &store, &record, &dest, &options, profile.as_deref())
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

/// Fills `options` from `--prioritize`'s file: a profile (JSON) gives the order and the cuts,
/// and is returned to go into the manifest; a list of paths gives the order alone.
fn prioritize(options: &mut ConvertOptions, text: &str) -> anyhow::Result<Option<Vec<ProfiledFile>>> {
    if !text.trim_start().starts_with('{') {
        options.prioritized = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        return Ok(None);
    }
    let files = skiff::store::parse_profile(text.as_bytes())?;
    let mut ranges: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for file in &files {
        if !ranges.contains_key(file.path.as_str()) {
            options.prioritized.push(file.path.clone());
        }
        ranges.entry(&file.path).or_default().extend(&file.ranges);
    }
    options.cuts = ranges.into_iter().map(|(path, r)| (path.to_string(), read_cuts(&r))).collect();
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_gives_the_order_of_first_reads_and_cuts_a_list_only_the_order() {
        let mut options = ConvertOptions::default();
        let profile = r#"{"files": [
            {"path": "usr/bin/tool", "ranges": [[0, 4096]]},
            "etc/tool.conf",
            {"path": "usr/bin/tool", "ranges": [[1048576, 1179648]]}
        ]}"#;
        let files = prioritize(&mut options, profile).unwrap().expect("a profile");
        assert_eq!(files.len(), 3);
        assert_eq!(options.prioritized, ["usr/bin/tool", "etc/tool.conf"]);
        assert_eq!(options.cuts["usr/bin/tool"], [4096, 1048576, 1179648]);
        assert_eq!(options.cuts["etc/tool.conf"], Vec::<u64>::new());

        let mut options = ConvertOptions::default();
        assert_eq!(prioritize(&mut options, "# start-up\nusr/bin/tool\n\n etc/tool.conf \n").unwrap(), None);
        assert_eq!(options.prioritized, ["usr/bin/tool", "etc/tool.conf"]);
        assert!(options.cuts.is_empty());

        // JSON that is not a profile is an error, not a list of odd paths.
        for bad in [r#"{"files": [{"path": 3}]}"#, r#"{"files": ["etc/tool.conf""#, "{}"] {
            assert!(prioritize(&mut ConvertOptions::default(), bad).is_err(), "{bad}");
        }
    }
}
