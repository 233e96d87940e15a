//! A real-world image for the end-to-end tests: Debian bookworm (debootstrap minbase) with
//! python3. Its rootfs is built once per machine into a gzip layer cached under
//! `/var/cache/skiff-tests` (`SKIFF_TEST_CACHE`), named after the build recipe; each test run
//! pushes it to the shared test registry as a gzip image and, through `skiff convert`, as an
//! eStargz one.
//!
//! The build happens under a lock (so concurrent test processes build once) in a directory
//! renamed into place when whole. debootstrap runs in mount and PID namespaces of its own, so
//! the `/proc` and `/sys` it mounts in the rootfs go with it, and so does it when the test
//! process dies. The rootfs is only ever packed by `tar` from inside it, or changed without
//! following its (absolute) symlinks.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use skiff::Digest;
use skiff_fs::Sha256Writer;

use crate::cli::Skiff;
use crate::fixtures::{self, Layer};

const SUITE: &str = "bookworm";
const INCLUDE: &str = "python3-minimal";
/// Bump when the rootfs is built or cleaned differently: it renames the cached layer.
const RECIPE_VERSION: u32 = 1;
/// A debootstrap that takes longer than this is stuck (a minbase build takes about a minute).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Where the bench keeps the .debs it downloaded: copied into our cache when it is empty.
const BENCH_DEBS: &str = "/var/cache/skiff-bench/debootstrap-debs";

/// The Debian image in the shared test registry.
pub struct DebianImage {
    /// The rootfs as one gzip layer (in the machine's cache).
    pub layer: Layer,
    /// `REG/containers/debian-python3:latest`: the layer as built, plain gzip.
    pub gzip_ref: String,
    /// `REG/containers/debian-python3:estargz`: converted by `skiff convert`.
    pub estargz_ref: String,
    /// The eStargz image's layers and their total compressed size.
    pub estargz_layers: Vec<Digest>,
    pub estargz_size: u64,
}

/// Why there is no image.
enum Unavailable {
    /// The machine lacks something the tests can skip without (unless required).
    Skip(String),
    /// A build that should have worked did not.
    Failed(String),
}

impl From<String> for Unavailable {
    fn from(why: String) -> Unavailable {
        Unavailable::Failed(why)
    }
}

static IMAGE: OnceLock<Result<DebianImage, Unavailable>> = OnceLock::new();

/// The image, built or taken from the cache and pushed on first use; `None` (skip) without
/// root, the registry, debootstrap or a reachable mirror. A failed build fails every caller
/// with the same message, without building again.
pub fn image() -> Option<&'static DebianImage> {
    match IMAGE.get_or_init(publish) {
        Ok(image) => Some(image),
        Err(Unavailable::Skip(why)) => crate::skip(why),
        Err(Unavailable::Failed(why)) => panic!("{why}"),
    }
}

fn publish() -> Result<DebianImage, Unavailable> {
    if !crate::mount::nix_is_root() {
        return Err(Unavailable::Skip(
            "the Debian test image is built by debootstrap, which needs root".into(),
        ));
    }
    let Some(f) = fixtures::shared() else {
        return Err(Unavailable::Skip("the Debian test image needs the test registry".into()));
    };
    for tool in ["debootstrap", "tar", "flock", "unshare", "setpriv"] {
        if !crate::have(tool) {
            return Err(Unavailable::Skip(format!("the Debian test image needs {tool}")));
        }
    }
    let layer = cached_layer()?;
    let config = serde_json::json!({
        "Cmd": ["python3"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    });
    let gzip_ref = crate::containers::push_image("debian-python3", std::slice::from_ref(&layer), config);
    let estargz_ref = format!("{}/containers/debian-python3:estargz", f.registry.addr);
    let dir = crate::temp_dir();
    let converter = Skiff::new(dir.path());
    let out = converter.run(&["convert", &gzip_ref, &estargz_ref]);
    if out.code != 0 {
        return Err(format!("skiff convert {gzip_ref} {estargz_ref} failed: {}", out.stderr).into());
    }
    let store = converter.store();
    let record = store.find_image(&estargz_ref).map_err(|e| format!("{estargz_ref}: {e}"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&store.read(&record.manifest).map_err(|e| e.to_string())?)
            .map_err(|e| format!("the manifest of {estargz_ref}: {e}"))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let estargz_layers = layers.iter().filter_map(|l| l["digest"].as_str()?.parse().ok()).collect();
    let estargz_size = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    Ok(DebianImage { layer, gzip_ref, estargz_ref, estargz_layers, estargz_size })
}

/// The cache of built layers (and of debootstrap's .debs).
fn cache_dir() -> PathBuf {
    std::env::var_os("SKIFF_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/skiff-tests"), PathBuf::from)
}

/// The cached layer's name: what it holds, and a digest of everything that shaped it.
fn recipe_key() -> String {
    let arch = skiff::manifest::Platform::host().architecture;
    let recipe = format!(
        "debootstrap --variant=minbase --include={INCLUDE} {SUITE}; arch {arch}; recipe {RECIPE_VERSION}"
    );
    format!("debian-{SUITE}-python3-{arch}-{}", &Digest::of(recipe.as_bytes()).hex()[..12])
}

/// What `layer.json` records beside a cached `layer.tar.gz`.
fn read_cached(dir: &Path) -> Option<Layer> {
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("layer.json")).ok()?).ok()?;
    let path = dir.join("layer.tar.gz");
    let size = meta["size"].as_u64()?;
    if fs::metadata(&path).ok()?.len() != size {
        return None;
    }
    Some(Layer {
        path,
        digest: meta["digest"].as_str()?.parse().ok()?,
        diff_id: meta["diff_id"].as_str()?.parse().ok()?,
        size,
    })
}

/// The layer from the cache, built first if it is not there.
fn cached_layer() -> Result<Layer, Unavailable> {
    let cache = cache_dir();
    let key = recipe_key();
    let done = cache.join(&key);
    if let Some(layer) = read_cached(&done) {
        return Ok(layer);
    }
    fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let _lock = Lock::acquire(&cache.join(format!("{key}.lock")))?;
    // Another process may have built it while this one waited.
    if let Some(layer) = read_cached(&done) {
        return Ok(layer);
    }
    let mirror = mirror();
    if let Err(e) = probe(&mirror) {
        let why = format!(
            "cannot reach the Debian mirror {mirror}, which debootstrap needs to build the test image \
             (SKIFF_TEST_DEBIAN_MIRROR names another): {e}"
        );
        return Err(Unavailable::Skip(why));
    }
    let building = cache.join(format!("{key}.building"));
    let started = Instant::now();
    eprintln!("building the Debian test image into {} (debootstrap from {mirror})", done.display());
    build(&cache, &building, &mirror).inspect_err(|_| {
        let _ = remove_tree(&building.join("rootfs"));
    })?;
    if done.exists() {
        remove_tree(&done)?;
    }
    fs::rename(&building, &done).map_err(|e| format!("renaming {} into place: {e}", building.display()))?;
    eprintln!("built the Debian test image in {:.0?}", started.elapsed());
    let layer = read_cached(&done);
    Ok(layer.ok_or_else(|| format!("{} is incomplete right after its build", done.display()))?)
}

/// debootstrap into `building/rootfs`, clean it as published images are cleaned, and pack it
/// into `building/layer.tar.gz` with its `layer.json`.
fn build(cache: &Path, building: &Path, mirror: &str) -> Result<(), String> {
    // Left by a killed build: this process holds the lock, so nobody is using it.
    remove_tree(building)?;
    let rootfs = building.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
    let debs = deb_cache(cache)?;
    let log = building.join("debootstrap.log");
    // The chain dies with this process: setpriv has unshare killed when its parent ends, and
    // unshare's child is the init of a PID namespace, whose death kills every process in it.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "unshare", "--mount", "--propagation", "private", "--pid"])
        .args(["--kill-child", "debootstrap", "--variant=minbase"])
        .arg(format!("--include={INCLUDE}"))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&rootfs)
        .arg(mirror);
    run_logged(&mut cmd, &log, BUILD_TIMEOUT)?;
    clean(&rootfs)?;
    let layer = pack(&rootfs, &building.join("layer.tar.gz"), &building.join("tar.log"))?;
    let meta = serde_json::json!({
        "digest": layer.digest.to_string(),
        "diff_id": layer.diff_id.to_string(),
        "size": layer.size,
        "mirror": mirror,
    });
    fs::write(building.join("layer.json"), serde_json::to_vec_pretty(&meta).expect("serializes"))
        .map_err(|e| format!("writing {}/layer.json: {e}", building.display()))?;
    remove_tree(&rootfs)
}

/// debootstrap's package cache; seeded from the bench's when it is first made.
fn deb_cache(cache: &Path) -> Result<PathBuf, String> {
    let debs = cache.join("debootstrap-debs");
    if debs.is_dir() {
        return Ok(debs);
    }
    let partial = cache.join("debootstrap-debs.partial");
    remove_tree(&partial)?;
    fs::create_dir_all(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
    if let Ok(entries) = fs::read_dir(BENCH_DEBS) {
        for e in entries.flatten() {
            let name = e.file_name();
            if e.file_type().is_ok_and(|t| t.is_file()) && name.to_string_lossy().ends_with(".deb") {
                // A copy that fails is a package to download.
                let _ = fs::copy(e.path(), partial.join(&name));
            }
        }
    }
    fs::rename(&partial, &debs).map_err(|e| format!("renaming {}: {e}", partial.display()))?;
    Ok(debs)
}

/// Runs `cmd` with its output in `log`, killed after `timeout`; the error holds the log's end.
fn run_logged(cmd: &mut Command, log: &Path, timeout: Duration) -> Result<(), String> {
    let file = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} took over {timeout:?}; killed it:\n{}", tail(log)));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status}); the end of {}:\n{}", log.display(), tail(log)));
    }
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Drops what debootstrap leaves that images in the wild do not hold: the host's
/// resolv.conf (the runtime provides its own), apt's lists and downloaded .debs. Entries are
/// removed, never written through, so a symlink in the rootfs cannot lead out of it.
fn clean(rootfs: &Path) -> Result<(), String> {
    let etc = rootfs.join("etc");
    if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        return Err(format!("{} is not a directory", etc.display()));
    }
    let resolv = etc.join("resolv.conf");
    let _ = fs::remove_file(&resolv);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&resolv)
        .map_err(|e| format!("creating an empty {}: {e}", resolv.display()))?;
    for (dir, suffix) in
        [("var/lib/apt/lists", ""), ("var/cache/apt/archives", ".deb"), ("var/cache/apt", ".bin")]
    {
        let dir = rootfs.join(dir);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for e in fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if e.file_type().is_ok_and(|t| t.is_file()) && name != "lock" && name.ends_with(suffix) {
                fs::remove_file(e.path()).map_err(|err| format!("removing {}: {err}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Packs `rootfs` (GNU tar, run from inside it; device nodes left out as the runtime makes
/// its own /dev) into a gzip layer at `out`, hashing the tar stream for the diff_id.
fn pack(rootfs: &Path, out: &Path, log: &Path) -> Result<Layer, String> {
    let errors = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut tar = Command::new("tar")
        .arg("--create")
        .arg("--directory")
        .arg(rootfs)
        .args(["--numeric-owner", "--sort=name", "--exclude=./dev/*", "--file=-", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(errors)
        .spawn()
        .map_err(|e| format!("starting tar: {e}"))?;
    let file = File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut layer =
        Sha256Writer::new(GzEncoder::new(Sha256Writer::new(file), flate2::Compression::default()));
    let copied = std::io::copy(&mut tar.stdout.take().expect("piped"), &mut layer);
    let status = tar.wait().map_err(|e| e.to_string())?;
    copied.map_err(|e| format!("writing {}: {e}", out.display()))?;
    if !status.success() {
        return Err(format!("tar of {} failed ({status}):\n{}", rootfs.display(), tail(log)));
    }
    let (diff_id, gz) = layer.finish();
    let compressed = gz.finish().map_err(|e| format!("writing {}: {e}", out.display()))?;
    let size = compressed.written();
    let (digest, file) = compressed.finish();
    file.sync_all().map_err(|e| format!("syncing {}: {e}", out.display()))?;
    Ok(Layer { path: out.to_path_buf(), digest, diff_id, size })
}

/// Removes `dir` and everything in it (symlinks are removed, not followed), refusing when
/// something is mounted under it.
fn remove_tree(dir: &Path) -> Result<(), String> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let mounts = crate::containers::mounts_under(dir);
    if !mounts.is_empty() {
        return Err(format!("not removing {}: mounts under it: {mounts:?}", dir.display()));
    }
    fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))
}

/// An exclusive lock on a file, held by a `flock` child until dropped (or until this process
/// ends, however it ends: the child's stdin closes and it exits).
struct Lock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Lock {
    fn acquire(path: &Path) -> Result<Lock, String> {
        let mut child = Command::new("flock")
            .arg("--exclusive")
            .arg(path)
            .args(["sh", "-c", "echo locked; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting flock {}: {e}", path.display()))?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        let lock = Lock { child, stdin };
        match read {
            Ok(_) if line.trim() == "locked" => Ok(lock),
            _ => Err(format!("flock {} did not take the lock: {read:?} {line:?}", path.display())),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.child.wait();
    }
}

/// The mirror to build from: `SKIFF_TEST_DEBIAN_MIRROR`, else the one apt uses for bookworm
/// (one-line and deb822 sources), else deb.debian.org.
pub fn mirror() -> String {
    if let Ok(mirror) = std::env::var("SKIFF_TEST_DEBIAN_MIRROR") {
        return mirror;
    }
    skiff_bench::apt::host_mirror(SUITE).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// Whether the mirror answers for the suite's Release file.
fn probe(mirror: &str) -> Result<(), String> {
    let url = format!("{mirror}/dists/{SUITE}/Release");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.head(&url).send().map_err(|e| format!("HEAD {url}: {}", crate::error_chain(&e)))?;
    response.error_for_status().map(drop).map_err(|e| format!("HEAD {url}: {}", crate::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_names_the_recipe() {
        let key = recipe_key();
        assert!(key.starts_with("debian-bookworm-python3-"), "{key}");
        assert_eq!(key, recipe_key());
    }
}
