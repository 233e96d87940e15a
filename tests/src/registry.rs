//! A real registry (Debian's `docker-registry`, CNCF distribution) on 127.0.0.1.
//!
//! The registry runs under a small `sh` watchdog whose stdin is a pipe from the test process:
//! when the test process ends, however it ends, the pipe closes and the watchdog stops the
//! registry by its pid and removes its temp dir. Dropping a [`Registry`] does the same at once.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use skiff::Digest;

#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Require HTTP basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1.
    pub tls: bool,
}

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Registry storage, config, and certificate.
    pub dir: PathBuf,
    pub config: RegistryConfig,
    watchdog: Child,
    stdin: Option<ChildStdin>,
}

static SHARED: OnceLock<Option<Registry>> = OnceLock::new();

impl Registry {
    /// The registry shared by every test of this run (plain HTTP, no auth); `None` (skip)
    /// when docker-registry is not installed.
    pub fn shared() -> Option<&'static Registry> {
        SHARED.get_or_init(|| Registry::start(RegistryConfig::default())).as_ref()
    }

    /// Starts a registry of its own, for tests that need auth, TLS or to damage its storage.
    pub fn start(config: RegistryConfig) -> Option<Registry> {
        if !crate::have("docker-registry") || (config.tls && !crate::have("openssl")) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("skiff-registry-").tempdir().unwrap().keep();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: skiff-test\n",
            dir.join("storage").display()
        );
        if config.tls {
            make_certificate(&dir);
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        if let Some((user, pass)) = &config.basic_auth {
            let out = Command::new("htpasswd").args(["-Bbn", user, pass]).output().expect("running htpasswd");
            assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        std::fs::write(dir.join("config.yml"), yaml).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let mut watchdog = Command::new("sh")
            .args([
                "-c",
                r#"docker-registry serve "$1/config.yml" & pid=$!; read _; kill "$pid"; wait "$pid"; rm -rf "$1""#,
                "skiff-registry-watchdog",
            ])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let stdin = watchdog.stdin.take();
        let registry = Registry { addr, dir, config, watchdog, stdin };
        registry.wait_ready();
        Some(registry)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            let mut log = String::new();
            let _ =
                std::fs::File::open(self.dir.join("registry.log")).map(|mut f| f.read_to_string(&mut log));
            assert!(Instant::now() < deadline, "registry on {} did not start: {log}", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CA certificate that signed a TLS registry's certificate.
    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Where the registry keeps a blob's bytes (to damage them on purpose).
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir.join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(&hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.watchdog.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA and a server certificate for 127.0.0.1 signed by it (TLS libraries refuse a
/// self-signed CA certificate used directly by a server).
fn make_certificate(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
        assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=skiff test CA"]
            .iter()
            .copied()
            .chain([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
            ])
            .collect::<Vec<_>>(),
    );
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "req.pem",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
}
