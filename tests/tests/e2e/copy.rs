//! `skiff cp` through the binary: files between the host and running or stopped containers
//! (lazy and full pull, with a volume and a user namespace), docker cp's rules for where a
//! copy lands, tar streams both ways, and symlinks that must not lead out of the container.
//! Needs root and the registry fixtures.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use skiff_tests::containers::{mounts_under, Root};
use skiff_tests::fixtures::{self, Fixtures};
use skiff_tests::sandbox;

fn env() -> Option<(&'static Fixtures, Root)> {
    if !sandbox::available() {
        return None;
    }
    Some((fixtures::shared()?, Root::new()))
}

/// A host directory to copy: a script, a subdirectory, a relative and an absolute symlink, two
/// links of one file, and a `.wh.`-named file (a whiteout to a layer).
fn host_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(dir.join("sub/deep.txt"), "deep\n").unwrap();
    std::os::unix::fs::symlink("sub/deep.txt", dir.join("rel")).unwrap();
    std::os::unix::fs::symlink("/", dir.join("up")).unwrap();
    fs::hard_link(dir.join("run.sh"), dir.join("run2.sh")).unwrap();
    fs::write(dir.join(".wh.kept"), "kept\n").unwrap();
    for name in ["run.sh", "sub/deep.txt", ".wh.kept"] {
        std::os::unix::fs::lchown(dir.join(name), Some(1234), Some(2345)).unwrap();
    }
}

#[test]
fn cp_copies_between_the_host_and_a_running_container() {
    let Some((f, env)) = env() else { return };
    let host = env.dir.path().join("host");
    host_tree(&host.join("tree"));
    env.detach(&["--name", "box", &f.busybox_ref, "sleep", "1000"]);
    let sh = |script: &str| env.run(&["exec", "box", "sh", "-c", script]).ok().to_string();

    // A `.wh.` name is a whiteout to a layer: refused, before anything is copied.
    let tree = host.join("tree");
    let out = env.run(&["cp", tree.to_str().unwrap(), "box:/tmp"]);
    assert!(out.failed().contains("box:/tmp: tree/.wh.kept: a name beginning with .wh."), "{out:?}");
    assert_eq!(sh("ls /tmp"), "");
    fs::remove_file(tree.join(".wh.kept")).unwrap();
    // A directory into an existing one goes in under its name, owned by the container's root.
    let out = env.run(&["cp", tree.to_str().unwrap(), "box:/tmp"]);
    assert!(out.ok().is_empty() && out.stderr.contains("Successfully copied"), "{out:?}");
    let listing = sh("cd /tmp/tree && stat -c '%n %a %u:%g %h' run.sh run2.sh sub/deep.txt && readlink rel && readlink up && ./run.sh");
    assert_eq!(
        listing,
        "run.sh 750 0:0 2\nrun2.sh 750 0:0 2\nsub/deep.txt 644 0:0 1\nsub/deep.txt\n/\nran\n"
    );
    // -a keeps the owners; `dir/.` copies what the directory holds; a file onto a file replaces it.
    env.run(&["cp", "-a", &format!("{}/.", tree.display()), "box:/srv"]).ok();
    assert_eq!(sh("stat -c '%u:%g' /srv/run.sh /srv/sub"), "1234:2345\n0:0\n");
    fs::write(host.join("new.txt"), "new\n").unwrap();
    env.run(&["cp", host.join("new.txt").to_str().unwrap(), "box:/srv/run.sh"]).ok();
    assert_eq!(sh("cat /srv/run.sh; cat /srv/run2.sh | head -1"), "new\n#!/bin/sh\n");
    // A directory that does not exist becomes the copy.
    env.run(&["cp", tree.join("sub").to_str().unwrap(), "box:/srv/renamed"]).ok();
    assert_eq!(sh("cat /srv/renamed/deep.txt"), "deep\n");

    // Out again: the same tree, owned by whoever runs cp (root here), links kept.
    let back = host.join("back");
    env.run(&["cp", "box:/tmp/tree", back.to_str().unwrap()]).ok();
    assert_eq!(fs::read_to_string(back.join("sub/deep.txt")).unwrap(), "deep\n");
    assert_eq!(fs::read_link(back.join("up")).unwrap(), Path::new("/"));
    assert_eq!(fs::read_link(back.join("rel")).unwrap(), Path::new("sub/deep.txt"));
    let script = fs::metadata(back.join("run.sh")).unwrap();
    assert_eq!((script.mode() & 0o7777, script.nlink(), script.uid()), (0o750, 2, 0));

    // docker cp's refusals, each naming the path at fault.
    let refused = |args: &[&str], says: &str| {
        let out = env.run(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    };
    refused(&["cp", tree.to_str().unwrap(), "box:/etc/passwd"], "cannot copy a directory");
    refused(&["cp", host.join("new.txt").to_str().unwrap(), "box:/no/dir/"], "box:/no/dir/ does not exist");
    refused(&["cp", host.join("new.txt").to_str().unwrap(), "box:/no/dir/x"], "box:/no/dir/x: the directory");
    refused(&["cp", "box:/no/such/file", host.to_str().unwrap()], "box:/no/such/file: no such file");
    refused(&["cp", "nobox:/etc", host.to_str().unwrap()], "no such container: nobox");
    refused(&["cp", host.to_str().unwrap(), host.to_str().unwrap()], "CONTAINER:PATH");

    // The container's symlinks resolve inside it, whichever way the copy goes: `up` is `/`.
    let marker = format!("skiff-cp-test-{}", std::process::id());
    env.run(&["cp", host.join("new.txt").to_str().unwrap(), &format!("box:/tmp/tree/up/tmp/{marker}")]).ok();
    assert!(!Path::new("/tmp").join(&marker).exists(), "the copy went to the host's /tmp");
    assert_eq!(sh(&format!("cat /tmp/{marker}")), "new\n");
    sh("echo inside > /etc/hostname-copy");
    env.run(&["cp", "box:/tmp/tree/up/etc/hostname-copy", host.join("hn").to_str().unwrap()]).ok();
    assert_eq!(fs::read_to_string(host.join("hn")).unwrap(), "inside\n");

    // Tar streams: out on stdout, in from stdin (`..` kept inside the destination).
    let out = env.skiff.command().args(["cp", "box:/tmp/tree/sub", "-"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let names: Vec<String> =
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert_eq!(names, ["sub", "sub/deep.txt"]);
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in [("in.txt", &b"streamed\n"[..]), ("../../escaped.txt", b"escaped\n")] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    sh("mkdir -p /in/deeper");
    env.skiff.run_with_input(&["cp", "-", "box:/in/deeper"], builder.into_inner().unwrap()).ok();
    assert_eq!(sh("cat /in/deeper/in.txt /in/deeper/escaped.txt; ls /in"), "streamed\nescaped\ndeeper\n");
    refused(&["cp", "-", "box:/etc/passwd"], "is not a directory");
}

#[test]
fn cp_mounts_a_stopped_containers_files_for_the_copy() {
    let Some((f, env)) = env() else { return };
    let host = env.dir.path().join("host");
    let volume = host.join("volume");
    fs::create_dir_all(&volume).unwrap();
    fs::write(host.join("in.txt"), "copied in\n").unwrap();
    let volume_arg = format!("{}:/vol", volume.display());
    for mode in ["lazy", "full"] {
        let name = format!("stopped-{mode}");
        // Kernel overlayfs (full pull) lets a container make a `.wh.` name; to the host it is
        // a file like any other.
        let script = "cat /in.txt /vol/in.txt; mkdir /out; echo made > /out/made.txt; echo w > /out/.wh.x 2>/dev/null; true";
        let made = [
            "create",
            "--name",
            &name,
            "--pull-mode",
            mode,
            "-v",
            &volume_arg,
            &f.busybox_ref,
            "sh",
            "-c",
            script,
        ];
        env.run(&made).ok();
        // Never started: the image's files, the container's layer and its volume.
        env.run(&["cp", host.join("in.txt").to_str().unwrap(), &format!("{name}:/in.txt")]).ok();
        env.run(&["cp", host.join("in.txt").to_str().unwrap(), &format!("{name}:/vol/")]).ok();
        assert_eq!(fs::read_to_string(volume.join("in.txt")).unwrap(), "copied in\n", "{mode}");
        let busybox = host.join(format!("busybox-{mode}"));
        env.run(&["cp", "-L", &format!("{name}:/bin/sh"), busybox.to_str().unwrap()]).ok();
        assert!(fs::metadata(&busybox).unwrap().len() > 100_000, "{mode}: -L copies the file a link names");
        assert_eq!(env.run(&["start", "-a", &name]).ok(), "copied in\ncopied in\n", "{mode}");
        // Exited: what it wrote comes out.
        let made = host.join(format!("made-{mode}"));
        env.run(&["cp", &format!("{name}:/out"), made.to_str().unwrap()]).ok();
        assert_eq!(fs::read_to_string(made.join("made.txt")).unwrap(), "made\n", "{mode}");
        assert_eq!(made.join(".wh.x").exists(), mode == "full");
        // The copy's mounts were its own: none is left, here or on the host.
        assert_eq!(mounts_under(env.dir.path()), Vec::<String>::new(), "{mode}");
        fs::remove_file(volume.join("in.txt")).unwrap();
    }
}

#[test]
fn cp_into_a_user_namespace_gives_the_containers_root() {
    let Some((f, env)) = env() else { return };
    let file = env.dir.path().join("file.txt");
    fs::write(&file, "x\n").unwrap();
    env.detach(&["--name", "userns", "--userns", "auto", &f.busybox_ref, "sleep", "1000"]);
    env.run(&["cp", file.to_str().unwrap(), "userns:/tmp/"]).ok();
    let owner = env.run(&["exec", "userns", "stat", "-c", "%u:%g", "/tmp/file.txt"]).ok().to_string();
    assert_eq!(owner, "0:0\n");
    // Out, -a gives the owner the container sees, not the host's id it maps to.
    let out = env.skiff.command().args(["cp", "userns:/tmp/file.txt", "-"]).output().unwrap();
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let entry = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!((entry.header().uid().unwrap(), entry.header().gid().unwrap()), (0, 0));
}

#[test]
fn a_copy_from_a_stopped_container_does_not_hold_another_containers_files() {
    use std::io::Read;
    let Some((f, env)) = env() else { return };
    env.run(&["create", "--name", "held", &f.busybox_ref, "true"]).ok();
    env.detach(&["--name", "running", &f.busybox_ref, "sleep", "1000"]);
    // A copy that has begun its tar stream and waits for it to be read: it has mounted the
    // stopped container's files, in a mount namespace of its own.
    let mut copy = env
        .skiff
        .command()
        .args(["cp", "held:/bin/busybox", "-"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = copy.stdout.take().unwrap();
    let mut archive = vec![0u8; 512];
    stream.read_exact(&mut archive).unwrap();
    // Stopping the other container unmounts its files. Had the copy's namespace kept a copy
    // of that mount, the files would be served until the copy ended, and the stop would
    // wait for it in vain.
    env.run(&["stop", "-t", "0", "running"]).ok();
    stream.read_to_end(&mut archive).unwrap();
    assert!(copy.wait().unwrap().success());
    assert!(archive_entries(&archive).contains_key("busybox"), "{:?}", archive_entries(&archive).keys());
}

/// The entries of a tar stream: path, and a regular file's contents.
fn archive_entries(bytes: &[u8]) -> std::collections::BTreeMap<String, Option<String>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(bytes);
    let mut entries = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let data =
            (entry.header().entry_type() == tar::EntryType::Regular && entry.size() < 100).then(|| {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                text
            });
        entries.insert(path, data);
    }
    entries
}

#[test]
fn export_writes_the_containers_files_without_its_mounts() {
    let Some((f, env)) = env() else { return };
    let volume = env.dir.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    fs::write(volume.join("in-volume.txt"), "not exported\n").unwrap();
    let volume_arg = format!("{}:/vol", volume.display());
    env.detach(&[
        "--name",
        "running",
        "-v",
        &volume_arg,
        &f.busybox_ref,
        "sh",
        "-c",
        "echo new > /new.txt; rm /etc/group; sleep 1000",
    ]);
    skiff_tests::wait_for("the container's write", || {
        env.run(&["exec", "running", "cat", "/new.txt"]).stdout == "new\n"
    });
    env.run(&["create", "--name", "stopped", "--pull-mode", "full", &f.busybox_ref, "true"]).ok();
    for name in ["running", "stopped"] {
        let out = env.skiff.command().args(["export", name]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let entries = archive_entries(&out.stdout);
        assert!(entries.contains_key("bin/busybox") && entries.contains_key("bin/sh"), "{name}: {entries:?}");
        assert_eq!(entries.get("etc/passwd").cloned().flatten().map(|p| p.starts_with("root:")), Some(true));
        // The mount points are there, empty; nothing of what is mounted on them.
        assert!(entries.contains_key("proc") && entries.contains_key("etc/hosts"), "{name}: {entries:?}");
        assert!(
            !entries.keys().any(|p| p.starts_with("proc/") || p.starts_with("sys/")),
            "{name}: {entries:?}"
        );
        if name == "running" {
            assert_eq!(entries.get("new.txt"), Some(&Some("new\n".to_string())));
            assert!(!entries.contains_key("etc/group"), "a deleted file was exported");
            assert!(entries.contains_key("vol") && !entries.contains_key("vol/in-volume.txt"), "{entries:?}");
        } else {
            assert!(entries.contains_key("etc/group"));
        }
    }
    // -o: the file whole, or none at all.
    let file = env.dir.path().join("running.tar");
    env.run(&["export", "-o", file.to_str().unwrap(), "running"]).ok();
    assert!(archive_entries(&fs::read(&file).unwrap()).contains_key("new.txt"));
    let nowhere = env.dir.path().join("no/such/dir/out.tar");
    assert!(env
        .run(&["export", "-o", nowhere.to_str().unwrap(), "running"])
        .failed()
        .contains("no/such/dir"));
    assert!(env.run(&["export", "nosuch"]).failed().contains("no such container: nosuch"));
}

#[test]
fn import_makes_an_image_of_an_exported_container() {
    let Some((f, env)) = env() else { return };
    env.run(&["run", "--name", "source", &f.busybox_ref, "sh", "-c", "echo made > /new.txt"]).ok();
    let exported = env.skiff.command().args(["export", "source"]).output().unwrap();
    assert!(exported.status.success());
    // gzip, as tarballs often come.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &exported.stdout).unwrap();
    let tarball = env.dir.path().join("rootfs.tar.gz");
    fs::write(&tarball, gz.finish().unwrap()).unwrap();
    let image = format!("{}/imported/rootfs:v1", f.registry.addr);
    let changes = ["-c", r#"CMD ["cat", "/new.txt"]"#, "-c", "WORKDIR /etc"];
    let mut args = vec!["import", "-m", "flattened"];
    args.extend(changes);
    args.extend([tarball.to_str().unwrap(), &image]);
    env.run(&args).ok();
    assert_eq!(env.run(&["run", "--rm", &image]).ok(), "made\n");
    assert_eq!(
        env.run(&["run", "--rm", &image, "sh", "-c", "pwd; cat /etc/passwd | head -1"]).ok(),
        "/etc\nroot:x:0:0:root:/root:/bin/sh\n"
    );
    let history = env.run(&["history", &image]).ok().to_string();
    assert!(history.contains("skiff import") && history.contains("flattened"), "{history}");
    // It goes to a registry and comes back as any image.
    env.run(&["push", &image]).ok();
    // Not a tarball: said, and nothing stored.
    let out = env.skiff.run_with_input(&["import", "-", "local/bad:v1"], "not a tar".repeat(100));
    assert!(out.failed().contains("the tarball on stdin: not a tar archive"), "{out:?}");
    let out = env.run(&["import", "-c", "RUN make", tarball.to_str().unwrap(), "local/bad:v1"]);
    assert!(out.failed().contains("RUN cannot be applied"), "{out:?}");
    assert!(!env.run(&["images"]).ok().contains("local/bad"));
}
