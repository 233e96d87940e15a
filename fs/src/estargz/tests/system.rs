//! Converted layers as GNU tar sees them, and tars GNU tar made as the converter sees them.
//! Skipped (with a note) where no `tar` binary runs.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::*;

/// `tar ARGS` → stdout; `None` when there is no tar to run.
fn tar(args: &[&OsStr]) -> Option<Vec<u8>> {
    let output = match Command::new("tar").args(args).output() {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipping: no system tar ({e})");
            return None;
        }
    };
    assert!(output.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Some(output.stdout)
}

fn lines(stdout: Vec<u8>) -> Vec<String> {
    String::from_utf8(stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn system_tar_lists_the_same_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar.gz");
    let specs = sample(&mut Rng(13));
    let (blob, _) = convert_specs(&specs, &options());
    std::fs::write(&path, &blob).unwrap();
    let Some(stdout) = tar(&["--quoting-style=literal".as_ref(), "-tzf".as_ref(), path.as_os_str()]) else {
        return;
    };
    let listed: Vec<String> = lines(stdout).iter().map(|l| normalize_name(l).unwrap()).collect();
    assert_eq!(listed, expected_names(&specs));
}

/// A small tree with the shapes real layers have.
fn make_tree(root: &Path) {
    let mut rng = Rng(41);
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), rng.bytes(10)).unwrap();
    std::fs::write(root.join("sub/big"), rng.bytes(5000)).unwrap();
    std::fs::write(root.join("sub/empty"), b"").unwrap();
    std::fs::write(root.join("sub/deeper/text"), "text ".repeat(900)).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
    std::fs::hard_link(root.join("a.txt"), root.join("hard")).unwrap();
    let long = root.join("l".repeat(120));
    std::fs::create_dir(&long).unwrap();
    std::fs::write(long.join("f".repeat(60)), rng.bytes(300)).unwrap();
    std::fs::write(root.join("ünï.txt"), "ü").unwrap();
    std::fs::write(root.join("setuid"), rng.bytes(2000)).unwrap();
    std::fs::set_permissions(root.join("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

#[test]
fn gnu_tar_archives_convert_into_layers_gnu_tar_lists_identically() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    make_tree(&root);
    for format in ["gnu", "pax"] {
        let input = work.path().join(format!("{format}.tar"));
        let layer = work.path().join(format!("{format}.tar.gz"));
        let format_arg = format!("--format={format}");
        let create = [
            format_arg.as_ref(),
            "-cf".as_ref(),
            input.as_os_str(),
            "-C".as_ref(),
            root.as_os_str(),
            ".".as_ref(),
        ];
        if tar(&create).is_none() {
            return;
        }
        let result = convert(
            std::fs::File::open(&input).unwrap(),
            std::fs::File::create(&layer).unwrap(),
            &ConvertOptions { prioritized: vec!["sub/deeper/text".into(), "hard".into()], ..options() },
        )
        .unwrap();

        let listing = |path: &Path| {
            let args = ["--quoting-style=literal".as_ref(), "-tvf".as_ref(), path.as_os_str()];
            lines(tar(&args).unwrap())
        };
        let mut original = listing(&input);
        let mut converted = listing(&layer);
        converted.retain(|l| !RESERVED_NAMES.iter().any(|n| l.ends_with(&format!(" {n}"))));
        original.sort();
        converted.sort();
        assert_eq!(converted, original, "{format}");

        let blob = std::fs::read(&layer).unwrap();
        let source = MemSource(blob);
        let reader = EstargzReader::open(&source, Some(&result.toc_digest)).unwrap();
        for entry in reader.entries().iter().filter(|e| e.kind == EntryKind::Reg) {
            if RESERVED_NAMES.contains(&entry.name.as_str()) {
                continue;
            }
            let on_disk = std::fs::read(root.join(&entry.name)).unwrap();
            assert_eq!(reader.read_file(&source, &entry.name).unwrap(), on_disk, "{format} {}", entry.name);
            let mode = std::fs::metadata(root.join(&entry.name)).unwrap().permissions().mode();
            assert_eq!(entry.mode, mode & 0o7777, "{format} {}", entry.name);
        }
        assert_eq!(reader.read_file(&source, "hard").unwrap(), std::fs::read(root.join("a.txt")).unwrap());
        assert_eq!(reader.entry("sub/link").unwrap().link_name, "../a.txt");
        assert_eq!(reader.entry("tmp").unwrap().mode, 0o1777);
    }
}
