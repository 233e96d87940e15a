//! `skiff build`: an image from a Dockerfile, as docker build makes one. Each RUN runs in a
//! container of the image so far and its changes become a layer; COPY and ADD copy the
//! context's files into a container made and never started, whose changes become a layer;
//! the other instructions change the config alone. Every step's image is stored under the
//! tag, the last one staying. Multi-stage: an earlier stage's image is stored under a name of
//! its own until the build ends, for `FROM` and `COPY --from` of the later ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use skiff::container::{Attach, Containers, CopyOptions, Place, RunOptions, State, Tree};
use skiff::image::dockerfile::{self, Instruction};
use skiff::image::{CommitOptions, LayerCompression, StoredImage};
use skiff::sandbox::Network;
use skiff::store::{ImageRecord, Store};

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
    /// Build up to this stage (`FROM … AS STAGE`) and tag its image.
    #[arg(long)]
    target: Option<String>,
    /// Run every step, even one an earlier build made already.
    #[arg(long)]
    no_cache: bool,
    /// Layer format: `estargz` (lazy-pullable, the default) or `gzip`.
    #[arg(long, default_value = "estargz", value_parser = ["estargz", "gzip"])]
    format: String,
    /// The build context: the directory COPY and ADD read from.
    context: PathBuf,
}

/// Config instructions: each makes an image of the same layers with its config changed.
const CONFIG: [&str; 11] = [
    "ENV",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
    "USER",
    "WORKDIR",
    "CMD",
    "ENTRYPOINT",
    "HEALTHCHECK",
    "ONBUILD",
];

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
    let store = ctx.store()?;
    let dest = super::parse_reference(&args.tag)?;
    let mut build = Build {
        ctx,
        store: store.clone(),
        containers,
        context: context.clone(),
        dest: dest.clone(),
        compression: if args.format == "gzip" { LayerCompression::Gzip } else { LayerCompression::Estargz },
        network: if args.network == "none" { Network::None } else { Network::Host },
        given: args.build_args.iter().map(|a| split_arg(a)).collect::<anyhow::Result<_>>()?,
        args: BTreeMap::new(),
        vars: BTreeMap::new(),
        image: None,
        stages: Vec::new(),
        global: None,
        declared: Default::default(),
        stage_name: None,
        ignore: read_ignore(&context)?,
        shell: vec!["/bin/sh".into(), "-c".into()],
        cache: Cache { dir: ctx.root().join("build-cache"), enabled: !args.no_cache },
        // Each FROM names its stage's; until the first, no step reads it.
        target: dest,
        run_id: skiff::Digest::of(
            format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
        )
        .hex()[..8]
            .to_string(),
    };
    let mut built = Ok(());
    for (n, step) in steps.iter().enumerate() {
        // The target stage ends where the next one begins.
        if step.keyword == "FROM" && args.target.is_some() && build.stage_name == args.target {
            break;
        }
        println!("STEP {}/{}: {} {}", n + 1, steps.len(), step.keyword, step.args);
        built = build.step(step).with_context(|| {
            format!("{} line {}: {} {}", file.display(), step.line, step.keyword, step.args)
        });
        if built.is_err() {
            break;
        }
    }
    if let Some(target) =
        args.target.as_ref().filter(|t| built.is_ok() && build.stage_name.as_ref() != Some(t))
    {
        built = Err(anyhow::anyhow!("{}: no stage named {target}", file.display()));
    }
    // Only a build that went through names its image; the tag stays as it was otherwise.
    let tagged = match (&built, &build.image) {
        (Ok(()), Some(image)) => {
            let tagged = ImageRecord { name: build.dest.to_string(), ..image.clone() };
            store.commit_image(Vec::new(), tagged.clone())?;
            Some(tagged)
        }
        _ => None,
    };
    // The stages' working names go, whatever happened; their images stay (unnamed) for the
    // cache, until a removal of images collects them.
    let working = build.stages.iter().map(|(_, i)| i).chain(&build.image);
    store.untag(&working.map(|i| i.name.clone()).collect::<Vec<_>>())?;
    built?;
    let unused: Vec<&str> =
        build.given.keys().filter(|name| !build.declared.contains(*name)).map(String::as_str).collect();
    if !unused.is_empty() {
        eprintln!("[Warning] One or more build-args [{}] were not consumed", unused.join(" "));
    }
    let Some(image) = tagged else { bail!("{}: no FROM", file.display()) };
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
    store: Store,
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
    /// The stages before this one: their names (`AS NAME`) and images.
    stages: Vec<(Option<String>, ImageRecord)>,
    /// The ARGs declared before the first FROM: what FROM lines see, and the values a
    /// stage's `ARG NAME` takes.
    global: Option<BTreeMap<String, String>>,
    /// The names any ARG declared: a `--build-arg` of no other name is reported unused.
    declared: std::collections::BTreeSet<String>,
    /// This stage's name (`AS NAME`).
    stage_name: Option<String>,
    /// The patterns of the context's .dockerignore.
    ignore: Vec<Ignore>,
    /// What runs a RUN, CMD or ENTRYPOINT of the shell form (`SHELL`; `/bin/sh -c` until one).
    shell: Vec<String>,
    cache: Cache,
    /// What this stage's images are stored as: a working name, removed at the end.
    target: skiff::Reference,
    /// Tells this build's working names from another's.
    run_id: String,
}

impl Build<'_> {
    fn step(&mut self, step: &Instruction) -> anyhow::Result<()> {
        let keyword = step.keyword.as_str();
        match keyword {
            // FROM sees the ARGs before the first FROM, and only those.
            "FROM" => {
                // The ARGs before the first FROM are kept for the stages to declare again.
                let global = self.global.get_or_insert_with(|| self.args.clone());
                let text = dockerfile::substitute(&step.args, global);
                self.from(&text)
            }
            "ARG" => {
                let text = dockerfile::substitute(&step.args, &self.vars);
                let (name, default) = match text.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (text.clone(), None),
                };
                self.declared.insert(name.clone());
                // A stage's `ARG NAME` without a default takes the value it had before the
                // first FROM.
                let before = self.global.as_ref().and_then(|g| g.get(&name)).cloned();
                if let Some(value) = self.given.get(&name).cloned().or(default).or(before) {
                    self.args.insert(name.clone(), value.clone());
                    self.vars.entry(name).or_insert(value);
                }
                Ok(())
            }
            "RUN" => self.run(&step.args),
            "SHELL" => {
                self.shell = dockerfile::exec_form(&step.args)
                    .filter(|shell| !shell.is_empty())
                    .context("expected SHELL [\"executable\", \"parameters\"]")?;
                Ok(())
            }
            "COPY" | "ADD" => self.copy(keyword, &dockerfile::substitute(&step.args, &self.vars)),
            _ if CONFIG.contains(&keyword) => {
                // The commands are the container's to expand, as docker leaves them; a trigger
                // is expanded where it runs, in the build of an image FROM this one.
                let text = match keyword {
                    "CMD" | "ENTRYPOINT" | "HEALTHCHECK" | "ONBUILD" => step.args.clone(),
                    _ => dockerfile::substitute(&step.args, &self.vars),
                };
                let text = match keyword {
                    "WORKDIR" => self.workdir()?.join(&text).to_string_lossy().into_owned(),
                    // The shell form runs in SHELL's shell, as docker writes it down.
                    "CMD" | "ENTRYPOINT"
                        if dockerfile::exec_form(&text).is_none() && !text.trim().is_empty() =>
                    {
                        serde_json::to_string(&self.shell_form(text.trim()))?
                    }
                    _ => text,
                };
                if keyword == "ENV" {
                    for (key, value) in dockerfile::pairs(&text).map_err(anyhow::Error::msg)? {
                        self.vars.insert(key, value);
                    }
                }
                let change = format!("{keyword} {text}");
                self.cached(&change, b"", |build| {
                    let image =
                        skiff::image::change_config(&build.store, &build.current()?, &build.target, &change)?;
                    build.image = Some(image);
                    Ok(())
                })
            }
            other => bail!("{other} is not supported by skiff build"),
        }
    }

    /// Does `make` unless the cache holds the image an earlier build made from the image so
    /// far with the step `step` reading `inputs`; then that image is the next one.
    fn cached(
        &mut self,
        step: &str,
        inputs: &[u8],
        make: impl FnOnce(&mut Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let parent = self.current()?;
        let key = Cache::key(&parent, step, inputs);
        if let Some(record) = self.cache.find(&self.store, &key, &parent, &self.target)? {
            println!(" ---> Using cache");
            self.image = Some(record);
            return Ok(());
        }
        make(self)?;
        if let Some(made) = &self.image {
            self.cache.keep(&key, made);
        }
        Ok(())
    }

    /// `text` run by SHELL's shell, as the shell form of RUN, CMD and ENTRYPOINT is.
    fn shell_form(&self, text: &str) -> Vec<String> {
        self.shell.iter().cloned().chain([text.to_string()]).collect()
    }

    fn current(&self) -> anyhow::Result<ImageRecord> {
        self.image.clone().context("an instruction before FROM")
    }

    fn from(&mut self, args: &str) -> anyhow::Result<()> {
        let words = dockerfile::words(args).map_err(anyhow::Error::msg)?;
        let (name, stage) = match words.as_slice() {
            [name] => (name.clone(), None),
            [name, r#as, stage] if r#as.eq_ignore_ascii_case("as") => (name.clone(), Some(stage.clone())),
            _ => bail!("expected FROM IMAGE [AS NAME]"),
        };
        if name == "scratch" {
            bail!("FROM scratch is not supported (start from an image, or `skiff import` a tarball)");
        }
        // The stage before ends here.
        if let Some(done) = self.image.take() {
            let done_name = self.stage_name.take();
            self.stages.push((done_name, done));
        }
        // A working name for the stage's images, the tag given only once the build is done.
        self.target = super::parse_reference(&format!(
            "{}-building-{}-stage{}",
            self.dest,
            self.run_id,
            self.stages.len()
        ))?;
        let record = match self.stage(&name) {
            Some(record) => record,
            None => match self.store.find_image(&name) {
                Ok(record) => record,
                Err(_) => super::pulled(&self.store, &self.ctx.client()?, &name, &Default::default())?,
            },
        };
        // A stage starts with no ARGs: one from before the first FROM is declared again
        // (`ARG NAME`) to be seen, as docker has it.
        self.args = BTreeMap::new();
        self.vars = BTreeMap::new();
        // The image's environment counts for `$NAME` in the instructions after.
        let image = StoredImage::load(&self.store, &record)?;
        let config: serde_json::Value = serde_json::from_slice(&image.config_bytes)?;
        for entry in config["config"]["Env"].as_array().into_iter().flatten() {
            if let Some((key, value)) = entry.as_str().and_then(|e| e.split_once('=')) {
                self.vars.insert(key.to_string(), value.to_string());
            }
        }
        let triggers: Vec<&str> =
            config["config"]["OnBuild"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
        // Named as the stage's result from the start: the image itself, so that what the
        // cache keeps for its steps is found again. Its ONBUILD triggers are this build's to
        // run, not its image's to keep.
        let named = if triggers.is_empty() {
            let named = ImageRecord { name: self.target.to_string(), ..record };
            self.store.commit_image(Vec::new(), named.clone())?;
            named
        } else {
            let plural = if triggers.len() == 1 { "" } else { "s" };
            println!("# Executing {} build trigger{plural}", triggers.len());
            skiff::image::without_triggers(&self.store, &image, &self.target)?
        };
        self.image = Some(named);
        self.stage_name = stage;
        for trigger in triggers {
            let ran = skiff::image::check_trigger(trigger)
                .map_err(anyhow::Error::msg)
                .and_then(|()| dockerfile::parse(trigger).map_err(anyhow::Error::msg))
                .and_then(|steps| {
                    steps.iter().try_for_each(|step| {
                        println!(" ---> ONBUILD {} {}", step.keyword, step.args);
                        self.step(step)
                    })
                });
            ran.with_context(|| format!("the ONBUILD trigger {trigger:?} of {name}"))?;
        }
        Ok(())
    }

    /// The image of an earlier stage, by its name or its number (from 0).
    fn stage(&self, name: &str) -> Option<ImageRecord> {
        let by_number = name.parse::<usize>().ok().and_then(|n| self.stages.get(n));
        let by_name = self.stages.iter().find(|(stage, _)| stage.as_deref() == Some(name));
        by_name.or(by_number).map(|(_, image)| image.clone())
    }

    fn config(&self, record: &ImageRecord) -> anyhow::Result<serde_json::Value> {
        let image = StoredImage::load(&self.store, record)?;
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
        self.container_of(&self.current()?, command)
    }

    /// A container of `base`, as [`Build::container`] makes one of the image so far.
    fn container_of(&self, base: &ImageRecord, command: Vec<String>) -> anyhow::Result<State> {
        let image = StoredImage::load(&self.store, base)?;
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
            super::changes::commit_upper(self.ctx, &self.current()?, &paths, &self.target, &options);
        let removed = skiff::container::remove(&self.containers, state, true);
        self.image = Some(committed?);
        removed.context("removing the build container")
    }

    fn run(&mut self, args: &str) -> anyhow::Result<()> {
        // The ARGs are its environment, and SHELL runs it: another of either, another step.
        let mut env: String = self.args.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        env.push_str(&self.shell.join("\0"));
        self.cached(&format!("RUN {args}"), env.as_bytes(), |build| build.run_uncached(args))
    }

    fn run_uncached(&mut self, args: &str) -> anyhow::Result<()> {
        let command = match dockerfile::exec_form(args) {
            Some(argv) => argv,
            None => self.shell_form(args),
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
        let (flags, words): (Vec<&String>, Vec<&String>) = words.iter().partition(|w| w.starts_with("--"));
        let (mut from, mut chown, mut chmod) = (None, None, None);
        for flag in flags {
            match flag.split_once('=') {
                Some(("--from", stage)) if keyword == "COPY" => {
                    from =
                        Some(self.stage(stage).with_context(|| format!("no stage {stage} before this one"))?)
                }
                Some(("--chown", owner)) => chown = Some(owner.to_string()),
                Some(("--chmod", mode)) => {
                    chmod = Some(u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777).with_context(
                        || format!("{keyword} --chmod={mode}: expected octal permissions, as 755"),
                    )?)
                }
                _ => bail!("{keyword} {flag} is not supported by skiff build"),
            }
        }
        let [sources @ .., dest] = words.as_slice() else { bail!("expected {keyword} SOURCE... DEST") };
        if sources.is_empty() {
            bail!("expected {keyword} SOURCE... DEST");
        }
        let target = Target { into_dir: dest.ends_with('/'), dest: self.workdir()?.join(dest), chown, chmod };
        // The files come from the context, or from an earlier stage's image (a container of
        // it, never started).
        let stage = from.map(|image| self.container_of(&image, vec!["true".into()])).transpose()?;
        let copied = self.copy_step(keyword, stage.as_ref(), sources, target, args);
        if let Some(stage) = &stage {
            let _ = skiff::container::remove(&self.containers, stage, true);
        }
        copied
    }

    /// COPY's or ADD's `sources` (as the Dockerfile names them), from the stage container
    /// `stage` or else the context, into a container of the image so far, committed.
    fn copy_step(
        &mut self,
        keyword: &str,
        stage: Option<&State>,
        sources: &[&String],
        mut target: Target,
        args: &str,
    ) -> anyhow::Result<()> {
        let sources: Vec<(PathBuf, String)> = match stage {
            Some(_) => sources.iter().map(|s| (Path::new("/").join(s), s.to_string())).collect(),
            None => {
                let mut all = Vec::new();
                for source in sources {
                    all.extend(self.in_context(keyword, source)?);
                }
                all
            }
        };
        // A wildcard that matched several files makes the destination a directory.
        target.into_dir |= sources.len() > 1;
        // What .dockerignore leaves out is not copied: the rest is staged, linked or copied
        // (kept until the copy is done).
        let mut staging = None;
        let sources = match (stage, self.ignore.is_empty()) {
            (None, false) => {
                let dir = tempfile::tempdir_in(self.store.root().join("tmp"))
                    .context("making a staging directory")?;
                self.without_ignored(&sources, staging.insert(dir).path())?
            }
            _ => sources,
        };
        // What it copies decides whether an earlier build's step serves: the stage's image,
        // or the context's files themselves.
        let inputs = match stage {
            Some(stage) => stage.image.manifest.to_string().into_bytes(),
            None => {
                let mut described = Vec::new();
                for (path, label) in &sources {
                    describe(path, Path::new(label), &mut described)
                        .with_context(|| format!("reading {label}"))?;
                }
                skiff::Digest::of(&described).to_string().into_bytes()
            }
        };
        self.cached(&format!("{keyword} {args}"), &inputs, |build| {
            let state = build.container(vec!["true".into()])?;
            match build.copy_into(stage, &state, &sources, &target) {
                Ok(()) => build.commit(&state, format!("{keyword} {args}")),
                Err(e) => {
                    let _ = skiff::container::remove(&build.containers, &state, true);
                    Err(e)
                }
            }
        })
    }

    /// `sources` (paths in the context) staged under `staging` without what .dockerignore
    /// leaves out.
    fn without_ignored(
        &self,
        sources: &[(PathBuf, String)],
        staging: &Path,
    ) -> anyhow::Result<Vec<(PathBuf, String)>> {
        let mut kept = Vec::new();
        for (n, (path, label)) in sources.iter().enumerate() {
            let relative = path.strip_prefix(&self.context).unwrap_or(path);
            if !relative.as_os_str().is_empty() && ignored(&self.ignore, relative) {
                continue;
            }
            // Each source apart, under its own name (a file's lands under it).
            let staged = match relative.file_name() {
                Some(name) => {
                    std::fs::create_dir(staging.join(n.to_string()))?;
                    staging.join(n.to_string()).join(name)
                }
                None => staging.join(n.to_string()),
            };
            stage(&self.ignore, path, &staged, relative).with_context(|| format!("staging {label}"))?;
            kept.push((staged, label.clone()));
        }
        if kept.is_empty() {
            bail!("every source is left out by .dockerignore");
        }
        Ok(kept)
    }

    /// `source` (relative to the context) as a path inside it; a path that leads out of it,
    /// a URL or a wildcard refused.
    fn in_context(&self, keyword: &str, source: &str) -> anyhow::Result<Vec<(PathBuf, String)>> {
        if source.contains("://") {
            bail!("{keyword} of a URL ({source}) is not supported by skiff build");
        }
        let relative = Path::new(source.trim_start_matches('/'));
        let Some(pattern) = relative.file_name().map(|n| n.to_string_lossy()).filter(|n| is_pattern(n))
        else {
            return Ok(vec![(
                self.in_context_path(keyword, source, &self.context.join(relative))?,
                source.to_string(),
            )]);
        };
        // A wildcard in the last name: the entries of its directory that match, in order.
        let parent = relative.parent().unwrap_or(Path::new(""));
        if is_pattern(&parent.to_string_lossy()) {
            bail!("{source}: wildcards are supported in the last name only");
        }
        let dir = self.in_context_path(keyword, source, &self.context.join(parent))?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("{source}: reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| matches_pattern(&pattern, name))
            .collect();
        names.sort();
        if names.is_empty() {
            bail!("{source}: no file in the build context matches");
        }
        names
            .into_iter()
            .map(|name| {
                let shown = parent.join(&name).display().to_string();
                Ok((self.in_context_path(keyword, &shown, &dir.join(&name))?, shown))
            })
            .collect()
    }

    /// `path` resolved, checked to be in the context (and, for ADD, no archive).
    fn in_context_path(&self, keyword: &str, source: &str, path: &Path) -> anyhow::Result<PathBuf> {
        let resolved = path.canonicalize().with_context(|| format!("{source}: not in the build context"))?;
        if !resolved.starts_with(&self.context) {
            bail!("{source}: outside the build context");
        }
        if keyword == "ADD" && resolved.is_file() && is_archive(&resolved) {
            bail!("ADD of an archive ({source}) is not supported by skiff build (it would unpack it); use COPY to copy it as it is");
        }
        Ok(resolved)
    }

    /// Copies `sources` (paths and their names in the Dockerfile) from the host, or from the
    /// stopped container `from`, into the stopped container `state` by docker's COPY rules:
    /// a directory's contents into `dest`, a file to `dest` (into it, if it is a directory
    /// or `into_dir`); the directories on the way made.
    fn copy_into(
        &self,
        from: Option<&State>,
        state: &State,
        sources: &[(PathBuf, String)],
        target: &Target,
    ) -> anyhow::Result<()> {
        let from_tree = match from {
            Some(stage) => self.tree(stage)?,
            None => Tree::host()?,
        };
        let tree = self.tree(state)?;
        // The image's root owns what COPY copies, unless --chown names another.
        let owner = target.chown.as_deref().map(|spec| tree.ids_of(spec)).transpose()?.unwrap_or((0, 0));
        let options =
            CopyOptions { archive: false, follow_link: false, owner: Some(owner), mode: target.chmod };
        let (dest, into_dir) = (target.dest.as_path(), target.into_dir);
        let mut is_dir = Vec::with_capacity(sources.len());
        for (path, label) in sources {
            is_dir.push(from_tree.is_dir(path, label)?);
        }
        // The directories on the way, those missing made.
        let needs_dir = into_dir || is_dir.contains(&true);
        if let Some(dirs) = if needs_dir { Some(dest) } else { dest.parent() } {
            // A directory copied to a new name gets --chmod's mode, as its files do.
            let copied_dir = if is_dir.contains(&true) { target.chmod } else { None };
            skiff::container::make_dirs(&tree, dirs, &dirs.display().to_string(), owner, copied_dir)?;
        }
        for ((source, label), is_dir) in sources.iter().zip(is_dir) {
            let from = if is_dir { source.join(".") } else { source.clone() };
            let to = if !is_dir && into_dir { dest.join("") } else { dest.to_path_buf() };
            let src = Place { tree: &from_tree, path: &from, label: label.clone() };
            let dst = Place { tree: &tree, path: &to, label: to.display().to_string() };
            skiff::container::copy(&src, &dst, options)?;
        }
        Ok(())
    }

    /// The files of the stopped container `state`, mounted for this process.
    fn tree(&self, state: &State) -> anyhow::Result<Tree> {
        super::cp::tree_of(self.ctx, &self.containers, state)
    }
}

/// Where COPY or ADD copies to: `dest` (into it when `into_dir`), owned by `chown`, with the
/// mode `chmod`.
struct Target {
    dest: PathBuf,
    into_dir: bool,
    chown: Option<String>,
    /// `--chmod`: the mode of every file and directory copied.
    chmod: Option<u32>,
}

fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst"].iter().any(|s| name.ends_with(s))
}

/// Appends what `path` (shown as `name`) holds to `out`: each entry's name, kind, mode and
/// contents (a link's target), directories in name order.
fn describe(path: &Path, name: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    out.extend_from_slice(name.as_os_str().as_bytes());
    out.extend_from_slice(format!("\0{:o}\0", meta.mode()).as_bytes());
    if meta.is_dir() {
        let mut names: Vec<_> =
            std::fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        for child in names {
            describe(&path.join(&child), &name.join(&child), out)?;
        }
    } else if meta.file_type().is_symlink() {
        out.extend_from_slice(std::fs::read_link(path)?.as_os_str().as_bytes());
    } else if meta.is_file() {
        let mut hashed = skiff_fs::Sha256Writer::new(std::io::sink());
        std::io::copy(&mut std::fs::File::open(path)?, &mut hashed)?;
        out.extend_from_slice(hashed.finish().0.to_string().as_bytes());
    }
    out.push(b'\n');
    Ok(())
}

/// What earlier builds made: a file per step, named by the step's key, holding the manifest
/// digest of the image it made.
struct Cache {
    dir: PathBuf,
    enabled: bool,
}

impl Cache {
    /// A step's key: the image it starts from, its instruction, and what else it reads.
    fn key(parent: &ImageRecord, step: &str, inputs: &[u8]) -> String {
        let mut all = Vec::new();
        for part in [parent.manifest.to_string().as_bytes(), step.as_bytes(), inputs] {
            all.extend_from_slice(&(part.len() as u64).to_le_bytes());
            all.extend_from_slice(part);
        }
        skiff::Digest::of(&all).hex()
    }

    /// The image an earlier build made for `key`, named `target`, if its objects are still
    /// stored.
    fn find(
        &self,
        store: &skiff::store::Store,
        key: &str,
        parent: &ImageRecord,
        target: &skiff::Reference,
    ) -> anyhow::Result<Option<ImageRecord>> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(digest) =
            std::fs::read_to_string(self.dir.join(key)).ok().and_then(|d| d.trim().parse().ok())
        else {
            return Ok(None);
        };
        let record = ImageRecord {
            name: target.to_string(),
            digest,
            manifest: digest,
            source: parent.source.clone(),
            updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        if StoredImage::load(store, &record).is_err() {
            return Ok(None);
        }
        store.commit_image(Vec::new(), record.clone())?;
        Ok(Some(record))
    }

    /// Remembers that `key` made `image` (a failure to is only logged: the build went well).
    fn keep(&self, key: &str, image: &ImageRecord) {
        let kept = std::fs::create_dir_all(&self.dir).and_then(|()| {
            skiff::store::write_atomic(&self.dir.join(key), image.manifest.to_string().as_bytes(), 0o644)
        });
        if let Err(e) = kept {
            tracing::warn!(error = %e, "keeping a build step in the cache");
        }
    }
}

/// A line of .dockerignore: a pattern of path names (`**` any number of them), or with `!`
/// an exception to the patterns before it.
struct Ignore {
    exception: bool,
    names: Vec<String>,
}

/// The patterns of `context`'s .dockerignore (none without one).
fn read_ignore(context: &Path) -> anyhow::Result<Vec<Ignore>> {
    let path = context.join(".dockerignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let names = pattern.split('/').filter(|n| !n.is_empty() && *n != ".").map(String::from).collect();
            Ignore { exception, names }
        })
        .collect())
}

/// Whether .dockerignore's `patterns` leave out `relative` (a path in the context): the last
/// pattern matching it, or a directory it is in, decides.
fn ignored(patterns: &[Ignore], relative: &Path) -> bool {
    let names: Vec<String> = relative.iter().map(|n| n.to_string_lossy().into_owned()).collect();
    let mut out = false;
    for pattern in patterns {
        if (1..=names.len()).any(|n| matches_names(&pattern.names, &names[..n])) {
            out = !pattern.exception;
        }
    }
    out
}

/// Whether the names of a path match a pattern's, `**` standing for any number of them.
fn matches_names(pattern: &[String], names: &[String]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=names.len()).any(|skip| matches_names(rest, &names[skip..]))
        }
        Some((first, rest)) => {
            names.first().is_some_and(|name| matches_pattern(first, name)) && matches_names(rest, &names[1..])
        }
    }
}

/// Stages `source` (at `relative` in the context) as `staged`, leaving out what `patterns`
/// do: files hard-linked where they can be (copied where not), links made again, directories
/// made with their mode.
fn stage(patterns: &[Ignore], source: &Path, staged: &Path, relative: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(source)?;
    if meta.is_dir() {
        std::fs::create_dir(staged)?;
        for entry in std::fs::read_dir(source)? {
            let name = entry?.file_name();
            let inner = relative.join(&name);
            if !ignored(patterns, &inner) {
                stage(patterns, &source.join(&name), &staged.join(&name), &inner)?;
            }
        }
        std::fs::set_permissions(staged, meta.permissions())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(source)?, staged)
    } else if std::fs::hard_link(source, staged).is_err() {
        std::fs::copy(source, staged).map(drop)
    } else {
        Ok(())
    }
}

/// Whether a name has wildcards (`*`, `?`, `[…]`).
fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// Whether `name` matches the shell pattern `pattern` (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`).
fn matches_pattern(pattern: &str, name: &str) -> bool {
    fn matches(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|skip| matches(rest, &n[skip..])),
            Some(('?', rest)) => !n.is_empty() && matches(rest, &n[1..]),
            Some(('[', rest)) => {
                let Some(end) = rest.iter().skip(1).position(|&c| c == ']').map(|i| i + 1) else {
                    return n.first() == Some(&'[') && matches(rest, &n[1..]);
                };
                let (class, after) = (&rest[..end], &rest[end + 1..]);
                let (negated, class) = match class.split_first() {
                    Some(('!' | '^', class)) => (true, class),
                    _ => (false, class),
                };
                let Some(&c) = n.first() else { return false };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negated && matches(after, &n[1..])
            }
            Some((&c, rest)) => n.first() == Some(&c) && matches(rest, &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    matches(&p, &n)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{ignored, matches_pattern, Ignore};

    #[test]
    fn dockerignore_patterns_leave_out_what_docker_leaves_out() {
        let patterns: Vec<Ignore> = [".git", "**/*.log", "build/", "!build/keep.txt", "docs/*.md"]
            .iter()
            .map(|line| {
                let (exception, pattern) = line.strip_prefix('!').map_or((false, *line), |p| (true, p));
                Ignore {
                    exception,
                    names: pattern.split('/').filter(|n| !n.is_empty()).map(String::from).collect(),
                }
            })
            .collect();
        let out = |path: &str| ignored(&patterns, Path::new(path));
        assert!(out(".git") && out(".git/config"), "a directory and what it holds");
        assert!(out("app.log") && out("a/b/c.log") && !out("app.py"));
        assert!(out("build/x.o") && !out("build/keep.txt"), "an exception after");
        assert!(out("docs/a.md") && !out("docs/a.txt") && !out("docs"));
    }

    #[test]
    fn shell_patterns_match_as_docker_copy_matches_them() {
        assert!(matches_pattern("*.py", "app.py") && !matches_pattern("*.py", "app.pyc"));
        assert!(
            matches_pattern("package*.json", "package.json")
                && matches_pattern("package*.json", "package-lock.json")
        );
        assert!(matches_pattern("file?.txt", "file1.txt") && !matches_pattern("file?.txt", "file10.txt"));
        assert!(matches_pattern("[ab]*", "beta") && !matches_pattern("[ab]*", "gamma"));
        assert!(matches_pattern("v[0-9]", "v7") && !matches_pattern("v[!0-9]", "v7"));
        assert!(matches_pattern("*", ".hidden"), "docker's COPY * copies dotfiles too");
    }
}
