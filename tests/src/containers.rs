//! Test support for containers: images with a chosen config, a layer of hostile tar entries,
//! and what a container may leave behind (mounts, cgroups).

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use skiff::store::Store;
use skiff::Digest;
use tar::{EntryType, Header};

use crate::cli::{Run, Skiff};
use crate::fixtures::{self, Layer};

/// A test's own skiff root for containers; every container still there at the end is
/// force-removed.
pub struct Root {
    pub skiff: Skiff,
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        let dir = crate::temp_dir();
        Root { skiff: Skiff::new(dir.path()), dir }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.skiff.run(args)
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.skiff.root.join("containers")
    }

    /// The container's `state.json`.
    pub fn state(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.containers_dir().join(id).join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `run -d`: the id it printed.
    pub fn detach(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = self.run(&all).ok().trim().to_string();
        assert_eq!(id.len(), 64, "not an id: {id}");
        id
    }

    /// The full id of the container named `name`.
    pub fn id_of(&self, name: &str) -> String {
        std::fs::read_dir(self.containers_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|id| {
                self.containers_dir().join(id).join("state.json").exists() && self.state(id)["name"] == name
            })
            .unwrap_or_else(|| panic!("no container named {name}"))
    }

    /// The usage totals of every mount under this root (`skiff cache stats`).
    pub fn totals(&self) -> serde_json::Value {
        let stats: serde_json::Value =
            serde_json::from_str(self.run(&["cache", "stats", "--format", "json"]).ok()).unwrap();
        stats["totals"].clone()
    }
}

impl Default for Root {
    fn default() -> Root {
        Root::new()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.containers_dir()) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                self.skiff.run(&["rm", "-f", &name]);
            }
        }
    }
}

/// Pushes an image of `layers` with `config` (the image config's `config` object) to the
/// shared registry as `REG/containers/NAME:latest`; returns the reference.
pub fn push_image(name: &str, layers: &[Layer], config: serde_json::Value) -> String {
    let f = fixtures::shared().expect("fixtures");
    let dir = crate::temp_dir();
    let store = Store::open(dir.path()).unwrap();
    let reference = format!("{}/containers/{name}:latest", f.registry.addr);
    let record = fixtures::store_image(
        &store,
        &reference,
        layers,
        fixtures::Format::Oci,
        &skiff::manifest::Platform::host().architecture,
    );
    // Replace the config store_image wrote with one holding `config`.
    let manifest: serde_json::Value = serde_json::from_slice(&store.read(&record.manifest).unwrap()).unwrap();
    let old: Digest = manifest["config"]["digest"].as_str().unwrap().parse().unwrap();
    let mut image_config: serde_json::Value = serde_json::from_slice(&store.read(&old).unwrap()).unwrap();
    image_config["config"] = config;
    let config_bytes = serde_json::to_vec(&image_config).unwrap();
    let config_digest = store.write(&config_bytes).unwrap();
    let mut manifest = manifest;
    manifest["config"]["digest"] = config_digest.to_string().into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_digest = store.write(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    let record = skiff::store::ImageRecord { digest: manifest_digest, manifest: manifest_digest, ..record };
    store.commit_image(Vec::new(), record.clone()).unwrap();
    fixtures::push(&store, &record, &reference);
    reference
}

/// A raw tar header whose name and link name are written as given (the tar crate refuses
/// `..` in names, which is the point here).
fn raw_header(kind: EntryType, name: &str, link: &str, size: u64) -> Header {
    let mut h = Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(if kind == EntryType::Symlink { 0o777 } else { 0o644 });
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    assert!(name.len() < 100 && link.len() < 100, "names too long for a plain header");
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

/// A layer that tries to write to `outside` (an absolute host directory): through `..`, an
/// absolute symlink, a relative symlink climbing out, and a hardlink to a host file.
pub fn hostile_layer(path: &Path, outside: &Path) -> Layer {
    let outside = outside.to_str().unwrap().trim_start_matches('/');
    let climb = "../".repeat(12);
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |kind, name: &str, link: &str, data: &[u8]| {
        let h = raw_header(kind, name, link, data.len() as u64);
        tar.append(&h, data).unwrap();
    };
    add(EntryType::Regular, &format!("{climb}{outside}/dotdot"), "", b"dotdot\n");
    add(EntryType::Symlink, "abs-link", &format!("/{outside}"), b"");
    add(EntryType::Regular, "abs-link/through-absolute", "", b"absolute\n");
    add(EntryType::Symlink, "rel-link", &format!("{climb}{outside}"), b"");
    add(EntryType::Regular, "rel-link/through-relative", "", b"relative\n");
    add(EntryType::Link, "hard-passwd", &format!("{climb}etc/passwd"), b"");
    add(EntryType::Regular, "./after", "", b"after the hostile entries\n");
    let tar_bytes = tar.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    let gz_bytes = gz.finish().unwrap();
    std::fs::write(path, &gz_bytes).unwrap();
    Layer {
        path: path.to_path_buf(),
        digest: Digest::of(&gz_bytes),
        diff_id: Digest::of(&tar_bytes),
        size: gz_bytes.len() as u64,
    }
}

/// Mount points under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// The cgroup directories of container `id` that exist (v1 hierarchies and v2).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("skiff").join(id)).collect();
    dirs.push(Path::new("/sys/fs/cgroup/skiff").join(id));
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}
