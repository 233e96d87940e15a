//! Fixture images, built by the tests from directory trees (no Docker): a busybox-static
//! rootfs, a layer of hard cases on top of it, and images made by umoci and pushed by skopeo.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use flate2::write::GzEncoder;
use skiff::manifest::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
use skiff::registry::{Client, RegistryOptions, UploadOptions};
use skiff::store::{ImageRecord, Store};
use skiff::{Digest, Reference};
use skiff_fs::Sha256Writer;
use tar::{EntryType, Header};

use crate::registry::Registry;

const MTIME: u64 = 1_700_000_000;
pub const BIG_FILE_SIZE: usize = 5 << 20;

/// A layer tarball being written: tar → (hash of the uncompressed stream) → gzip → file.
pub struct LayerBuilder {
    tar: tar::Builder<Sha256Writer<GzEncoder<File>>>,
    path: PathBuf,
}

/// A finished gzip layer: where it is, its digest (compressed) and diff_id (uncompressed).
#[derive(Clone, Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

impl LayerBuilder {
    pub fn new(path: &Path) -> LayerBuilder {
        let file = File::create(path).unwrap();
        let gz = GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(Sha256Writer::new(gz));
        tar.follow_symlinks(false);
        LayerBuilder { tar, path: path.to_path_buf() }
    }

    fn header(entry_type: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(entry_type);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file owned by `uid:gid` with extended attributes (PAX `SCHILY.xattr.*` records).
    pub fn file_with(
        &mut self,
        path: &str,
        mode: u32,
        owner: (u64, u64),
        xattrs: &[(&str, &[u8])],
        data: &[u8],
    ) -> &mut Self {
        let records: Vec<(String, &[u8])> =
            xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
        self.tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).unwrap();
        let mut h = Self::header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(EntryType::Link, 0o644, 0);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(&mut self, path: &str, entry_type: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(entry_type, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.tar.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn finish(self) -> Layer {
        let hashed = self.tar.into_inner().unwrap();
        let (diff_id, gz) = hashed.finish();
        gz.finish().unwrap().sync_all().unwrap();
        let bytes = std::fs::read(&self.path).unwrap();
        Layer { path: self.path, digest: Digest::of(&bytes), diff_id, size: bytes.len() as u64 }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so big files do not compress away.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A busybox-static rootfs, plus `fixture/` entries that the hard-case layer deletes.
pub fn busybox_layer(path: &Path) -> Layer {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut l = LayerBuilder::new(path);
    for d in ["bin", "dev", "etc", "proc", "root", "sys", "usr", "usr/bin", "var"] {
        l.dir(d, 0o755);
    }
    l.dir("tmp", 0o1777);
    l.file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "ls", "cat", "echo", "env", "id", "sleep", "true", "false", "stat", "sha256sum"] {
        l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    l.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    l.dir("fixture", 0o755);
    l.file("fixture/deleted-file", 0o644, b"deleted by the next layer\n");
    l.dir("fixture/deleted-dir", 0o755);
    l.file("fixture/deleted-dir/inner", 0o644, b"inner\n");
    l.dir("fixture/opaque", 0o755);
    l.file("fixture/opaque/hidden", 0o644, b"hidden by an opaque whiteout\n");
    l.finish()
}

pub const LONG_NAME_DIR: &str =
    "fixture/a-directory-name-that-is-quite-long-to-push-the-path-over-the-ustar-limits-0123456789";
pub const UNICODE_NAME: &str = "fixture/ünïcødé-名前-файл.txt";

/// Whiteouts, opaque directories, links, xattrs, devices, fifos, setuid, odd names, an empty
/// file and a multi-MiB file.
pub fn hard_cases_layer(path: &Path) -> Layer {
    let mut l = LayerBuilder::new(path);
    l.dir("fixture", 0o755);
    l.file("fixture/.wh.deleted-file", 0o644, b"");
    l.file("fixture/.wh.deleted-dir", 0o644, b"");
    l.dir("fixture/opaque", 0o755);
    l.file("fixture/opaque/.wh..wh..opq", 0o644, b"");
    l.file("fixture/opaque/visible", 0o644, b"new content\n");
    l.file("fixture/empty", 0o644, b"");
    l.file("fixture/big.bin", 0o644, &noise(BIG_FILE_SIZE, 7));
    l.hardlink("fixture/big-hardlink", "fixture/big.bin");
    l.symlink("fixture/relative-link", "big.bin");
    l.symlink("fixture/absolute-link", "/etc/passwd");
    l.file("fixture/setuid", 0o4755, b"#!/bin/sh\necho setuid\n");
    l.file("fixture/setgid-sticky", 0o3755, b"x");
    l.file_with(
        "fixture/xattrs",
        0o640,
        (1000, 1000),
        &[("user.skiff", b"hello"), ("trusted.skiff", b"\x00\x01")],
        b"x\n",
    );
    l.device("fixture/null", EntryType::Char, 1, 3);
    l.device("fixture/loop0", EntryType::Block, 7, 0);
    l.device("fixture/fifo", EntryType::Fifo, 0, 0);
    l.dir(LONG_NAME_DIR, 0o755);
    l.file(&format!("{LONG_NAME_DIR}/{}", "f".repeat(120)), 0o644, b"long\n");
    l.file(UNICODE_NAME, 0o644, "ünïcødé\n".as_bytes());
    l.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// Stores an image made of `layers` under `name` in `store` (manifest, config and layers).
pub fn store_image(store: &Store, name: &str, layers: &[Layer], format: Format, arch: &str) -> ImageRecord {
    let reference: Reference = name.parse().unwrap();
    let (manifest_type, config_type, layer_type) = match format {
        Format::Oci => (OCI_MANIFEST, OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar+gzip"),
        Format::Docker => {
            (DOCKER_MANIFEST, DOCKER_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip")
        }
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>() },
        "history": layers.iter().map(|_| serde_json::json!({"created": "2026-01-01T00:00:00Z", "created_by": "skiff test fixture"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = store.write(&config_bytes).unwrap();
    for l in layers {
        let (digest, _) = store.import(&l.path).unwrap();
        assert_eq!(digest, l.digest);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": config_digest.to_string(), "size": config_bytes.len() },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": layer_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_digest = store.write(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    let record = ImageRecord {
        name: reference.to_string(),
        digest: manifest_digest,
        manifest: manifest_digest,
        source: reference.name(),
        updated: "2026-01-01T00:00:00Z".into(),
    };
    store.commit_image(Vec::new(), record.clone()).unwrap();
    record
}

/// Stores an index over `images` (each with its architecture) under `name`.
pub fn store_index(
    store: &Store,
    name: &str,
    images: &[(&ImageRecord, &str)],
    format: Format,
) -> ImageRecord {
    let reference: Reference = name.parse().unwrap();
    let (index_type, entry_type) = match format {
        Format::Oci => (OCI_INDEX, OCI_MANIFEST),
        Format::Docker => (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
    };
    let manifests: Vec<_> = images
        .iter()
        .map(|(r, arch)| {
            let size = store.read(&r.manifest).unwrap().len();
            serde_json::json!({
                "mediaType": entry_type, "digest": r.manifest.to_string(), "size": size,
                "platform": { "os": "linux", "architecture": arch },
            })
        })
        .collect();
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": index_type, "manifests": manifests });
    let digest = store.write(&serde_json::to_vec(&index).unwrap()).unwrap();
    let record = ImageRecord {
        name: reference.to_string(),
        digest,
        manifest: images[0].0.manifest,
        source: reference.name(),
        updated: "2026-01-01T00:00:00Z".into(),
    };
    store.commit_image(Vec::new(), record.clone()).unwrap();
    record
}

/// A registry client for tests: no stored credentials, quick retries.
pub fn client() -> std::sync::Arc<Client> {
    let options = RegistryOptions {
        auth_file: None,
        retry_delay: std::time::Duration::from_millis(20),
        ..RegistryOptions::default()
    };
    std::sync::Arc::new(Client::new(options).unwrap())
}

/// Pushes a stored image with skiff's own push code.
pub fn push(store: &Store, record: &ImageRecord, dest: &str) -> Digest {
    let dest: Reference = dest.parse().unwrap();
    let result =
        skiff::image::push(&client(), store, record, &dest, UploadOptions::default(), &skiff::image::Quiet)
            .unwrap();
    result.digest.unwrap()
}

/// The images every test of a run shares, built and pushed once.
pub struct Fixtures {
    pub registry: &'static Registry,
    /// Kept so the layer files stay readable.
    pub dir: PathBuf,
    pub busybox: Layer,
    pub hard: Layer,
    /// `REG/fixtures/busybox:latest` (OCI, one layer).
    pub busybox_ref: String,
    pub busybox_digest: Digest,
    /// `REG/fixtures/hard:latest` (Docker schema 2, busybox + hard cases).
    pub hard_ref: String,
    pub hard_digest: Digest,
    /// `REG/fixtures/multi:latest`: an OCI index of a host-platform image and a fake arm64
    /// one (amd64 on arm64 hosts).
    pub multi_ref: String,
    pub multi_digest: Digest,
    pub multi_host_manifest: Digest,
    pub multi_other_manifest: Digest,
    pub other_arch: &'static str,
}

static FIXTURES: OnceLock<Option<Fixtures>> = OnceLock::new();

/// The shared fixtures; `None` (skip) without a registry or busybox.
pub fn shared() -> Option<&'static Fixtures> {
    FIXTURES.get_or_init(build_fixtures).as_ref()
}

fn build_fixtures() -> Option<Fixtures> {
    let registry = Registry::shared()?;
    if !Path::new("/bin/busybox").exists() {
        crate::have("busybox");
        return None;
    }
    // Inside the registry's dir, which its watchdog removes when the run ends.
    let dir = registry.dir.join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("store")).unwrap();
    let busybox = busybox_layer(&dir.join("busybox.tar.gz"));
    let hard = hard_cases_layer(&dir.join("hard.tar.gz"));
    let host = skiff::manifest::Platform::host().architecture;
    let other_arch = if host == "arm64" { "amd64" } else { "arm64" };
    let reg = &registry.addr;

    let busybox_ref = format!("{reg}/fixtures/busybox:latest");
    let rec = store_image(&store, &busybox_ref, std::slice::from_ref(&busybox), Format::Oci, &host);
    let busybox_digest = push(&store, &rec, &busybox_ref);

    let hard_ref = format!("{reg}/fixtures/hard:latest");
    let rec = store_image(&store, &hard_ref, &[busybox.clone(), hard.clone()], Format::Docker, &host);
    let hard_digest = push(&store, &rec, &hard_ref);

    let multi_ref = format!("{reg}/fixtures/multi:latest");
    let host_image = store_image(
        &store,
        &format!("{reg}/fixtures/multi:host"),
        std::slice::from_ref(&busybox),
        Format::Oci,
        &host,
    );
    let marker = {
        let mut l = LayerBuilder::new(&dir.join("other.tar.gz"));
        l.file("other-arch", 0o644, other_arch.as_bytes());
        l.finish()
    };
    let other_image =
        store_image(&store, &format!("{reg}/fixtures/multi:other"), &[marker], Format::Oci, other_arch);
    let index =
        store_index(&store, &multi_ref, &[(&host_image, &host), (&other_image, other_arch)], Format::Oci);
    let multi_digest = push(&store, &index, &multi_ref);
    let _ = std::fs::remove_dir_all(dir.join("store"));
    Some(Fixtures {
        registry,
        dir,
        busybox,
        hard,
        busybox_ref,
        busybox_digest,
        hard_ref,
        hard_digest,
        multi_ref,
        multi_digest,
        multi_host_manifest: host_image.manifest,
        multi_other_manifest: other_image.manifest,
        other_arch,
    })
}

/// Images made by umoci and copied into the registry by skopeo, in both manifest formats.
pub struct SkopeoImages {
    /// `REG/umoci/oci:v1`, OCI manifest.
    pub oci_ref: String,
    /// `REG/umoci/docker:v1`, Docker v2 schema 2.
    pub docker_ref: String,
}

static SKOPEO: OnceLock<Option<SkopeoImages>> = OnceLock::new();

pub fn skopeo_images() -> Option<&'static SkopeoImages> {
    SKOPEO.get_or_init(build_skopeo_images).as_ref()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build_skopeo_images() -> Option<SkopeoImages> {
    let registry = Registry::shared()?;
    if !crate::have("umoci") || !crate::have("skopeo") || !Path::new("/bin/busybox").exists() {
        return None;
    }
    let dir = crate::temp_dir();
    let layout = dir.path().join("layout");
    let bundle = dir.path().join("bundle");
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("hello.txt"), "hello from umoci\n").unwrap();
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]));
    let reg = &registry.addr;
    let oci_ref = format!("{reg}/umoci/oci:v1");
    let docker_ref = format!("{reg}/umoci/docker:v1");
    let src = format!("oci:{image}");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false", &src])
        .arg(format!("docker://{oci_ref}")));
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false", "--format", "v2s2", &src])
        .arg(format!("docker://{docker_ref}")));
    Some(SkopeoImages { oci_ref, docker_ref })
}

/// `skopeo inspect`'s digest for a reference in a test registry.
pub fn skopeo_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}
