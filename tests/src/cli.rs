//! Running the `skiff` binary against a temp store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `skiff` binary built beside this test binary (`target/<profile>/skiff`).
pub fn skiff_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = dir.join("skiff");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// A `skiff` invocation with its own root, credentials file and config.
pub struct Skiff {
    pub root: PathBuf,
    pub docker_config: PathBuf,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics unless the run succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "skiff failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    /// Panics unless the run failed; returns stderr.
    #[track_caller]
    pub fn failed(&self) -> &str {
        assert_ne!(self.code, 0, "skiff succeeded but should not have:\nstdout: {}", self.stdout);
        &self.stderr
    }
}

impl Skiff {
    pub fn new(dir: &Path) -> Skiff {
        Skiff { root: dir.join("root"), docker_config: dir.join("docker") }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(skiff_bin());
        cmd.env("SKIFF_ROOT", &self.root)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("SKIFF_CONFIG", self.root.join("config.json"))
            .env_remove("SKIFF_LOG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().expect("running skiff"))
    }

    /// Runs with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: impl AsRef<[u8]>) -> Run {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running skiff");
        // A skiff that fails before it has read everything closes the pipe: its exit says why.
        if let Err(e) = child.stdin.take().unwrap().write_all(input.as_ref()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "writing skiff's input: {e}");
        }
        Run::from(child.wait_with_output().unwrap())
    }

    pub fn store(&self) -> skiff::store::Store {
        skiff::store::Store::open(&self.root).unwrap()
    }
}
