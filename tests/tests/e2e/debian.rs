//! A real-world image through the `skiff` binary: Debian bookworm with python3 (built by
//! debootstrap once per machine, see `skiff_tests::debian`), run lazily from its eStargz
//! conversion and with a full pull of its gzip original; python's writes land in the upper
//! directory only; exec into a running python container. Needs root, FUSE, the registry
//! fixtures and debootstrap with a reachable Debian mirror.

use std::path::Path;
use std::time::Instant;

use skiff_tests::containers::Root;
use skiff_tests::debian::{self, DebianImage};
use skiff_tests::{sandbox, wait_for};

const HELLO: &str = "print(\"hello\")";

/// The Debian image and a skiff root of the test's own; `None` (skip) without root or FUSE.
fn env() -> Option<(&'static DebianImage, Root)> {
    if !sandbox::available() {
        return None;
    }
    if !Path::new("/dev/fuse").exists() {
        return skiff_tests::skip("lazy containers need /dev/fuse");
    }
    Some((debian::image()?, Root::new()))
}

#[test]
fn python_prints_hello_lazily_from_the_estargz_image_fetching_a_fraction_of_it() {
    let Some((image, env)) = env() else { return };
    let started = Instant::now();
    let out = env.run(&["run", "--rm", &image.estargz_ref, "python3", "-c", HELLO]);
    assert_eq!(out.ok(), "hello\n");
    // Nothing from skiff itself (no warnings from the mount serving python's requests).
    assert_eq!(out.stderr, "");
    let elapsed = started.elapsed();
    let totals = env.totals();
    let fetched = totals["registry_bytes"].as_u64().unwrap();
    eprintln!(
        "lazy python3 run: {elapsed:.2?}, {fetched} bytes fetched in {} range requests, \
         of a {} byte eStargz image",
        totals["registry_requests"], image.estargz_size
    );
    assert_eq!(totals["streamed_bytes"], 0, "no layer is streamed whole: {totals}");
    assert!(fetched > 0, "python3's files came from somewhere: {totals}");
    assert!(
        fetched * 4 < image.estargz_size,
        "a lazy run fetched {fetched} bytes of a {} byte image: {totals}",
        image.estargz_size
    );
    // Only the manifest and config were stored: the layers stay in the registry.
    let store = env.skiff.store();
    for layer in &image.estargz_layers {
        assert!(!store.has(layer), "layer {layer} was downloaded whole");
    }
}

#[test]
fn python_prints_hello_after_a_full_pull_of_the_gzip_image() {
    let Some((image, env)) = env() else { return };
    let started = Instant::now();
    let out = env.run(&["run", "--rm", "--pull-mode", "full", &image.gzip_ref, "python3", "-c", HELLO]);
    assert_eq!(out.ok(), "hello\n");
    eprintln!("full-pull python3 run: {:.2?} for a {} byte image", started.elapsed(), image.layer.size);
    let store = env.skiff.store();
    assert!(store.has(&image.layer.digest), "the layer is in the store after a full pull");
    let manifest = store.find_image(&image.gzip_ref).unwrap().manifest;
    let tree = env.skiff.root.join("rootfs").join(manifest.hex());
    assert!(tree.join("usr/bin/python3").symlink_metadata().is_ok(), "{} lacks python3", tree.display());
}

#[test]
fn a_file_python_writes_lands_in_the_upper_dir_and_the_lower_stays_unchanged() {
    let Some((image, env)) = env() else { return };
    let script = "open('/root/from-python.txt', 'w').write('written by python\\n')\n\
                  open('/etc/issue', 'a').write('appended by python\\n')";
    for (mode, reference) in [("lazy", &image.estargz_ref), ("full", &image.gzip_ref)] {
        let original = env.run(&["run", "--rm", "--pull-mode", mode, reference, "cat", "/etc/issue"]);
        let original = original.ok().to_string();
        assert!(original.starts_with("Debian GNU/Linux 12"), "{original}");
        let name = format!("writer-{mode}");
        env.run(&["run", "--name", &name, "--pull-mode", mode, reference, "python3", "-c", script]).ok();
        let id = env.id_of(&name);
        let upper = env.containers_dir().join(&id).join("upper");
        let read =
            |path: &Path| std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(read(&upper.join("root/from-python.txt")), "written by python\n", "{mode}");
        assert_eq!(read(&upper.join("etc/issue")), format!("{original}appended by python\n"), "{mode}");
        // A new container of the image sees the image's files as they were.
        let check = "cat /etc/issue; test -e /root/from-python.txt || echo absent";
        let out = env.run(&["run", "--rm", "--pull-mode", mode, reference, "sh", "-c", check]);
        assert_eq!(out.ok(), format!("{original}absent\n"), "{mode}");
        if mode == "full" {
            // The unpacked lower tree itself is untouched.
            let manifest = env.skiff.store().find_image(reference).unwrap().manifest;
            let tree = env.skiff.root.join("rootfs").join(manifest.hex());
            assert_eq!(read(&tree.join("etc/issue")), original);
            assert!(!tree.join("root/from-python.txt").exists());
        }
        env.run(&["rm", &name]).ok();
    }
}

#[test]
fn exec_runs_python_in_a_running_python_container() {
    let Some((image, env)) = env() else { return };
    let main = "import time\nopen('/tmp/ready', 'w').write('up')\ntime.sleep(1000)";
    let id = env.detach(&[&image.estargz_ref, "python3", "-c", main]);
    wait_for("python's marker", || env.run(&["exec", &id, "cat", "/tmp/ready"]).code == 0);
    let probe = "import os\n\
                 cmdline = open('/proc/1/cmdline').read().split('\\0')\n\
                 print(open('/tmp/ready').read(), os.getpid() != 1, cmdline[0], cmdline[1])";
    let out = env.run(&["exec", &id, "python3", "-c", probe]);
    assert_eq!(out.ok(), "up True python3 -c\n");
    assert_eq!(env.run(&["exec", &id, "python3", "-c", "raise SystemExit(7)"]).code, 7);
    env.run(&["rm", "-f", &id]).ok();
}

#[test]
fn a_published_port_reaches_a_server_in_the_container() {
    use std::io::{Read, Write};
    let Some((image, env)) = env() else { return };
    // Answers each connection with what it read, after `echo:`.
    let server = "import socket\n\
                  s = socket.socket()\n\
                  s.bind(('127.0.0.1', 8000))\n\
                  s.listen()\n\
                  while True:\n\
                  \x20   c, _ = s.accept()\n\
                  \x20   c.sendall(b'echo:' + c.recv(100))\n\
                  \x20   c.close()";
    env.detach(&["--name", "web", "-p", "127.0.0.1::8000", &image.estargz_ref, "python3", "-c", server]);
    // A free host port, chosen at start.
    let published = env.run(&["port", "web", "8000"]).ok().trim().to_string();
    assert!(published.starts_with("127.0.0.1:") && !published.ends_with(":0"), "{published}");
    // Until the server listens, a connection is taken and closed with no answer.
    let mut answer = String::new();
    wait_for("the server's answer", || {
        answer.clear();
        let Ok(mut conn) = std::net::TcpStream::connect(&published) else { return false };
        conn.write_all(b"ping").is_ok() && conn.read_to_string(&mut answer).is_ok() && !answer.is_empty()
    });
    assert_eq!(answer, "echo:ping");
    assert_eq!(env.run(&["port", "web"]).ok(), format!("8000/tcp -> {published}\n"));
    assert!(env.run(&["ps"]).ok().contains(&format!("{published}->8000/tcp")));
    // A host port in use fails the start, naming it.
    let taken = format!("{published}:80");
    let out = env.run(&["run", "--rm", "-p", &taken, &image.estargz_ref, "true"]);
    assert!(out.failed().contains(&format!("publishing port 80: listening on {published}")), "{out:?}");
    env.run(&["stop", "web"]).ok();
    assert_eq!(env.run(&["port", "web"]).ok(), "");
    assert!(std::net::TcpStream::connect(&published).is_err(), "still listening after the stop");
    assert!(env.run(&["run", "-p", "53/udp", &image.estargz_ref, "true"]).failed().contains("only tcp"));
}
