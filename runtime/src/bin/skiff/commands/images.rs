use serde::Serialize;
use skiff::image::StoredImage;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    /// Show full digests.
    #[arg(long)]
    no_trunc: bool,
    /// Print only the digests (12 hex digits, as docker prints image ids, unless --no-trunc),
    /// one per name.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    repository: String,
    tag: String,
    digest: String,
    manifest_digest: String,
    size: u64,
    created: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let mut rows = Vec::new();
    for record in store.images()? {
        let image = StoredImage::load(&store, &record)?;
        let created = image.config().ok().and_then(|c| c.created().clone());
        let (repository, tag) = split_name(&record.name);
        rows.push(Row {
            repository,
            tag,
            digest: record.digest.to_string(),
            manifest_digest: record.manifest.to_string(),
            size: image.manifest.total_size(),
            created,
        });
    }
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if args.quiet {
        for r in &rows {
            println!("{}", if args.no_trunc { &r.digest } else { &r.digest["sha256:".len()..][..12] });
        }
        return Ok(());
    }
    let mut table = vec![["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"].map(String::from)];
    for r in &rows {
        let digest = if args.no_trunc { r.digest.clone() } else { r.digest[..19].to_string() };
        table.push([
            r.repository.clone(),
            r.tag.clone(),
            digest,
            human_size(r.size),
            ago(r.created.as_deref()),
        ]);
    }
    super::print_table(&table);
    Ok(())
}

/// `reg/repo:tag` → (`reg/repo`, `tag`); `reg/repo@digest` → (`reg/repo`, `<none>`).
fn split_name(name: &str) -> (String, String) {
    if let Some((repo, _)) = name.split_once('@') {
        return (repo.to_string(), "<none>".to_string());
    }
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (name[..slash + i].to_string(), name[slash + i + 1..].to_string()),
        None => (name.to_string(), "<none>".to_string()),
    }
}

/// Sizes as docker prints them: decimal units, three decimals at most (`4.261MB`).
pub fn human_size(bytes: u64) -> String {
    scaled(bytes, 1000.0, ["B", "kB", "MB", "GB", "TB"], |_| 3)
}

/// `bytes` in the largest of `units` (each `step` times the one before) it reaches, with the
/// decimals `decimals` gives for the value, trailing zeros dropped.
pub fn scaled(bytes: u64, step: f64, units: [&str; 5], decimals: impl Fn(f64) -> usize) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= step && unit < units.len() - 1 {
        value /= step;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    let decimals = decimals(value);
    format!("{value:.decimals$}").trim_end_matches('0').trim_end_matches('.').to_string() + units[unit]
}

pub fn ago(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "N/A".to_string();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    let (n, unit) = match secs {
        s if s < 60 => return "Less than a minute ago".to_string(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s if s < 86400 * 14 => (s / 86400, "day"),
        s if s < 86400 * 60 => (s / (86400 * 7), "week"),
        s if s < 86400 * 730 => (s / (86400 * 30), "month"),
        s => (s / (86400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(split_name("localhost:5000/a/b:t"), ("localhost:5000/a/b".into(), "t".into()));
        assert_eq!(split_name("docker.io/x@sha256:ab"), ("docker.io/x".into(), "<none>".into()));
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.261MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }
}
