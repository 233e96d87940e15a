//! A `skiff mount -d` for tests, unmounted when dropped.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cli::Skiff;

/// A detached `skiff mount`, unmounted when dropped.
pub struct Mount {
    pub skiff: Skiff,
    pub dir: PathBuf,
    pub upper: PathBuf,
}

impl Mount {
    /// Mounts `image` under `base` with `extra` flags; `None` (skip) without FUSE or root.
    pub fn with_flags(base: &Path, image: &str, extra: &[&str]) -> Option<Mount> {
        if !Path::new("/dev/fuse").exists() || !nix_is_root() {
            return crate::skip("FUSE mounts need root and /dev/fuse");
        }
        let skiff = Skiff::new(base);
        let dir = base.join("mnt");
        let upper = base.join("upper");
        fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["mount", "-d", "--upper", upper.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend([image, dir.to_str().unwrap()]);
        skiff.run(&args).ok();
        Some(Mount { skiff, dir, upper })
    }

    pub fn new(base: &Path, image: &str) -> Option<Mount> {
        Mount::with_flags(base, image, &[])
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let out = self.skiff.run(&["umount", self.dir.to_str().unwrap()]);
        if out.code != 0 && !std::thread::panicking() {
            panic!("umount failed: {}", out.stderr);
        }
    }
}

pub fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}
