//! `skiff build`: an image from a Dockerfile, as docker build makes one. Each RUN runs in a
//! container of the image so far and its changes become a layer; COPY and ADD copy the
//! context's files into a container made and never started, whose changes become a layer;
//! the other instructions change the config alone. Every step's image is stored under the
//! tag, the last one staying.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skiff::container::{Attach, Containers, CopyOptions, Place, RunOptions, State, Tree};
use skiff::image::dockerfile::{self, Instruction};
use skiff::image::{CommitOptions, LayerCompression, StoredImage};
use skiff::sandbox::Network;
use skiff::store::ImageRecord;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The name (and tag) of the image built.
    #[arg(short = 't', long = "tag", required = true)]
    tag: String,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A value for an ARG, NAME=VALUE; repeatable.
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// The network of RUN's commands: `host` (the default: skiff has no bridge to give them
    /// one of their own, and RUN apt-get needs one) or `none`.
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    network: String,
    /// Layer format: `estargz` (lazy-pullable, the default) or `gzip`.
    #[arg(long, default_value = "estargz", value_parser = ["estargz", "gzip"])]
    format: String,
    /// The build context: the directory COPY and ADD read from.
    context: PathBuf,
}

/// Config instructions: each makes an image of the same layers with its config changed.
const CONFIG: [&str; 9] =
    ["ENV", "LABEL", "EXPOSE", "VOLUME", "STOPSIGNAL", "USER", "WORKDIR", "CMD", "ENTRYPOINT"];

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    // COPY mounts the files of the containers it makes where no one else sees them; they go
    // with this process, however it ends. First, while this process has one thread.
    let containers = super::run::containers(ctx)?;
    skiff::container::private_mounts(&containers)?;
    let context = args
        .context
        .canonicalize()
        .with_context(|| format!("the build context {}", args.context.display()))?;
    let file = args.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let steps = dockerfile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut build = Build {
        ctx,
        containers,
        context,
        dest: super::parse_reference(&args.tag)?,
        compression: if args.format == "gzip" { LayerCompression::Gzip } else { LayerCompression::Estargz },
        network: if args.network == "none" { Network::None } else { Network::Host },
        given: args.build_args.iter().map(|a| split_arg(a)).collect::<anyhow::Result<_>>()?,
        args: BTreeMap::new(),
        vars: BTreeMap::new(),
        image: None,
    };
    for (n, step) in steps.iter().enumerate() {
        println!("STEP {}/{}: {} {}", n + 1, steps.len(), step.keyword, step.args);
        build.step(step).with_context(|| {
            format!("{} line {}: {} {}", file.display(), step.line, step.keyword, step.args)
        })?;
    }
    let Some(image) = build.image else { bail!("{}: no FROM", file.display()) };
    println!("Successfully built {}", image.digest);
    println!("Successfully tagged {}", image.name);
    Ok(())
}

fn split_arg(arg: &str) -> anyhow::Result<(String, String)> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => bail!("--build-arg {arg}: expected NAME=VALUE"),
    }
}

struct Build<'a> {
    ctx: &'a Context,
    containers: Containers,
    context: PathBuf,
    dest: skiff::Reference,
    compression: LayerCompression,
    network: Network,
    /// `--build-arg`s.
    given: BTreeMap<String, String>,
    /// The ARGs declared so far, with their values.
    args: BTreeMap<String, String>,
    /// What `$NAME` stands for: the ARGs, then the image's environment over them.
    vars: BTreeMap<String, String>,
    /// The image so far.
    image: Option<ImageRecord>,
}

impl Build<'_> {
    fn step(&mut self, step: &Instruction) -> anyhow::Result<()> {
        let keyword = step.keyword.as_str();
        match keyword {
            "FROM" => self.from(&dockerfile::substitute(&step.args, &self.vars)),
            "ARG" => {
                let text = dockerfile::substitute(&step.args, &self.vars);
                let (name, default) = match text.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (text.clone(), None),
                };
                if let Some(value) = self.given.get(&name).cloned().or(default) {
                    self.args.insert(name.clone(), value.clone());
                    self.vars.entry(name).or_insert(value);
                }
                Ok(())
            }
            "RUN" => self.run(&step.args),
            "COPY" | "ADD" => self.copy(keyword, &dockerfile::substitute(&step.args, &self.vars)),
            _ if CONFIG.contains(&keyword) => {
                // CMD and ENTRYPOINT are the container's to expand, as docker leaves them.
                let text = match keyword {
                    "CMD" | "ENTRYPOINT" => step.args.clone(),
                    _ => dockerfile::substitute(&step.args, &self.vars),
                };
                let text = match keyword {
                    "WORKDIR" => self.workdir()?.join(&text).to_string_lossy().into_owned(),
                    _ => text,
                };
                if keyword == "ENV" {
                    for (key, value) in dockerfile::pairs(&text).map_err(anyhow::Error::msg)? {
                        self.vars.insert(key, value);
                    }
                }
                let base = self.current()?;
                let change = format!("{keyword} {text}");
                let store = self.ctx.store()?;
                self.image = Some(skiff::image::change_config(
                    &store,
                    &base,
                    &self.dest,
                    std::slice::from_ref(&change),
                    &change,
                )?);
                Ok(())
            }
            other => bail!("{other} is not supported by skiff build"),
        }
    }

    fn current(&self) -> anyhow::Result<ImageRecord> {
        self.image.clone().context("an instruction before FROM")
    }

    fn from(&mut self, args: &str) -> anyhow::Result<()> {
        if self.image.is_some() {
            bail!("a second FROM: multi-stage builds are not supported");
        }
        let words = dockerfile::words(args).map_err(anyhow::Error::msg)?;
        let name = match words.as_slice() {
            [name] => name,
            [name, r#as, _] if r#as.eq_ignore_ascii_case("as") => name,
            _ => bail!("expected FROM IMAGE [AS NAME]"),
        };
        if name == "scratch" {
            bail!("FROM scratch is not supported (start from an image, or `skiff import` a tarball)");
        }
        let store = self.ctx.store()?;
        let record = match store.find_image(name) {
            Ok(record) => record,
            Err(_) => super::pulled(&store, &self.ctx.client()?, name, skiff::manifest::Platform::host())?,
        };
        // The image's environment counts for `$NAME` in the instructions after.
        for entry in self.config(&record)?["config"]["Env"].as_array().into_iter().flatten() {
            if let Some((key, value)) = entry.as_str().and_then(|e| e.split_once('=')) {
                self.vars.insert(key.to_string(), value.to_string());
            }
        }
        // Named as the build's result from the start.
        let changed = skiff::image::change_config(&store, &record, &self.dest, &[], &format!("FROM {name}"))?;
        self.image = Some(changed);
        Ok(())
    }

    fn config(&self, record: &ImageRecord) -> anyhow::Result<serde_json::Value> {
        let image = StoredImage::load(&self.ctx.store()?, record)?;
        Ok(serde_json::from_slice(&image.config_bytes)?)
    }

    /// The image's working directory so far (`/` if it sets none).
    fn workdir(&self) -> anyhow::Result<PathBuf> {
        let config = self.config(&self.current()?)?;
        Ok(PathBuf::from(config["config"]["WorkingDir"].as_str().filter(|w| !w.is_empty()).unwrap_or("/")))
    }

    /// A container of the image so far, running `command` when started (with the ARGs in
    /// its environment, as docker's RUN has them).
    fn container(&self, command: Vec<String>) -> anyhow::Result<State> {
        let base = self.current()?;
        let image = StoredImage::load(&self.ctx.store()?, &base)?;
        let env = self.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let options = RunOptions {
            command,
            entrypoint: Some(String::new()),
            env,
            network: self.network.clone(),
            ..RunOptions::default()
        };
        self.containers.create(&image, &options).context("creating the build container")
    }

    /// Commits `state`'s changes as the next layer, `created_by` in the history, and removes it.
    fn commit(&mut self, state: &State, created_by: String) -> anyhow::Result<()> {
        let paths = super::changes::container_paths(&self.containers, state);
        let options = CommitOptions {
            compression: self.compression,
            message: None,
            author: None,
            changes: Vec::new(),
            created_by: Some(created_by),
        };
        let committed =
            super::changes::commit_upper(self.ctx, &self.current()?, &paths, &self.dest, &options);
        let removed = skiff::container::remove(&self.containers, state, true);
        self.image = Some(committed?);
        removed.context("removing the build container")
    }

    fn run(&mut self, args: &str) -> anyhow::Result<()> {
        let command = match dockerfile::exec_form(args) {
            Some(argv) => argv,
            None => vec!["/bin/sh".into(), "-c".into(), args.into()],
        };
        let state = self.container(command)?;
        super::run::supervise_with(self.ctx, &self.containers, &state, Attach::Terminal)?;
        let code = self.containers.load(&state.id)?.exit_code.unwrap_or(0);
        if code != 0 {
            let _ = skiff::container::remove(&self.containers, &state, true);
            bail!("the command exited with code {code}");
        }
        self.commit(&state, format!("RUN {args}"))
    }

    fn copy(&mut self, keyword: &str, args: &str) -> anyhow::Result<()> {
        let words = dockerfile::exec_form(args)
            .map_or_else(|| dockerfile::words(args).map_err(anyhow::Error::msg), Ok)?;
        if let Some(flag) = words.iter().find(|w| w.starts_with("--")) {
            bail!("{keyword} {flag} is not supported by skiff build");
        }
        let [sources @ .., dest] = words.as_slice() else { bail!("expected {keyword} SOURCE... DEST") };
        if sources.is_empty() {
            bail!("expected {keyword} SOURCE... DEST");
        }
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let dest = self.workdir()?.join(dest);
        let sources: Vec<PathBuf> =
            sources.iter().map(|s| self.in_context(keyword, s)).collect::<anyhow::Result<_>>()?;
        let state = self.container(vec!["true".into()])?;
        let copied = self.copy_into(&state, &sources, &dest, into_dir);
        match copied {
            Ok(()) => self.commit(&state, format!("{keyword} {args}")),
            Err(e) => {
                let _ = skiff::container::remove(&self.containers, &state, true);
                Err(e)
            }
        }
    }

    /// `source` (relative to the context) as a path inside it; a path that leads out of it,
    /// a URL or a wildcard refused.
    fn in_context(&self, keyword: &str, source: &str) -> anyhow::Result<PathBuf> {
        if source.contains("://") {
            bail!("{keyword} of a URL ({source}) is not supported by skiff build");
        }
        if source.contains(['*', '?', '[']) {
            bail!("{keyword} with wildcards ({source}) is not supported by skiff build");
        }
        let path = self.context.join(source.trim_start_matches('/'));
        let resolved = path.canonicalize().with_context(|| format!("{source}: not in the build context"))?;
        if !resolved.starts_with(&self.context) {
            bail!("{source}: outside the build context");
        }
        if keyword == "ADD" && resolved.is_file() && is_archive(&resolved) {
            bail!("ADD of an archive ({source}) is not supported by skiff build (it would unpack it); use COPY to copy it as it is");
        }
        Ok(resolved)
    }

    /// Copies `sources` (host paths) into the stopped container `state`, by docker's COPY
    /// rules: a directory's contents into `dest`, a file to `dest` (into it, if it is a
    /// directory or `into_dir`); the directories on the way made.
    fn copy_into(
        &self,
        state: &State,
        sources: &[PathBuf],
        dest: &Path,
        into_dir: bool,
    ) -> anyhow::Result<()> {
        let store = self.ctx.store()?;
        let image = StoredImage::load(&store, &state.image)?;
        let quiet = State { record_profile: false, no_prefetch: true, ..state.clone() };
        let provider = super::run::provider(self.ctx, &quiet)?;
        let tree = Tree::container(&self.containers, state, &*provider, &image)?;
        let host = Tree::host()?;
        let options = CopyOptions { archive: false, follow_link: false };
        // The directories on the way, those missing made.
        let needs_dir = into_dir || sources.iter().any(|s| s.is_dir());
        if let Some(dirs) = if needs_dir { Some(dest) } else { dest.parent() } {
            skiff::container::make_dirs(&tree, dirs, &dirs.display().to_string())?;
        }
        for source in sources {
            let from = if source.is_dir() { source.join(".") } else { source.clone() };
            let to = match (source.is_dir(), into_dir) {
                (false, true) => dest.join(""),
                _ => dest.to_path_buf(),
            };
            let label = source.strip_prefix(&self.context).unwrap_or(source).display().to_string();
            let src = Place { tree: &host, path: &from, label };
            let dst = Place { tree: &tree, path: &to, label: to.display().to_string() };
            skiff::container::copy(&src, &dst, options)?;
        }
        Ok(())
    }
}

fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst"].iter().any(|s| name.ends_with(s))
}
