//! `skiff ps`: the containers, as docker lists them.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use skiff::container::{State, Status};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Show every container (default: only running ones).
    #[arg(short, long)]
    all: bool,
    /// Only the ids.
    #[arg(short, long)]
    quiet: bool,
    /// Full 64-digit ids.
    #[arg(long)]
    no_trunc: bool,
    /// `json`: one JSON object per container and line.
    #[arg(long)]
    format: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let mut list = containers.list().context("listing containers")?;
    list.retain(|s| args.all || s.is_running());
    list.reverse();
    let id = |s: &State| if args.no_trunc { s.id.clone() } else { s.short_id().to_string() };
    if args.quiet {
        list.iter().for_each(|s| println!("{}", id(s)));
        return Ok(());
    }
    let now = Utc::now();
    if args.format.as_deref() == Some("json") {
        for s in &list {
            let row = serde_json::json!({
                "ID": id(s), "Image": s.image.name, "Command": command(s), "CreatedAt": s.created.to_rfc3339(),
                "State": s.status.to_string(), "Status": status(s, now), "Names": s.name, "ExitCode": s.exit_code,
            });
            println!("{row}");
        }
        return Ok(());
    }
    let mut table =
        vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"].map(String::from)];
    for s in &list {
        table.push([
            id(s),
            s.image.name.clone(),
            format!("\"{}\"", truncate(&command(s), 20)),
            format!("{} ago", ago(s.created, now)),
            status(s, now),
            s.name.clone(),
        ]);
    }
    super::print_table(&table);
    Ok(())
}

fn command(s: &State) -> String {
    s.spec.args.join(" ")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// Docker's STATUS column: `Up 5 seconds`, `Up 1 minute (Paused)`, `Exited (0) 3 minutes ago`,
/// `Created`.
fn status(s: &State, now: DateTime<Utc>) -> String {
    match s.status {
        Status::Created => "Created".to_string(),
        Status::Running if skiff::sandbox::is_paused(&s.id) => {
            format!("Up {} (Paused)", ago(s.started_at.unwrap_or(s.created), now))
        }
        Status::Running => format!("Up {}", ago(s.started_at.unwrap_or(s.created), now)),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            s.exit_code.unwrap_or(0),
            ago(s.finished_at.unwrap_or(s.created), now)
        ),
    }
}

/// `5 seconds`, `About a minute`, `3 hours`, …
fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    match secs {
        0 => "Less than a second".to_string(),
        1..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}
