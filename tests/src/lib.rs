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
        skip::<()>(format!("{tool} is not installed (apt-get install it, or run .ci/run)"));
    }
    found
}

/// Prints why a test is skipped and returns `None`; under `SKIFF_TEST_REQUIRE=1` (CI sets it)
/// a missing prerequisite fails the test instead.
pub fn skip<T>(why: impl std::fmt::Display) -> Option<T> {
    if std::env::var("SKIFF_TEST_REQUIRE").as_deref() == Ok("1") {
        panic!("{why} (SKIFF_TEST_REQUIRE=1)");
    }
    eprintln!("SKIP: {why}");
    None
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A fresh temp directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("skiff-test-").tempdir().expect("creating a temp dir")
}

/// How long a test waits for something another process does (a container to exit, a log line
/// to appear) before it fails: generous, because CI runs every test at once on two cores.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Polls `done` until it holds; fails the test, naming `what`, after [`PATIENCE`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An error and its sources, joined by `: ` (reqwest's and skiff's messages leave out why).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}
