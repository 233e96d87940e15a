//! The union mount through the `skiff` binary: a real FUSE mount of the fixture images, with
//! every operation a container needs, checked through the mount and in the upper dir.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use skiff_tests::cli::Skiff;
use skiff_tests::mount::{names, Mount};
use skiff_tests::{fixtures, temp_dir};

#[test]
fn lower_layers_merge_with_whiteouts_opaque_dirs_links_and_metadata() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.hard_ref) else { return };
    // Whiteouts and opaque directories of the second layer apply to the first.
    assert_eq!(
        names(&m.p("fixture"))
            .iter()
            .filter(|n| n.starts_with("deleted") || *n == "opaque")
            .collect::<Vec<_>>(),
        ["opaque"]
    );
    assert_eq!(names(&m.p("fixture/opaque")), ["visible"]);
    assert!(!m.p("fixture/deleted-file").exists());
    // Content, modes, owners, links, devices, xattrs.
    assert_eq!(fs::read(m.p("fixture/big.bin")).unwrap(), fixtures::noise(fixtures::BIG_FILE_SIZE, 7));
    let big = fs::metadata(m.p("fixture/big.bin")).unwrap();
    let hard = fs::metadata(m.p("fixture/big-hardlink")).unwrap();
    assert_eq!((big.ino(), big.nlink()), (hard.ino(), 2), "hardlinks share an inode");
    assert_eq!(fs::metadata(m.p("fixture/setuid")).unwrap().permissions().mode() & 0o7777, 0o4755);
    let x = fs::metadata(m.p("fixture/xattrs")).unwrap();
    assert_eq!((x.uid(), x.gid(), x.mode() & 0o777), (1000, 1000, 0o640));
    assert_eq!(xattr::get(m.p("fixture/xattrs"), "user.skiff").unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(fs::read_link(m.p("fixture/absolute-link")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::symlink_metadata(m.p("fixture/absolute-link")).unwrap().len(), 11, "a symlink's size");
    let null = fs::symlink_metadata(m.p("fixture/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc_makedev(1, 3));
    assert!(fs::symlink_metadata(m.p("fixture/fifo")).unwrap().file_type().is_fifo());
    assert_eq!(fs::read_to_string(m.p(fixtures::UNICODE_NAME)).unwrap(), "ünïcødé\n");
    assert!(m.p(&format!("{}/{}", fixtures::LONG_NAME_DIR, "f".repeat(120))).exists());
    assert_eq!(fs::metadata(m.p("fixture/empty")).unwrap().len(), 0);
    // Inodes are stable.
    assert_eq!(fs::metadata(m.p("fixture/big.bin")).unwrap().ino(), big.ino());
    // busybox runs from the mount.
    let out = Command::new(m.p("bin/busybox")).arg("echo").arg("from the mount").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the mount\n");
    // Nothing was written to the upper.
    assert!(names(&m.upper).is_empty(), "{:?}", names(&m.upper));
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

#[test]
fn writes_copy_up_and_deletions_leave_overlayfs_whiteouts() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.hard_ref) else { return };

    // Append to a lower file: copied up whole, with its metadata; the lower is untouched.
    use std::io::Write;
    let mut file = fs::OpenOptions::new().append(true).open(m.p("etc/passwd")).unwrap();
    file.write_all(b"extra:x:1:1::/:/bin/sh\n").unwrap();
    drop(file);
    let merged = fs::read_to_string(m.p("etc/passwd")).unwrap();
    assert!(merged.starts_with("root:x:0:0") && merged.ends_with("extra:x:1:1::/:/bin/sh\n"));
    assert_eq!(fs::read_to_string(m.upper.join("etc/passwd")).unwrap(), merged);
    assert_eq!(fs::metadata(m.upper.join("etc/passwd")).unwrap().mode() & 0o7777, 0o644);

    // chmod/chown/truncate/utimens of a lower file.
    fs::set_permissions(m.p("fixture/setuid"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(fs::metadata(m.upper.join("fixture/setuid")).unwrap().mode() & 0o7777, 0o700);
    std::os::unix::fs::chown(m.p("fixture/empty"), Some(42), Some(43)).unwrap();
    let e = fs::metadata(m.p("fixture/empty")).unwrap();
    assert_eq!((e.uid(), e.gid()), (42, 43));
    fs::OpenOptions::new().write(true).open(m.p("fixture/big.bin")).unwrap().set_len(10).unwrap();
    assert_eq!(fs::read(m.p("fixture/big.bin")).unwrap(), fixtures::noise(fixtures::BIG_FILE_SIZE, 7)[..10]);

    // Delete a lower file and a lower directory: whiteouts as 0/0 character devices.
    fs::remove_file(m.p("fixture/relative-link")).unwrap();
    fs::remove_dir_all(m.p(fixtures::LONG_NAME_DIR)).unwrap();
    for gone in ["fixture/relative-link", fixtures::LONG_NAME_DIR] {
        assert!(!m.p(gone).exists());
        let w = fs::symlink_metadata(m.upper.join(gone)).unwrap();
        assert!(w.file_type().is_char_device() && w.rdev() == 0, "{gone} is a whiteout");
    }
    // Recreating a deleted directory makes it opaque.
    fs::create_dir(m.p(fixtures::LONG_NAME_DIR)).unwrap();
    assert!(names(&m.p(fixtures::LONG_NAME_DIR)).is_empty());
    assert_eq!(
        xattr::get(m.upper.join(fixtures::LONG_NAME_DIR), "trusted.overlay.opaque").unwrap().as_deref(),
        Some(&b"y"[..])
    );
    // New files, dirs, symlinks, hardlinks, fifos, xattrs.
    fs::create_dir_all(m.p("new/dir")).unwrap();
    fs::write(m.p("new/dir/file"), b"new").unwrap();
    std::os::unix::fs::symlink("file", m.p("new/dir/link")).unwrap();
    fs::hard_link(m.p("new/dir/file"), m.p("new/dir/hard")).unwrap();
    assert_eq!(
        fs::metadata(m.p("new/dir/hard")).unwrap().ino(),
        fs::metadata(m.p("new/dir/file")).unwrap().ino()
    );
    assert_eq!(fs::metadata(m.p("new/dir/file")).unwrap().nlink(), 2);
    xattr::set(m.p("new/dir/file"), "user.k", b"v").unwrap();
    assert_eq!(
        xattr::list(m.p("new/dir/file")).unwrap().map(|n| n.into_string().unwrap()).collect::<Vec<_>>(),
        ["user.k"]
    );
    let mkfifo = Command::new(m.p("bin/busybox")).args(["mkfifo"]).arg(m.p("new/fifo")).status().unwrap();
    assert!(mkfifo.success());
    assert!(fs::symlink_metadata(m.upper.join("new/fifo")).unwrap().file_type().is_fifo());
    // A unix socket bound in the mount (postgres does this) is a socket, and connects.
    let listener = std::os::unix::net::UnixListener::bind(m.p("new/socket")).unwrap();
    assert!(fs::symlink_metadata(m.p("new/socket")).unwrap().file_type().is_socket());
    std::os::unix::net::UnixStream::connect(m.p("new/socket")).unwrap();
    listener.accept().unwrap();
    // Hardlink to a lower file.
    fs::hard_link(m.p("etc/group"), m.p("new/group-link")).unwrap();
    assert_eq!(fs::read(m.p("new/group-link")).unwrap(), fs::read(m.p("etc/group")).unwrap());
}

#[test]
fn renames_of_lower_files_and_directories() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.hard_ref) else { return };
    let busybox = fs::read(m.p("bin/busybox")).unwrap();
    // A lower file.
    fs::rename(m.p("etc/group"), m.p("etc/group.moved")).unwrap();
    assert!(!m.p("etc/group").exists());
    assert!(fs::read_to_string(m.p("etc/group.moved")).unwrap().starts_with("root:x:0:"));
    // A lower directory, across the tree: moved whole.
    fs::rename(m.p("bin"), m.p("usr/bin2")).unwrap();
    assert!(!m.p("bin").exists());
    assert_eq!(fs::read(m.p("usr/bin2/busybox")).unwrap(), busybox);
    assert_eq!(fs::read_link(m.p("usr/bin2/sh")).unwrap(), Path::new("busybox"));
    // Replacing an existing file.
    fs::write(m.p("a"), b"a").unwrap();
    fs::rename(m.p("a"), m.p("etc/passwd")).unwrap();
    assert_eq!(fs::read(m.p("etc/passwd")).unwrap(), b"a");
    // And back: a directory renamed onto a name a lower layer had.
    fs::rename(m.p("usr/bin2"), m.p("bin")).unwrap();
    assert!(names(&m.p("bin")).contains(&"busybox".to_string()));
    assert!(m.p("bin/busybox").exists() && !m.p("usr/bin2").exists());
    // Deep trees stay right when the directories above them move, go, or come back (the union
    // keeps where directories resolve to).
    fs::create_dir_all(m.p("usr/deep/a/b")).unwrap();
    fs::write(m.p("usr/deep/a/b/f"), b"1").unwrap();
    fs::rename(m.p("usr/deep/a"), m.p("usr/deep/moved")).unwrap();
    assert!(!m.p("usr/deep/a/b/f").exists());
    fs::write(m.p("usr/deep/moved/b/g"), b"2").unwrap();
    assert_eq!(names(&m.p("usr/deep/moved/b")), ["f", "g"]);
    fs::create_dir_all(m.p("usr/deep/a/b")).unwrap();
    assert!(names(&m.p("usr/deep/a/b")).is_empty());
    assert_eq!(fs::read(m.p("usr/deep/moved/b/f")).unwrap(), b"1");
    fs::remove_dir_all(m.p("usr/deep")).unwrap();
    fs::create_dir_all(m.p("usr/deep/moved/b")).unwrap();
    assert!(names(&m.p("usr/deep/moved/b")).is_empty());
    // A non-empty directory cannot replace another.
    assert!(fs::rename(m.p("fixture"), m.p("bin")).is_err());
}

#[test]
fn two_mounts_of_one_image_do_not_see_each_others_changes() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(a) = Mount::new(&dir.path().join("a"), &f.busybox_ref) else { return };
    let Some(b) = Mount::new(&dir.path().join("b"), &f.busybox_ref) else { return };
    fs::write(a.p("etc/hostname"), b"a\n").unwrap();
    fs::remove_file(a.p("etc/group")).unwrap();
    assert!(!b.p("etc/hostname").exists());
    assert!(b.p("etc/group").exists());
    // A mount point must be empty: mounted over, its files would be hidden.
    let full = dir.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("mine"), b"kept\n").unwrap();
    let out = a.skiff.run(&["mount", "-d", &f.busybox_ref, full.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is not empty"), "{out:?}");
    assert_eq!(fs::read(full.join("mine")).unwrap(), b"kept\n");
}

#[test]
fn diff_commit_push_pull_mount_round_trip_shows_exactly_the_changes() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let upper;
    {
        let Some(m) = Mount::new(&dir.path().join("first"), &f.hard_ref) else { return };
        fs::create_dir(m.p("new")).unwrap();
        fs::write(m.p("new/hello.txt"), b"hello from a commit\n").unwrap();
        let mut passwd = fs::read(m.p("etc/passwd")).unwrap();
        passwd.extend_from_slice(b"added:x:7:7::/:/bin/sh\n");
        fs::write(m.p("etc/passwd"), &passwd).unwrap();
        fs::remove_file(m.p("fixture/empty")).unwrap();
        fs::remove_dir_all(m.p("fixture/opaque")).unwrap();
        upper = m.upper.clone();
    }
    let skiff = Skiff::new(&dir.path().join("first"));
    let upper_arg = upper.to_str().unwrap();
    let diff = skiff.run(&["diff", "--image", &f.hard_ref, upper_arg]);
    let mut lines: Vec<&str> = diff.ok().lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "A /new",
            "A /new/hello.txt",
            "C /etc",
            "C /etc/passwd",
            "C /fixture",
            "D /fixture/empty",
            "D /fixture/opaque"
        ]
    );

    let committed = format!("{}/committed/hard:v2", f.registry.addr);
    skiff.run(&["commit", "--image", &f.hard_ref, "-m", "round trip", upper_arg, &committed]).ok();
    let pushed = skiff.run(&["push", &committed]);
    assert!(pushed.ok().contains("2 blobs uploaded, 2 mounted"), "{}", pushed.stdout);

    let Some(m) = Mount::new(&dir.path().join("second"), &committed) else { return };
    assert_eq!(fs::read_to_string(m.p("new/hello.txt")).unwrap(), "hello from a commit\n");
    assert!(fs::read_to_string(m.p("etc/passwd")).unwrap().ends_with("added:x:7:7::/:/bin/sh\n"));
    assert!(!m.p("fixture/empty").exists() && !m.p("fixture/opaque").exists());
    assert_eq!(fs::read(m.p("fixture/big.bin")).unwrap(), fixtures::noise(fixtures::BIG_FILE_SIZE, 7));
    let inspect: serde_json::Value =
        serde_json::from_str(m.skiff.run(&["inspect", &committed]).ok()).unwrap();
    assert_eq!(inspect[0]["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(inspect[0]["Layers"][2]["Format"], "eStargz");
    assert_eq!(inspect[0]["History"].as_array().unwrap().last().unwrap()["comment"], "round trip");
}

/// `/proc/self/fd/N/name`: `name` inside the open directory `dir`, whatever its full path's
/// length (the tests' own paths stay short).
fn at(dir: &fs::File, name: &str) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

#[test]
fn paths_near_path_max_work_although_the_upper_dir_adds_its_prefix() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.busybox_ref) else { return };
    // 16 levels of 250-byte names and a file: a merged path of 4087 bytes (PATH_MAX is
    // 4096), which with the upper dir's path in front is far past PATH_MAX on the host.
    let names: Vec<String> = (0..16).map(|i| format!("{i:02}{}", "d".repeat(248))).collect();
    let mut cur = fs::File::open(m.p("")).unwrap();
    for name in &names {
        fs::create_dir(at(&cur, name)).unwrap();
        cur = fs::File::open(at(&cur, name)).unwrap();
    }
    let file = "f".repeat(70);
    fs::write(at(&cur, &file), b"deep").unwrap();
    assert_eq!(fs::read(at(&cur, &file)).unwrap(), b"deep");
    fs::set_permissions(at(&cur, &file), fs::Permissions::from_mode(0o600)).unwrap();
    xattr::set(at(&cur, &file), "user.deep", b"yes").unwrap();
    assert_eq!(xattr::get(at(&cur, &file), "user.deep").unwrap().as_deref(), Some(&b"yes"[..]));
    std::os::unix::fs::symlink("target", at(&cur, "link")).unwrap();
    assert_eq!(fs::read_link(at(&cur, "link")).unwrap(), Path::new("target"));
    fs::rename(at(&cur, &file), at(&cur, "g")).unwrap();
    fs::hard_link(at(&cur, "g"), at(&cur, &file)).unwrap();
    assert_eq!(fs::metadata(at(&cur, &file)).unwrap().mode() & 0o777, 0o600);
    let mut listed = names_at(&cur);
    listed.sort();
    assert_eq!(listed, [file.clone(), "g".into(), "link".into()]);

    // The upper holds the same tree.
    let mut up = fs::File::open(&m.upper).unwrap();
    for name in &names {
        up = fs::File::open(at(&up, name)).unwrap();
    }
    assert_eq!(fs::read(at(&up, &file)).unwrap(), b"deep");

    // And it all goes away again.
    for name in [file.as_str(), "g", "link"] {
        fs::remove_file(at(&cur, name)).unwrap();
    }
    drop(cur);
    let mut dirs = vec![fs::File::open(m.p("")).unwrap()];
    for name in &names[..names.len() - 1] {
        let next = fs::File::open(at(dirs.last().unwrap(), name)).unwrap();
        dirs.push(next);
    }
    for (parent, name) in dirs.iter().zip(&names).rev() {
        fs::remove_dir(at(parent, name)).unwrap();
    }
    assert!(!m.p(&names[0]).exists());
}

fn names_at(dir: &fs::File) -> Vec<String> {
    fs::read_dir(at(dir, ".")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

#[test]
fn listings_the_kernel_keeps_follow_every_change_made_through_the_mount() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.hard_ref) else { return };
    let before = names(&m.p("etc"));
    assert_eq!(names(&m.p("etc")), before, "a second listing (from the kernel's cache) is the same");
    fs::write(m.p("etc/added"), b"x").unwrap();
    fs::remove_file(m.p("etc/group")).unwrap();
    let mut want: Vec<String> = before.iter().filter(|n| *n != "group").cloned().collect();
    want.push("added".into());
    want.sort();
    assert_eq!(names(&m.p("etc")), want);
    fs::rename(m.p("etc/added"), m.p("added")).unwrap();
    assert!(!names(&m.p("etc")).contains(&"added".to_string()));
    assert!(names(&m.p("")).contains(&"added".to_string()));
    // A directory is opened and read many times while it is changed.
    for i in 0..50 {
        fs::write(m.p(&format!("fixture/n{i}")), b"").unwrap();
        assert!(names(&m.p("fixture")).contains(&format!("n{i}")));
    }
}

#[test]
fn upper_files_read_and_write_alike_through_every_open() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.hard_ref) else { return };
    // A lower file held open for reading while another open copies it up and writes.
    let mut lower = fs::File::open(m.p("etc/passwd")).unwrap();
    let mut writer = fs::OpenOptions::new().read(true).write(true).open(m.p("etc/passwd")).unwrap();
    writer.write_all(b"ROOT").unwrap();
    // Whether it still sees the lower bytes is unspecified (overlayfs differs by version);
    // that it reads is not.
    lower.read_to_string(&mut String::new()).unwrap();
    drop(lower);
    let mut again = String::new();
    fs::File::open(m.p("etc/passwd")).unwrap().read_to_string(&mut again).unwrap();
    assert!(again.starts_with("ROOT:x:0:0"), "{again}");
    // A created file, written through one open and read through others, and truncated.
    let mut created =
        fs::OpenOptions::new().create_new(true).read(true).write(true).open(m.p("new")).unwrap();
    created.write_all(&[7u8; 3 << 20]).unwrap();
    let reader = fs::read(m.p("new")).unwrap();
    assert_eq!(reader.len(), 3 << 20);
    assert!(reader.iter().all(|&b| b == 7));
    let mut appender = fs::OpenOptions::new().append(true).open(m.p("new")).unwrap();
    appender.write_all(b"tail").unwrap();
    assert_eq!(fs::metadata(m.p("new")).unwrap().len(), (3 << 20) + 4);
    created.set_len(2).unwrap();
    created.seek(SeekFrom::Start(0)).unwrap();
    let mut small = Vec::new();
    created.read_to_end(&mut small).unwrap();
    assert_eq!(small, [7, 7]);
    assert_eq!(fs::read(m.upper.join("new")).unwrap(), [7, 7]);
    // An executable written into the mount runs from it.
    fs::copy(m.p("bin/busybox"), m.p("busybox-copy")).unwrap();
    let out = Command::new(m.p("busybox-copy")).arg("echo").arg("copied").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "copied\n");
}

#[test]
fn a_directory_read_while_its_entries_are_removed_lists_each_entry_once() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let Some(m) = Mount::new(dir.path(), &f.busybox_ref) else { return };
    // Many kernel reads (one page each), with removals between them, as `rm -r` does.
    fs::create_dir(m.p("many")).unwrap();
    for i in 0..600 {
        fs::write(m.p(&format!("many/file-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for entry in fs::read_dir(m.p("many")).unwrap() {
        let name = entry.unwrap().file_name();
        fs::remove_file(m.p("many").join(&name)).unwrap();
        assert!(seen.insert(name.clone()), "{name:?} listed twice");
    }
    assert_eq!(seen.len(), 600);
    fs::remove_dir(m.p("many")).unwrap();
}

/// A layer of two files whose reads of `boom` panic, as a bug in a layer would.
struct PanickingLayer(skiff_fs::index::LayerIndex);

impl skiff_fs::union::LayerView for PanickingLayer {
    fn index(&self) -> &skiff_fs::index::LayerIndex {
        &self.0
    }

    fn read(&self, node: skiff_fs::index::NodeId, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        assert_ne!(self.0.path_of(node), "boom", "a bug in the layer");
        let n = (self.0.node(node).size.saturating_sub(offset) as usize).min(buf.len());
        buf[..n].fill(7);
        Ok(n)
    }
}

#[test]
fn a_panic_serving_a_request_fails_that_request_and_the_mount_serves_on() {
    if !Path::new("/dev/fuse").exists() || !skiff_tests::mount::nix_is_root() {
        skiff_tests::skip::<()>("FUSE mounts need root and /dev/fuse");
        return;
    }
    let dir = temp_dir();
    let index = skiff_fs::index::LayerIndex::of_test_files("", &[("boom", 1), ("fine", 1)], 4096, 100);
    let lower: std::sync::Arc<dyn skiff_fs::union::LayerView> = std::sync::Arc::new(PanickingLayer(index));
    let union = skiff_fs::union::Union::new(vec![lower], &dir.path().join("upper"), &dir.path().join("work"))
        .unwrap();
    let target = dir.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let options = skiff_fs::union::MountOptions { threads: 2, ..Default::default() };
    let mounted = skiff_fs::union::mount(std::sync::Arc::new(union), &target, &options).unwrap();
    // More panics than the mount has threads: a panic that ended its thread would leave
    // none to answer the next request, and reads would hang.
    let (boom, fine) = (target.join("boom"), target.join("fine"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let failed: Vec<Option<i32>> =
            (0..4).map(|_| fs::read(&boom).err().and_then(|e| e.raw_os_error())).collect();
        let _ = tx.send((failed, fs::read(&fine).map(|b| b.len())));
    });
    let answer = rx.recv_timeout(std::time::Duration::from_secs(20));
    if answer.is_err() {
        // Free the reader (and this test's clean-up) by aborting the connection.
        let dev = fs::metadata(&target).unwrap().dev();
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
    let (failed, fine) = answer.expect("reads hung after panics in the mount's threads");
    assert_eq!(failed, [Some(nix::libc::EIO); 4]);
    assert_eq!(fine.unwrap(), 4096);
    // The unmount is done either way; once in CI (two cores, under a parallel build) a
    // serving thread's read of /dev/fuse ended with ECONNABORTED instead of ENODEV after it.
    match mounted.unmount() {
        Err(e) if e.raw_os_error() == Some(nix::libc::ECONNABORTED) => {}
        other => other.unwrap(),
    }
    assert!(!skiff_tests::containers::mounts_under(dir.path()).iter().any(|m| m.contains("mnt")));
}
