//! The link between the registry and the clients: a private network namespace of the bench's
//! own (`ip netns add`), its `lo` shaped with `tbf`, and the registry (`docker-registry serve`)
//! running inside it with its access log on. By default ([`Blobs::Redirect`]) the registry
//! answers a blob GET with a redirect to its storage, which nginx serves as static files, as
//! public registries send blob downloads to a CDN or an object store. With a delay, the
//! servers listen on 127.0.0.2 and `skiff-bench delay-line` relays the clients' addresses to
//! them, adding the delay and the rate (this kernel has no netem). Dropping a [`Link`] stops
//! every server (by pid) and deletes the namespace, which takes the qdisc with it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::proc::{run_checked, stop_child};

/// The registry's address inside the namespace, as clients reach it.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// The blob server's, for [`Blobs::Redirect`].
const BLOB_SERVER: &str = "127.0.0.1:5001";
/// Where the registry and the blob server listen behind a delay line.
const REGISTRY_BEHIND: &str = "127.0.0.2:5000";
const BLOB_SERVER_BEHIND: &str = "127.0.0.2:5001";

/// Where blob bytes come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Blobs {
    /// The registry redirects each blob GET to its storage, served by nginx as static files:
    /// as Docker Hub, GHCR, ECR or Quay hand blob downloads to a CDN or an object store.
    #[default]
    Redirect,
    /// docker-registry sends blob bytes itself (it reads 4 MiB for every range request).
    Registry,
}

/// How the link is shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    /// Bits per second; `None` leaves the rate alone.
    pub rate_bits_per_s: Option<u64>,
    /// Added round-trip time, half each way: through the delay line, which then also keeps
    /// the rate (each direction at it) instead of `tbf`.
    pub delay_ms: Option<u64>,
}

/// Parses a tc-style rate: `100mbit`, `1gbit`, `512kbit`, `8000000bit` or a bare number of bits
/// per second. Byte units (`mbps` means megabytes to tc) are refused, as too easy to misread.
pub fn parse_rate(input: &str) -> anyhow::Result<u64> {
    let s = input.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("rate {input:?}: expected a number and a unit like 100mbit"))?;
    let factor = match unit {
        "" | "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        _ => bail!("rate {input:?}: unit must be bit, kbit, mbit or gbit"),
    };
    match n.checked_mul(factor) {
        Some(r) if r > 0 => Ok(r),
        _ => bail!("rate {input:?} is out of range"),
    }
}

/// The `tc` arguments that shape `lo` to `rate` (run inside the namespace). `lo` sends 64 KiB
/// segments, so the bucket must hold at least one (a smaller burst drops them); 10 ms of rate
/// above that keeps the shaper smooth at high rates. The queue holds 100 ms.
pub fn tbf_command(rate: u64) -> Vec<String> {
    let burst = (rate / 8 / 100).max(128 * 1024);
    let tbf = format!("qdisc add dev lo root tbf rate {rate}bit burst {burst} latency 100ms");
    tbf.split_whitespace().map(str::to_string).collect()
}

/// A server [`Link::start`] runs in the namespace: its command, where it listens, its name, and
/// what provides it.
struct Server<'a> {
    argv: &'a [&'a str],
    addr: &'a str,
    what: &'a str,
    from: &'a str,
}

/// A private network namespace with the registry running in it.
pub struct Link {
    name: String,
    registry: Option<Child>,
    /// nginx, serving the registry's storage, with [`Blobs::Redirect`].
    blob_server: Option<Child>,
    /// The registry's access log, then the blob server's.
    access_logs: Vec<PathBuf>,
    storage: PathBuf,
    /// The relay between the clients and the servers, with a delay: `skiff-bench delay-line`.
    delay_line: Option<Child>,
    log_dir: PathBuf,
}

impl Link {
    /// Creates the namespace `skiff-bench-<pid>` with `lo` up (unshaped) and starts the
    /// registry, its blobs under `storage`, its logs under `log_dir`; with
    /// [`Blobs::Redirect`], nginx too; with `delay_line`, the servers behind a delay line
    /// (without delay until [`Link::shape`]).
    pub fn start(storage: &Path, log_dir: &Path, blobs: Blobs, delay_line: bool) -> anyhow::Result<Link> {
        let name = format!("skiff-bench-{}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let mut link = Link {
            name,
            registry: None,
            blob_server: None,
            access_logs: vec![log_dir.join("registry-access.log")],
            storage: storage.to_path_buf(),
            delay_line: None,
            log_dir: log_dir.to_path_buf(),
        };
        let (registry, blob_server) =
            if delay_line { (REGISTRY_BEHIND, BLOB_SERVER_BEHIND) } else { (REGISTRY, BLOB_SERVER) };
        link.exec_checked(&["ip", "link", "set", "lo", "up"])?;

        std::fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
        std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        if blobs == Blobs::Redirect {
            let tmp = log_dir.join("nginx-tmp");
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let config = log_dir.join("nginx.conf");
            std::fs::write(&config, nginx_config(storage, log_dir, blob_server))
                .with_context(|| format!("writing {}", config.display()))?;
            let argv = ["nginx", "-e", "stderr", "-c", path_str(&config)?];
            let server =
                Server { argv: &argv, addr: blob_server, what: "nginx", from: "apt-get install nginx" };
            link.blob_server = Some(link.serve(&server, Stdio::null(), &log_dir.join("nginx.log"))?);
            link.access_logs.push(log_dir.join("blobs-access.log"));
        }
        let config = log_dir.join("registry.yml");
        std::fs::write(&config, registry_config(storage, blobs, registry))
            .with_context(|| format!("writing {}", config.display()))?;
        let argv = ["docker-registry", "serve", path_str(&config)?];
        let server = Server {
            argv: &argv,
            addr: registry,
            what: "docker-registry",
            from: "apt-get install docker-registry",
        };
        let access_log = File::create(&link.access_logs[0]).context("creating the registry access log")?;
        link.registry = Some(link.serve(&server, access_log.into(), &log_dir.join("registry.log"))?);
        if delay_line {
            link.start_delay_line(&Shape::default())?;
        }
        Ok(link)
    }

    /// (Re)starts the delay line with `shape`: the clients' addresses relayed to the servers'.
    fn start_delay_line(&mut self, shape: &Shape) -> anyhow::Result<()> {
        if let Some(mut old) = self.delay_line.take() {
            stop_child(&mut old, Duration::from_secs(5));
        }
        let exe = std::env::current_exe().context("finding skiff-bench's own binary")?;
        let mut argv = vec![path_str(&exe)?.to_string(), "delay-line".into()];
        for (listen, target) in [(REGISTRY, REGISTRY_BEHIND), (BLOB_SERVER, BLOB_SERVER_BEHIND)] {
            argv.extend(["--forward".into(), format!("{listen}={target}")]);
        }
        if let Some(delay) = shape.delay_ms {
            argv.extend(["--delay-ms".into(), delay.to_string()]);
        }
        if let Some(rate) = shape.rate_bits_per_s {
            argv.extend(["--rate".into(), format!("{rate}bit")]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let server = Server { argv: &argv, addr: REGISTRY, what: "the delay line", from: "skiff-bench" };
        self.delay_line = Some(self.serve(&server, Stdio::null(), &self.log_dir.join("delay-line.log"))?);
        Ok(())
    }

    /// Starts `server` in the namespace, its output to `stdout` and the file `log`, and waits
    /// until it listens; one that does not is stopped, and the error quotes its log.
    fn serve(&self, server: &Server, stdout: Stdio, log: &Path) -> anyhow::Result<Child> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let (what, from) = (server.what, server.from);
        // `ip netns exec` execs the server, so the child's pid is the server's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(server.argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {what} ({from})"))?;
        if let Err(e) = self.wait_for_port(server.addr, what, log, &mut child) {
            stop_child(&mut child, Duration::from_secs(5));
            return Err(e);
        }
        Ok(child)
    }

    /// Waits until something listens on `addr` in the namespace, or `server` has exited (the
    /// error then quotes its `log`).
    fn wait_for_port(&self, addr: &str, what: &str, log: &Path, server: &mut Child) -> anyhow::Result<()> {
        let (host, port) = addr.split_once(':').context("an address is HOST:PORT")?;
        let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The namespace's port is not reachable from here; ask from inside.
            let listening = self
                .exec_command(&["bash", "-c", &probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if matches!(listening, Ok(s) if s.success()) {
                return Ok(());
            }
            if let Some(status) = server.try_wait().ok().flatten() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{what} exited ({status}) before it listened on {addr}: {}", said.trim());
            }
            if Instant::now() > deadline {
                bail!("{what} did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shapes the link (after the images are pushed, so pushing is fast): the delay line's
    /// delay and rate when there is one, else `lo` at the rate with `tbf`.
    pub fn shape(&mut self, shape: &Shape) -> anyhow::Result<()> {
        if self.delay_line.is_some() {
            return self.start_delay_line(shape);
        }
        if shape.delay_ms.is_some() {
            bail!("a delay needs the link started with its delay line");
        }
        if let Some(rate) = shape.rate_bits_per_s {
            let mut argv = vec!["tc".to_string()];
            argv.extend(tbf_command(rate));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            self.exec_checked(&argv).context("shaping lo with tbf")?;
        }
        Ok(())
    }

    /// `nsenter --net=… ARGV…`: a command that runs inside the namespace and nothing else of
    /// it (no new mount namespace), so its pid is the command's own.
    pub fn exec_command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg("--").args(argv);
        cmd
    }

    fn exec_checked(&self, argv: &[&str]) -> anyhow::Result<()> {
        run_checked(&mut self.exec_command(argv))
    }

    /// Reads what the registry serves for `reference` (`REGISTRY/REPO:TAG`) back into the page
    /// cache: the repository's link files, and the manifest, config and layer blobs of the
    /// tag. Dropping the page cache empties the client's caches, and the registry's with them;
    /// the registry is the far end of the link, and this puts its end back as it was.
    pub fn warm_registry(&self, reference: &str) -> anyhow::Result<()> {
        read_image_files(&self.storage, reference)
    }

    /// Bytes sent on the namespace's `lo` so far (every packet is counted once), read from the
    /// counters the registry's `/proc` entry shows (the namespace's).
    pub fn lo_bytes(&self) -> anyhow::Result<u64> {
        let path = self.registry_proc("net/dev").context("the registry is not running")?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        lo_tx_bytes(&text).with_context(|| format!("{}: no counters for lo", path.display()))
    }

    /// CPU time the registry and its blob server have used so far (user and system), `None`
    /// when the registry is not running. They share the machine's CPUs with the runs they
    /// serve: what they spend, a registry at the far end of a real link would not take.
    pub fn registry_cpu(&self) -> Option<Duration> {
        let of = |child: &Child| cpu_time(&std::fs::read_to_string(proc_file(child, "stat")).ok()?);
        let registry = of(self.registry.as_ref()?)?;
        Some(registry + self.blob_server.as_ref().and_then(of).unwrap_or_default())
    }

    /// `file` of the registry's `/proc` entry; `None` when it is not running.
    fn registry_proc(&self, file: &str) -> Option<PathBuf> {
        Some(proc_file(self.registry.as_ref()?, file))
    }

    /// Starts looking at the namespace's `lo` every [`WATCH_PERIOD`] from a thread of its own,
    /// noting the moments its byte count has moved (the counters [`Link::lo_bytes`] reads).
    /// `None` when the registry is not running.
    pub fn watch(&self) -> Option<LinkWatch> {
        let path = self.registry_proc("net/dev")?;
        let read = move || std::fs::read_to_string(&path).ok().as_deref().and_then(lo_tx_bytes);
        let mut last = read()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut moved = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(WATCH_PERIOD);
                let Some(bytes) = read() else { break };
                if bytes != last {
                    moved.push(Instant::now());
                    last = bytes;
                }
            }
            moved
        });
        Some(LinkWatch { stop, thread: Some(thread) })
    }

    /// Where the access logs end now; [`Link::registry_traffic_since`] reads on from there.
    pub fn access_log_mark(&self) -> Vec<u64> {
        self.access_logs.iter().map(|log| std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)).collect()
    }

    /// Blob bytes and requests the registry and its blob server logged after `mark`: a
    /// redirected GET counts twice, as it costs two round trips.
    pub fn registry_traffic_since(&self, mark: &[u64]) -> anyhow::Result<Traffic> {
        // A server logs a request when its response is done; give the last one a moment.
        std::thread::sleep(Duration::from_millis(150));
        let mut text = String::new();
        for (log, &from) in self.access_logs.iter().zip(mark) {
            let mut file = File::open(log).with_context(|| format!("opening {}", log.display()))?;
            file.seek(SeekFrom::Start(from))?;
            file.read_to_string(&mut text).with_context(|| format!("reading {}", log.display()))?;
            // A line cut short at one log's end must not run into the next log's first.
            text.push('\n');
        }
        Ok(Traffic::from_access_log(&text))
    }
}

/// How often a [`LinkWatch`] looks at `lo`: a moment it notes is at most this late. Fine enough
/// for what it shows (tenths of seconds), and few enough looks to leave the CPUs to the run.
pub const WATCH_PERIOD: Duration = Duration::from_millis(20);

/// A running look at `lo` (see [`Link::watch`]); dropped unfinished (a run that failed), it
/// stops looking all the same.
pub struct LinkWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Instant>>>,
}

impl LinkWatch {
    /// Stops looking; the moments `lo` was seen to have carried bytes since the look before.
    pub fn finish(mut self) -> Vec<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The last of `moments` in `began..=until`, as time since `began`: when the link last carried
/// bytes during a run that began then and was ready at `until`.
pub fn last_moment(moments: &[Instant], began: Instant, until: Instant) -> Option<Duration> {
    moments.iter().filter(|m| (began..=until).contains(*m)).max().map(|m| m.duration_since(began))
}

/// The registry's configuration: listening on `addr`, storage under `storage`, access log
/// on, and with [`Blobs::Redirect`] the redirect middleware, which answers a blob GET with a
/// 307 to `http://BLOB_SERVER/docker/registry/v2/blobs/…/data`, the blob's path in the storage
/// (the blob server's address as clients reach it).
fn registry_config(storage: &Path, blobs: Blobs, addr: &str) -> String {
    let mut config = format!(
        "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: false}}}}\n\
         storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
         http: {{addr: {addr}}}\n",
        storage.display()
    );
    if blobs == Blobs::Redirect {
        config.push_str(&format!(
            "middleware: {{storage: [{{name: redirect, options: {{baseurl: 'http://{BLOB_SERVER}'}}}}]}}\n"
        ));
    }
    config
}

/// nginx as the blob server on `addr`: one process (no master, so its pid is the one to stop
/// and its CPU time all there is), GETs (and HEADs) of the registry's blob files under
/// `storage` and nothing else, sent with sendfile; the access log in the combined format, its
/// temporary files under `log_dir`.
fn nginx_config(storage: &Path, log_dir: &Path, addr: &str) -> String {
    let tmp = log_dir.join("nginx-tmp");
    let tmp = tmp.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid "{log}/nginx.pid";
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log "{log}/blobs-access.log";
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_body_temp_path "{tmp}/body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    server {{
        listen {addr};
        root "{storage}";
        location /docker/registry/v2/blobs/ {{
            limit_except GET {{ deny all; }}
            types {{ }}
            default_type application/octet-stream;
        }}
        location / {{ return 404; }}
    }}
}}
"#,
        log = log_dir.display(),
        storage = storage.display(),
    )
}

/// `file` of a child's `/proc` entry.
fn proc_file(child: &Child, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/{file}", child.id()))
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

/// User plus system time from the text of a `/proc/PID/stat` (fields 14 and 15, in the
/// kernel's USER_HZ ticks, 100 a second on Linux). The command name, field 2, may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn cpu_time(stat: &str) -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// The bytes `lo` has sent, from the text of a `/proc/PID/net/dev`: the ninth number after
/// `lo:` (receive has eight columns, then transmit's bytes).
fn lo_tx_bytes(net_dev: &str) -> Option<u64> {
    let line = net_dev.lines().find_map(|l| l.trim_start().strip_prefix("lo:"))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Reads the files a registry whose storage is `storage` serves for `reference`
/// (`REGISTRY/REPO:TAG`): the repository's link files, and the tag's manifest, config and
/// layer blobs.
fn read_image_files(storage: &Path, reference: &str) -> anyhow::Result<()> {
    let (repo, tag) = reference
        .strip_prefix(&format!("{REGISTRY}/"))
        .and_then(|r| r.rsplit_once(':'))
        .with_context(|| format!("{reference}: not an image of the bench's registry"))?;
    let v2 = storage.join("docker/registry/v2");
    let repository = v2.join("repositories").join(repo);
    // Read through, not kept: a layer can be hundreds of MB.
    let read_through = |path: &Path| -> anyhow::Result<()> {
        let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        std::io::copy(&mut file, &mut std::io::sink())
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(())
    };
    for file in files_under(&repository) {
        read_through(&file)?;
    }
    let blob = |digest: &str| -> anyhow::Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").with_context(|| format!("{digest}: not sha256"))?;
        Ok(v2.join("blobs/sha256").join(hex.get(..2).unwrap_or(hex)).join(hex).join("data"))
    };
    let tag_link = repository.join("_manifests/tags").join(tag).join("current/link");
    let manifest_digest =
        std::fs::read_to_string(&tag_link).with_context(|| format!("reading {}", tag_link.display()))?;
    let manifest_path = blob(manifest_digest.trim())?;
    let manifest_bytes =
        std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{reference}: parsing its manifest"))?;
    let layers = manifest["layers"].as_array().into_iter().flatten();
    for descriptor in std::iter::once(&manifest["config"]).chain(layers) {
        if let Some(digest) = descriptor["digest"].as_str() {
            read_through(&blob(digest)?)?;
        }
    }
    Ok(())
}

/// Every file under `dir`, at any depth (none if it cannot be listed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files
}

impl Drop for Link {
    fn drop(&mut self) {
        for child in [&mut self.delay_line, &mut self.registry, &mut self.blob_server].into_iter().flatten() {
            stop_child(child, Duration::from_secs(5));
        }
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// What the registry sent for blob requests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    pub blob_bytes: u64,
    pub blob_requests: u64,
}

impl Traffic {
    /// Sums the combined-log-format lines (`… "GET /v2/NAME/blobs/DIGEST HTTP/1.1" 206 BYTES …`)
    /// of GET requests for blobs, the registry's or the blob server's
    /// (`/docker/registry/v2/blobs/…`); HEADs and manifests are not counted, nor lines it
    /// cannot parse.
    pub fn from_access_log(text: &str) -> Traffic {
        let mut t = Traffic::default();
        for line in text.lines() {
            let Some(start) = line.find('"') else { continue };
            let Some(len) = line[start + 1..].find('"') else { continue };
            let request = &line[start + 1..start + 1 + len];
            let mut parts = request.split_whitespace();
            let (Some("GET"), Some(path)) = (parts.next(), parts.next()) else { continue };
            let blob = (path.starts_with("/v2/") && path.contains("/blobs/"))
                || path.starts_with("/docker/registry/v2/blobs/");
            if !blob {
                continue;
            }
            let mut after = line[start + 1 + len + 1..].split_whitespace();
            let _status = after.next();
            let bytes = after.next().and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
            t.blob_bytes += bytes;
            t.blob_requests += 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lo_transmit_bytes_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo: 16107763   11020    0    0    0     0          0         0 16107999   11021    0    0    0     0       0          0\n  \
             eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        assert_eq!(lo_tx_bytes(text), Some(16_107_999));
        assert_eq!(lo_tx_bytes("  eth0: 1 2 3 4 5 6 7 8 9 10\n"), None);
        assert_eq!(lo_tx_bytes("    lo: 1 2 3\n"), None);
    }

    #[test]
    fn cpu_time_is_user_plus_system_after_the_command_name() {
        let stat = "4242 (docker (reg) y) S 1 4242 4242 0 -1 4194560 9000 0 12 0 250 37 0 0 20 0 12 0 300 0";
        assert_eq!(cpu_time(stat), Some(Duration::from_millis(2870)));
        assert_eq!(cpu_time("4242 (short) S 1 2"), None);
        assert_eq!(cpu_time("no parenthesis"), None);
    }

    #[test]
    fn the_last_moment_is_the_latest_inside_the_run() {
        let began = Instant::now();
        let at = |ms| began + Duration::from_millis(ms);
        let moved = [at(10), at(900), at(40), at(1300)];
        // A byte after the run was ready (the server being stopped) does not count.
        assert_eq!(last_moment(&moved, began, at(1000)), Some(Duration::from_millis(900)));
        assert_eq!(last_moment(&moved, began, at(1300)), Some(Duration::from_millis(1300)));
        assert_eq!(last_moment(&moved, at(950), at(1000)), None);
        assert_eq!(last_moment(&[], began, at(1000)), None);
    }

    #[test]
    fn warming_reads_the_tags_blobs_and_names_a_missing_one() {
        let storage = tempfile::tempdir().unwrap();
        let v2 = storage.path().join("docker/registry/v2");
        let put_blob = |name: &str, bytes: &[u8]| {
            let hex = format!("{:0>64}", name);
            let dir = v2.join("blobs/sha256").join(&hex[..2]).join(&hex);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("data"), bytes).unwrap();
            format!("sha256:{hex}")
        };
        let config = put_blob("c", b"{}");
        let layer = put_blob("1", b"layer");
        let missing = format!("sha256:{:0>64}", "2");
        let manifest = |layers: &[&str]| {
            let layers: Vec<_> = layers.iter().map(|d| serde_json::json!({ "digest": d })).collect();
            serde_json::json!({ "config": { "digest": config }, "layers": layers }).to_string()
        };
        let tag = |name: &str, digest: &str| {
            let dir = v2.join("repositories/skiff-bench/app/_manifests/tags").join(name).join("current");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("link"), digest).unwrap();
        };
        tag("good", &put_blob("a", manifest(&[&layer]).as_bytes()));
        tag("bad", &put_blob("b", manifest(&[&layer, &missing]).as_bytes()));

        read_image_files(storage.path(), &format!("{REGISTRY}/skiff-bench/app:good")).unwrap();
        let err = read_image_files(storage.path(), &format!("{REGISTRY}/skiff-bench/app:bad")).unwrap_err();
        assert!(format!("{err:#}").contains(&missing[7..]), "{err:#}");
        let err = read_image_files(storage.path(), &format!("{REGISTRY}/skiff-bench/app:none")).unwrap_err();
        assert!(format!("{err:#}").contains("tags/none/current/link"), "{err:#}");
        assert!(read_image_files(storage.path(), "docker.io/library/app:good").is_err());
    }

    #[test]
    fn rates_in_bits() {
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("512kbit").unwrap(), 512_000);
        assert_eq!(parse_rate("9600").unwrap(), 9600);
        assert!(parse_rate("100mbps").is_err(), "bytes per second is refused");
        assert!(parse_rate("0mbit").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn tbf_holds_a_loopback_segment_or_10_ms_of_rate() {
        assert_eq!(
            tbf_command(100_000_000).join(" "),
            "qdisc add dev lo root tbf rate 100000000bit burst 131072 latency 100ms"
        );
        // At 10 Gbit/s, 10 ms of rate outgrows the 128 KiB floor.
        assert!(tbf_command(10_000_000_000).join(" ").contains("burst 12500000 "));
    }

    #[test]
    fn only_a_redirecting_registry_names_the_blob_server() {
        let storage = Path::new("/cache/registry");
        let direct = registry_config(storage, Blobs::Registry, REGISTRY);
        assert!(direct.contains("rootdirectory: /cache/registry") && direct.contains("addr: 127.0.0.1:5000"));
        assert!(!direct.contains("middleware"));
        let redirect = registry_config(storage, Blobs::Redirect, REGISTRY);
        assert!(redirect.starts_with(&direct));
        assert!(redirect.contains("{name: redirect, options: {baseurl: 'http://127.0.0.1:5001'}}"));
        // Behind a delay line, the registry listens elsewhere and still sends clients to the
        // blob server's address as they reach it.
        let behind = registry_config(storage, Blobs::Redirect, REGISTRY_BEHIND);
        assert!(
            behind.contains("addr: 127.0.0.2:5000") && behind.contains("baseurl: 'http://127.0.0.1:5001'")
        );
    }

    #[test]
    fn the_blob_server_serves_the_registrys_blob_files_only() {
        let conf = nginx_config(Path::new("/cache/registry"), Path::new("/cache/run-1"), BLOB_SERVER);
        for line in [
            "master_process off;",
            "listen 127.0.0.1:5001;",
            r#"root "/cache/registry";"#,
            "location /docker/registry/v2/blobs/ {",
            "limit_except GET { deny all; }",
            "location / { return 404; }",
            r#"access_log "/cache/run-1/blobs-access.log";"#,
            r#"client_body_temp_path "/cache/run-1/nginx-tmp/body";"#,
        ] {
            assert!(conf.contains(line), "{line} missing from\n{conf}");
        }
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn access_log_sums_blob_gets_only() {
        let log = r#"127.0.0.1 - - [27/Nov/2025:05:25:01 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "skiff/0.1"
127.0.0.1 - - [27/Nov/2025:05:25:01 +0000] "GET /v2/bench/python/manifests/estargz HTTP/1.1" 200 1234 "" "skiff/0.1"
127.0.0.1 - - [27/Nov/2025:05:25:01 +0000] "HEAD /v2/bench/python/blobs/sha256:aa HTTP/1.1" 200 0 "" "skiff/0.1"
127.0.0.1 - - [27/Nov/2025:05:25:01 +0000] "GET /v2/bench/python/blobs/sha256:aa HTTP/1.1" 206 1048576 "" "skiff/0.1"
127.0.0.1 - - [27/Nov/2025:05:25:02 +0000] "GET /v2/bench/python/blobs/sha256:bb HTTP/1.1" 200 51 "" "skiff/0.1"
time="2025-11-27T05:25:02Z" level=info msg="not an access log line"
garbage"#;
        assert_eq!(Traffic::from_access_log(log), Traffic { blob_bytes: 1_048_627, blob_requests: 2 });
        // The registry's redirect, then the blob server's answer: two requests.
        let redirected = r#"127.0.0.1 - - [02/Dec/2026:01:14:37 +0000] "GET /v2/bench/python/blobs/sha256:aa HTTP/1.1" 307 0 "" "skiff/0.1"
127.0.0.1 - - [02/Dec/2026:01:14:37 +0000] "HEAD /docker/registry/v2/blobs/sha256/aa/aa/data HTTP/1.1" 200 0 "-" "skiff/0.1"
127.0.0.1 - - [02/Dec/2026:01:14:37 +0000] "GET /docker/registry/v2/blobs/sha256/aa/aa/data HTTP/1.1" 206 55154 "-" "skiff/0.1"
127.0.0.1 - - [02/Dec/2026:01:14:37 +0000] "GET /docker/registry/v2/repositories/x HTTP/1.1" 404 153 "-" "skiff/0.1""#;
        assert_eq!(Traffic::from_access_log(redirected), Traffic { blob_bytes: 55_154, blob_requests: 2 });
    }
}
