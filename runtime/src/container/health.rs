//! Health checks (`--health-cmd`, an image's `HEALTHCHECK`), kept as docker keeps them: the
//! container's supervisor runs the check in the container every interval while it runs; an
//! exit code of 0 makes it healthy, `retries` failures in a row unhealthy, and failures during
//! the start period do not count. The last five results are kept in the container's record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Containers;

/// The probe results kept.
const KEPT: usize = 5;
/// The output of a probe kept, as docker keeps it.
pub const MAX_OUTPUT: usize = 4096;

/// How a container's health is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The command, as exec runs it (a shell form is `/bin/sh -c CMD`).
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// docker's defaults: every 30 s, 30 s to answer, unhealthy after 3 failures.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

impl HealthCheck {
    /// The image config's `Healthcheck` (docker's: `Test` as `["CMD", …]`, `["CMD-SHELL",
    /// "…"]` or `["NONE"]`, durations in nanoseconds); `None` when it has none or says NONE.
    pub fn of_image(config: &serde_json::Value) -> Option<HealthCheck> {
        let h = config.get("config")?.get("Healthcheck")?;
        let test: Vec<String> = serde_json::from_value(h.get("Test")?.clone()).ok()?;
        let nanos = |key: &str, default: Duration| {
            h.get(key).and_then(|v| v.as_u64()).filter(|n| *n > 0).map_or(default, Duration::from_nanos)
        };
        Some(HealthCheck {
            test: command(&test)?,
            interval: nanos("Interval", DEFAULT_INTERVAL),
            timeout: nanos("Timeout", DEFAULT_TIMEOUT),
            start_period: nanos("StartPeriod", Duration::ZERO),
            retries: h
                .get("Retries")
                .and_then(|v| v.as_u64())
                .filter(|n| *n > 0)
                .map_or(DEFAULT_RETRIES, |n| n as u32),
        })
    }
}

/// The argv of a docker `Test`: `CMD` runs the rest, `CMD-SHELL` runs it through the shell.
fn command(test: &[String]) -> Option<Vec<String>> {
    match test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
        (kind, [line]) if kind == "CMD-SHELL" => Some(vec!["/bin/sh".into(), "-c".into(), line.clone()]),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// A container's health, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: Vec<Probe>,
}

impl Health {
    pub fn starting() -> Health {
        Health { status: HealthStatus::Starting, failing_streak: 0, log: Vec::new() }
    }

    /// Takes one probe's result, `in_start_period` telling whether a failure counts.
    fn record(&mut self, probe: Probe, retries: u32, in_start_period: bool) {
        if probe.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !in_start_period || self.status != HealthStatus::Starting {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(probe);
        if self.log.len() > KEPT {
            self.log.remove(0);
        }
    }
}

/// One run of the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The command's exit code; -1 when it ran past the timeout (and was killed).
    pub exit_code: i32,
    pub output: String,
}

/// Runs a check's command in a running container: its exit code (-1 past `timeout`) and its
/// output (at most [`MAX_OUTPUT`] bytes).
pub trait Prober: Sync {
    fn probe(&self, id: &str, argv: &[String], timeout: Duration) -> (i32, String);
}

/// Probes container `id` every interval until `done`, recording each result in its record.
pub(crate) fn watch(
    containers: &Containers,
    id: &str,
    check: &HealthCheck,
    prober: &dyn Prober,
    done: &AtomicBool,
) {
    let started = Instant::now();
    loop {
        let next = Instant::now() + check.interval;
        while Instant::now() < next {
            if done.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
        let start = Utc::now();
        let (exit_code, output) = prober.probe(id, &check.test, check.timeout);
        if done.load(Ordering::Relaxed) {
            return;
        }
        let probe = Probe { start, end: Utc::now(), exit_code, output };
        let in_start_period = started.elapsed() < check.start_period;
        let recorded = containers.update(id, |st| {
            st.health.get_or_insert_with(Health::starting).record(probe, check.retries, in_start_period)
        });
        if let Err(e) = recorded {
            tracing::warn!(container = id, error = %e, "recording a health check");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(code: i32) -> Probe {
        Probe { start: Utc::now(), end: Utc::now(), exit_code: code, output: String::new() }
    }

    #[test]
    fn health_follows_dockers_rules() {
        let mut h = Health::starting();
        h.record(probe(1), 2, true);
        assert_eq!(
            (h.status, h.failing_streak),
            (HealthStatus::Starting, 0),
            "a failure in the start period does not count"
        );
        h.record(probe(0), 2, true);
        assert_eq!(h.status, HealthStatus::Healthy);
        h.record(probe(1), 2, false);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 1));
        h.record(probe(-1), 2, false);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 2));
        for _ in 0..4 {
            h.record(probe(0), 2, false);
        }
        assert_eq!((h.status, h.failing_streak, h.log.len()), (HealthStatus::Healthy, 0, 5));
    }

    #[test]
    fn an_images_healthcheck_reads_as_docker_writes_it() {
        let config = serde_json::json!({"config": {"Healthcheck": {"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000u64, "Retries": 4}}});
        let check = HealthCheck::of_image(&config).unwrap();
        assert_eq!(check.test, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!(
            (check.interval, check.timeout, check.retries),
            (Duration::from_secs(5), DEFAULT_TIMEOUT, 4)
        );
        let none = serde_json::json!({"config": {"Healthcheck": {"Test": ["NONE"]}}});
        assert!(HealthCheck::of_image(&none).is_none());
        assert!(HealthCheck::of_image(&serde_json::json!({"config": {}})).is_none());
    }
}
