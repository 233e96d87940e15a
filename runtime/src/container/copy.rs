//! Copying files between a container and the host (`skiff cp`), as docker cp does: the source
//! is packed into a tar stream, which is unpacked at the destination.
//!
//! Both ends are reached through descriptors. Inside a container every path resolves with
//! `openat2(RESOLVE_IN_ROOT)` from its `/`, so an image's symlink (`/var/run -> /run`, or a
//! link to `/` made by the container) resolves inside the container. The walk of a source
//! directory opens each entry from its directory's descriptor without following a symlink, and
//! the destination is written by [`unpack_archive`], which resolves every entry inside the
//! destination directory. So neither a hostile image nor a container changing its files during
//! the copy can make skiff read or write a host file other than the paths it was given.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
use skiff_fs::IdMap;

use super::rootfs::{MountedRootfs, RootfsProvider};
use super::unpack::{unpack_archive, Owner, UnpackError, Whiteouts};
use super::{ContainerError, Containers, State};
use crate::image::StoredImage;
use crate::sandbox::mounts::mount_volume;
use crate::sandbox::paths::{normalize, open_in_root, PathError};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("--chown={spec}: {why}")]
    Owner { spec: String, why: String },
    #[error("{label}: no such file or directory")]
    Missing { label: String },
    #[error("{label}: {source}")]
    Resolve { label: String, source: PathError },
    #[error("{step} {label}: {source}")]
    Entry { step: &'static str, label: String, source: Errno },
    #[error("reading {label}: {source}")]
    Read { label: String, source: io::Error },
    #[error("writing the archive of {label}: {source}")]
    Archive { label: String, source: io::Error },
    #[error(transparent)]
    Unpack(UnpackError),
    #[error("cannot copy a directory ({source_label}) onto a file ({label})")]
    DirectoryOntoFile { source_label: String, label: String },
    #[error("destination directory {label} does not exist")]
    NoDirectory { label: String },
    #[error("{label}: the directory it would go in does not exist")]
    NoParent { label: String },
    #[error("{label} is not a directory (an archive is unpacked into a directory)")]
    NotDirectory { label: String },
    #[error("container {name} is not running and is being started or supervised (pid {pid}); try again")]
    Busy { name: String, pid: i32 },
    #[error("{step} the rootfs of container {name}: {source}")]
    Mount { step: &'static str, name: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{step}: {source}")]
    Namespace { step: &'static str, source: Errno },
    #[error(transparent)]
    Container(#[from] ContainerError),
}

/// One end of a copy: the host's `/`, or a container's.
pub struct Tree {
    root: OwnedFd,
    /// The container's user namespace (identity for the host and containers without one).
    ids: IdMap,
    is_container: bool,
    /// The roots of a stopped container's volumes, mounted over its rootfs: unmounted first.
    volumes: Vec<OwnedFd>,
    // Unmounted before the lock goes: fields drop in order. (In a mutex, which makes the
    // tree shareable with the thread that packs from it.)
    _mounted: Option<std::sync::Mutex<Box<dyn MountedRootfs>>>,
    _lock: Option<File>,
}

impl Tree {
    /// The host's filesystem, its relative paths taken from the current directory.
    pub fn host() -> Result<Tree, CopyError> {
        let root = open_dir(Path::new("/")).map_err(|source| CopyError::Entry {
            step: "opening",
            label: "/".into(),
            source,
        })?;
        Ok(Tree {
            root,
            ids: IdMap::default(),
            is_container: false,
            volumes: Vec::new(),
            _mounted: None,
            _lock: None,
        })
    }

    /// A container's `/`: a running container's as its PID 1 sees it (volumes and tmpfs
    /// mounts included); a stopped one's mounted here, with its volumes, for the copy's
    /// length. Mounting needs [`private_mounts`] first.
    pub fn container(
        containers: &Containers,
        state: &State,
        provider: &dyn RootfsProvider,
        image: &StoredImage,
    ) -> Result<Tree, CopyError> {
        let ids = state.spec.user_namespace.clone().unwrap_or_default();
        if state.is_running() {
            return Tree::running(state, ids);
        }
        let Some(lock) = containers.try_lock_rootfs(&state.id)? else {
            // A supervisor holds the rootfs: the container is starting, or running by now.
            let now = containers.load(&state.id)?;
            return match now.supervisor {
                _ if now.is_running() => Tree::running(&now, ids),
                Some(sup) => Err(CopyError::Busy { name: now.name, pid: sup.pid }),
                None => Err(CopyError::Busy { name: now.name, pid: 0 }),
            };
        };
        let paths = containers.paths(&state.id);
        let mount_err = |step, source| CopyError::Mount { step, name: state.name.clone(), source };
        let mounted = provider
            .mount(image, &paths.upper, &paths.rootfs)
            .map_err(|e| mount_err("mounting", Box::new(e)))?;
        let root = open_dir(mounted.path()).map_err(|e| mount_err("opening", Box::new(e)))?;
        let rootfs = mounted.path().to_path_buf();
        let mut tree = Tree {
            root,
            ids,
            is_container: true,
            volumes: Vec::new(),
            _mounted: Some(std::sync::Mutex::new(mounted)),
            _lock: Some(lock),
        };
        // A container never started has no volumes yet: they are made as its start makes them.
        super::volumes::fill_for_container(
            &state.spec.volumes,
            &paths.volumes,
            &containers.named_volumes(),
            &rootfs,
        )
        .map_err(|e| mount_err("filling the volumes of", Box::new(e)))?;
        for volume in &state.spec.volumes {
            let fd = mount_volume(tree.root.as_fd(), volume)
                .map_err(|e| mount_err("mounting a volume in", Box::new(e)))?;
            tree.volumes.push(fd);
        }
        Ok(tree)
    }

    fn running(state: &State, ids: IdMap) -> Result<Tree, CopyError> {
        let gone = || ContainerError::NotRunning { id: state.name.clone() };
        let init = state.init.filter(|p| p.is_alive()).ok_or_else(gone)?;
        let root = open_dir(&PathBuf::from(format!("/proc/{}/root", init.pid))).map_err(|_| gone())?;
        // The pid may have ended, and been reused, between the check and the open.
        if !init.is_alive() {
            return Err(gone().into());
        }
        Ok(Tree { root, ids, is_container: true, volumes: Vec::new(), _mounted: None, _lock: None })
    }

    /// The uid and gid `USER[:GROUP]` names in this tree's `/etc/passwd` and `/etc/group`
    /// (numbers as they are); a user alone gives its uid as the gid too, as docker's
    /// `COPY --chown` does.
    pub fn ids_of(&self, spec: &str) -> Result<(u32, u32), CopyError> {
        let user = crate::sandbox::resolve_user(self.root.as_fd(), spec)
            .map_err(|e| CopyError::Owner { spec: spec.to_string(), why: e.to_string() })?;
        Ok(if spec.contains(':') { (user.uid, user.gid) } else { (user.uid, user.uid) })
    }

    /// Whether `path` (a symlink followed) is a directory of this tree.
    pub fn is_dir(&self, path: &Path, label: &str) -> Result<bool, CopyError> {
        Ok(self.node(path, true, label)?.is_dir())
    }

    fn node(&self, path: &Path, follow: bool, label: &str) -> Result<Node, CopyError> {
        let path = normalize(path);
        let missing = |e: PathError| match e {
            PathError::Open { source: Errno::ENOENT, .. } => CopyError::Missing { label: label.into() },
            source => CopyError::Resolve { label: label.into(), source },
        };
        let fd = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) if !follow => {
                let dir = open_in_root(self.root.as_fd(), parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(missing)?;
                open_node(dir.as_fd(), name).map_err(|source| match source {
                    Errno::ENOENT => CopyError::Missing { label: label.into() },
                    source => CopyError::Entry { step: "opening", label: label.into(), source },
                })?
            }
            _ => open_in_root(self.root.as_fd(), &path, OFlag::O_PATH).map_err(missing)?,
        };
        let stat = nix::sys::stat::fstat(&fd).map_err(|source| CopyError::Entry {
            step: "inspecting",
            label: label.into(),
            source,
        })?;
        Ok(Node { fd, stat })
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Last mounted, first unmounted: the rootfs cannot go while volumes sit on it.
        for fd in self.volumes.drain(..).rev() {
            let path = fd_path(&fd);
            if let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(error = %e, "unmounting a volume of the copied container");
            }
        }
    }
}

/// Gives this process a mount namespace of its own, so that what it mounts is seen by no one
/// else and goes when it ends. Called before any thread starts (the kernel refuses otherwise).
///
/// The new namespace starts with a copy of every host mount, and a copy keeps its filesystem
/// alive: another container's lazy root would go on being served, and its supervisor, which
/// waits for its FUSE session to end, would wait for this process. So the copies of skiff's
/// FUSE mounts and of the containers' roots are detached at once, and the rest made slaves of
/// the host's, to go when the host unmounts them (where the host shares its mounts).
pub fn private_mounts(containers: &Containers) -> Result<(), CopyError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|source| CopyError::Namespace { step: "making a mount namespace", source })?;
    let flags = nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE;
    nix::mount::mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(|source| CopyError::Namespace { step: "making / a slave", source })?;
    let others = crate::mountinfo::mounts().into_iter().filter(|m| {
        m.fstype == "fuse.skiff" || (m.point.starts_with(&containers.dir) && m.point != containers.dir)
    });
    // Children first; a child already gone with its parent is no error.
    for mount in others.collect::<Vec<_>>().into_iter().rev() {
        match nix::mount::umount2(&mount.point, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(source) => return Err(CopyError::Namespace { step: "detaching another mount", source }),
        }
    }
    Ok(())
}

/// A path on one side of a copy, and how errors name it (`web:/etc/hosts`).
pub struct Place<'a> {
    pub tree: &'a Tree,
    pub path: &'a Path,
    pub label: String,
}

/// Makes the directories of `path` that `tree` lacks (mode 0755, or `last_mode` for `path`
/// itself; owned by `owner`: ids inside the tree), as a Dockerfile's COPY makes those of its
/// destination; the ones there are left as they are.
pub fn make_dirs(
    tree: &Tree,
    path: &Path,
    label: &str,
    owner: (u32, u32),
    last_mode: Option<u32>,
) -> Result<(), CopyError> {
    let mut at = PathBuf::from("/");
    let path = normalize(path);
    let names: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    for (n, name) in names.iter().copied().enumerate() {
        let mode = if n + 1 == names.len() { last_mode.unwrap_or(0o755) } else { 0o755 };
        let parent = open_in_root(tree.root.as_fd(), &at, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|source| CopyError::Resolve { label: label.into(), source })?;
        at.push(name);
        let made = nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755));
        let entry = |step, source| CopyError::Entry { step, label: at.display().to_string(), source };
        match made {
            Ok(()) => {
                let (uid, gid) = (tree.ids.uid_to_host(owner.0), tree.ids.gid_to_host(owner.1));
                nix::unistd::fchownat(
                    &parent,
                    name,
                    Some(uid.into()),
                    Some(gid.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|source| entry("owning", source))?;
                // mkdir honours the umask; the directory gets its mode whatever it is.
                nix::sys::stat::fchmodat(
                    &parent,
                    name,
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )
                .map_err(|source| entry("setting the mode of", source))?;
            }
            Err(Errno::EEXIST) => {}
            Err(source) => return Err(entry("making", source)),
        }
    }
    Ok(())
}

/// `cp`'s flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// `-a`: keep the source's owners (else the destination's user owns everything).
    pub archive: bool,
    /// `-L`: copy what a symlink at the source names, not the link.
    pub follow_link: bool,
    /// The ids (inside the destination container) that own everything copied, whatever the
    /// source's (a Dockerfile's `COPY --chown`).
    pub owner: Option<(u32, u32)>,
    /// The permission bits of every file and directory copied, whatever the source's (a
    /// Dockerfile's `COPY --chmod`).
    pub mode: Option<u32>,
}

/// Copies `src` to `dest` with docker cp's rules: a file onto a directory goes into it; a
/// directory goes into an existing directory (its contents alone when `src` ends in `/.`),
/// or becomes `dest` when that does not exist. Returns the bytes of file data copied.
pub fn copy(src: &Place<'_>, dest: &Place<'_>, options: CopyOptions) -> Result<u64, CopyError> {
    let node = src.tree.node(src.path, options.follow_link, &src.label)?;
    let src_is_dir = node.is_dir();
    let target = match dest.tree.node(dest.path, true, &dest.label) {
        Ok(d) if d.is_dir() => {
            let contents_only = src_is_dir && ends_with_dot(src.path);
            let name = if contents_only { None } else { Some(base_name(src.path)) };
            Target { dir: d.fd, name }
        }
        Ok(_) if src_is_dir => {
            return Err(CopyError::DirectoryOntoFile {
                source_label: src.label.clone(),
                label: dest.label.clone(),
            })
        }
        Err(CopyError::Missing { .. }) if ends_with_slash(dest.path) => {
            return Err(CopyError::NoDirectory { label: dest.label.clone() })
        }
        Ok(_) | Err(CopyError::Missing { .. }) => {
            let path = normalize(dest.path);
            let parent = path.parent().unwrap_or(Path::new("/"));
            let dir = match dest.tree.node(parent, true, &dest.label) {
                Ok(dir) if dir.is_dir() => dir,
                Ok(_) | Err(CopyError::Missing { .. }) => {
                    return Err(CopyError::NoParent { label: dest.label.clone() })
                }
                Err(e) => return Err(e),
            };
            Target { dir: dir.fd, name: Some(path.file_name().unwrap_or(OsStr::new(".")).to_os_string()) }
        }
        Err(e) => return Err(e),
    };
    let dir = reopen(&target.dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(|source| CopyError::Entry { step: "opening", label: dest.label.clone(), source })?;
    if dest.tree.is_container && src_is_dir {
        // Refused before anything is written, rather than halfway through.
        if let Some(path) = reserved_name(&node, Path::new(""))? {
            let path = Path::new(target.name.as_deref().unwrap_or_default()).join(path);
            return Err(CopyError::Unpack(UnpackError::Reserved { layer: dest.label.clone(), path }));
        }
    }
    let (reader, writer) = nix::unistd::pipe().map_err(|source| CopyError::Entry {
        step: "making a pipe for",
        label: src.label.clone(),
        source,
    })?;
    let owner = dest_owner(dest.tree, options);
    std::thread::scope(|scope| {
        let packing = scope.spawn(move || {
            let mut out = io::BufWriter::with_capacity(256 << 10, File::from(writer));
            pack(src, node, target.name.as_deref(), options.mode, &mut out)?;
            out.flush().map_err(|source| CopyError::Archive { label: src.label.clone(), source })
        });
        let unpacked =
            unpack_archive(dir.as_fd(), &dest.label, &mut File::from(reader), owner, whiteouts(dest.tree))
                .map_err(CopyError::Unpack);
        let packed = packing.join().expect("the packing thread panicked");
        // A failed unpack closes the pipe, and the packer then fails too: the unpack's error
        // is the one that says why.
        let stats = unpacked?;
        packed?;
        Ok(stats.bytes)
    })
}

/// Writes `src` as a tar stream, its top entry named as `src` is, with the owners it has
/// inside its tree (docker cp's `-` destination).
pub fn archive(src: &Place<'_>, options: CopyOptions, out: &mut dyn Write) -> Result<(), CopyError> {
    let node = src.tree.node(src.path, options.follow_link, &src.label)?;
    let name = base_name(src.path);
    let mut out = io::BufWriter::with_capacity(256 << 10, out);
    pack(src, node, Some(&name), options.mode, &mut out)?;
    out.flush().map_err(|source| CopyError::Archive { label: src.label.clone(), source })
}

/// Writes a container's whole filesystem as a tar stream, as docker export does: its image
/// and its changes, without what is mounted in it (volumes, `/proc`, `/dev`, `/sys`).
pub fn export(tree: &Tree, label: &str, out: &mut dyn Write) -> Result<(), CopyError> {
    let root = Place { tree, path: Path::new("/"), label: label.to_string() };
    let node = tree.node(root.path, false, label)?;
    let mut out = io::BufWriter::with_capacity(256 << 10, out);
    let mut packer = Packer {
        src: &root,
        builder: tar::Builder::new(&mut out),
        links: HashMap::new(),
        device: Some(node.stat.st_dev),
        mode: None,
    };
    packer.children(&node, Path::new(""))?;
    packer.builder.finish().map_err(|source| CopyError::Archive { label: label.to_string(), source })?;
    drop(packer);
    out.flush().map_err(|source| CopyError::Archive { label: label.to_string(), source })
}

/// Unpacks the tar stream `tar` into the directory `dest` (docker cp's `-` source).
pub fn unarchive(dest: &Place<'_>, options: CopyOptions, tar: &mut dyn Read) -> Result<u64, CopyError> {
    let node = dest.tree.node(dest.path, true, &dest.label)?;
    if !node.is_dir() {
        return Err(CopyError::NotDirectory { label: dest.label.clone() });
    }
    let dir = reopen(&node.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|source| CopyError::Entry {
        step: "opening",
        label: dest.label.clone(),
        source,
    })?;
    let stats =
        unpack_archive(dir.as_fd(), &dest.label, tar, dest_owner(dest.tree, options), whiteouts(dest.tree))
            .map_err(CopyError::Unpack)?;
    Ok(stats.bytes)
}

/// Who owns what a copy makes in `tree`: its user (a container's root, or whoever runs skiff
/// on the host), or with `-a` the source's owners.
fn dest_owner(tree: &Tree, options: CopyOptions) -> Owner<'_> {
    if let Some((uid, gid)) = options.owner {
        return Owner::Fixed(tree.ids.uid_to_host(uid), tree.ids.gid_to_host(gid));
    }
    match (options.archive, tree.is_container) {
        (true, true) => Owner::Mapped(&tree.ids),
        (true, false) => Owner::Kept,
        (false, true) => Owner::Fixed(tree.ids.uid_to_host(0), tree.ids.gid_to_host(0)),
        (false, false) => Owner::Fixed(nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
    }
}

fn whiteouts(tree: &Tree) -> Whiteouts {
    if tree.is_container {
        Whiteouts::Refuse
    } else {
        Whiteouts::Keep
    }
}

/// Where a copy lands: a directory, and the name the source's top entry takes in it (none:
/// the source directory's contents go straight in).
struct Target {
    dir: OwnedFd,
    name: Option<OsString>,
}

/// A file of any kind, opened as an `O_PATH` descriptor of itself (a symlink is not followed).
struct Node {
    fd: OwnedFd,
    stat: FileStat,
}

impl Node {
    fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode) & SFlag::S_IFMT
    }

    fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR
    }
}

/// Writes the tree at `node` into `out` as a tar stream. Its top entry is named `name`; with no
/// name, only what a directory holds is written, its entries at the top. Owners are written as
/// the source's tree sees them (a container's ids, not the host's they map to); the modes of
/// files and directories as they are, or `mode`.
fn pack(
    src: &Place<'_>,
    node: Node,
    name: Option<&OsStr>,
    mode: Option<u32>,
    out: &mut dyn Write,
) -> Result<(), CopyError> {
    let mut packer =
        Packer { src, builder: tar::Builder::new(out), links: HashMap::new(), device: None, mode };
    match name {
        Some(name) => packer.entry(node, Path::new(name))?,
        None => packer.children(&node, Path::new(""))?,
    }
    packer.builder.finish().map_err(|source| CopyError::Archive { label: src.label.clone(), source })
}

struct Packer<'a, 'b> {
    src: &'a Place<'a>,
    builder: tar::Builder<&'b mut dyn Write>,
    /// Files with more than one link, by device and inode: the first one's archive path.
    links: HashMap<(u64, u64), PathBuf>,
    /// Only this filesystem's contents: what is mounted on it (`/proc`, a volume, a bound
    /// `/etc/hosts`) is written as the empty directory or file it is mounted on.
    device: Option<u64>,
    /// The permission bits written for every file and directory, instead of their own.
    mode: Option<u32>,
}

impl Packer<'_, '_> {
    fn label(&self, path: &Path) -> String {
        if path.as_os_str().is_empty() {
            return self.src.label.clone();
        }
        format!("{}/{}", self.src.label.trim_end_matches('/'), path.display())
    }

    fn archive_err(&self, path: &Path) -> impl Fn(io::Error) -> CopyError {
        let label = self.label(path);
        move |source| CopyError::Archive { label: label.clone(), source }
    }

    fn entry(&mut self, node: Node, path: &Path) -> Result<(), CopyError> {
        let st = &node.stat;
        let ids = &self.src.tree.ids;
        let mut header = tar::Header::new_gnu();
        let own_mode = st.st_mode & 0o7777;
        let mode = self.mode.filter(|_| matches!(node.kind(), SFlag::S_IFDIR | SFlag::S_IFREG));
        header.set_mode(mode.unwrap_or(own_mode));
        header.set_uid(u64::from(ids.uid_from_host(st.st_uid)));
        header.set_gid(u64::from(ids.gid_from_host(st.st_gid)));
        header.set_mtime(st.st_mtime.max(0) as u64);
        header.set_size(0);
        let label = self.label(path);
        let entry_err = |step, source| CopyError::Entry { step, label: label.clone(), source };
        let mounted = self.device.is_some_and(|dev| dev != st.st_dev);
        if mounted && matches!(node.kind(), SFlag::S_IFDIR | SFlag::S_IFREG) {
            let kind = if node.is_dir() { tar::EntryType::Directory } else { tar::EntryType::Regular };
            header.set_entry_type(kind);
            return self.builder.append_data(&mut header, path, io::empty()).map_err(self.archive_err(path));
        }
        match node.kind() {
            SFlag::S_IFDIR => {
                header.set_entry_type(tar::EntryType::Directory);
                self.builder.append_data(&mut header, path, io::empty()).map_err(self.archive_err(path))?;
                self.children(&node, path)
            }
            SFlag::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key).cloned() {
                        header.set_entry_type(tar::EntryType::Link);
                        return self
                            .builder
                            .append_link(&mut header, path, first)
                            .map_err(self.archive_err(path));
                    }
                    self.links.insert(key, path.to_path_buf());
                }
                let file =
                    File::from(reopen(&node.fd, OFlag::O_RDONLY).map_err(|e| entry_err("opening", e))?);
                // The size the header says, whatever the file does meanwhile: short reads are
                // padded with zeros, so the archive stays whole.
                let size = st.st_size as u64;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let data = ReadLabelled { inner: file.take(size), label: label.clone() }
                    .chain(io::repeat(0))
                    .take(size);
                self.builder.append_data(&mut header, path, data).map_err(self.archive_err(path))
            }
            SFlag::S_IFLNK => {
                let target =
                    nix::fcntl::readlinkat(&node.fd, "").map_err(|e| entry_err("reading the link", e))?;
                header.set_entry_type(tar::EntryType::Symlink);
                // As it is: the header's own field when it fits (tar's path cleaning would
                // write a link to `/` as `//`), else a GNU long-link record.
                if target.len() < 100 {
                    header.set_link_name_literal(target.as_bytes()).map_err(self.archive_err(path))?;
                    return self
                        .builder
                        .append_data(&mut header, path, io::empty())
                        .map_err(self.archive_err(path));
                }
                self.builder.append_link(&mut header, path, target).map_err(self.archive_err(path))
            }
            kind @ (SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO) => {
                let entry_type = match kind {
                    SFlag::S_IFCHR => tar::EntryType::Char,
                    SFlag::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                };
                header.set_entry_type(entry_type);
                let (major, minor) = (nix::sys::stat::major(st.st_rdev), nix::sys::stat::minor(st.st_rdev));
                header.set_device_major(major as u32).map_err(self.archive_err(path))?;
                header.set_device_minor(minor as u32).map_err(self.archive_err(path))?;
                self.builder.append_data(&mut header, path, io::empty()).map_err(self.archive_err(path))
            }
            _ => {
                tracing::warn!(path = %self.label(path), "not copied: a socket has no place in an archive");
                Ok(())
            }
        }
    }

    /// Every entry of the directory `dir`, in name order, archived under `path`.
    fn children(&mut self, dir: &Node, path: &Path) -> Result<(), CopyError> {
        let entry_err = |step, source| CopyError::Entry { step, label: self.label(path), source };
        let listing =
            reopen(&dir.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| entry_err("opening", e))?;
        let mut names: Vec<OsString> = std::fs::read_dir(fd_path(&listing))
            .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(|source| CopyError::Read { label: self.label(path), source })?;
        names.sort();
        for name in names {
            let child = path.join(&name);
            let fd = match open_node(listing.as_fd(), &name) {
                Ok(fd) => fd,
                // Removed since the listing: the copy is of what is there.
                Err(Errno::ENOENT) => continue,
                Err(source) => {
                    return Err(CopyError::Entry { step: "opening", label: self.label(&child), source })
                }
            };
            let stat = nix::sys::stat::fstat(&fd).map_err(|source| CopyError::Entry {
                step: "inspecting",
                label: self.label(&child),
                source,
            })?;
            self.entry(Node { fd, stat }, &child)?;
        }
        Ok(())
    }
}

/// The first name under the directory `dir` that begins with `.wh.`, which no container's layer
/// can hold.
fn reserved_name(dir: &Node, path: &Path) -> Result<Option<PathBuf>, CopyError> {
    let entry_err = |step, source| CopyError::Entry { step, label: path.display().to_string(), source };
    let listing =
        reopen(&dir.fd, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| entry_err("opening", e))?;
    let names = std::fs::read_dir(fd_path(&listing))
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
        .map_err(|source| CopyError::Read { label: path.display().to_string(), source })?;
    for name in names {
        if name.as_bytes().starts_with(b".wh.") {
            return Ok(Some(path.join(name)));
        }
        let Ok(fd) = open_node(listing.as_fd(), &name) else { continue };
        let stat = nix::sys::stat::fstat(&fd).map_err(|e| entry_err("inspecting", e))?;
        let child = Node { fd, stat };
        if child.is_dir() {
            if let Some(found) = reserved_name(&child, &path.join(&name))? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// A reader whose errors name the file they come from.
struct ReadLabelled<R> {
    inner: R,
    label: String,
}

impl<R: Read> Read for ReadLabelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", self.label)))
    }
}

/// `name` in `dir`, opened as itself: an `O_PATH` descriptor that follows no symlink.
fn open_node(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

/// The file an `O_PATH` descriptor names, opened again for I/O: through its `/proc/self/fd`
/// link, which leads to that very file, not to whatever its path names now.
fn reopen(fd: &OwnedFd, flags: OFlag) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(&fd_path(fd), flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, Mode::empty())
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
}

/// The name a copied file or directory takes: the last name of its path (`/` gives `.`).
fn base_name(path: &Path) -> OsString {
    normalize(path).file_name().unwrap_or(OsStr::new(".")).to_os_string()
}

/// `dir/.`: docker cp's way of saying "what the directory holds".
fn ends_with_dot(path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    bytes == b"." || bytes.ends_with(b"/.")
}

fn ends_with_slash(path: &Path) -> bool {
    path.as_os_str().as_bytes().ends_with(b"/")
}
