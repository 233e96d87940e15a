//! `skiff ps`: the containers, as docker lists them.

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use skiff::container::health::HealthStatus;
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
    /// `table` (the default), `json` (an object per line), or a template such as
    /// `{{.ID}} {{.Names}}` or `table {{.Names}}\t{{.Status}}`.
    #[arg(long)]
    format: Option<String>,
    /// Only containers that match (KEY=VALUE: id, name, label, status, ancestor, exited,
    /// before, since); a key given twice matches either value.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// The last N containers made, running or not.
    #[arg(short = 'n', long)]
    last: Option<usize>,
    /// The last container made, running or not.
    #[arg(short, long)]
    latest: bool,
}

/// The fields a template can name, as docker's `ps --format` names them.
const FIELDS: [&str; 9] =
    ["ID", "Image", "Command", "CreatedAt", "RunningFor", "Status", "State", "Names", "Ports"];

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let all = containers.list().context("listing containers")?;
    let filters = Filters::parse(&args.filters, &all)?;
    let last = if args.latest { Some(1) } else { args.last };
    // Each container's state once: telling a paused one reads its cgroup.
    let (states, list): (Vec<&'static str>, Vec<State>) = all
        .iter()
        .filter(|s| args.all || last.is_some() || filters.has_status() || s.is_running())
        .map(|s| (state(s), s))
        .filter(|(state, s)| filters.keep(s, state))
        .map(|(state, s)| (state, s.clone()))
        .rev()
        .take(last.unwrap_or(usize::MAX))
        .unzip();
    let now = Utc::now();
    let rows: Vec<[String; 9]> =
        list.iter().zip(&states).map(|(s, state)| row(s, state, now, args.no_trunc)).collect();
    if args.quiet {
        rows.iter().for_each(|r| println!("{}", r[0]));
        return Ok(());
    }
    match args.format.as_deref().map(str::trim) {
        Some("json") => {
            for (r, s) in rows.iter().zip(&list) {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    FIELDS.iter().zip(r).map(|(k, v)| (k.to_string(), v.clone().into())).collect();
                object.insert("ExitCode".into(), s.exit_code.into());
                println!("{}", serde_json::Value::Object(object));
            }
        }
        None | Some("table") => {
            let mut table =
                vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
                    .map(String::from)];
            for r in &rows {
                let command = format!("\"{}\"", truncate(r[2].trim_matches('"'), 20));
                let [id, image, _, _, created, status, _, names, ports] = r.clone();
                table.push([id, image, command, created, status, ports, names]);
            }
            super::print_table(&table);
        }
        Some(template) => {
            let (header, template) = match template.strip_prefix("table") {
                Some(rest) => (true, rest.trim_start()),
                None => (false, template),
            };
            let template = template.replace("\\t", "\t").replace("\\n", "\n");
            let parts = parse_template(&template)?;
            let render = |value: &dyn Fn(usize) -> String| {
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.clone(),
                        Part::Field(i) => value(*i),
                    })
                    .collect::<String>()
            };
            let mut lines = Vec::new();
            if header {
                lines.push(render(&|i| heading(FIELDS[i])));
            }
            lines.extend(rows.iter().map(|r| render(&|i| r[i].clone())));
            if header {
                print_aligned(&lines);
            } else {
                lines.iter().for_each(|l| println!("{l}"));
            }
        }
    }
    Ok(())
}

/// One container's fields, in [`FIELDS`] order.
fn row(s: &State, state: &str, now: DateTime<Utc>, no_trunc: bool) -> [String; 9] {
    [
        if no_trunc { s.id.clone() } else { s.short_id().to_string() },
        s.image.name.clone(),
        format!("\"{}\"", command(s)),
        s.created.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
        format!("{} ago", ago(s.created, now)),
        status(s, state, now),
        state.to_string(),
        s.name.clone(),
        s.published.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    ]
}

/// docker's State: created, running, paused, exited.
pub(super) fn state(s: &State) -> &'static str {
    match s.status {
        Status::Created => "created",
        Status::Running if skiff::sandbox::is_paused(&s.id) => "paused",
        Status::Running => "running",
        Status::Exited if s.is_restarting() => "restarting",
        Status::Exited => "exited",
    }
}

fn heading(field: &str) -> String {
    match field {
        "ID" => "CONTAINER ID".into(),
        "CreatedAt" => "CREATED AT".into(),
        "RunningFor" => "CREATED".into(),
        other => other.to_uppercase(),
    }
}

enum Part {
    Text(String),
    Field(usize),
}

/// `{{.Field}}` (or `{{ .Field }}`) between plain text; any other action is refused.
fn parse_template(template: &str) -> anyhow::Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        parts.push(Part::Text(rest[..open].to_string()));
        let Some(close) = rest[open..].find("}}") else { bail!("template {template:?}: unclosed {{{{") };
        let action = rest[open + 2..open + close].trim();
        let Some(i) = action.strip_prefix('.').and_then(|f| FIELDS.iter().position(|k| *k == f)) else {
            bail!(
                "template {template:?}: cannot show {action:?} (fields: {})",
                FIELDS.map(|f| format!(".{f}")).join(" ")
            )
        };
        parts.push(Part::Field(i));
        rest = &rest[open + close + 2..];
    }
    parts.push(Part::Text(rest.to_string()));
    Ok(parts)
}

/// Lines whose tab-separated cells are padded into columns, as docker's `table` templates are.
fn print_aligned(lines: &[String]) {
    let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| cells.iter().filter_map(|c| c.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    for row in &cells {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `-f KEY=VALUE`s: a container must match every key, and any value of a key.
struct Filters {
    by_key: std::collections::BTreeMap<String, Vec<String>>,
    /// `before`/`since`: the containers' creation times they resolved to.
    before: Option<DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
}

impl Filters {
    fn parse(filters: &[String], all: &[State]) -> anyhow::Result<Filters> {
        let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for f in filters {
            let Some((key, value)) = f.split_once('=') else {
                bail!("invalid filter {f:?}: expected KEY=VALUE")
            };
            const STATUSES: [&str; 5] = ["created", "running", "paused", "restarting", "exited"];
            match key {
                "id" | "name" | "ancestor" | "before" | "since" | "label" => {}
                "health" if ["starting", "healthy", "unhealthy", "none"].contains(&value) => {}
                "health" => {
                    bail!("invalid filter {f:?}: health is one of starting, healthy, unhealthy, none")
                }
                "status" if STATUSES.contains(&value) => {}
                "status" => bail!("invalid filter {f:?}: status is one of {}", STATUSES.join(", ")),
                "exited" if value.parse::<i32>().is_ok() => {}
                "exited" => bail!("invalid filter {f:?}: exited takes an exit code"),
                _ => {
                    bail!("invalid filter {key:?} (id, name, label, status, ancestor, exited, before, since)")
                }
            }
            by_key.entry(key.to_string()).or_default().push(value.to_string());
        }
        let created = |key: &str| -> anyhow::Result<Option<DateTime<Utc>>> {
            let Some(value) = by_key.get(key).and_then(|v| v.last()) else { return Ok(None) };
            let found = all
                .iter()
                .find(|s| s.name == *value || s.id.starts_with(value.as_str()))
                .with_context(|| format!("filter {key}={value}: no such container"))?;
            Ok(Some(found.created))
        };
        let (before, since) = (created("before")?, created("since")?);
        Ok(Filters { by_key, before, since })
    }

    fn has_status(&self) -> bool {
        self.by_key.contains_key("status") || self.by_key.contains_key("exited")
    }

    fn keep(&self, s: &State, state: &str) -> bool {
        self.by_key.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "id" => s.id.starts_with(v.as_str()),
                "name" => s.name.contains(v.as_str()),
                "status" => state == v,
                "exited" => {
                    s.status == Status::Exited && s.exit_code.map(|c| c.to_string()).as_deref() == Some(v)
                }
                "ancestor" => {
                    s.image.name == *v
                        || s.image.name.strip_prefix("docker.io/library/") == Some(v.as_str())
                        || s.image.name.strip_prefix("docker.io/") == Some(v.as_str())
                        || s.image.digest.to_string().starts_with(v.as_str())
                        || s.image.digest.hex().starts_with(v.as_str())
                }
                "label" => match v.split_once('=') {
                    Some((key, value)) => s.labels.get(key).is_some_and(|l| l == value),
                    None => s.labels.contains_key(v.as_str()),
                },
                "health" => match s.health.as_ref().filter(|_| s.is_running()) {
                    Some(h) => h.status.to_string() == *v,
                    None => v == "none",
                },
                "before" => self.before.is_some_and(|t| s.created < t),
                "since" => self.since.is_some_and(|t| s.created > t),
                _ => false,
            })
        })
    }
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
fn status(s: &State, state: &str, now: DateTime<Utc>) -> String {
    let up = || format!("Up {}", ago(s.started_at.unwrap_or(s.created), now));
    let ended =
        || format!("({}) {} ago", s.exit_code.unwrap_or(0), ago(s.finished_at.unwrap_or(s.created), now));
    match state {
        "created" => "Created".to_string(),
        "paused" => format!("{} (Paused)", up()),
        "running" => match s.health.as_ref().map(|h| h.status) {
            Some(HealthStatus::Starting) => format!("{} (health: starting)", up()),
            Some(status) => format!("{} ({status})", up()),
            None => up(),
        },
        "restarting" => format!("Restarting {}", ended()),
        _ => format!("Exited {}", ended()),
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
