use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skiff::mount::{is_skiff_mount, mount_image, unmount, MountPaths, MountRequest, ProfileMode};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Where the changes go (by default a directory under the root, kept after unmount).
    #[arg(long)]
    upper: Option<PathBuf>,
    /// Record which files are read while mounted, as the image's prefetch profile.
    #[arg(long)]
    record_profile: bool,
    /// Do not prefetch the image's profile (the one recorded here, else the one in its
    /// manifest): fetch only what is read.
    #[arg(long)]
    no_prefetch: bool,
    /// Serve the mount from a background process and return once it is up.
    #[arg(short, long)]
    detach: bool,
    /// The image (pulled lazily first if it is not stored).
    image: String,
    /// An existing, empty directory.
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct UmountArgs {
    dir: PathBuf,
}

fn canonical(dir: &Path) -> anyhow::Result<PathBuf> {
    dir.canonicalize().with_context(|| format!("mount point {}", dir.display()))
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let target = canonical(&args.dir)?;
    if is_skiff_mount(&target) {
        bail!("{} is already a skiff mount", target.display());
    }
    // Mounted over, what a directory holds would be hidden until the unmount.
    let mut entries =
        std::fs::read_dir(&target).with_context(|| format!("mount point {}", target.display()))?;
    if entries.next().is_some() {
        bail!("mount point {} is not empty", target.display());
    }
    if args.detach {
        return detach(ctx, &args, &target);
    }
    let store = ctx.store()?;
    let client = ctx.client()?;
    let cache = ctx.cache()?;
    // Mounted by this process next: its tables of contents travel while the pull ends.
    let pull = skiff::image::PullOptions { tocs_ahead: true, ..Default::default() };
    let record = super::stored_or_pulled(&store, &client, &args.image, &pull)?;
    let paths = MountPaths::new(store.root(), &target, args.upper.as_deref());
    let upper = paths.upper.clone();
    let profile = ProfileMode { record: args.record_profile, prefetch: !args.no_prefetch };
    let mounted = mount_image(MountRequest {
        client: &client,
        store: &store,
        cache: &cache,
        image: &record,
        target: &target,
        paths,
        profile,
        ids: skiff_fs::IdMap::default(),
        mount_points: &[],
    })?;
    println!("Mounted {} at {} (changes in {})", record.name, target.display(), upper.display());
    // Serve until asked to stop, or until `skiff umount` unmounts us.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
            .context("installing signal handlers")?;
    let handle = signals.handle();
    let watcher = std::thread::spawn(move || signals.forever().next());
    while !watcher.is_finished() && is_skiff_mount(&target) {
        std::thread::sleep(Duration::from_millis(200));
    }
    handle.close();
    match mounted.unmount() {
        // Unmounted already by `skiff umount`: the session's own unmount finds nothing there.
        Err(_) if !is_skiff_mount(&target) => Ok(()),
        result => result.with_context(|| format!("unmounting {}", target.display())),
    }
}

/// Starts `skiff mount` again in the background (its own process group, output to a log)
/// and waits until the mount is up.
fn detach(ctx: &Context, args: &Args, target: &Path) -> anyhow::Result<()> {
    let log_dir = ctx.root().join("mounts");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log_path = log_dir.join(format!("{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(std::env::current_exe().context("finding the skiff binary")?);
    cmd.args(ctx.global_args()).arg("mount");
    if let Some(u) = &args.upper {
        cmd.arg("--upper").arg(u);
    }
    if args.record_profile {
        cmd.arg("--record-profile");
    }
    if args.no_prefetch {
        cmd.arg("--no-prefetch");
    }
    cmd.arg(&args.image).arg(target);
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the background mount")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !is_skiff_mount(target) {
        if let Some(status) = child.try_wait()? {
            let out = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the background mount exited ({status}): {}", out.trim());
        }
        if Instant::now() > deadline {
            bail!("the background mount did not come up; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("Mounted {} at {} (pid {})", args.image, target.display(), child.id());
    Ok(())
}

pub fn umount(ctx: &Context, args: UmountArgs) -> anyhow::Result<()> {
    let target = canonical(&args.dir)?;
    unmount(ctx.root(), &target)?;
    Ok(())
}
