//! Test support for skiff's end-to-end tests: a real registry on loopback, fixture images
//! built from directory trees, a deliberately misbehaving HTTP server, and helpers to run the
//! `skiff` binary.

pub mod cli;
pub mod containers;
pub mod debian;
pub mod fixtures;
pub mod hostile;
pub mod mount;
pub mod registry;
pub mod sandbox;
pub mod tree;

use std::path::Path;

/// Whether `tool` is on PATH. When it is not, the test is skipped with a message, unless
/// `SKIFF_TEST_REQUIRE=1` (CI sets it), which turns a missing tool into a failure.
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool))));
    if !found {
        if std::env::var("SKIFF_TEST_REQUIRE").as_deref() == Ok("1") {
            panic!("{tool} is required (SKIFF_TEST_REQUIRE=1) but not installed; run .ci/run to install it");
        }
        eprintln!("SKIP: {tool} is not installed (apt-get install it, or run .ci/run)");
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A fresh temp directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("skiff-test-").tempdir().expect("creating a temp dir")
}
