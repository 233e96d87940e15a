//! What a new container runs: the image's config (Entrypoint, Cmd, Env, WorkingDir, User,
//! StopSignal) merged with `skiff run`'s flags exactly as docker merges them, and docker's
//! container names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use rand::seq::IndexedRandom;

use super::rootfs::PullMode;
use crate::sandbox::{CapabilityOptions, ExtraHost, Network, Resources, Rlimit, Signal, TmpfsMount, Volume};

/// `skiff run`'s flags, as the library takes them.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--name`; a generated name when `None`.
    pub name: Option<String>,
    /// The arguments after the image: they replace the image's Cmd.
    pub command: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint and drops its Cmd; `""` clears both.
    pub entrypoint: Option<String>,
    /// `-e KEY=VALUE` (or `-e KEY`, taken from skiff's own environment when set there).
    pub env: Vec<String>,
    /// `--env-file`, read before `-e`.
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub volumes: Vec<Volume>,
    pub tmpfs: Vec<TmpfsMount>,
    pub read_only: bool,
    pub network: Network,
    /// `--network container:NAME`: the container whose network namespace this one joins.
    pub network_container: Option<String>,
    /// `-p`: ports published on the host (none with the host's network).
    pub ports: Vec<super::ports::PortMapping>,
    /// `-P`: also every TCP port the image exposes, each on a free host port.
    pub publish_all: bool,
    /// `--expose`: ports exposed beside the image's (for `-P`).
    pub expose: Vec<String>,
    pub capabilities: CapabilityOptions,
    pub resources: Resources,
    pub init: bool,
    pub tty: bool,
    pub interactive: bool,
    pub auto_remove: bool,
    pub pull_mode: PullMode,
    /// `--record-profile`: save the files this run reads as the image's prefetch profile.
    pub record_profile: bool,
    /// `--no-prefetch`: fetch only what is read, whatever profile the image has.
    pub no_prefetch: bool,
    pub userns: Userns,
    /// `--stop-signal`, over the image's.
    pub stop_signal: Option<String>,
    /// `--ulimit`s.
    pub ulimits: Vec<Rlimit>,
    /// `--add-host`s.
    pub extra_hosts: Vec<ExtraHost>,
    pub dns: crate::sandbox::Dns,
    pub group_add: Vec<String>,
    pub oom_score_adj: Option<i32>,
    pub sysctls: std::collections::BTreeMap<String, String>,
    pub devices: Vec<crate::sandbox::Device>,
    /// `--security-opt`s.
    pub security: Security,
    /// `--log-opt max-size/max-file`.
    pub log_rotation: Option<super::log::Rotation>,
    /// `--pid/--ipc/--uts host`.
    pub host_namespaces: crate::sandbox::HostNamespaces,
    /// `--stop-timeout`: seconds `stop` waits before SIGKILL unless told (docker's 10).
    pub stop_timeout: Option<u64>,
    /// `--shm-size`.
    pub shm_size: Option<u64>,
    /// `--label`s, over the image's labels.
    pub labels: BTreeMap<String, String>,
    /// `--restart`.
    pub restart: super::RestartPolicy,
    /// `--health-*` and `--no-healthcheck`.
    pub health: HealthOptions,
}

/// `run`'s health flags, over the image's HEALTHCHECK.
#[derive(Debug, Clone, Default)]
pub struct HealthOptions {
    /// `--health-cmd`: a shell command.
    pub cmd: Option<String>,
    pub interval: Option<std::time::Duration>,
    pub timeout: Option<std::time::Duration>,
    pub start_period: Option<std::time::Duration>,
    pub retries: Option<u32>,
    /// `--no-healthcheck`: none, whatever the image says.
    pub disabled: bool,
}

impl HealthOptions {
    /// The check a container of `image` gets: the image's, with these flags over it.
    pub fn resolve(
        &self,
        image: &crate::image::StoredImage,
    ) -> Result<Option<super::health::HealthCheck>, super::ContainerError> {
        use super::health::{HealthCheck, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_TIMEOUT};
        if self.disabled {
            return Ok(None);
        }
        let config: serde_json::Value = serde_json::from_slice(&image.config_bytes).unwrap_or_default();
        let from_image = HealthCheck::of_image(&config);
        let test = match (&self.cmd, from_image.as_ref()) {
            (Some(cmd), _) => vec!["/bin/sh".to_string(), "-c".into(), cmd.clone()],
            (None, Some(check)) => check.test.clone(),
            (None, None) => return Ok(None),
        };
        let base = from_image.unwrap_or(HealthCheck {
            test: Vec::new(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            start_period: std::time::Duration::ZERO,
            retries: DEFAULT_RETRIES,
        });
        Ok(Some(HealthCheck {
            test,
            interval: self.interval.unwrap_or(base.interval),
            timeout: self.timeout.unwrap_or(base.timeout),
            start_period: self.start_period.unwrap_or(base.start_period),
            retries: self.retries.unwrap_or(base.retries),
        }))
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            name: None,
            command: Vec::new(),
            entrypoint: None,
            env: Vec::new(),
            env_files: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            read_only: false,
            network: Network::None,
            network_container: None,
            ports: Vec::new(),
            publish_all: false,
            expose: Vec::new(),
            capabilities: CapabilityOptions::default(),
            resources: Resources::default(),
            init: false,
            tty: false,
            interactive: false,
            auto_remove: false,
            pull_mode: PullMode::Lazy,
            record_profile: false,
            no_prefetch: false,
            userns: Userns::Host,
            stop_signal: None,
            ulimits: Vec::new(),
            extra_hosts: Vec::new(),
            dns: crate::sandbox::Dns::default(),
            group_add: Vec::new(),
            oom_score_adj: None,
            sysctls: BTreeMap::new(),
            devices: Vec::new(),
            host_namespaces: crate::sandbox::HostNamespaces::default(),
            log_rotation: None,
            security: Security::default(),
            stop_timeout: None,
            shm_size: None,
            labels: BTreeMap::new(),
            restart: super::RestartPolicy::No,
            health: HealthOptions::default(),
        }
    }
}

/// `--security-opt`: docker's seccomp filter, on unless turned off, and `no_new_privs`, off
/// unless asked for, as docker's defaults are (a setuid program such as sudo works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub seccomp: bool,
    pub no_new_privileges: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security { seccomp: true, no_new_privileges: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image {image}: no command specified (the image has no Entrypoint or Cmd and none was given)")]
    NoCommand { image: String },
    #[error("reading the env file {path}: {source}")]
    EnvFile { path: PathBuf, source: std::io::Error },
    #[error("the working directory {value:?} is invalid: it must be an absolute path")]
    RelativeWorkdir { value: String },
    #[error("invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName { name: String },
    #[error("--restart and --rm cannot go together: a removed container cannot start again")]
    RestartAndRemove,
    #[error("invalid hostname {name:?}: it must be at most 64 characters, in labels of letters, digits and inner hyphens, separated by dots")]
    BadHostname { name: String },
    #[error("invalid stop signal {value:?}")]
    StopSignal { value: String },
    #[error("invalid environment variable {value:?}: it has no name")]
    EnvNoName { value: String },
    #[error("a user namespace (--userns, --uidmap) needs --pull-mode lazy: a full pull's unpacked files belong to host root")]
    UsernsNeedsLazy,
    #[error(transparent)]
    Device(crate::sandbox::DeviceError),
    #[error("--sysctl {key}: not a parameter of the container's own namespaces (those are kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, and net.* with a network of its own)")]
    Sysctl { key: String },
    #[error("{first} and {second} cannot go together")]
    Conflict { first: &'static str, second: &'static str },
    #[error("--network container:{other} and {option} cannot go together: the network is {other}'s")]
    JoinedNetwork { other: String, option: &'static str },
}

/// `--userns`, `--uidmap`, `--gidmap`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Userns {
    /// The host's user namespace.
    #[default]
    Host,
    /// A namespace of its own whose 65536 ids are host ids no other container of this root
    /// uses, from 100000 up.
    Auto,
    /// A namespace of its own with these maps.
    Map(skiff_fs::IdMap),
}

/// Where `--userns auto` ranges start on the host, and how many ids each has.
pub const AUTO_USERNS_BASE: u32 = 100_000;
pub const AUTO_USERNS_SIZE: u32 = 65_536;

/// The first auto range not overlapping any of `taken` (host uid ranges of other containers).
pub fn free_id_range(taken: &[skiff_fs::IdRange]) -> skiff_fs::IdMap {
    let overlaps = |base: u32| {
        taken.iter().any(|r| {
            let (start, end) = (u64::from(r.outside), u64::from(r.outside) + u64::from(r.len));
            u64::from(base) < end && start < u64::from(base) + u64::from(AUTO_USERNS_SIZE)
        })
    };
    let base = (0u32..)
        .map(|k| AUTO_USERNS_BASE + k * AUTO_USERNS_SIZE)
        .find(|&base| !overlaps(base))
        .expect("a free range below 2^32");
    skiff_fs::IdMap::shifted(base, AUTO_USERNS_SIZE)
}

/// The process a container runs, resolved from the image and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    /// How many of `args` are the entrypoint; the rest are the command (docker's Cmd).
    pub entrypoint_len: usize,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub user: Option<String>,
    /// A signal name such as `SIGTERM`.
    pub stop_signal: String,
}

/// Merges the image's config with the flags, as docker does; `host_env` looks up skiff's own
/// environment (for `-e KEY`).
pub fn resolve(
    image: &str,
    config: &ImageConfiguration,
    options: &RunOptions,
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Process, ConfigError> {
    let c = config.config().clone().unwrap_or_default();
    let (entrypoint, image_cmd) = match &options.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (c.entrypoint().clone().unwrap_or_default(), c.cmd().clone().unwrap_or_default()),
    };
    let cmd = if options.command.is_empty() { image_cmd } else { options.command.clone() };
    let entrypoint_len = entrypoint.len();
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ConfigError::NoCommand { image: image.to_string() });
    }
    let mut env = c.env().clone().unwrap_or_default();
    let mut given = Vec::new();
    for path in &options.env_files {
        given.extend(read_env_file(path)?);
    }
    given.extend(options.env.iter().cloned());
    for entry in given_env(&given, host_env)? {
        set_env(&mut env, entry);
    }
    let cwd = match options.workdir.as_deref().or(c.working_dir().as_deref()).filter(|w| !w.is_empty()) {
        None => PathBuf::from("/"),
        Some(w) if w.starts_with('/') => PathBuf::from(w),
        Some(w) if options.workdir.is_some() => {
            return Err(ConfigError::RelativeWorkdir { value: w.to_string() })
        }
        // An image's relative WorkingDir is taken from `/`, as docker does.
        Some(w) => Path::new("/").join(w),
    };
    let user = options.user.clone().or_else(|| c.user().clone()).filter(|u| !u.is_empty());
    let stop_signal = match options.stop_signal.as_deref().or(c.stop_signal().as_deref()) {
        None | Some("") => "SIGTERM".to_string(),
        Some(s) => {
            let signal = parse_signal(s).ok_or_else(|| ConfigError::StopSignal { value: s.to_string() })?;
            signal.as_str().to_string()
        }
    };
    Ok(Process { args, entrypoint_len, env, cwd, user, stop_signal })
}

/// `-e` entries as `KEY=VALUE`: a bare `KEY` takes its value from `host_env` (skiff's own
/// environment) and is left out when that has none; an entry with no name is an error.
pub fn given_env(
    entries: &[String],
    host_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    let mut env = Vec::new();
    for entry in entries {
        if entry.is_empty() || entry.starts_with('=') {
            return Err(ConfigError::EnvNoName { value: entry.clone() });
        }
        match entry.split_once('=') {
            Some(_) => env.push(entry.clone()),
            None => env.extend(host_env(entry).map(|value| format!("{entry}={value}"))),
        }
    }
    Ok(env)
}

/// `KEY=VALUE` replacing an earlier value of `KEY`.
pub fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k).to_string();
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    env.push(entry);
}

/// Docker's env file: `KEY=VALUE` or `KEY` lines; blank lines and `#` comments skipped.
pub fn read_env_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::EnvFile { path: path.to_path_buf(), source })?;
    Ok(setting_lines(&text).map(str::to_string).collect())
}

/// The lines of an env or label file that say something: blank lines and `#` comments left
/// out, leading blanks trimmed.
pub fn setting_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim_start).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse().ok()
}

/// Checks a `--name` against docker's rule.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(ConfigError::BadName { name: name.to_string() })
    }
}

/// Checks a `--hostname` as docker does: an RFC 1123 name of at most 64 characters (the
/// kernel's limit).
pub fn check_hostname(name: &str) -> Result<(), ConfigError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 64 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ConfigError::BadHostname { name: name.to_string() })
    }
}

const ADJECTIVES: [&str; 16] = [
    "brave", "calm", "eager", "fervent", "gallant", "happy", "jolly", "keen", "lucid", "nimble", "quirky",
    "serene", "sharp", "stoic", "vibrant", "zealous",
];
const NAMES: [&str; 16] = [
    "babbage", "curie", "dijkstra", "euler", "fermat", "hopper", "kepler", "knuth", "lamport", "liskov",
    "lovelace", "noether", "pike", "ritchie", "thompson", "turing",
];

/// A docker-style name (`adjective_scientist`), with a number when those are taken.
pub fn generate_name(taken: &dyn Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    for attempt in 0.. {
        let adjective = ADJECTIVES.choose(&mut rng).expect("not empty");
        let name = NAMES.choose(&mut rng).expect("not empty");
        let candidate =
            if attempt < 8 { format!("{adjective}_{name}") } else { format!("{adjective}_{name}{attempt}") };
        if !taken(&candidate) {
            return candidate;
        }
    }
    unreachable!("names run out after usize::MAX attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: serde_json::Value) -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": json,
        }))
        .unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn entrypoint_and_cmd_merge_as_in_docker() {
        let config = image(serde_json::json!({"Entrypoint": ["/ep"], "Cmd": ["a", "b"]}));
        // The command, and how much of it is the entrypoint.
        let run = |o: RunOptions| resolve("img", &config, &o, &no_env).map(|p| (p.args, p.entrypoint_len));
        assert_eq!(run(RunOptions::default()).unwrap(), (vec!["/ep".into(), "a".into(), "b".into()], 1));
        let args = RunOptions { command: vec!["c".into()], ..Default::default() };
        assert_eq!(run(args).unwrap(), (vec!["/ep".into(), "c".into()], 1));
        let ep = RunOptions { entrypoint: Some("/other".into()), ..Default::default() };
        assert_eq!(run(ep).unwrap(), (vec!["/other".into()], 1));
        let cleared =
            RunOptions { entrypoint: Some(String::new()), command: vec!["sh".into()], ..Default::default() };
        assert_eq!(run(cleared).unwrap(), (vec!["sh".into()], 0));
        let nothing = RunOptions { entrypoint: Some(String::new()), ..Default::default() };
        assert!(matches!(run(nothing), Err(ConfigError::NoCommand { .. })));
    }

    #[test]
    fn env_workdir_user_and_stop_signal() {
        let config = image(serde_json::json!({
            "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/srv", "User": "nobody", "StopSignal": "SIGQUIT",
            "Cmd": ["sh"],
        }));
        let host = |k: &str| (k == "FROM_HOST").then(|| "yes".to_string());
        let options = RunOptions {
            env: vec!["A=flag".into(), "FROM_HOST".into(), "MISSING".into()],
            ..Default::default()
        };
        let p = resolve("img", &config, &options, &host).unwrap();
        assert_eq!(p.env, ["PATH=/bin", "A=flag", "FROM_HOST=yes"]);
        assert_eq!((p.cwd.to_str().unwrap(), p.user.as_deref()), ("/srv", Some("nobody")));
        assert_eq!(p.stop_signal, "SIGQUIT");
        let options = RunOptions { workdir: Some("rel".into()), ..Default::default() };
        assert!(matches!(resolve("img", &config, &options, &host), Err(ConfigError::RelativeWorkdir { .. })));
        for nameless in ["=x", ""] {
            let options = RunOptions { env: vec![nameless.into()], ..Default::default() };
            assert!(
                matches!(resolve("img", &config, &options, &host), Err(ConfigError::EnvNoName { .. })),
                "{nameless:?}"
            );
        }
        let options =
            RunOptions { user: Some("1000:1000".into()), workdir: Some("/w".into()), ..Default::default() };
        let p = resolve("img", &config, &options, &host).unwrap();
        assert_eq!((p.cwd.to_str().unwrap(), p.user.as_deref()), ("/w", Some("1000:1000")));
    }

    #[test]
    fn signals_and_names() {
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("bogus"), None);
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        for good in ["web", "web-1.example.org", "a", &"x".repeat(64)] {
            assert!(check_hostname(good).is_ok(), "{good}");
        }
        for bad in ["a/b", "", "-web", "web-", "a..b", "a_b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
        let name = generate_name(&|_| false);
        assert!(name.contains('_'));
    }
}
