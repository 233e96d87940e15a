//! The `skiff` command: parses arguments, runs one verb, maps errors to an exit code.

mod commands;
mod context;
mod log;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use context::Context;

#[derive(Parser)]
#[command(name = "skiff", version, about = "A lazy-pull container runtime")]
struct Cli {
    /// Where images, caches and containers live.
    #[arg(long, global = true, env = "SKIFF_ROOT", default_value = skiff::store::DEFAULT_ROOT)]
    root: PathBuf,
    /// Registry (host[:port]) to reach over plain HTTP or unverified HTTPS; repeatable.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Most bytes the chunk cache keeps on disk (K, M, G suffixes).
    #[arg(long, global = true, env = "SKIFF_CACHE_SIZE", default_value = "4G", value_parser = skiff::size::parse_size)]
    cache_size: u64,
    /// skiff's configuration file (JSON).
    #[arg(long, global = true, env = "SKIFF_CONFIG", default_value = "/etc/skiff/config.json")]
    config: PathBuf,
    /// Log filter, for example `debug` or `skiff=trace`.
    #[arg(long, global = true, env = "SKIFF_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch an image's manifest and config (and with --full, every layer).
    Pull(commands::pull::Args),
    /// Send a stored image to a registry.
    Push(commands::push::Args),
    /// List stored images.
    Images(commands::images::Args),
    /// Show how an image was built: its steps, newest first, and their layers' sizes.
    History(commands::history::Args),
    /// Show images (manifest, config, layers) or containers as JSON, with docker's fields.
    Inspect(commands::inspect::Args),
    /// Rewrite an image's layers as eStargz, so it can be pulled lazily, and push it.
    Convert(commands::convert::Args),
    /// Show or empty the chunk cache.
    #[command(subcommand)]
    Cache(commands::cache::Command),
    /// Mount an image lazily, with a writable upper layer.
    Mount(commands::mount::Args),
    /// Unmount what `skiff mount` mounted.
    Umount(commands::mount::UmountArgs),
    /// List what a mount (or an upper directory) changed: A added, C changed, D deleted.
    Diff(commands::changes::DiffArgs),
    /// Save a mount's (or an upper directory's) changes as a new image.
    Commit(commands::changes::CommitArgs),
    /// Write images as an OCI layout tar archive (docker load, podman and skopeo read it).
    Save(commands::archive::SaveArgs),
    /// Store the images of an OCI layout tar archive (skiff save, docker save).
    Load(commands::archive::LoadArgs),
    /// Make an image of one layer from a filesystem tarball (skiff export, docker export).
    Import(commands::import::Args),
    /// Build an image from a Dockerfile.
    Build(commands::build::Args),
    /// Remove images.
    Rmi(commands::rmi::Args),
    /// Give an image another name.
    Tag(commands::tag::Args),
    /// Run a command in a new container.
    Run(Box<commands::run::Args>),
    /// Make a new container without starting it (`skiff start` starts it); `run`'s flags.
    Create(Box<commands::run::Args>),
    /// List containers.
    Ps(commands::ps::Args),
    /// Stop running containers (their stop signal, then SIGKILL).
    Stop(commands::stop::Args),
    /// Send a signal to running containers.
    Kill(commands::kill::Args),
    /// Stop every process of running containers until `unpause` (the cgroup freezer).
    Pause(commands::pause::Args),
    /// Let paused containers go on.
    Unpause(commands::pause::Args),
    /// Start created or stopped containers.
    Start(commands::start::Args),
    /// Show what running containers use: CPU, memory, network and block I/O, processes.
    Stats(commands::stats::Args),
    /// Show a running container's processes (the host's ps, -ef by default).
    Top(commands::top::Args),
    /// Show where a running container's ports are published.
    Port(commands::port::Args),
    /// Change containers' memory, CPU and process limits (at once if they run).
    Update(commands::update::Args),
    /// Give a container a new name.
    Rename(commands::rename::Args),
    /// Remove containers.
    Rm(commands::rm::Args),
    /// Wait until containers stop; print their exit codes.
    Wait(commands::wait::Args),
    /// Print a container's output.
    Logs(commands::logs::Args),
    /// Run a command in a running container.
    Exec(commands::exec::Args),
    /// Follow a running container's output until it stops; exit with its code.
    Attach(commands::attach::Args),
    /// Write a container's filesystem as a tar stream.
    Export(commands::export::Args),
    /// Copy files between a container and the host (CONTAINER:PATH on one side).
    Cp(commands::cp::Args),
    /// Supervise a container in the background (started by `run -d` and `start`).
    #[command(hide = true)]
    Supervise(commands::run::SuperviseArgs),
    /// Stop containers and start them again.
    Restart(commands::stop::Args),
    /// Containers: docker's `container` verbs (ls, run, rm, prune, …).
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Images: docker's `image` verbs (ls, pull, rm, prune, …).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Named volumes: create, ls, inspect, rm, prune.
    #[command(subcommand)]
    Volume(commands::volume::Command),
    /// skiff's disk use (`df`), and removing what is not needed (`prune`).
    #[command(subcommand)]
    System(SystemCommand),
    /// What skiff holds and the host it runs on.
    Info(commands::info::Args),
    /// Store credentials for a registry.
    Login(commands::login::Args),
    /// Remove stored credentials for a registry.
    Logout(commands::login::LogoutArgs),
}

/// `skiff container VERB`: the top-level container verbs, as docker's `container` group has them.
#[derive(Subcommand)]
enum ContainerCommand {
    /// List containers.
    #[command(visible_aliases = ["ps", "list"])]
    Ls(commands::ps::Args),
    /// Run a command in a new container.
    Run(Box<commands::run::Args>),
    /// Make a new container without starting it.
    Create(Box<commands::run::Args>),
    /// Start created or stopped containers.
    Start(commands::start::Args),
    /// Stop running containers.
    Stop(commands::stop::Args),
    /// Stop containers and start them again.
    Restart(commands::stop::Args),
    /// Send a signal to running containers.
    Kill(commands::kill::Args),
    /// Pause running containers.
    Pause(commands::pause::Args),
    /// Let paused containers go on.
    Unpause(commands::pause::Args),
    /// Remove containers.
    #[command(visible_alias = "remove")]
    Rm(commands::rm::Args),
    /// Give a container a new name.
    Rename(commands::rename::Args),
    /// Change containers' limits.
    Update(commands::update::Args),
    /// Show a container's processes.
    Top(commands::top::Args),
    /// Show a container's published ports.
    Port(commands::port::Args),
    /// Show what containers use.
    Stats(commands::stats::Args),
    /// Print a container's output.
    Logs(commands::logs::Args),
    /// Wait until containers stop.
    Wait(commands::wait::Args),
    /// Run a command in a running container.
    Exec(commands::exec::Args),
    /// Follow a running container's output.
    Attach(commands::attach::Args),
    /// Copy files between a container and the host.
    Cp(commands::cp::Args),
    /// Write a container's filesystem as a tar stream.
    Export(commands::export::Args),
    /// Show containers as JSON.
    Inspect(commands::inspect::Args),
    /// List a container's changes.
    Diff(commands::changes::DiffArgs),
    /// Save a container's changes as a new image.
    Commit(commands::changes::CommitArgs),
    /// Remove every stopped container.
    Prune(commands::prune::ForceArgs),
}

/// `skiff image VERB`: the top-level image verbs, as docker's `image` group has them.
#[derive(Subcommand)]
enum ImageCommand {
    /// List stored images.
    #[command(visible_alias = "list")]
    Ls(commands::images::Args),
    /// Fetch an image.
    Pull(commands::pull::Args),
    /// Send a stored image to a registry.
    Push(commands::push::Args),
    /// Remove images.
    #[command(visible_alias = "remove")]
    Rm(commands::rmi::Args),
    /// Give an image another name.
    Tag(commands::tag::Args),
    /// Show images as JSON.
    Inspect(commands::inspect::Args),
    /// Show how an image was built.
    History(commands::history::Args),
    /// Write images as an OCI layout tar archive.
    Save(commands::archive::SaveArgs),
    /// Store the images of an OCI layout tar archive.
    Load(commands::archive::LoadArgs),
    /// Make an image of one layer from a filesystem tarball.
    Import(commands::import::Args),
    /// Build an image from a Dockerfile.
    Build(commands::build::Args),
    /// Remove images nothing (with -a: no container) needs.
    Prune(commands::prune::ImagePruneArgs),
}

/// `skiff system VERB`.
#[derive(Subcommand)]
enum SystemCommand {
    /// Show the disk space images, containers, volumes and the chunk cache use.
    Df,
    /// Remove stopped containers, unused images (-a) and cached chunks no container holds.
    Prune(commands::prune::ImagePruneArgs),
    /// What skiff holds and the host it runs on.
    Info(commands::info::Args),
}

/// A group's verb as the top-level command it is, or, for the verbs only the groups have, what
/// to run for it.
enum Flattened {
    Command(Box<Command>),
    ContainerPrune(commands::prune::ForceArgs),
    ImagePrune(commands::prune::ImagePruneArgs),
    SystemPrune(commands::prune::ImagePruneArgs),
    SystemDf,
}

fn flatten(command: Command) -> Flattened {
    let top = |command: Command| Flattened::Command(Box::new(command));
    match command {
        Command::Container(c) => match c {
            ContainerCommand::Ls(a) => top(Command::Ps(a)),
            ContainerCommand::Run(a) => top(Command::Run(a)),
            ContainerCommand::Create(a) => top(Command::Create(a)),
            ContainerCommand::Start(a) => top(Command::Start(a)),
            ContainerCommand::Stop(a) => top(Command::Stop(a)),
            ContainerCommand::Restart(a) => top(Command::Restart(a)),
            ContainerCommand::Kill(a) => top(Command::Kill(a)),
            ContainerCommand::Pause(a) => top(Command::Pause(a)),
            ContainerCommand::Unpause(a) => top(Command::Unpause(a)),
            ContainerCommand::Rm(a) => top(Command::Rm(a)),
            ContainerCommand::Rename(a) => top(Command::Rename(a)),
            ContainerCommand::Update(a) => top(Command::Update(a)),
            ContainerCommand::Top(a) => top(Command::Top(a)),
            ContainerCommand::Port(a) => top(Command::Port(a)),
            ContainerCommand::Stats(a) => top(Command::Stats(a)),
            ContainerCommand::Logs(a) => top(Command::Logs(a)),
            ContainerCommand::Wait(a) => top(Command::Wait(a)),
            ContainerCommand::Exec(a) => top(Command::Exec(a)),
            ContainerCommand::Attach(a) => top(Command::Attach(a)),
            ContainerCommand::Cp(a) => top(Command::Cp(a)),
            ContainerCommand::Export(a) => top(Command::Export(a)),
            ContainerCommand::Inspect(a) => top(Command::Inspect(a)),
            ContainerCommand::Diff(a) => top(Command::Diff(a)),
            ContainerCommand::Commit(a) => top(Command::Commit(a)),
            ContainerCommand::Prune(a) => Flattened::ContainerPrune(a),
        },
        Command::Image(c) => match c {
            ImageCommand::Ls(a) => top(Command::Images(a)),
            ImageCommand::Pull(a) => top(Command::Pull(a)),
            ImageCommand::Push(a) => top(Command::Push(a)),
            ImageCommand::Rm(a) => top(Command::Rmi(a)),
            ImageCommand::Tag(a) => top(Command::Tag(a)),
            ImageCommand::Inspect(a) => top(Command::Inspect(a)),
            ImageCommand::History(a) => top(Command::History(a)),
            ImageCommand::Save(a) => top(Command::Save(a)),
            ImageCommand::Load(a) => top(Command::Load(a)),
            ImageCommand::Import(a) => top(Command::Import(a)),
            ImageCommand::Build(a) => top(Command::Build(a)),
            ImageCommand::Prune(a) => Flattened::ImagePrune(a),
        },
        Command::System(c) => match c {
            SystemCommand::Df => Flattened::SystemDf,
            SystemCommand::Prune(a) => Flattened::SystemPrune(a),
            SystemCommand::Info(a) => top(Command::Info(a)),
        },
        other => top(other),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(&cli.log_level);
    let ctx = Context::new(cli.root, cli.cache_size, cli.config, cli.insecure_registries);
    let command = match flatten(cli.command) {
        Flattened::Command(command) => *command,
        Flattened::ContainerPrune(a) => return finish(commands::prune::container(&ctx, a)),
        Flattened::ImagePrune(a) => return finish(commands::prune::image(&ctx, a)),
        Flattened::SystemPrune(a) => return finish(commands::prune::system(&ctx, a)),
        Flattened::SystemDf => {
            end_on_closed_stdout();
            return finish(commands::prune::df(&ctx));
        }
    };
    if matches!(
        command,
        Command::Images(_)
            | Command::Inspect(_)
            | Command::Diff(_)
            | Command::Ps(_)
            | Command::Cache(_)
            | Command::History(_)
            | Command::Info(_)
            | Command::Top(_)
            | Command::Port(_)
            | Command::Stats(_)
            | Command::Volume(_)
    ) {
        end_on_closed_stdout();
    }
    let result = match command {
        Command::Pull(a) => commands::pull::run(&ctx, a),
        Command::Push(a) => commands::push::run(&ctx, a),
        Command::Images(a) => commands::images::run(&ctx, a),
        Command::History(a) => commands::history::run(&ctx, a),
        Command::Inspect(a) => commands::inspect::run(&ctx, a),
        Command::Convert(a) => commands::convert::run(&ctx, a),
        Command::Cache(c) => commands::cache::run(&ctx, c),
        Command::Mount(a) => commands::mount::run(&ctx, a),
        Command::Umount(a) => commands::mount::umount(&ctx, a),
        Command::Diff(a) => commands::changes::diff(&ctx, a),
        Command::Commit(a) => commands::changes::commit_changes(&ctx, a),
        Command::Save(a) => commands::archive::save(&ctx, a),
        Command::Load(a) => commands::archive::load(&ctx, a),
        Command::Import(a) => commands::import::run(&ctx, a),
        Command::Build(a) => commands::build::run(&ctx, a),
        Command::Rmi(a) => commands::rmi::run(&ctx, a),
        Command::Tag(a) => commands::tag::run(&ctx, a),
        Command::Run(a) => return commands::run::run(&ctx, *a),
        Command::Create(a) => return commands::run::create(&ctx, *a),
        Command::Ps(a) => commands::ps::run(&ctx, a),
        Command::Stop(a) => commands::stop::run(&ctx, a),
        Command::Kill(a) => commands::kill::run(&ctx, a),
        Command::Pause(a) => commands::pause::pause(&ctx, a),
        Command::Unpause(a) => commands::pause::unpause(&ctx, a),
        Command::Start(a) => return commands::start::run(&ctx, a),
        Command::Rename(a) => commands::rename::run(&ctx, a),
        Command::Update(a) => commands::update::run(&ctx, a),
        Command::Top(a) => commands::top::run(&ctx, a),
        Command::Port(a) => commands::port::run(&ctx, a),
        Command::Stats(a) => commands::stats::run(&ctx, a),
        Command::Rm(a) => commands::rm::run(&ctx, a),
        Command::Logs(a) => commands::logs::run(&ctx, a),
        Command::Wait(a) => commands::wait::run(&ctx, a),
        Command::Exec(a) => return commands::exec::run(&ctx, a),
        Command::Attach(a) => return commands::attach::run(&ctx, a),
        Command::Cp(a) => commands::cp::run(&ctx, a),
        Command::Export(a) => commands::export::run(&ctx, a),
        Command::Supervise(a) => return commands::run::supervise_detached(&ctx, a),
        Command::Restart(a) => commands::restart::run(&ctx, a),
        Command::Container(_) | Command::Image(_) | Command::System(_) => unreachable!("flattened above"),
        Command::Volume(c) => commands::volume::run(&ctx, c),
        Command::Info(a) => commands::info::run(&ctx, a),
        Command::Login(a) => commands::login::run(&ctx, a),
        Command::Logout(a) => commands::login::logout(&ctx, a),
    };
    finish(result)
}

/// The exit code of a verb that reports errors only: 0, or 1 with the error printed.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            commands::print_error(format_args!("{}", commands::error_message(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Lets a closed stdout (`skiff diff c | head`) end the process by SIGPIPE, silently, as it
/// ends `ls` or `docker images`; with SIGPIPE ignored (Rust's default) the next `println!`
/// panics. Only for commands that print and hold nothing a sudden end would leave behind.
fn end_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: the default action replaces no handler of this program, and nothing has
    // started a thread yet.
    #[allow(unsafe_code)]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
