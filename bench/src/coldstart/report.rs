//! What a cold-start run produced and how it is shown: per-run samples, their medians with
//! min/max per (workload, mode, phase), and the terminal table, JSON, CSV and SVG chart.
//! Everything here is pure: no processes, no files other than the writers it is handed.

use std::fmt::Write as _;

use serde::Serialize;

use super::link::Blobs;
use super::modes::{Mode, Phase};

/// One measured start of one workload in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub workload: String,
    pub mode: Mode,
    pub phase: Phase,
    pub iteration: usize,
    /// Start of the first command to the ready line (or the exit of a one-shot command).
    pub ready_s: f64,
    /// The part of `ready_s` spent pulling, when the mode pulls in a command of its own.
    pub pull_s: Option<f64>,
    /// When the link last carried bytes before the start was ready, from the start (looked at
    /// every few ms); `None` when nothing crossed it. What comes after is the workload's own
    /// work, and the runtime's: no transfer of a lazy start is left to wait for.
    pub last_byte_s: Option<f64>,
    /// CPU time (user and system) the registry and its blob server spent during the run: on
    /// this rig they share the CPUs with the runtime and the workload.
    pub registry_cpu_s: Option<f64>,
    /// Bytes of blob responses the registry and its blob server sent (their access logs).
    pub blob_bytes: u64,
    /// Blob requests they answered (a redirected one counts at both).
    pub blob_requests: u64,
    /// Bytes that crossed the namespace's `lo` (both directions, all traffic).
    pub link_bytes: u64,
    /// Highest VmHWM of the runtime's own process (skiff, or podman), sampled.
    pub peak_rss_kib: Option<u64>,
    /// Bytes on disk under the runtime's root after the run (store, chunk cache, containers).
    pub disk_bytes: u64,
    /// skiff only: the distinct file bytes the workload read from the image, compressed at
    /// each layer's ratio (skiff's usage totals) — what a perfect lazy pull would fetch.
    #[serde(default)]
    pub read_bytes: Option<u64>,
}

/// Median, minimum and maximum of a set of values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }
}

/// The samples of one (workload, mode, phase), summarized.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub workload: String,
    pub mode: Mode,
    pub phase: Phase,
    pub runs: usize,
    pub failures: usize,
    pub ready_s: Option<Spread>,
    pub pull_s: Option<Spread>,
    pub last_byte_s: Option<Spread>,
    /// Per run, the ready time after the link's last byte (`ready_s - last_byte_s`).
    pub after_last_byte_s: Option<Spread>,
    pub registry_cpu_s: Option<Spread>,
    pub blob_bytes: Option<Spread>,
    pub blob_requests: Option<Spread>,
    pub link_bytes: Option<Spread>,
    pub peak_rss_kib: Option<Spread>,
    pub disk_bytes: Option<Spread>,
    /// The workload's ideal time on this link (see [`Report::ideal_s`]); cold rows only.
    pub ideal_s: Option<f64>,
    /// Median ready time over the ideal time.
    pub times_ideal: Option<f64>,
}

/// A run that did not produce a sample.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub workload: String,
    pub mode: Mode,
    pub phase: Phase,
    pub iteration: usize,
    pub error: String,
}

/// The link the runs went over.
#[derive(Clone, Debug, Serialize)]
pub struct LinkInfo {
    /// `None`: unshaped loopback.
    pub rate_bits_per_s: Option<u64>,
    pub delay_ms: Option<u64>,
    /// Whether the registry's files stayed out of the page cache for cold runs
    /// (`--cold-registry`) instead of being read back in after the drop.
    pub cold_registry: bool,
    /// Where blob bytes came from.
    pub blobs: Blobs,
}

impl LinkInfo {
    pub fn describe(&self) -> String {
        match (self.rate_bits_per_s, self.delay_ms) {
            (None, None) => "unshaped loopback".to_string(),
            (Some(r), None) => format!("{} (tbf)", format_rate(r)),
            (None, Some(d)) => format!("loopback, +{d} ms RTT (delay line)"),
            (Some(r), Some(d)) => format!("{} each way, +{d} ms RTT (delay line)", format_rate(r)),
        }
    }
}

fn format_rate(bits: u64) -> String {
    if bits % 1_000_000_000 == 0 {
        format!("{} Gbit/s", bits / 1_000_000_000)
    } else if bits % 1_000_000 == 0 {
        format!("{} Mbit/s", bits / 1_000_000)
    } else if bits % 1_000 == 0 {
        format!("{} kbit/s", bits / 1_000)
    } else {
        format!("{bits} bit/s")
    }
}

/// Everything one `skiff-bench coldstart` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub link: LinkInfo,
    /// Whether the page cache was dropped before each cold run.
    pub dropped_page_cache: bool,
    /// Modes that were asked for but could not run, and why.
    pub skipped: Vec<(Mode, String)>,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    pub summaries: Vec<Summary>,
}

impl Report {
    pub fn new(
        link: LinkInfo,
        dropped_page_cache: bool,
        skipped: Vec<(Mode, String)>,
        samples: Vec<Sample>,
        failures: Vec<Failure>,
    ) -> Report {
        let mut report = Report { link, dropped_page_cache, skipped, samples, failures, summaries: vec![] };
        report.summaries = report.summarize();
        report
    }

    /// The ideal cold start of a workload: the bytes it actually reads, at the link's rate.
    /// "Bytes it reads" is the median, over cold skiff-lazy runs without a profile, of the
    /// distinct file bytes read, compressed at their layer's ratio (skiff counts them); for
    /// samples without that count, the blob bytes fetched. A run without lazy samples (its
    /// `--modes` left lazy out) takes the count of the profile runs, else of the optimized
    /// ones: the same reads, counted the same way, whatever a prefetch fetched. `None` on an
    /// unshaped link or without such samples.
    pub fn ideal_s(&self, workload: &str) -> Option<f64> {
        let rate = self.link.rate_bits_per_s? as f64;
        Some(self.read_bytes(workload)? * 8.0 / rate)
    }

    /// Median bytes the workload reads (see [`Report::ideal_s`]).
    pub fn read_bytes(&self, workload: &str) -> Option<f64> {
        let cold = |mode: Mode| {
            self.samples
                .iter()
                .filter(move |s| s.workload == workload && s.mode == mode && s.phase == Phase::Cold)
        };
        let lazy = Spread::of(cold(Mode::Lazy).map(|s| s.read_bytes.unwrap_or(s.blob_bytes) as f64));
        // A prefetch's blob bytes are not what the workload read: only skiff's count will do.
        let counted = |mode| Spread::of(cold(mode).filter_map(|s| s.read_bytes).map(|b| b as f64));
        let bytes = lazy.or_else(|| counted(Mode::Profile)).or_else(|| counted(Mode::Optimized))?;
        Some(bytes.median)
    }

    fn summarize(&self) -> Vec<Summary> {
        let mut keys: Vec<(String, Mode, Phase)> = Vec::new();
        let seen = self
            .samples
            .iter()
            .map(|s| (&s.workload, s.mode, s.phase))
            .chain(self.failures.iter().map(|f| (&f.workload, f.mode, f.phase)));
        for (w, m, p) in seen {
            if !keys.iter().any(|k| k.0 == *w && k.1 == m && k.2 == p) {
                keys.push((w.clone(), m, p));
            }
        }
        // Workloads in first-seen order, then modes and phases in their declared order.
        let order: Vec<String> = keys.iter().fold(Vec::new(), |mut acc, k| {
            if !acc.contains(&k.0) {
                acc.push(k.0.clone());
            }
            acc
        });
        keys.sort_by_key(|k| (order.iter().position(|w| *w == k.0), k.1, k.2));
        keys.into_iter()
            .map(|(workload, mode, phase)| {
                let runs: Vec<&Sample> = self
                    .samples
                    .iter()
                    .filter(|s| s.workload == workload && s.mode == mode && s.phase == phase)
                    .collect();
                let failures = self
                    .failures
                    .iter()
                    .filter(|f| f.workload == workload && f.mode == mode && f.phase == phase)
                    .count();
                let spread =
                    |f: &dyn Fn(&Sample) -> Option<f64>| Spread::of(runs.iter().filter_map(|s| f(s)));
                let ready_s = spread(&|s| Some(s.ready_s));
                let ideal_s = if phase == Phase::Cold { self.ideal_s(&workload) } else { None };
                let times_ideal = match (ready_s, ideal_s) {
                    (Some(r), Some(i)) if i > 0.0 => Some(r.median / i),
                    _ => None,
                };
                Summary {
                    runs: runs.len(),
                    failures,
                    ready_s,
                    pull_s: spread(&|s| s.pull_s),
                    last_byte_s: spread(&|s| s.last_byte_s),
                    after_last_byte_s: spread(&|s| s.last_byte_s.map(|l| s.ready_s - l)),
                    registry_cpu_s: spread(&|s| s.registry_cpu_s),
                    blob_bytes: spread(&|s| Some(s.blob_bytes as f64)),
                    blob_requests: spread(&|s| Some(s.blob_requests as f64)),
                    link_bytes: spread(&|s| Some(s.link_bytes as f64)),
                    peak_rss_kib: spread(&|s| s.peak_rss_kib.map(|v| v as f64)),
                    disk_bytes: spread(&|s| Some(s.disk_bytes as f64)),
                    ideal_s,
                    times_ideal,
                    workload,
                    mode,
                    phase,
                }
            })
            .collect()
    }

    /// The terminal table: one row per (workload, mode, phase), medians with [min–max].
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "link: {}, blobs {}; page cache {}",
            self.link.describe(),
            match self.link.blobs {
                Blobs::Redirect => "sent by nginx on the registry's redirect",
                Blobs::Registry => "sent by the registry",
            },
            match (self.dropped_page_cache, self.link.cold_registry) {
                (true, false) => "dropped before each cold run, the registry's files read back in",
                (true, true) => "dropped before each cold run, the registry's too",
                (false, _) => "NOT dropped (not allowed)",
            }
        );
        let header = [
            "WORKLOAD",
            "MODE",
            "PHASE",
            "READY s [min-max]",
            "PULL s",
            "LAST BYTE s",
            "FETCHED MB",
            "REQS",
            "REG CPU s",
            "RSS MiB",
            "DISK MB",
            "x IDEAL",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for s in &self.summaries {
            let ready = match s.ready_s {
                Some(r) if s.runs > 1 => format!("{:.2} [{:.2}-{:.2}]", r.median, r.min, r.max),
                Some(r) => format!("{:.2}", r.median),
                None => "-".to_string(),
            };
            let ready = if s.failures > 0 { format!("{ready} ({} failed)", s.failures) } else { ready };
            rows.push(vec![
                s.workload.clone(),
                s.mode.name().to_string(),
                s.phase.name().to_string(),
                ready,
                s.pull_s.map_or("-".into(), |p| format!("{:.2}", p.median)),
                s.last_byte_s.map_or("-".into(), |l| format!("{:.2}", l.median)),
                s.blob_bytes.map_or("-".into(), |b| format!("{:.1}", b.median / 1e6)),
                s.blob_requests.map_or("-".into(), |r| format!("{:.0}", r.median)),
                s.registry_cpu_s.map_or("-".into(), |c| format!("{:.2}", c.median)),
                s.peak_rss_kib.map_or("-".into(), |r| format!("{:.0}", r.median / 1024.0)),
                s.disk_bytes.map_or("-".into(), |d| format!("{:.1}", d.median / 1e6)),
                s.times_ideal.map_or("-".into(), |x| format!("{x:.2}")),
            ]);
        }
        let widths: Vec<usize> =
            (0..header.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| {
                    if c < 3 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        let ideals: Vec<String> = self
            .workloads()
            .iter()
            .filter_map(|w| self.ideal_s(w).map(|i| format!("{w} {i:.2} s")))
            .collect();
        if !ideals.is_empty() {
            let _ = writeln!(out, "ideal (bytes read, compressed / link rate): {}", ideals.join(", "));
        }
        // Fetched over read, per lazy mode: how much more than it needed each start pulled.
        let ratios: Vec<String> = self
            .summaries
            .iter()
            .filter(|s| {
                s.phase == Phase::Cold && matches!(s.mode, Mode::Lazy | Mode::Profile | Mode::Optimized)
            })
            .filter_map(|s| {
                let read = self.read_bytes(&s.workload)?;
                let fetched = s.blob_bytes?.median;
                (read > 0.0).then(|| format!("{} {} {:.2}", s.workload, s.mode.name(), fetched / read))
            })
            .collect();
        if !ratios.is_empty() {
            let _ = writeln!(out, "fetched / read: {}", ratios.join(", "));
        }
        // What no transfer can shorten: the ready time after the link went quiet.
        let after: Vec<String> = self
            .summaries
            .iter()
            .filter(|s| s.phase == Phase::Cold)
            .filter_map(|s| {
                Some(format!("{} {} {:.2} s", s.workload, s.mode.name(), s.after_last_byte_s?.median))
            })
            .collect();
        if !after.is_empty() {
            let _ = writeln!(out, "ready after the last byte: {}", after.join(", "));
        }
        for (mode, why) in &self.skipped {
            let _ = writeln!(out, "skipped {}: {why}", mode.name());
        }
        for f in &self.failures {
            let _ = writeln!(
                out,
                "failed {} {} {} #{}: {}",
                f.workload,
                f.mode.name(),
                f.phase.name(),
                f.iteration,
                f.error
            );
        }
        out
    }

    fn workloads(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.summaries {
            if !out.contains(&s.workload) {
                out.push(s.workload.clone());
            }
        }
        out
    }

    /// One CSV line per sample (raw data; medians are in the JSON and the table).
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "workload,mode,phase,iteration,ready_s,pull_s,last_byte_s,blob_bytes,blob_requests,registry_cpu_s,link_bytes,peak_rss_kib,disk_bytes,read_bytes\n",
        );
        let opt = |v: Option<String>| v.unwrap_or_default();
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{},{},{},{},{:.4},{},{},{},{},{},{},{},{},{}",
                csv_field(&s.workload),
                s.mode.name(),
                s.phase.name(),
                s.iteration,
                s.ready_s,
                opt(s.pull_s.map(|p| format!("{p:.4}"))),
                opt(s.last_byte_s.map(|l| format!("{l:.4}"))),
                s.blob_bytes,
                s.blob_requests,
                opt(s.registry_cpu_s.map(|c| format!("{c:.2}"))),
                s.link_bytes,
                opt(s.peak_rss_kib.map(|r| r.to_string())),
                s.disk_bytes,
                opt(s.read_bytes.map(|r| r.to_string())),
            );
        }
        out
    }

    /// A horizontal bar chart: per workload, one bar per (mode, phase), the pull part dark and
    /// the rest light when the mode pulls separately, one solid bar otherwise; the ideal time
    /// as a dashed line.
    pub fn svg(&self) -> String {
        const LABEL_W: f64 = 190.0;
        const PLOT_W: f64 = 560.0;
        const BAR_H: f64 = 16.0;
        const GAP: f64 = 4.0;
        const GROUP_GAP: f64 = 18.0;
        const TOP: f64 = 48.0;
        let rows: Vec<&Summary> = self.summaries.iter().filter(|s| s.ready_s.is_some()).collect();
        let max = rows.iter().filter_map(|s| s.ready_s.map(|r| r.max)).fold(0.0_f64, f64::max);
        let scale_max = nice_ceiling(max.max(0.001));
        let x = |t: f64| LABEL_W + t / scale_max * PLOT_W;

        let mut body = String::new();
        let mut y = TOP;
        let mut last_workload: Option<&str> = None;
        for s in &rows {
            if last_workload != Some(s.workload.as_str()) {
                if last_workload.is_some() {
                    y += GROUP_GAP;
                }
                let _ = writeln!(
                    body,
                    r#"<text x="8" y="{:.1}" font-weight="bold">{}</text>"#,
                    y + BAR_H - 3.0,
                    xml_escape(&s.workload)
                );
                y += BAR_H + GAP;
                if let Some(ideal) = self.ideal_s(&s.workload) {
                    let group_h =
                        rows.iter().filter(|r| r.workload == s.workload).count() as f64 * (BAR_H + GAP);
                    let _ = writeln!(
                        body,
                        r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#c0392b" stroke-dasharray="4 3"><title>ideal {3:.2} s</title></line>"##,
                        x(ideal),
                        y - 2.0,
                        y + group_h,
                        ideal
                    );
                }
                last_workload = Some(&s.workload);
            }
            let ready = s.ready_s.expect("filtered").median;
            let color = s.mode.color();
            let opacity = if s.phase == Phase::Warm { 0.45 } else { 1.0 };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{} {}</text>"#,
                LABEL_W - 6.0,
                y + BAR_H - 4.0,
                xml_escape(s.mode.name()),
                s.phase.name()
            );
            // A bar from `from` to `to` seconds, its tooltip saying what it is.
            let mut bar = |from: f64, to: f64, opacity: f64, title: String| {
                let _ = writeln!(
                    body,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{BAR_H}" fill="{color}" fill-opacity="{opacity:.2}"><title>{title}</title></rect>"#,
                    x(from),
                    x(to) - x(from),
                );
            };
            match s.pull_s.map(|p| p.median) {
                Some(pull) if pull <= ready => {
                    bar(0.0, pull, opacity, format!("pull {pull:.2} s"));
                    bar(pull, ready, opacity * 0.5, format!("run {:.2} s", ready - pull));
                }
                _ => bar(0.0, ready, opacity, format!("ready {ready:.2} s")),
            }
            if let Some(last) = s.last_byte_s.map(|l| l.median) {
                let _ = writeln!(
                    body,
                    r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#111" stroke-width="2"><title>last byte {last:.2} s</title></line>"##,
                    x(last),
                    y - 1.0,
                    y + BAR_H + 1.0
                );
            }
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}">{ready:.2} s</text>"#,
                x(ready) + 4.0,
                y + BAR_H - 4.0
            );
            y += BAR_H + GAP;
        }

        // Axis with five ticks.
        let axis_y = y + 6.0;
        let _ = writeln!(
            body,
            r##"<line x1="{LABEL_W}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="#333"/>"##,
            LABEL_W + PLOT_W
        );
        for i in 0..=5 {
            let t = scale_max * i as f64 / 5.0;
            let _ = writeln!(
                body,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#333"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##,
                x(t),
                axis_y,
                axis_y + 4.0,
                axis_y + 16.0,
                trim_float(t)
            );
        }
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds to ready (median; dark = pull, light = run; black tick = last byte; dashed = ideal)</text>"#,
            LABEL_W + PLOT_W / 2.0,
            axis_y + 32.0
        );
        let height = axis_y + 44.0;
        let width = LABEL_W + PLOT_W + 70.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="8" y="22" font-size="15" font-weight="bold">skiff cold start — {}</text>"#,
            xml_escape(&self.link.describe())
        );
        out.push_str(&body);
        out.push_str("</svg>\n");
        out
    }
}

/// The smallest 1, 2, 2.5 or 5 × 10^k at or above `v` (fifths of it make the axis ticks).
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * magnitude >= v * (1.0 - 1e-9) {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(workload: &str, mode: Mode, phase: Phase, ready_s: f64, blob_bytes: u64) -> Sample {
        Sample {
            workload: workload.into(),
            mode,
            phase,
            iteration: 0,
            ready_s,
            pull_s: (mode == Mode::Podman).then_some(ready_s * 0.8),
            last_byte_s: (phase == Phase::Cold).then_some(ready_s * 0.5),
            registry_cpu_s: Some(0.25),
            blob_bytes,
            blob_requests: 3,
            link_bytes: blob_bytes + 1000,
            peak_rss_kib: Some(20_480),
            disk_bytes: blob_bytes * 2,
            read_bytes: None,
        }
    }

    fn report(rate: Option<u64>) -> Report {
        let samples = vec![
            sample("python", Mode::Lazy, Phase::Cold, 1.0, 12_500_000),
            sample("python", Mode::Lazy, Phase::Cold, 3.0, 12_500_000),
            sample("python", Mode::Lazy, Phase::Cold, 2.0, 12_500_000),
            sample("python", Mode::Podman, Phase::Cold, 10.0, 50_000_000),
            sample("python", Mode::Lazy, Phase::Warm, 0.1, 0),
            sample("a<b&\"c\"", Mode::Full, Phase::Cold, 4.0, 1),
        ];
        let failures = vec![Failure {
            workload: "python".into(),
            mode: Mode::Full,
            phase: Phase::Cold,
            iteration: 1,
            error: "boom".into(),
        }];
        Report::new(
            LinkInfo { rate_bits_per_s: rate, delay_ms: None, cold_registry: false, blobs: Blobs::Redirect },
            true,
            vec![(Mode::Profile, "no --record-profile".into())],
            samples,
            failures,
        )
    }

    #[test]
    fn medians_of_odd_even_and_empty_sets() {
        assert_eq!(Spread::of([3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([7.0]).unwrap(), Spread { median: 7.0, min: 7.0, max: 7.0 });
        assert_eq!(Spread::of([]), None);
        assert_eq!(Spread::of([f64::NAN, 1.0]).unwrap().median, 1.0);
    }

    #[test]
    fn summaries_group_and_order_rows() {
        let r = report(None);
        let keys: Vec<(&str, Mode, Phase)> =
            r.summaries.iter().map(|s| (s.workload.as_str(), s.mode, s.phase)).collect();
        assert_eq!(
            keys,
            vec![
                ("python", Mode::Lazy, Phase::Cold),
                ("python", Mode::Lazy, Phase::Warm),
                ("python", Mode::Full, Phase::Cold),
                ("python", Mode::Podman, Phase::Cold),
                ("a<b&\"c\"", Mode::Full, Phase::Cold),
            ]
        );
        let lazy = &r.summaries[0];
        assert_eq!(lazy.runs, 3);
        assert_eq!(lazy.ready_s.unwrap(), Spread { median: 2.0, min: 1.0, max: 3.0 });
        let full = &r.summaries[2];
        assert_eq!((full.runs, full.failures, full.ready_s), (0, 1, None));
    }

    #[test]
    fn ideal_time_is_lazy_bytes_over_the_rate() {
        let r = report(Some(100_000_000));
        // 12.5 MB at 100 Mbit/s is one second.
        assert!((r.ideal_s("python").unwrap() - 1.0).abs() < 1e-9);
        assert!((r.summaries[0].times_ideal.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(r.summaries[1].ideal_s, None, "warm rows have no ideal");
        assert_eq!(report(None).ideal_s("python"), None);
    }

    #[test]
    fn without_lazy_runs_the_ideal_comes_from_the_profile_runs_count_else_the_optimized() {
        let link = LinkInfo {
            rate_bits_per_s: Some(100_000_000),
            delay_ms: None,
            cold_registry: false,
            blobs: Blobs::Registry,
        };
        let counted = |mode, read: Option<u64>| Sample {
            read_bytes: read,
            ..sample("pg", mode, Phase::Cold, 3.0, 40_000_000)
        };
        let ideal = |samples| Report::new(link.clone(), true, vec![], samples, vec![]).ideal_s("pg");
        let optimized = counted(Mode::Optimized, Some(25_000_000));
        assert_eq!(ideal(vec![optimized.clone()]), Some(2.0));
        assert_eq!(ideal(vec![optimized.clone(), counted(Mode::Profile, Some(12_500_000))]), Some(1.0));
        // What a prefetch fetched is no measure of what was read.
        assert_eq!(ideal(vec![counted(Mode::Profile, None)]), None);
        assert_eq!(ideal(vec![optimized, counted(Mode::Lazy, Some(37_500_000))]), Some(3.0));
    }

    #[test]
    fn table_lists_every_row_skip_and_failure() {
        let t = report(Some(100_000_000)).table();
        assert!(
            t.starts_with(
                "link: 100 Mbit/s (tbf), blobs sent by nginx on the registry's redirect; page cache dropped before each cold run, the registry's files read back in"
            ),
            "{t}"
        );
        assert!(t.contains("2.00 [1.00-3.00]"), "{t}");
        assert!(t.contains("(1 failed)"), "{t}");
        assert!(t.contains("skipped skiff-profile: no --record-profile"), "{t}");
        assert!(t.contains("failed python skiff-full cold #1: boom"), "{t}");
        assert!(t.contains("ideal (bytes read, compressed / link rate): python 1.00 s"), "{t}");
        // The lazy runs' link went quiet halfway: 0.5, 1.5 and 1.0 s before they were ready.
        // Cold rows only: warm runs move no bytes.
        let after = t.lines().find(|l| l.starts_with("ready after the last byte: ")).unwrap();
        assert_eq!(
            after,
            "ready after the last byte: python skiff-lazy 1.00 s, python podman 5.00 s, a<b&\"c\" skiff-full 2.00 s"
        );
        // Columns line up: every data line is as long as the header or ends early (trimmed).
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("WORKLOAD"));
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_sample_with_quoting() {
        let c = report(None).csv();
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[0].starts_with("workload,mode,phase,"));
        assert!(lines[4].starts_with("python,podman,cold,0,10.0000,8.0000,5.0000,50000000,3,0.25,50001000,"));
        assert!(lines[5].starts_with("python,skiff-lazy,warm,0,0.1000,,,"), "{}", lines[5]);
        assert!(lines[6].starts_with("\"a<b&\"\"c\"\"\",skiff-full,"));
        assert!(lines.iter().all(|l| l.split(',').count() >= 11));
    }

    /// Checks that every tag opened is closed in order, attributes are quoted and text holds
    /// no raw `<` or `&` outside entities: enough to call the SVG well-formed XML.
    fn assert_well_formed(xml: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"].iter().any(|e| entity.starts_with(e)),
                    "bare & in {text:?}"
                );
            }
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "< inside tag {tag:?}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap().to_string();
                stack.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert!(rest.trim().is_empty());
    }

    #[test]
    fn svg_is_well_formed_with_stacked_and_single_bars() {
        let svg = report(Some(100_000_000)).svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_well_formed(&svg);
        assert!(svg.contains("<title>pull 8.00 s</title>"), "podman's pull is its own segment");
        assert!(svg.contains("<title>run 2.00 s</title>"));
        assert!(svg.contains("<title>ready 2.00 s</title>"), "skiff-lazy is one bar");
        assert!(svg.contains("a&lt;b&amp;&quot;c&quot;"));
        assert!(svg.contains("stroke-dasharray"), "the ideal line");
        assert!(svg.contains("<title>last byte 1.00 s</title>"), "a tick where skiff-lazy's link went quiet");
        assert_eq!(svg.matches("<title>last byte").count(), 3, "cold rows only");
        assert_well_formed(
            &Report::new(
                LinkInfo {
                    rate_bits_per_s: None,
                    delay_ms: None,
                    cold_registry: false,
                    blobs: Blobs::Registry,
                },
                false,
                vec![],
                vec![],
                vec![],
            )
            .svg(),
        );
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(20.1), 25.0);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
    }

    #[test]
    fn rates_are_described_in_their_unit() {
        assert_eq!(format_rate(100_000_000), "100 Mbit/s");
        assert_eq!(format_rate(1_000_000_000), "1 Gbit/s");
        assert_eq!(format_rate(1_500_000), "1500 kbit/s");
    }
}
