//! Volumes filled from a rootfs built in a temp directory.

use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};

use super::*;

fn volume(host: &Path, container: &str) -> Volume {
    Volume { host: host.to_path_buf(), container: container.into(), read_only: false }
}

#[test]
fn declared_paths_get_one_volume_each_unless_a_flag_mounts_them() {
    let dir = Path::new("/c/volumes");
    let declared: Vec<String> = ["/var/lib/db/", "logs", "/given", "/var/lib/db", "/tmp/t", "/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let given = [Volume { host: "/h".into(), container: "/given/.".into(), read_only: true }];
    let tmpfs = [TmpfsMount { path: "/tmp/t".into(), options: String::new() }];
    let made = anonymous(&declared, &given, &tmpfs, dir);
    assert_eq!(made, vec![volume(&dir.join("0"), "/logs"), volume(&dir.join("1"), "/var/lib/db")]);
}

#[test]
fn a_volume_is_filled_with_the_image_tree_as_it_is() {
    let rootfs = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let r = rootfs.path();
    std::fs::create_dir_all(r.join("srv/data/sub")).unwrap();
    std::fs::write(r.join("srv/data/sub/file"), b"contents").unwrap();
    std::fs::set_permissions(r.join("srv/data/sub/file"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    std::fs::hard_link(r.join("srv/data/sub/file"), r.join("srv/data/again")).unwrap();
    symlink("/etc/passwd", r.join("srv/data/abs")).unwrap();
    nix::unistd::mkfifo(&r.join("srv/data/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    std::fs::set_permissions(r.join("srv/data"), std::fs::Permissions::from_mode(0o1770)).unwrap();
    let old = TimeSpec::new(1_500_000_000, 0);
    stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &r.join("srv/data/sub"),
        &old,
        &old,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    // The declared path reaches the tree through an absolute symlink, resolved in the rootfs.
    symlink("/srv/data", r.join("data")).unwrap();

    let dir = outside.path().join("volumes");
    let volumes = anonymous(&["/data".to_string(), "/missing".to_string()], &[], &[], &dir);
    fill_missing(&volumes, &dir, r).unwrap();

    let v = dir.join("0");
    assert_eq!(std::fs::read(v.join("sub/file")).unwrap(), b"contents");
    assert_eq!(std::fs::metadata(v.join("sub/file")).unwrap().mode() & 0o7777, 0o4750);
    assert_eq!(std::fs::metadata(&v).unwrap().mode() & 0o7777, 0o1770);
    assert_eq!(std::fs::metadata(v.join("sub")).unwrap().mtime(), 1_500_000_000);
    assert_eq!(
        std::fs::metadata(v.join("again")).unwrap().ino(),
        std::fs::metadata(v.join("sub/file")).unwrap().ino()
    );
    assert_eq!(std::fs::read_link(v.join("abs")).unwrap(), Path::new("/etc/passwd"));
    assert!(std::fs::symlink_metadata(v.join("fifo")).unwrap().file_type().is_fifo());
    let missing = std::fs::metadata(dir.join("1")).unwrap();
    assert!(missing.is_dir() && missing.mode() & 0o7777 == 0o755);
    assert_eq!(std::fs::read_dir(dir.join("1")).unwrap().count(), 0);
    assert_eq!(
        crate::container::unpack::list(open_dir(None, dir.as_os_str()).unwrap().as_fd()).unwrap().len(),
        2
    );

    // A volume that exists keeps what the container wrote to it.
    std::fs::write(v.join("written"), b"kept").unwrap();
    std::fs::remove_file(r.join("srv/data/again")).unwrap();
    fill_missing(&volumes, &dir, r).unwrap();
    assert_eq!(std::fs::read(v.join("written")).unwrap(), b"kept");
    assert!(v.join("again").exists());
}

#[test]
fn a_file_where_the_image_declares_a_volume_is_an_error_and_leaves_nothing() {
    let rootfs = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(rootfs.path().join("conf"), b"a file").unwrap();
    let dir = outside.path().join("volumes");
    let volumes = anonymous(&["/conf".to_string()], &[], &[], &dir);
    let err = fill_missing(&volumes, &dir, rootfs.path()).unwrap_err();
    assert!(matches!(err, VolumeError::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("/conf"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn a_leftover_half_filled_volume_is_replaced() {
    let rootfs = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("data")).unwrap();
    std::fs::write(rootfs.path().join("data/seed"), b"seed").unwrap();
    let dir = outside.path().join("volumes");
    std::fs::create_dir_all(dir.join(".0.new/partial")).unwrap();
    let volumes = anonymous(&["/data".to_string()], &[], &[], &dir);
    fill_missing(&volumes, &dir, rootfs.path()).unwrap();
    assert_eq!(
        crate::container::unpack::list(open_dir(None, dir.join("0").as_os_str()).unwrap().as_fd()).unwrap(),
        vec![std::ffi::OsString::from("seed")]
    );
    assert!(!dir.join(".0.new").exists());
}
