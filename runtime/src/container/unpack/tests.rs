//! Layers built in memory, applied to a temp directory.

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use tar::{EntryType, Header};

use super::*;

struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn add(&mut self, kind: EntryType, path: &str, mode: u32, data: &[u8], link: Option<&str>) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match link {
            Some(target) => self.0.append_link(&mut h, path, target).unwrap(),
            None => self.0.append_data(&mut h, path, data).unwrap(),
        }
        self
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.add(EntryType::Directory, path, 0o755, b"", None)
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.add(EntryType::Regular, path, 0o644, data, None)
    }

    fn apply(&mut self, root: &Path) {
        self.apply_leaving_out(root, &[]);
    }

    fn apply_leaving_out(&mut self, root: &Path, leave_out: &[&str]) {
        let bytes = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new())).into_inner().unwrap();
        let fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        apply_layer(fd.as_fd(), "test layer", &mut bytes.as_slice(), leave_out).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

#[test]
fn whiteouts_delete_lower_entries_and_opaque_dirs_keep_only_this_layers() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    Layer::new()
        .dir("d")
        .file("d/gone", b"1")
        .dir("d/gone-dir")
        .file("d/gone-dir/inner", b"2")
        .dir("o")
        .file("o/lower", b"3")
        .file("keep", b"4")
        .apply(r);
    Layer::new()
        .file("d/.wh.gone", b"")
        .file("d/.wh.gone-dir", b"")
        .dir("o")
        .file("o/same-layer-before", b"5")
        .file("o/.wh..wh..opq", b"")
        .file("o/same-layer-after", b"6")
        .apply(r);
    assert!(names(&r.join("d")).is_empty());
    assert_eq!(names(&r.join("o")), ["same-layer-after", "same-layer-before"]);
    assert_eq!(names(r), ["d", "keep", "o"]);
}

#[test]
fn entries_replace_each_other_and_keep_their_metadata() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    Layer::new()
        .dir("x")
        .file("x/child", b"c")
        .add(EntryType::Regular, "suid", 0o4755, b"#!", None)
        .file("target", b"linked")
        .add(EntryType::Link, "hard", 0o644, b"", Some("target"))
        .add(EntryType::Symlink, "sym", 0o777, b"", Some("/target"))
        .add(EntryType::Fifo, "fifo", 0o600, b"", None)
        .apply(r);
    // A file over a directory, a directory over a file.
    Layer::new().file("x", b"now a file").dir("suid").apply(r);
    assert_eq!(std::fs::read(r.join("x")).unwrap(), b"now a file");
    assert!(r.join("suid").is_dir());
    let target = std::fs::metadata(r.join("target")).unwrap();
    assert_eq!((target.nlink(), target.ino()), (2, std::fs::metadata(r.join("hard")).unwrap().ino()));
    assert_eq!(std::fs::read_link(r.join("sym")).unwrap(), Path::new("/target"));
    assert!(std::fs::symlink_metadata(r.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(target.mtime(), 1_600_000_000);
}

#[test]
fn setuid_survives_and_parents_are_created() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    Layer::new().add(EntryType::Regular, "a/b/c/suid", 0o4755, b"x", None).apply(r);
    let mode = std::fs::metadata(r.join("a/b/c/suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(r.join("a/b")).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn symlinks_and_dotdot_cannot_lead_outside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().to_str().unwrap();
    let climb = "../".repeat(10);
    let mut layer = Layer::new();
    layer.add(EntryType::Symlink, "abs", 0o777, b"", Some(o));
    layer.file("abs/through", b"x");
    layer.add(EntryType::Symlink, "rel", 0o777, b"", Some(&format!("{climb}{}", o.trim_start_matches('/'))));
    layer.file("rel/through-rel", b"y");
    // A whiteout through a symlink must not delete the host's file either.
    std::fs::write(outside.path().join("victim"), b"v").unwrap();
    layer.file("abs/.wh.victim", b"");
    layer.apply(root.path());
    assert_eq!(names(outside.path()), ["victim"]);
    let inside = root.path().join(o.trim_start_matches('/'));
    assert_eq!(names(&inside), ["through", "through-rel"]);
}

#[test]
fn an_estargz_layers_toc_and_landmark_are_left_out_at_the_top_only() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    Layer::new()
        .file(".prefetch.landmark", b"\x0f")
        .dir("etc")
        .file("etc/stargz.index.json", b"an image's own file")
        .file("stargz.index.json", b"{}")
        .apply_leaving_out(r, &skiff_fs::estargz::RESERVED_NAMES);
    assert_eq!(names(r), ["etc"]);
    assert_eq!(names(&r.join("etc")), ["stargz.index.json"]);
}

#[test]
fn a_copied_archive_keeps_wh_names_as_files_or_refuses_them_and_sets_its_owner() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("x"), "kept").unwrap();
    let mut archive = Layer::new();
    archive.file(".wh.x", b"a file").file(".wh..wh..opq", b"also");
    let bytes = std::mem::replace(&mut archive.0, tar::Builder::new(Vec::new())).into_inner().unwrap();
    let fd = nix::fcntl::open(r, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let unpack =
        |whiteouts, owner| unpack_archive(fd.as_fd(), "archive", &mut bytes.as_slice(), owner, whiteouts);
    unpack(Whiteouts::Keep, Owner::Fixed(1000, 1001)).unwrap();
    assert_eq!(names(r), [".wh..wh..opq", ".wh.x", "x"]);
    let meta = std::fs::metadata(r.join(".wh.x")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    let ids = IdMap::shifted(100_000, 65536);
    unpack(Whiteouts::Keep, Owner::Mapped(&ids)).unwrap();
    assert_eq!(std::fs::metadata(r.join(".wh.x")).unwrap().uid(), 100_000);
    let refused = unpack(Whiteouts::Refuse, Owner::Kept).unwrap_err();
    assert!(matches!(refused, UnpackError::Reserved { .. }), "{refused}");
    assert!(refused.to_string().starts_with("archive: .wh.x: a name beginning with .wh."), "{refused}");
}
