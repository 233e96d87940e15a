//! Containers through the `skiff` binary: `run` of the registry's busybox fixture (lazy, and full pull),
//! exit codes and signals, `-d` with `logs`, `stop`, `kill`, `start`, `rm`, `exec`, `--rm`,
//! isolation between containers, docker's config merging, hostile layers, a killed
//! supervisor, and `-t`. Needs root (namespaces, mounts, cgroups) and the registry fixtures.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff::sandbox::pty::{self, Pty};
use skiff_tests::containers::{cgroup_dirs, hostile_layer, mounts_under, push_image, Root};
use skiff_tests::fixtures::{self, Fixtures};
use skiff_tests::{sandbox, tree, wait_for};

/// The writing end of a pipe whose reader is gone, as `| head` leaves it.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    writer
}

/// The shared fixtures and a skiff root of the test's own; `None` (skip) without root.
fn env() -> Option<(&'static Fixtures, Root)> {
    if !sandbox::available() {
        return None;
    }
    Some((fixtures::shared()?, Root::new()))
}

#[test]
fn run_prints_output_and_exits_with_the_commands_code() {
    let Some((f, env)) = env() else { return };
    let out = env.run(&["run", "--rm", &f.busybox_ref, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (3, "out\n", "err\n"), "{out:?}");
    // 0 is no limit, as in docker (and -1 for processes): the container runs as without them.
    for limits in [["--memory", "0"], ["--cpus", "0"], ["--pids-limit", "0"], ["--pids-limit", "-1"]] {
        let out = env.run(&["run", "--rm", limits[0], limits[1], &f.busybox_ref, "sh", "-c", "echo ok"]);
        assert_eq!((out.code, out.stdout.as_str()), (0, "ok\n"), "{limits:?}: {}", out.stderr);
    }
    // Exec failures: docker's 127 for a missing command, 126 for one that cannot run.
    let out = env.run(&["run", "--rm", &f.busybox_ref, "/no/such/command"]);
    assert_eq!(out.code, 127, "{out:?}");
    let out = env.run(&["run", "--rm", &f.busybox_ref, "/etc/passwd"]);
    assert_eq!(out.code, 126, "{out:?}");
    // A command killed by signal N gives 128+N (through --init, as PID 1 cannot be signalled
    // from inside).
    let out = env.run(&["run", "--rm", "--init", &f.busybox_ref, "sh", "-c", "kill -USR1 $$"]);
    assert_eq!(out.code, 128 + 10, "{out:?}");
    // -i gives the container skiff's stdin; without it, stdin is empty.
    let out = env.skiff.run_with_input(&["run", "--rm", "-i", &f.busybox_ref, "cat"], "piped\n");
    assert_eq!(out.ok(), "piped\n");
    let out = env.skiff.run_with_input(&["run", "--rm", &f.busybox_ref, "cat"], "piped\n");
    assert_eq!(out.ok(), "");
}

#[test]
fn detached_container_logs_stops_and_is_removed() {
    let Some((f, env)) = env() else { return };
    let script = "echo hello; echo oops >&2; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done";
    let id = env.detach(&["--name", "web", &f.busybox_ref, "sh", "-c", script]);
    wait_for("the first log line", || env.run(&["logs", "web"]).stdout.contains("hello"));
    let logs = env.run(&["logs", "web"]);
    assert_eq!((logs.stdout.as_str(), logs.stderr.as_str()), ("hello\n", "oops\n"));
    let ps = env.run(&["ps"]).ok().to_string();
    assert!(ps.contains(&id[..12]) && ps.contains("Up ") && ps.contains("web"), "{ps}");
    // Columns line up under their headings, however long the image's name.
    let lines: Vec<Vec<char>> = ps.lines().map(|l| l.chars().collect()).collect();
    let names = ps.lines().next().unwrap().split("NAMES").next().unwrap().chars().count();
    assert_eq!(lines[1][names..].iter().collect::<String>(), "web", "{ps}");
    assert!(env.run(&["run", "--name", "web", &f.busybox_ref, "true"]).failed().contains("already in use"));
    // inspect takes a container too, as docker's does.
    let inspected: serde_json::Value = serde_json::from_str(env.run(&["inspect", "web"]).ok()).unwrap();
    assert_eq!(
        (inspected[0]["id"].as_str(), inspected[0]["name"].as_str()),
        (Some(id.as_str()), Some("web"))
    );
    assert!(env.run(&["inspect", "no-such"]).failed().contains("no such image or container: no-such"));
    // -f: fields of the JSON, as docker inspect's templates.
    let line = env.run(&["inspect", "-f", "{{.name}} {{.status}} {{.nope}}", "web"]).ok().to_string();
    assert_eq!(line, "web running <no value>\n");
    // docker's fields too, for the templates written for docker.
    let docker = "{{.Name}} {{.State.Status}} {{.State.Running}} {{.State.ExitCode}} {{.Config.Hostname}} {{.HostConfig.NetworkMode}}";
    let line = env.run(&["inspect", "-f", docker, "web"]).ok().to_string();
    assert_eq!(line, format!("/web running true 0 {} none\n", &id[..12]));
    let pid = env.run(&["inspect", "-f", "{{.State.Pid}}", "web"]).ok().trim().parse::<i32>().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "{pid}");
    let image =
        env.run(&["inspect", "-f", "{{json .RepoTags}} {{.Os}} {{json .Config.Cmd}}", &f.busybox_ref]);
    assert_eq!(image.ok(), format!("[\"{}\"] linux [\"/bin/sh\"]\n", f.busybox_ref));
    // The command, and the entrypoint apart from it, as docker shows them.
    let command = "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Path}} {{json .Args}}";
    let line = env.run(&["inspect", "-f", command, "web"]).ok().to_string();
    assert_eq!(line, format!("null [\"sh\",\"-c\",{script:?}] sh [\"-c\",{script:?}]\n"));
    env.run(&["create", "--name", "with-entrypoint", "--entrypoint", "echo", &f.busybox_ref, "a", "b"]).ok();
    let line = env.run(&["inspect", "-f", command, "with-entrypoint"]).ok().to_string();
    assert_eq!(line, "[\"echo\"] [\"a\",\"b\"] echo [\"a\",\"b\"]\n");
    env.run(&["rm", "with-entrypoint"]).ok();
    // rm refuses a running container.
    assert!(env.run(&["rm", "web"]).failed().contains("running"));
    env.run(&["stop", "-t", "5", "web"]).ok();
    assert_eq!(env.run(&["logs", "web"]).stdout, "hello\nbye\n");
    let tail = env.run(&["logs", "--tail", "1", "web"]);
    assert_eq!((tail.ok(), tail.stderr.as_str()), ("bye\n", ""));
    // Every line stamped (the stderr line's place among the others is the order the log
    // recorded them in, which the two streams do not fix).
    let stamped = env.run(&["logs", "-t", "web"]);
    let lines: Vec<&str> = stamped.stdout.lines().chain(stamped.stderr.lines()).collect();
    let unstamped: Vec<&str> = lines.iter().filter_map(|l| l.split_once(' ')).map(|(_, text)| text).collect();
    assert_eq!(unstamped, ["hello", "bye", "oops"], "{stamped:?}");
    for line in lines {
        let time = line.split(' ').next().unwrap_or_default();
        assert!(time.len() == 30 && time.starts_with("20") && time.ends_with('Z'), "{stamped:?}");
    }
    assert!(env.run(&["logs", "--tail", "x", "web"]).failed().contains("not a number of lines"));
    // A reader that stops early (`logs | head -1`) ends `logs` quietly, as a shell expects
    // (the container's stderr line comes first when the log recorded it first).
    let out = env.skiff.command().args(["logs", "web"]).stdout(closed_pipe()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(0) && ["", "oops\n"].contains(&stderr.as_ref()), "{out:?}");
    // So do the listings, as `ls | head` ends: by SIGPIPE, saying nothing (not with a panic).
    for list in ["ps", "images"] {
        let out = env.skiff.command().arg(list).stdout(closed_pipe()).output().unwrap();
        let sigpipe = nix::sys::signal::Signal::SIGPIPE as i32;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.signal(), stderr.as_ref()), (Some(sigpipe), ""), "{list}");
    }
    let ps = env.run(&["ps", "-a"]).ok().to_string();
    assert!(ps.contains("Exited (0)"), "{ps}");
    assert!(!env.run(&["ps"]).ok().contains(&id[..12]));
    env.run(&["rm", &id[..8]]).ok();
    assert!(!env.containers_dir().join(&id).exists());
    assert!(mounts_under(&env.skiff.root).is_empty());
}

#[test]
fn a_copy_of_its_root_in_another_mount_namespace_does_not_hold_up_a_stop() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "held", &f.busybox_ref, "sleep", "1000"]);
    // A mount namespace made now starts with a copy of every mount, the container's lazy
    // root among them, and keeps it for as long as it lives.
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "1000"])
        .spawn()
        .expect("running unshare");
    let namespace = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    wait_for("the new namespace", || namespace(holder.id()) != namespace(std::process::id()));
    let out = env.run(&["stop", "-t", "0", "held"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    out.ok();
    assert_eq!(env.run(&["ps", "-a", "--format", "{{.Status}}"]).ok().split(' ').next(), Some("Exited"));
}

#[test]
fn publish_all_publishes_each_port_the_image_exposes() {
    use std::io::Read;
    let Some((f, env)) = env() else { return };
    let config =
        serde_json::json!({"Cmd": ["sleep", "1000"], "ExposedPorts": {"7000/tcp": {}, "7001/udp": {}}});
    let image = push_image("exposing", std::slice::from_ref(&f.busybox), config);
    env.detach(&["--name", "exposed", "-P", "-p", "127.0.0.1::7002", &image]);
    let listed = env.run(&["port", "exposed"]).ok().to_string();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with("7002/tcp -> 127.0.0.1:"), "{listed}");
    assert!(lines[1].starts_with("7000/tcp -> 0.0.0.0:"), "{listed}");
    // Nothing listens on 7000 in the container: a connection is taken, then closed.
    let port = lines[1].rsplit(':').next().unwrap();
    let mut conn = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(answer.is_empty());
    assert!(env.run(&["port", "exposed", "7001/udp"]).failed().contains("expected PORT or PORT/tcp"));
    assert!(env.run(&["port", "exposed", "7005"]).failed().contains("no public port 7005/tcp"));
}

#[test]
fn a_container_joins_another_containers_network() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "pod", &f.busybox_ref, "sleep", "1000"]);
    let network = ["sh", "-c", "readlink /proc/self/ns/net"];
    let mut exec = vec!["exec", "pod"];
    exec.extend(network);
    let pods = env.run(&exec).ok().to_string();
    let mut joined = vec!["run", "--rm", "--network", "container:pod", &f.busybox_ref];
    joined.extend(network);
    assert_eq!(env.run(&joined).ok(), pods);
    let mut own = vec!["run", "--rm", &f.busybox_ref];
    own.extend(network);
    assert_ne!(env.run(&own).ok(), pods);
    let out = env.run(&["run", "--network", "container:pod", "-p", "80", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--network container:pod and publishing ports"), "{out:?}");
    let out = env.run(&["run", "--network", "container:elsewhere", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("no such container: elsewhere"), "{out:?}");
    // Joined at each start: the other container must be running then.
    env.run(&["create", "--name", "side", "--network", "container:pod", &f.busybox_ref, "true"]).ok();
    env.run(&["stop", "-t", "0", "pod"]).ok();
    let out = env.run(&["start", "-a", "side"]);
    assert!(out.failed().contains("pod, whose network it joins, is not running"), "{out:?}");
}

#[test]
fn dns_group_add_and_stop_timeout_are_dockers() {
    let Some((f, env)) = env() else { return };
    let dns = ["--dns", "192.0.2.53", "--dns-search", "a.example", "--dns-option", "ndots:2"];
    let mut run = vec!["run", "--rm"];
    run.extend(dns);
    run.extend([f.busybox_ref.as_str(), "cat", "/etc/resolv.conf"]);
    let resolv = env.run(&run).ok().to_string();
    let kept: Vec<&str> = resolv.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(kept, ["nameserver 192.0.2.53", "search a.example", "options ndots:2"], "{resolv}");
    // More groups, by number or by the image's name; an unknown name refused.
    let added = ["--group-add", "4321", "--group-add", "nogroup"];
    let mut run = vec!["run", "--rm"];
    run.extend(added);
    run.extend([f.busybox_ref.as_str(), "id"]);
    let id = env.run(&run).ok().to_string();
    assert!(id.contains("4321") && id.contains("65534(nogroup)"), "{id}");
    let out = env.run(&["run", "--rm", "--group-add", "staff", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("staff"), "{out:?}");
    // stop without -t waits the container's --stop-timeout (its PID 1 ignores SIGTERM).
    env.detach(&["--name", "quick", "--stop-timeout", "1", &f.busybox_ref, "sleep", "1000"]);
    let started = Instant::now();
    env.run(&["stop", "quick"]).ok();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(env.run(&["inspect", "-f", "{{.exit_code}}", "quick"]).ok(), "137\n");
}

#[test]
fn cidfile_volumes_from_and_expose() {
    let Some((f, env)) = env() else { return };
    // --cidfile: the id, in a file that must not exist yet.
    let cidfile = env.dir.path().join("cid");
    let cid = cidfile.to_str().unwrap();
    let id = env.run(&[
        "create",
        "--cidfile",
        cid,
        "--name",
        "data",
        "-v",
        "/tmp:/shared:ro",
        &f.busybox_ref,
        "true",
    ]);
    assert_eq!(std::fs::read_to_string(&cidfile).unwrap(), id.ok().trim());
    assert!(env.run(&["create", "--cidfile", cid, &f.busybox_ref, "true"]).failed().contains("--cidfile"));
    // --volumes-from: the other's volumes, read-only as there or as asked.
    let host = env.dir.path().join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("x"), "from the volume\n").unwrap();
    let volume = format!("{}:/v", host.display());
    env.run(&["create", "--name", "owner", "-v", &volume, &f.busybox_ref, "true"]).ok();
    let read = ["sh", "-c", "cat /v/x; echo w > /v/y && echo wrote"];
    let mut rw = vec!["run", "--rm", "--volumes-from", "owner", &f.busybox_ref];
    rw.extend(read);
    assert_eq!(env.run(&rw).ok(), "from the volume\nwrote\n");
    let mut ro = vec!["run", "--rm", "--volumes-from", "owner:ro", &f.busybox_ref];
    ro.extend(read);
    assert!(env.run(&ro).stderr.contains("Read-only file system"));
    assert!(env
        .run(&["run", "--rm", "--volumes-from", "ghost", &f.busybox_ref, "true"])
        .failed()
        .contains("ghost"));
    // --expose adds to what -P publishes.
    env.detach(&["--name", "exposes", "-P", "--expose", "7100", &f.busybox_ref, "sleep", "1000"]);
    assert!(env.run(&["port", "exposes"]).ok().starts_with("7100/tcp -> 0.0.0.0:"));
    assert!(env.run(&["run", "--expose", "http", &f.busybox_ref, "true"]).failed().contains("--expose http"));
}

#[test]
fn sysctls_change_the_containers_namespaces_only() {
    let Some((f, env)) = env() else { return };
    let host = || std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap();
    let before = host();
    let set = ["--sysctl", "net.ipv4.ip_forward=1", "--sysctl", "kernel.shmmni=1000"];
    let mut run = vec!["run", "--rm"];
    run.extend(set);
    run.extend([f.busybox_ref.as_str(), "cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/kernel/shmmni"]);
    assert_eq!(env.run(&run).ok(), "1\n1000\n");
    assert_eq!(host(), before);
    let out = env.run(&["run", "--rm", "--sysctl", "kernel.panic=1", &f.busybox_ref, "true"]);
    assert!(out
        .failed()
        .contains("--sysctl kernel.panic: not a parameter of the container's own namespaces"));
    let out = env.run(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        &f.busybox_ref,
        "true",
    ]);
    assert!(out.failed().contains("--sysctl net.ipv4.ip_forward"));
    let out = env.run(&["run", "--rm", "--sysctl", "net.ipv4.no_such_thing=1", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("setting the kernel parameter net.ipv4.no_such_thing"), "{out:?}");
}

#[test]
fn devices_are_made_in_the_container_as_asked() {
    let Some((f, env)) = env() else { return };
    if !Path::new("/dev/fuse").exists() {
        skiff_tests::skip::<()>("this test passes /dev/fuse to a container");
        return;
    }
    // /dev/fuse is 10:229 (hex a:e5), a node the container does not get by default.
    let stat = ["stat", "-c", "%F %t:%T %a", "/dev/fuse", "/dev/more/null"];
    let mut run = vec![
        "run",
        "--rm",
        "--device",
        "/dev/fuse",
        "--device",
        "/dev/null:/dev/more/null:rw",
        &f.busybox_ref,
    ];
    run.extend(stat);
    let mode = |path: &str| {
        format!(
            "{:o}",
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o7777
        )
    };
    assert_eq!(
        env.run(&run).ok(),
        format!(
            "character special file a:e5 {}\ncharacter special file 1:3 {}\n",
            mode("/dev/fuse"),
            mode("/dev/null")
        )
    );
    assert!(env.run(&["run", "--rm", &f.busybox_ref, "stat", "/dev/fuse"]).failed().contains("No such file"));
    let out = env.run(&["run", "--rm", "--device", "/etc/hostname", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--device /etc/hostname: not a character or block device"), "{out:?}");
    assert!(env
        .run(&["run", "--device", "/dev/null:rwx", &f.busybox_ref, "true"])
        .failed()
        .contains("invalid --device"));
    // Its permissions hold where the devices controller (cgroup v1) enforces them.
    if Path::new("/sys/fs/cgroup/devices").exists() {
        let write = ["sh", "-c", "echo x > /dev/ro-fuse"];
        let mut run = vec!["run", "--rm", "--device", "/dev/fuse:/dev/ro-fuse:r", &f.busybox_ref];
        run.extend(write);
        assert!(env.run(&run).stderr.contains("Operation not permitted"));
    }
}

#[test]
fn build_makes_an_image_from_a_dockerfile() {
    use std::os::unix::fs::PermissionsExt;
    let Some((f, env)) = env() else { return };
    let context = env.dir.path().join("context");
    std::fs::create_dir_all(context.join("app/sub")).unwrap();
    let script = context.join("app/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho $GREETING from $(cat /etc/app/version) in $(pwd)\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(context.join("app/sub/data.txt"), "data\n").unwrap();
    std::fs::write(context.join("notes.txt"), "notes\n").unwrap();
    let dockerfile = format!(
        "# a comment\n\
         FROM {busybox}\n\
         ARG VERSION=0\n\
         ENV GREETING=hello \\\n    HOME_DIR=/srv\n\
         WORKDIR $HOME_DIR\n\
         COPY app/ app/\n\
         COPY notes.txt /etc/app/\n\
         RUN echo $VERSION > /etc/app/version && ls app > listing && mkdir -m 1777 /shared\n\
         COPY notes.txt /shared/sub/\n\
         LABEL built.by=skiff\n\
         CMD [\"/srv/app/run.sh\"]\n",
        busybox = f.busybox_ref
    );
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let tag = format!("{}/built/app:v1", f.registry.addr);
    let out = env.run(&["build", "-t", &tag, "--build-arg", "VERSION=2", context.to_str().unwrap()]);
    let printed = out.ok().to_string();
    assert!(
        printed.contains("STEP 9/10: LABEL built.by=skiff")
            && printed.contains(&format!("Successfully tagged {tag}")),
        "{printed}"
    );
    assert_eq!(env.run(&["run", "--rm", &tag]).ok(), "hello from 2 in /srv\n");
    // Again: every step from the cache, the same image; a changed file and what comes after
    // it made again; --no-cache makes all.
    let digest =
        |printed: &str| printed.lines().find_map(|l| l.strip_prefix("Successfully built ")).map(String::from);
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "-t", &tag, "--build-arg", "VERSION=2"];
        args.extend(extra);
        args.push(context.to_str().unwrap());
        env.run(&args).ok().to_string()
    };
    let again = build(&[]);
    assert_eq!(again.matches("Using cache").count(), 8, "{again}");
    assert_eq!(digest(&again), digest(&printed));
    std::fs::write(context.join("notes.txt"), "new notes\n").unwrap();
    let changed = build(&[]);
    // ENV, WORKDIR and COPY app/ come from the cache; from COPY notes.txt on, all is made again.
    assert_eq!(changed.matches("Using cache").count(), 3, "{changed}");
    assert_eq!(env.run(&["run", "--rm", &tag, "cat", "/etc/app/notes.txt"]).ok(), "new notes\n");
    std::fs::write(context.join("notes.txt"), "notes\n").unwrap();
    assert!(!build(&["--no-cache"]).contains("Using cache"));
    let files = env.run(&["run", "--rm", &tag, "cat", "listing", "/etc/app/notes.txt", "app/sub/data.txt"]);
    assert_eq!(files.ok(), "run.sh\nsub\nnotes\ndata\n");
    let labels = env.run(&["inspect", "-f", "{{json .Config.Labels}}", &tag]).ok().to_string();
    assert_eq!(labels, "{\"built.by\":\"skiff\"}\n");
    let history = env.run(&["history", &tag]).ok().to_string();
    assert!(history.contains("RUN echo $VERSION") && history.contains("COPY notes.txt"), "{history}");
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty(), "a build container was left");
    // A directory COPY went through kept its mode; the one it made is 0755.
    let modes = env.run(&[
        "run",
        "--rm",
        &tag,
        "stat",
        "-c",
        "%n %a %u",
        "/shared",
        "/shared/sub",
        "/shared/sub/notes.txt",
    ]);
    assert_eq!(modes.ok(), "/shared 1777 0\n/shared/sub 755 0\n/shared/sub/notes.txt 644 0\n");
    // Stages: files of an earlier one copied by its name or number; only the last one named.
    // An ARG before the first FROM is seen by FROM lines, and in a stage that declares it.
    let stages = format!(
        "ARG BASE={busybox}\n\
         ARG GLOBAL=global\n\
         FROM $BASE AS builder\n\
         ARG NAME=stage\n\
         RUN echo made by $NAME$GLOBAL > /artifact && mkdir -p /out/deep && echo deep > /out/deep/f\n\
         SHELL [\"/bin/sh\", \"-ec\"]\n\
         CMD case $- in *e*) echo CMD in SHELL;; esac\n\
         FROM $BASE\n\
         ARG GLOBAL\n\
         COPY --from=builder /artifact /srv/\n\
         COPY --from=0 /out /copied\n\
         COPY note?.txt app/sub/*.txt /texts/\n\
         COPY . /ctx/\n\
         COPY --chown=nobody:nogroup notes.txt /owned/\n\
         COPY --chown=1234 app/sub /owned/sub\n\
         COPY --chmod=0750 app/sub /moded/sub\n\
         SHELL [\"/bin/sh\", \"-ec\"]\n\
         RUN case $- in *e*) echo errexit $GLOBAL > /srv/flags;; esac\n\
         HEALTHCHECK --interval=5s --retries=2 CMD cat /srv/artifact\n\
         CMD [\"cat\", \"/srv/artifact\", \"/copied/deep/f\", \"/texts/notes.txt\", \"/texts/data.txt\"]\n",
        busybox = f.busybox_ref
    );
    std::fs::write(context.join("Dockerfile"), stages).unwrap();
    std::fs::create_dir(context.join("logs")).unwrap();
    std::fs::write(context.join("logs/x.log"), "log\n").unwrap();
    std::fs::write(context.join("secret.key"), "key\n").unwrap();
    std::fs::write(context.join(".dockerignore"), "# left out\n*.key\nlogs\n").unwrap();
    let staged = format!("{}/built/staged:v1", f.registry.addr);
    let out = env.run(&["build", "-t", &staged, "--build-arg", "UNUSED=1", context.to_str().unwrap()]);
    out.ok();
    assert!(out.stderr.contains("build-args [UNUSED] were not consumed"), "{out:?}");
    assert_eq!(env.run(&["run", "--rm", &staged]).ok(), "made by stage\ndeep\nnotes\ndata\n");
    let flags = env.run(&["run", "--rm", &staged, "cat", "/srv/flags"]);
    assert_eq!(flags.ok(), "errexit global\n", "SHELL ran RUN, with the ARG declared again");
    let owners =
        ["stat", "-c", "%n %u:%g %a", "/owned/notes.txt", "/owned/sub", "/owned/sub/data.txt", "/moded/sub"];
    let mut run = vec!["run", "--rm", &staged];
    run.extend(owners);
    run.push("/moded/sub/data.txt");
    let owned =
        "/owned/notes.txt 65534:65534 644\n/owned/sub 1234:1234 755\n/owned/sub/data.txt 1234:1234 644\n\
                 /moded/sub 0:0 750\n/moded/sub/data.txt 0:0 750\n";
    assert_eq!(env.run(&run).ok(), owned);
    let check = env.run(&["inspect", "-f", "{{json .Config.Healthcheck}}", &staged]).ok().to_string();
    assert_eq!(
        check,
        "{\"Interval\":5000000000,\"Retries\":2,\"Test\":[\"CMD-SHELL\",\"cat /srv/artifact\"]}\n"
    );
    // --target: the image of that stage.
    let first = format!("{}/built/first:v1", f.registry.addr);
    env.run(&["build", "--target", "builder", "-t", &first, context.to_str().unwrap()]).ok();
    assert_eq!(env.run(&["run", "--rm", &first, "cat", "/artifact"]).ok(), "made by stage\n");
    assert_eq!(env.run(&["run", "--rm", &first]).ok(), "CMD in SHELL\n");
    let out = env.run(&["build", "--target", "nope", "-t", &first, context.to_str().unwrap()]);
    assert!(out.failed().contains("no stage named nope"), "{out:?}");
    let copied = env.run(&["run", "--rm", &staged, "ls", "-a", "/ctx"]).ok().to_string();
    assert_eq!(copied, ".\n..\n.dockerignore\nDockerfile\napp\nnotes.txt\n");
    let images = env.run(&["images"]).ok().to_string();
    assert!(!images.contains("building"), "{images}");
    // A failing RUN fails the build, naming its line; a path out of the context is refused.
    std::fs::write(context.join("Dockerfile"), format!("FROM {}\nRUN exit 3\n", f.busybox_ref)).unwrap();
    let out = env.run(&["build", "-t", &tag, context.to_str().unwrap()]);
    assert!(out.failed().contains("line 2: RUN exit 3: the command exited with code 3"), "{out:?}");
    assert_eq!(env.run(&["run", "--rm", &tag]).ok(), "hello from 2 in /srv\n", "a failed build kept the tag");
    std::fs::write(context.join("Dockerfile"), format!("FROM {}\nCOPY ../ /x\n", f.busybox_ref)).unwrap();
    let out = env.run(&["build", "-t", &tag, context.to_str().unwrap()]);
    assert!(out.failed().contains("outside the build context"), "{out:?}");
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}\nCOPY --chmod=u+x notes.txt /\n", f.busybox_ref),
    )
    .unwrap();
    let out = env.run(&["build", "-t", &tag, context.to_str().unwrap()]);
    assert!(out.failed().contains("COPY --chmod=u+x: expected octal permissions"), "{out:?}");
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty(), "a failed build left a container");
}

#[test]
fn build_runs_the_base_images_onbuild_triggers() {
    let Some((f, env)) = env() else { return };
    let context = env.dir.path().join("onbuild");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("input.txt"), "from the child's context\n").unwrap();
    let dir = context.to_str().unwrap();
    let base = format!("{}/built/onbuild-base:v1", f.registry.addr);
    let dockerfile = format!(
        "FROM {}\n\
         ONBUILD ARG WHO=child\n\
         ONBUILD RUN echo triggered by $WHO > /triggered\n\
         ONBUILD COPY input.txt /input.txt\n\
         CMD [\"cat\", \"/triggered\", \"/input.txt\"]\n",
        f.busybox_ref
    );
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    env.run(&["build", "-t", &base, dir]).ok();
    // The base keeps its triggers, not run.
    let triggers = env.run(&["inspect", "-f", "{{json .Config.OnBuild}}", &base]).ok().to_string();
    assert_eq!(
        triggers,
        "[\"ARG WHO=child\",\"RUN echo triggered by $WHO > /triggered\",\"COPY input.txt /input.txt\"]\n"
    );
    assert_eq!(
        env.run(&["run", "--rm", &base, "ls", "/"]).ok().lines().filter(|l| *l == "triggered").count(),
        0
    );

    // A child runs them right after its FROM, with its own build args and context; its image
    // does not keep them. Built again, the triggers' steps come from the cache.
    let child = format!("{}/built/onbuild-child:v1", f.registry.addr);
    std::fs::write(context.join("Dockerfile"), format!("FROM {base}\nLABEL child=yes\n")).unwrap();
    let build_child = || env.run(&["build", "--build-arg", "WHO=args", "-t", &child, dir]).ok().to_string();
    let printed = build_child();
    assert!(printed.contains("# Executing 3 build triggers"), "{printed}");
    assert!(!printed.contains("were not consumed"), "the trigger's ARG took the build arg: {printed}");
    assert_eq!(env.run(&["run", "--rm", &child]).ok(), "triggered by args\nfrom the child's context\n");
    let kept = env.run(&["inspect", "-f", "{{json .Config.OnBuild}}", &child]).ok().to_string();
    assert_eq!(kept, "<no value>\n", "the child's config has no OnBuild");
    let again = build_child();
    assert_eq!(again.matches("Using cache").count(), 3, "{again}");

    // A trigger docker refuses is refused where it is declared; one that fails fails the
    // child's build, naming it.
    std::fs::write(context.join("Dockerfile"), format!("FROM {}\nONBUILD FROM x\n", f.busybox_ref)).unwrap();
    let out = env.run(&["build", "-t", &base, dir]);
    assert!(out.failed().contains("FROM isn't allowed as an ONBUILD trigger"), "{out:?}");
    let failing = format!("{}/built/onbuild-failing:v1", f.registry.addr);
    std::fs::write(context.join("Dockerfile"), format!("FROM {}\nONBUILD RUN exit 4\n", f.busybox_ref))
        .unwrap();
    env.run(&["build", "-t", &failing, dir]).ok();
    std::fs::write(context.join("Dockerfile"), format!("FROM {failing}\nLABEL never=made\n")).unwrap();
    let out = env.run(&["build", "-t", &child, dir]);
    let err = out.failed();
    assert!(
        err.contains(&format!("the ONBUILD trigger \"RUN exit 4\" of {failing}")) && err.contains("code 4"),
        "{out:?}"
    );
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty(), "a build container was left");
}

#[test]
fn stop_kills_after_the_timeout_and_kill_sends_the_signal() {
    let Some((f, env)) = env() else { return };
    let a = env.detach(&[&f.busybox_ref, "sleep", "1000"]);
    let started = Instant::now();
    env.run(&["stop", "-t", "1", &a]).ok();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(env.state(&a)["exit_code"], 137);
    let b = env.detach(&[&f.busybox_ref, "sleep", "1000"]);
    env.run(&["kill", "-s", "KILL", &b]).ok();
    wait_for("the exit", || env.state(&b)["status"] == "exited");
    assert_eq!(env.state(&b)["exit_code"], 137);
    assert!(env.run(&["kill", &b]).failed().contains("not running"));
    env.run(&["rm", &a, &b]).ok();
}

#[test]
fn exec_joins_the_running_container() {
    let Some((f, env)) = env() else { return };
    let id =
        env.detach(&["-e", "FROM_RUN=yes", &f.busybox_ref, "sh", "-c", "echo made > /marker; sleep 1000"]);
    wait_for("the marker", || env.run(&["exec", &id, "cat", "/marker"]).code == 0);
    let script = "cat /marker; cat /etc/hostname; echo $FROM_RUN $EXTRA; echo pid=$$; id -u; \
                  grep -c . /proc/1/cmdline; grep Seccomp: /proc/self/status";
    let out = env.run(&["exec", "-e", "EXTRA=1", "-u", "nobody", &id, "sh", "-c", script]);
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(&lines[..3], ["made", &id[..12], "yes 1"], "{out:?}");
    assert_ne!(lines[3], "pid=1");
    assert_eq!(lines[4], "65534");
    assert!(lines[6].ends_with('2'), "seccomp filter not applied: {}", lines[6]);
    assert_eq!(env.run(&["exec", &id, "sh", "-c", "exit 7"]).code, 7);
    assert_eq!(env.run(&["exec", &id, "/nonexistent"]).code, 127);
    // The exec'd process is in the container's cgroup.
    let cgroup = env.run(&["exec", &id, "cat", "/proc/self/cgroup"]).ok().to_string();
    assert!(cgroup.contains(&format!("/skiff/{id}")) || !cgroup.contains("/skiff/"), "{cgroup}");
    env.run(&["rm", "-f", &id]).ok();
    assert!(env.run(&["exec", &id, "true"]).failed().contains("no such container"));
}

#[test]
fn rm_flag_leaves_no_trace() {
    let Some((f, env)) = env() else { return };
    let id = env.detach(&["--rm", &f.busybox_ref, "sh", "-c", "sleep 0.3"]);
    wait_for("the container to go", || !env.containers_dir().join(&id).exists());
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    let out = env.run(&["run", "--rm", &f.busybox_ref, "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    let left: Vec<_> = std::fs::read_dir(env.containers_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(mounts_under(&env.skiff.root).is_empty());
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty());
}

#[test]
fn a_closed_stderr_neither_stops_nor_strands_a_run() {
    let Some((f, env)) = env() else { return };
    // As in `skiff run … 2>&1 | head -1`: skiff's stderr is a pipe nobody reads any more, and
    // at debug level every thread logs (the FUSE workers, the prefetch, the unmount).
    let out = env
        .skiff
        .command()
        .args(["--log-level", "debug", "run", "--rm", &f.busybox_ref, "sh", "-c", "echo out"])
        .stderr(closed_pipe())
        .output()
        .unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(0), "out\n"));
    assert!(mounts_under(&env.skiff.root).is_empty(), "{:?}", mounts_under(&env.skiff.root));
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty());
    // An error it cannot print still gives its exit code.
    let out = env.skiff.command().args(["rm", "no-such-container"]).stderr(closed_pipe()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_reader_that_leaves_ends_the_containers_output_as_in_a_pipeline() {
    let Some((f, env)) = env() else { return };
    // `skiff run … | head -1`: once the reader is gone, the container's writes fail as on
    // the host and the run ends. It went on for good, writing its log until the disk was full.
    let mut run = env
        .skiff
        .command()
        .args(["run", "--rm", &f.busybox_ref, "sh", "-c", "while echo y; do :; done; exit 3"])
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match run.try_wait().unwrap() {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        let _ = run.kill();
        let _ = run.wait();
    }
    // PID 1 ignores SIGPIPE: its echo fails with EPIPE, which ends the loop.
    assert_eq!(status.expect("the run ended").code(), Some(3));
    assert!(env.run(&["ps", "-a", "-q"]).ok().is_empty());
    assert!(mounts_under(&env.skiff.root).is_empty());
}

#[test]
fn containers_of_one_image_keep_their_changes_apart_and_across_starts() {
    let Some((f, env)) = env() else { return };
    let script =
        "cat /etc/mine 2>/dev/null; echo \"$HOSTNAME\" >> /etc/mine; rm /bin/cat.gone 2>/dev/null; true";
    env.run(&["run", "--name", "a", &f.busybox_ref, "sh", "-c", script]).ok();
    env.run(&["run", "--name", "b", &f.busybox_ref, "sh", "-c", "rm /bin/ls; test ! -e /etc/mine"]).ok();
    // b deleted ls in its own rootfs only.
    assert_eq!(env.run(&["run", "--rm", &f.busybox_ref, "ls", "/"]).code, 0);
    // a starts again on its own upper: its earlier line is there.
    let id = env.id_of("a");
    let out = env.run(&["start", "-a", "a"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("{}\n", &id[..12]), "{out:?}");
    // Detached start, then its log holds every run.
    env.run(&["start", "a"]).ok();
    wait_for("a to exit", || env.state(&id)["status"] == "exited" && env.state(&id)["supervisor"].is_null());
    let logs = env.run(&["logs", "a"]);
    assert_eq!(logs.stdout.lines().count(), 3, "{logs:?}");
    // create makes the container run would start, and start runs it (printing its name as
    // given, as docker start does).
    let made = env
        .run(&["create", "--name", "made", &f.busybox_ref, "sh", "-c", "echo made here"])
        .ok()
        .trim()
        .to_string();
    assert_eq!((made.len(), env.state(&made)["status"].as_str()), (64, Some("created")));
    assert_eq!(env.run(&["start", "made"]).ok(), "made\n");
    wait_for("made to exit", || {
        env.state(&made)["status"] == "exited" && env.state(&made)["supervisor"].is_null()
    });
    assert_eq!(env.run(&["logs", "made"]).ok(), "made here\n");
}

#[test]
fn image_config_merges_with_flags_as_docker_does() {
    let Some((f, env)) = env() else { return };
    let config = serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default"],
        "Env": ["PATH=/bin", "FROM_IMAGE=1", "OVER=image"],
        "WorkingDir": "/work",
        "User": "nobody",
        "StopSignal": "SIGUSR1",
    });
    let image = push_image("configured", std::slice::from_ref(&f.busybox), config);
    assert_eq!(env.run(&["run", "--rm", &image]).ok(), "default\n");
    let env_file = env.dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=file\nOVER=file\n").unwrap();
    let out = env.run(&[
        "run",
        "--rm",
        "-e",
        "OVER=flag",
        "--env-file",
        env_file.to_str().unwrap(),
        &image,
        "echo $FROM_IMAGE $FROM_FILE $OVER $(pwd) $(id -u)",
    ]);
    assert_eq!(out.ok(), "1 file flag /work 65534\n");
    assert_eq!(env.run(&["run", "--rm", "-w", "/tmp", "-u", "0", &image, "pwd; id -u"]).ok(), "/tmp\n0\n");
    assert_eq!(
        env.run(&["run", "--rm", "--entrypoint", "/bin/echo", &image, "hi", "there"]).ok(),
        "hi there\n"
    );
    assert_eq!(env.run(&["run", "--rm", "--hostname", "box", &image, "cat /etc/hostname"]).ok(), "box\n");
    let out = env.run(&["run", "--rm", "--entrypoint", "", &image]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("no command"), "{out:?}");
    // A bad option is named, with no id of a container that was never made.
    let out = env.run(&["run", "--rm", "--hostname", "a/b", &image, "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert_eq!(
        out.stderr.lines().next().unwrap_or_default().split(": invalid hostname").next(),
        Some("Error: creating the container"),
        "{out:?}"
    );
    // The image's StopSignal is what stop sends first.
    let script = "trap 'echo usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done";
    let id = env.detach(&[&image, script]);
    assert_eq!(env.state(&id)["stop_signal"], "SIGUSR1");
    // Once the trap is set: a signal before it would be ignored by the shell as PID 1.
    wait_for("the trap", || env.run(&["logs", &id]).stdout == "ready\n");
    env.run(&["stop", &id]).ok();
    assert_eq!(env.run(&["logs", &id]).stdout, "ready\nusr1\n");
}

#[test]
fn hostile_layer_entries_cannot_write_outside_the_rootfs() {
    let Some((f, env)) = env() else { return };
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let layer = hostile_layer(&env.dir.path().join("hostile.tar.gz"), &outside);
    let image = push_image("hostile", &[f.busybox.clone(), layer], serde_json::json!({"Cmd": ["sh"]}));
    let inside = outside.to_str().unwrap();
    let script = format!("cat {inside}/dotdot {inside}/through-absolute {inside}/through-relative /after; stat -c %h /etc/passwd");
    let out = env.run(&["run", "--rm", "--pull-mode", "full", &image, "sh", "-c", &script]);
    let names: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(names.is_empty(), "the layer wrote outside the rootfs: {names:?}");
    // Unpacked, every entry landed inside the rootfs, where the container sees it.
    assert_eq!(out.ok(), "dotdot\nabsolute\nrelative\nafter the hostile entries\n2\n");
    // Lazily, the layer's index refuses the `..` entry, naming the layer and the entry, and
    // the container does not start.
    let out = env.run(&["run", "--rm", &image, "sh", "-c", &script]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("layer sha256:"), "{out:?}");
    assert!(out.stderr.contains("dotdot") && out.stderr.contains("unsafe path"), "{out:?}");
    let names: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(names.is_empty(), "the layer wrote outside the rootfs: {names:?}");
    assert_eq!(env.run(&["ps", "-aq"]).ok(), "");
}

#[test]
fn killed_supervisor_is_cleaned_up_by_the_next_command() {
    let Some((f, env)) = env() else { return };
    let id = env.detach(&[&f.busybox_ref, "sleep", "1000"]);
    let state = env.state(&id);
    let supervisor = state["supervisor"]["pid"].as_i64().unwrap() as i32;
    let init = state["init"]["pid"].as_i64().unwrap() as i32;
    assert!(!mounts_under(&env.containers_dir().join(&id)).is_empty());
    assert!(!cgroup_dirs(&id).is_empty());
    std::process::Command::new("kill").args(["-KILL", &supervisor.to_string()]).status().unwrap();
    wait_for("the supervisor to die", || {
        !Path::new(&format!("/proc/{supervisor}")).exists()
            || std::fs::read_to_string(format!("/proc/{supervisor}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    let ps = env.run(&["ps", "-a"]).ok().to_string();
    assert!(ps.contains("Exited (137)"), "{ps}");
    assert!(mounts_under(&env.containers_dir().join(&id)).is_empty());
    assert!(cgroup_dirs(&id).is_empty(), "{:?}", cgroup_dirs(&id));
    wait_for("the container's init to die", || {
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    env.run(&["rm", &id]).ok();
}

/// Runs skiff with a pty of 33 rows and 99 columns as its stdio; its exit code and output.
fn on_a_terminal(env: &Root, args: &[&str]) -> (Option<i32>, String) {
    let pty = Pty::open().unwrap();
    pty::set_window_size(pty.slave.as_fd(), 33, 99).unwrap();
    let mut child = env
        .skiff
        .command()
        .args(args)
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut output = Vec::new();
    let mut master = std::fs::File::from(pty.master);
    let mut buf = [0u8; 4096];
    // EIO once every slave descriptor (skiff's) is closed.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().unwrap();
    (status.code(), String::from_utf8_lossy(&output).into_owned())
}

#[test]
fn tty_gives_the_container_a_terminal_of_the_callers_size() {
    let Some((f, env)) = env() else { return };
    let script =
        "test -t 0 && echo stdin-tty; /bin/busybox stty size; test -c /dev/console && echo console; exit 5";
    let (code, text) = on_a_terminal(&env, &["run", "--rm", "-t", &f.busybox_ref, "sh", "-c", script]);
    assert_eq!(code, Some(5), "{text}");
    assert!(text.contains("stdin-tty"), "{text}");
    assert!(text.contains("33 99"), "{text}");
    assert!(text.contains("console"), "{text}");
    // exec -t into a running container.
    let id = env.detach(&[&f.busybox_ref, "sleep", "1000"]);
    let script = "test -t 0 && echo exec-tty; /bin/busybox stty size; exit 4";
    let (code, text) = on_a_terminal(&env, &["exec", "-t", &id, "sh", "-c", script]);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("exec-tty") && text.contains("33 99"), "{text}");
}

#[test]
fn both_pull_modes_apply_whiteouts_links_and_metadata_of_the_hard_fixture() {
    let Some((f, env)) = env() else { return };
    let script = "ls /fixture/opaque; ls /fixture | grep -c deleted; \
                  stat -c '%a %u:%g %h %F' /fixture/setuid /fixture/xattrs /fixture/big.bin /fixture/null /fixture/fifo; \
                  readlink /fixture/absolute-link; sha256sum /fixture/big.bin | cut -c1-16";
    let big = skiff::Digest::of(&fixtures::noise(fixtures::BIG_FILE_SIZE, 7)).hex()[..16].to_string();
    let expected = format!(
        "visible\n0\n4755 0:0 1 regular file\n640 1000:1000 1 regular file\n644 0:0 2 regular file\n\
         666 0:0 1 character special file\n666 0:0 1 fifo\n/etc/passwd\n{big}\n"
    );
    let lazy = env.run(&["run", "--rm", &f.hard_ref, "sh", "-c", script]);
    assert_eq!(lazy.ok(), expected);
    // Lazily, nothing but the indexes' bytes came: the layers are not in the store.
    let store = env.skiff.store();
    assert!(!store.has(&f.hard.digest));
    let full = env.run(&["run", "--rm", "--pull-mode", "full", &f.hard_ref, "sh", "-c", script]);
    assert_eq!(full.ok(), expected);
    // The layers are in the store now: a second container needs no registry.
    let store = env.skiff.store();
    assert!(store.has(&f.busybox.digest) && store.has(&f.hard.digest));
}

#[test]
fn a_user_namespace_maps_the_containers_root_to_an_unprivileged_host_uid() {
    let Some((f, env)) = env() else { return };
    let script = "cat /proc/self/uid_map; id -u; stat -c %u:%g /etc/passwd; \
                  echo changed > /etc/motd && stat -c %u /etc/motd; \
                  mkdir /tmp/new && stat -c %u:%g /tmp/new; \
                  stat -c %u:%g /etc/hosts; echo '10.0.0.1 extra' >> /etc/hosts && tail -n1 /etc/hosts";
    let out = env.run(&["run", "--name", "mapped", "--userns", "auto", &f.busybox_ref, "sh", "-c", script]);
    let lines: Vec<&str> = out.ok().lines().collect();
    let map: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(map, ["0", "100000", "65536"], "{lines:?}");
    // Root inside owns the image's files and what it makes, though it is uid 100000 outside.
    assert_eq!(&lines[1..5], ["0", "0:0", "0", "0:0"]);
    // The generated /etc files are root's inside, as under docker: root may change them.
    assert_eq!(&lines[5..], ["0:0", "10.0.0.1 extra"]);
    // The upper layer keeps the image's own ids: a commit would not carry the shift.
    let id = env.run(&["ps", "-aq", "--no-trunc"]).ok().trim().to_string();
    let motd = env.containers_dir().join(&id).join("upper/etc/motd");
    let meta = std::fs::metadata(&motd).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&meta), std::fs::read_to_string(&motd).unwrap()),
        (0, "changed\n".into())
    );
    // A second auto container gets a range of its own.
    let out = env.run(&["run", "--rm", "--userns", "auto", &f.busybox_ref, "cat", "/proc/self/uid_map"]);
    assert_eq!(out.ok().split_whitespace().collect::<Vec<_>>(), ["0", "165536", "65536"]);
    // An explicit map, and exec joins the namespace.
    let id = env.detach(&["--uidmap", "0:200000:1000", &f.busybox_ref, "sleep", "1000"]);
    let out = env.run(&["exec", &id, "sh", "-c", "id -u; cat /proc/self/uid_map; touch /root/x && echo ok"]);
    assert_eq!(out.ok().split_whitespace().collect::<Vec<_>>(), ["0", "0", "200000", "1000", "ok"]);
    // With the host's network (sysfs cannot be mounted anew) and limits (cgroups).
    let script = "id -u; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; test -c /dev/null && echo dev";
    let out = env.run(&[
        "run",
        "--rm",
        "--userns",
        "auto",
        "--network",
        "host",
        "-m",
        "64m",
        &f.busybox_ref,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.ok(), "0\n67108864\ndev\n");
    // Refused where it cannot work, and bad maps named.
    let out = env.run(&["run", "--rm", "--userns", "auto", "--pull-mode", "full", &f.busybox_ref, "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("--pull-mode lazy"), "{out:?}");
    let out = env.run(&["run", "--rm", "--uidmap", "0:1", &f.busybox_ref, "true"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("\"0:1\""), "{out:?}");
}

#[test]
fn a_containers_changes_are_listed_and_committed_into_an_image_that_runs() {
    let Some((f, env)) = env() else { return };
    for mode in ["lazy", "full"] {
        let name = format!("changer-{mode}");
        let script = "echo new > /added; echo more >> /etc/passwd; rm /bin/ls; mkdir -p /srv/app";
        env.run(&["run", "--name", &name, "--pull-mode", mode, &f.busybox_ref, "sh", "-c", script]).ok();
        let diff = env.run(&["diff", &name]).ok().to_string();
        for line in ["A /added", "C /etc/passwd", "D /bin/ls", "A /srv/app", "C /bin"] {
            assert!(diff.lines().any(|l| l == line), "{line} missing from:\n{diff}");
        }
        // The mount points the runtime adds (/etc/hosts and the rest, which this image lacks)
        // are not the container's changes, as under docker.
        for point in ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"] {
            assert!(!diff.contains(point), "{mode}: {point} in:\n{diff}");
        }
        let image = format!("{}/committed/{mode}:v1", f.registry.addr);
        env.run(&["commit", &name, &image]).ok();
        let store = env.skiff.store();
        let committed = skiff::image::StoredImage::load(&store, &store.find_image(&image).unwrap()).unwrap();
        let layer = committed.manifest.layers.last().unwrap();
        let entries = tree::from_tar(&store.path_of(&layer.digest));
        assert!(entries.contains_key("added") && entries.contains_key("etc/passwd"), "{entries:?}");
        assert!(
            !entries.contains_key("etc/hosts") && !entries.contains_key("etc/resolv.conf"),
            "{entries:?}"
        );
        // A container that changes nothing has nothing to show.
        let quiet = format!("quiet-{mode}");
        env.run(&["run", "--name", &quiet, "--pull-mode", mode, &f.busybox_ref, "true"]).ok();
        assert_eq!(env.run(&["diff", &quiet]).ok(), "", "{mode}");
        // The committed layer is eStargz: neither pull mode shows its TOC or landmark.
        let script = "cat /added; tail -n1 /etc/passwd; ls /bin/ls || echo gone; ls -a / | grep -c -e stargz -e landmark; true";
        let out = env.run(&["run", "--rm", "--pull-mode", mode, &image, "sh", "-c", script]);
        assert_eq!(out.ok(), "new\nmore\ngone\n0\n");
    }
    // A running container is paused while it is committed, and goes on afterwards.
    let id = env.detach(&[&f.busybox_ref, "sh", "-c", "while :; do echo x >> /tmp/grow; sleep 0.01; done"]);
    let grow = env.containers_dir().join(&id).join("upper/tmp/grow");
    let size = || std::fs::metadata(&grow).map_or(0, |m| m.len());
    wait_for("the container to write", || size() > 0);
    let image = format!("{}/committed/live:v1", f.registry.addr);
    let out = env.run(&["--log-level", "info", "commit", &id, &image]);
    assert!(out.ok().starts_with("sha256:") && out.stderr.contains("paused for the commit"), "{out:?}");
    let after = size();
    wait_for("the container to go on after the commit", || size() > after);
    env.run(&["commit", "--pause", "false", &id, &image]).ok();
    env.run(&["rm", "-f", &id]).ok();
    let out = env.run(&["diff", "no-such"]);
    assert_eq!(
        (out.code, out.stderr.trim()),
        (1, "Error: no such container: no-such (nor a directory of that name)")
    );
}

#[test]
fn image_volumes_are_anonymous_volumes_filled_from_the_image() {
    let Some((f, env)) = env() else { return };
    let mut layer = fixtures::LayerBuilder::new(&env.dir.path().join("volumes.tar.gz"));
    layer
        .dir("srv", 0o755)
        .dir("srv/data", 0o1770)
        .file_with("srv/data/seed", 0o640, (1000, 1001), &[], b"from the image\n")
        .symlink("srv/data/passwd", "/etc/passwd")
        // The declared path goes through an absolute symlink, resolved inside the rootfs.
        .symlink("data", "/srv/data");
    let layer = layer.finish();
    let config = serde_json::json!({"Cmd": ["sh"], "Volumes": {"/data": {}, "/fresh": {}, "/given": {}}});
    let image = push_image("volumes", &[f.busybox.clone(), layer], config);
    let given = env.dir.path().join("given");
    std::fs::create_dir(&given).unwrap();
    std::fs::write(given.join("host"), "from the host\n").unwrap();
    // Writable by the root of a user namespace, too.
    std::fs::set_permissions(&given, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let bind = format!("{}:/given", given.display());
    // A user namespace's container sees the image's owners in its volumes too.
    for (mode, userns) in [("lazy", "host"), ("full", "host"), ("lazy", "auto")] {
        let name = format!("v-{mode}-{userns}");
        let script = "cat /srv/data/new 2>/dev/null; cat /srv/data/seed; stat -c '%u:%g %a' /srv/data/seed /srv/data /fresh; \
                      readlink /srv/data/passwd; cat /given/host; \
                      echo written > /srv/data/new; echo fresh > /fresh/f; echo host > /given/new";
        let out = env.run(&[
            "run",
            "--name",
            &name,
            "--pull-mode",
            mode,
            "--userns",
            userns,
            "-v",
            &bind,
            &image,
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(
            out.ok(),
            "from the image\n1000:1001 640\n0:0 1770\n0:0 755\n/etc/passwd\nfrom the host\n",
            "{mode}"
        );
        let id = env.id_of(&name);
        // Writes went to the volumes, on the host, not to the container's upper layer.
        let volumes = env.containers_dir().join(&id).join("volumes");
        let mut made: Vec<_> =
            std::fs::read_dir(&volumes).unwrap().flatten().map(|e| e.file_name()).collect();
        made.sort();
        assert_eq!(made, ["0", "1"], "{mode}: -v /given takes the place of its anonymous volume");
        assert_eq!(std::fs::read_to_string(volumes.join("0/new")).unwrap(), "written\n");
        assert_eq!(std::fs::read_to_string(volumes.join("1/f")).unwrap(), "fresh\n");
        assert_eq!(std::fs::read_to_string(given.join("new")).unwrap(), "host\n");
        let diff = env.run(&["diff", &name]).ok().to_string();
        assert!(!diff.contains("new") && !diff.contains("/fresh/f"), "{mode}: {diff}");
        // A second start finds what the first wrote.
        let start = env.run(&["start", "-a", &name]);
        assert!(start.ok().starts_with("written\nfrom the image\n"), "{mode}: {start:?}");
        let out = env.run(&["run", "--rm", "--pull-mode", mode, &image, "sh", "-c", "ls /srv/data /fresh"]);
        assert_eq!(
            out.ok(),
            "/fresh:\n\n/srv/data:\npasswd\nseed\n",
            "{mode}: a new container starts from the image"
        );
        env.run(&["rm", &name]).ok();
        assert!(!volumes.exists(), "{mode}: rm leaves the volumes behind");
        std::fs::remove_file(given.join("new")).unwrap();
    }
    let missing = given.join("missing");
    let out = env.run(&["run", "--rm", "-v", &format!("{}:/m", missing.display()), &image, "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains(&format!("{} does not exist on the host", missing.display())), "{out:?}");
    assert!(!missing.exists() && env.run(&["ps", "-aq"]).ok().is_empty(), "nothing made");
    // A container never started has its volumes made by a copy, as its start would make them:
    // the image's files come out of one, and what goes into one is there at the start.
    env.run(&["create", "--name", "created", &image, "sh", "-c", "cat /fresh/in.txt /srv/data/seed"]).ok();
    let seed = env.dir.path().join("seed");
    env.run(&["cp", "created:/srv/data/seed", seed.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read_to_string(&seed).unwrap(), "from the image\n");
    let exported = env.skiff.command().args(["export", "created"]).output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    env.run(&["cp", seed.to_str().unwrap(), "created:/fresh/in.txt"]).ok();
    let id = env.id_of("created");
    let volume = env.containers_dir().join(&id).join("volumes/1/in.txt");
    assert_eq!(std::fs::read_to_string(volume).unwrap(), "from the image\n");
    assert_eq!(env.run(&["start", "-a", "created"]).ok(), "from the image\nfrom the image\n");
    assert_eq!(mounts_under(env.dir.path()), Vec::<String>::new());
}

#[test]
fn rmi_keeps_an_image_its_containers_need() {
    let Some((f, env)) = env() else { return };
    env.run(&["pull", &f.busybox_ref]).ok();
    env.run(&["tag", &f.busybox_ref, "local/used:v1"]).ok();
    env.run(&["run", "--name", "user", "local/used:v1", "cat", "/etc/group"]).ok();
    // Another name remains: only this one goes.
    env.run(&["rmi", &f.busybox_ref]).ok();
    let out = env.run(&["rmi", "local/used:v1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("(user) uses it"), "{out:?}");
    assert!(env.run(&["images", "-q"]).ok().lines().count() == 1, "the name is kept");
    // Forced, the name goes but the image stays for its container, which starts again.
    let manifest = env.skiff.store().find_image("local/used:v1").unwrap().manifest;
    env.run(&["rmi", "-f", "local/used:v1"]).ok();
    assert_eq!(env.run(&["images", "-q"]).ok(), "");
    assert_eq!(env.run(&["start", "-a", "user"]).ok(), "root:x:0:\nnogroup:x:65534:\n");
    assert!(env.skiff.store().has(&manifest));
    // With its last container, the unnamed image goes.
    env.run(&["rm", "user"]).ok();
    assert!(!env.skiff.store().has(&manifest));
    // So it does with a --rm container, once it ends.
    env.run(&["pull", &f.busybox_ref]).ok();
    let id = env.detach(&["--rm", &f.busybox_ref, "sleep", "1000"]);
    env.run(&["rmi", "-f", &f.busybox_ref]).ok();
    assert!(env.skiff.store().has(&manifest));
    env.run(&["kill", &id]).ok();
    wait_for("the --rm container to go", || env.run(&["ps", "-aq"]).ok().is_empty());
    wait_for("its image to go", || !env.skiff.store().has(&manifest));
}

#[test]
fn pause_stops_every_process_until_unpause() {
    let Some((f, env)) = env() else { return };
    let id = env.detach(&[
        "--name",
        "busy",
        &f.busybox_ref,
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; done",
    ]);
    let counter = env.containers_dir().join(&id).join("upper/tmp/n");
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    wait_for("the counter", || !read().is_empty());
    assert_eq!(env.run(&["pause", "busy"]).ok(), "busy\n");
    assert!(env.run(&["ps"]).ok().contains("(Paused)"));
    let before = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), before, "a paused container wrote");
    assert!(env.run(&["pause", "busy"]).failed().contains("already paused"));
    let out = env.run(&["exec", "busy", "true"]);
    assert_eq!(out.code, 126, "{out:?}");
    assert!(out.stderr.contains("is paused: unpause it first"), "{out:?}");
    // A commit leaves it paused.
    env.run(&["commit", "busy", &format!("{}/committed/paused:v1", f.registry.addr)]).ok();
    assert!(env.run(&["ps"]).ok().contains("(Paused)"));
    env.run(&["unpause", "busy"]).ok();
    wait_for("the counter to go on", || read() != before);
    assert!(!env.run(&["ps"]).ok().contains("(Paused)"));
    assert!(env.run(&["unpause", "busy"]).failed().contains("is not paused"));
    // Paused, it still stops (SIGKILL after the timeout: its PID 1 ignores SIGTERM).
    env.run(&["pause", "busy"]).ok();
    env.run(&["stop", "-t", "1", "busy"]).ok();
    assert!(env.run(&["ps", "-a"]).ok().contains("Exited (137)"));
    env.run(&["rm", "busy"]).ok();
    // And rm -f removes a paused container.
    env.detach(&["--name", "busy", &f.busybox_ref, "sleep", "1000"]);
    env.run(&["pause", "busy"]).ok();
    env.run(&["rm", "-f", "busy"]).ok();
    assert!(env.run(&["ps", "-aq"]).ok().is_empty());
}

#[test]
fn wait_prints_exit_codes_even_of_rm_containers() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "three", &f.busybox_ref, "sh", "-c", "sleep 0.3; exit 3"]);
    // A --rm container is removed only once every waiter has its code.
    env.detach(&["--rm", "--name", "four", &f.busybox_ref, "sh", "-c", "sleep 0.5; exit 4"]);
    env.run(&["create", "--name", "never", &f.busybox_ref, "true"]).ok();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            env.skiff
                .command()
                .args(["wait", "three", "four"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n4\n");
    }
    wait_for("the --rm container to go", || !env.run(&["ps", "-a"]).ok().contains("four"));
    assert_eq!(env.run(&["wait", "never", "three"]).ok(), "0\n3\n");
    assert!(env.run(&["wait", "three", "nosuch"]).failed().contains("no such container: nosuch"));
}

#[test]
fn rename_gives_a_running_container_a_new_name() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "old", &f.busybox_ref, "sleep", "1000"]);
    env.run(&["create", "--name", "other", &f.busybox_ref, "true"]).ok();
    env.run(&["rename", "old", "new"]).ok();
    assert_eq!(env.run(&["exec", "new", "echo", "hi"]).ok(), "hi\n");
    assert!(env.run(&["exec", "old", "true"]).failed().contains("no such container: old"));
    assert!(env.run(&["rename", "new", "other"]).failed().contains("already in use"));
    assert!(env.run(&["rename", "new", "new"]).failed().contains("named \"new\" already"));
    assert!(env.run(&["rename", "new", "bad/name"]).failed().contains("bad/name"));
    // The supervisor's own updates keep the new name.
    env.run(&["stop", "-t", "0", "new"]).ok();
    assert!(env.run(&["ps", "-a"]).ok().contains("new"));
    assert!(!env.run(&["ps", "-a"]).ok().contains("old"));
}

#[test]
fn top_shows_the_containers_processes_only() {
    let Some((f, env)) = env() else { return };
    if !skiff_tests::have("ps") {
        return;
    }
    env.detach(&["--name", "busy", &f.busybox_ref, "sh", "-c", "sleep 1001 & sleep 1002"]);
    wait_for("both processes", || env.run(&["top", "busy"]).ok().contains("sleep 1001"));
    let top = env.run(&["top", "busy"]).ok().to_string();
    let lines: Vec<&str> = top.lines().collect();
    assert!(lines[0].contains("PID") && lines[0].contains("CMD"), "{top}");
    assert_eq!(lines.len(), 3, "the header and two sleeps, nothing of the host: {top}");
    assert!(lines[1..].iter().all(|l| l.contains("sleep 100")), "{top}");
    // ps's own options, as docker top passes them.
    let top = env.run(&["top", "busy", "-o", "pid,args"]).ok().to_string();
    assert_eq!(top.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(), ["PID", "COMMAND"]);
    env.run(&["kill", "busy"]).ok();
    wait_for("the container to stop", || env.run(&["top", "busy"]).code != 0);
    assert!(env.run(&["top", "busy"]).failed().contains("container busy is not running"));
}

#[test]
fn history_lists_an_images_steps_newest_first() {
    let Some((f, env)) = env() else { return };
    env.run(&["run", "--name", "built", &f.busybox_ref, "sh", "-c", "echo 1 > /x"]).ok();
    let committed = format!("{}/history/committed:v1", f.registry.addr);
    let cmd = r#"CMD ["cat", "/x"]"#;
    env.run(&["commit", "-m", "added x", "-c", cmd, "-c", "ENV MADE=commit", "built", &committed]).ok();
    // The changes are the new image's config.
    assert_eq!(env.run(&["run", "--rm", &committed]).ok(), "1\n");
    assert_eq!(env.run(&["run", "--rm", &committed, "sh", "-c", "echo $MADE"]).ok(), "commit\n");
    assert!(env
        .run(&["commit", "-c", "RUN make", "built", &committed])
        .failed()
        .contains("RUN cannot be applied"));
    let history = env.run(&["history", &committed]).ok().to_string();
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("IMAGE") && lines[0].contains("CREATED BY"), "{history}");
    let digest = env.skiff.store().find_image(&committed).unwrap().digest.to_string();
    assert!(lines[1].starts_with(&digest["sha256:".len()..][..12]), "{history}");
    assert!(lines[1].contains("skiff commit") && lines[1].ends_with("added x"), "{history}");
    assert!(
        lines[2..].iter().all(|l| l.starts_with("<missing>") && l.contains("skiff test fixture")),
        "{history}"
    );
    assert_eq!(lines.len(), 1 + 1 + env.run(&["history", &f.busybox_ref]).ok().lines().count() - 1);
    assert!(env.run(&["history", "no/such:image"]).failed().contains("no/such:image"));
}

#[test]
fn ps_filters_and_formats_as_docker_ps() {
    let Some((f, env)) = env() else { return };
    env.run(&["run", "--name", "ok", &f.busybox_ref, "true"]).ok();
    assert_eq!(env.run(&["run", "--name", "bad", &f.busybox_ref, "sh", "-c", "exit 3"]).code, 3);
    env.detach(&["--name", "up", &f.busybox_ref, "sleep", "1000"]);
    env.run(&["create", "--name", "made", &f.busybox_ref, "true"]).ok();
    let names = |args: &[&str]| {
        let mut all = vec!["ps", "--format", "{{.Names}}"];
        all.extend_from_slice(args);
        env.run(&all).ok().lines().map(String::from).collect::<Vec<_>>()
    };
    assert_eq!(names(&[]), ["up"]);
    assert_eq!(names(&["-a"]), ["made", "up", "bad", "ok"]);
    // A status filter looks past running containers; one key's values are alternatives.
    assert_eq!(names(&["-f", "status=exited"]), ["bad", "ok"]);
    assert_eq!(names(&["-f", "status=created", "-f", "status=running"]), ["made", "up"]);
    assert_eq!(names(&["-f", "exited=3"]), ["bad"]);
    assert_eq!(names(&["-a", "-f", "name=a", "-f", "status=exited"]), ["bad"]);
    assert_eq!(names(&["-a", "-f", "since=bad"]), ["made", "up"]);
    assert_eq!(
        names(&["-a", "-f", &format!("ancestor={}", f.busybox_ref), "-f", "before=up"]),
        ["bad", "ok"]
    );
    assert_eq!(names(&["-n", "2"]), ["made", "up"]);
    assert_eq!(names(&["-l"]), ["made"]);
    let table =
        env.run(&["ps", "-a", "-f", "name=up", "--format", "table {{.Names}}\\t{{.State}}"]).ok().to_string();
    assert_eq!(table, "NAMES   STATE\nup      running\n");
    let json: serde_json::Value =
        serde_json::from_str(env.run(&["ps", "-f", "name=up", "--format", "json"]).ok()).unwrap();
    assert_eq!((json["Names"].as_str(), json["Command"].as_str()), (Some("up"), Some("\"sleep 1000\"")));
    assert!(env.run(&["ps", "-f", "color=red"]).failed().contains("invalid filter \"color\""));
    assert!(env.run(&["ps", "-f", "status=sleeping"]).failed().contains("status is one of"));
    assert!(env.run(&["ps", "--format", "{{.Nope}}"]).failed().contains("cannot show \".Nope\""));
}

#[test]
fn stats_shows_a_containers_cpu_memory_and_processes() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "spin", "-m", "64m", &f.busybox_ref, "sh", "-c", "while :; do :; done"]);
    env.run(&["create", "--name", "idle", &f.busybox_ref, "true"]).ok();
    let stats = env.run(&["stats", "--no-stream", "spin"]).ok().to_string();
    let lines: Vec<&str> = stats.lines().collect();
    assert!(lines[0].starts_with("CONTAINER ID") && lines[0].contains("MEM USAGE / LIMIT"), "{stats}");
    assert_eq!(lines.len(), 2, "{stats}");
    let cells: Vec<&str> = lines[1].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(cells[1], "spin", "{stats}");
    let cpu: f64 = cells[2].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 1.0, "a busy loop uses the CPU: {stats}");
    assert!(cells[3].ends_with("/ 64MiB"), "the memory limit: {stats}");
    assert_eq!(cells[7], "1", "one process: {stats}");
    // Not running: zeros, with -a.
    let all = env.run(&["stats", "--no-stream", "-a"]).ok().to_string();
    let idle = all.lines().find(|l| l.contains("idle")).unwrap_or_else(|| panic!("{all}"));
    assert!(idle.contains("0.00%") && idle.trim_end().ends_with(" 0"), "{all}");
}

#[test]
fn run_takes_ulimits_extra_hosts_shm_size_labels_and_a_pull_policy() {
    let Some((f, env)) = env() else { return };
    let script = "ulimit -n; ulimit -Hn; cat /etc/hosts; cat /proc/mounts";
    let args = [
        "run",
        "--rm",
        "--ulimit",
        "nofile=1000:2000",
        "--add-host",
        "db:10.1.2.3",
        "--add-host",
        "six:::1",
        "--shm-size",
        "128m",
        &f.busybox_ref,
        "sh",
        "-c",
        script,
    ];
    let out = env.run(&args).ok().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["1000", "2000"], "{out}");
    assert!(out.contains("10.1.2.3\tdb\n::1\tsix\n"), "{out}");
    let shm = lines.iter().find(|l| l.contains(" /dev/shm ")).unwrap_or_else(|| panic!("{out}"));
    assert!(shm.contains("size=131072k"), "{shm}");
    // Refused before anything is made.
    assert!(env
        .run(&["run", "--ulimit", "nofile=9:1", &f.busybox_ref, "true"])
        .failed()
        .contains("above the hard"));
    assert!(env.run(&["run", "--add-host", "nohost", &f.busybox_ref, "true"]).failed().contains("NAME:IP"));
    assert!(env.run(&["ps", "-aq"]).ok().is_empty());
    // Labels: the container's own (from a file, then -l over it), filtered on by ps.
    let labels = env.dir.path().join("labels");
    std::fs::write(
        &labels,
        "# ours
team=db
tier=front
",
    )
    .unwrap();
    let file = labels.to_str().unwrap();
    let tagged = ["--name", "tagged", "--label-file", file, "-l", "team=web", "-l", "solo"];
    let mut run = tagged.to_vec();
    run.extend([f.busybox_ref.as_str(), "sleep", "1000"]);
    env.detach(&run);
    let json = env.run(&["inspect", "-f", "{{json .Config.Labels}}", "tagged"]).ok().to_string();
    assert_eq!(json, "{\"solo\":\"\",\"team\":\"web\",\"tier\":\"front\"}\n");
    let out = env.run(&["run", "--rm", "--label-file", "/no/such/labels", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("reading the label file /no/such/labels"), "{out:?}");
    env.detach(&["--name", "plain", &f.busybox_ref, "sleep", "1000"]);
    let names = |filter: &str| env.run(&["ps", "-f", filter, "--format", "{{.Names}}"]).ok().to_string();
    assert_eq!(names("label=team=web"), "tagged\n");
    assert_eq!(names("label=solo"), "tagged\n");
    assert_eq!(names("label=team=db"), "");
    // --pull never: only what is stored; always: the registry asked again.
    let out = env.run(&["run", "--rm", "--pull", "never", "127.0.0.1:1/not/stored:v1", "true"]);
    assert!(out.failed().contains("--pull never"), "{out:?}");
    env.run(&["run", "--rm", "--pull", "always", &f.busybox_ref, "true"]).ok();
}

#[test]
fn exec_detaches_and_reads_env_files() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "host", &f.busybox_ref, "sleep", "1000"]);
    let env_file = env.dir.path().join("env");
    std::fs::write(&env_file, "A=1\n# a comment\nB=two words\n").unwrap();
    let file = env_file.to_str().unwrap();
    let out = env.run(&["exec", "--env-file", file, "-e", "C=3", "host", "sh", "-c", "echo $A/$B/$C"]);
    assert_eq!(out.ok(), "1/two words/3\n");
    // -d: back at once, the command going on in the background.
    let script = "sleep 0.3; echo $A > /tmp/done";
    let out = env.run(&["exec", "-d", "--env-file", file, "-w", "/tmp", "host", "sh", "-c", script]);
    assert_eq!(out.ok(), "");
    wait_for("the detached command", || env.run(&["exec", "host", "cat", "/tmp/done"]).stdout == "1\n");
    env.run(&["stop", "-t", "0", "host"]).ok();
    let out = env.run(&["exec", "-d", "host", "true"]);
    assert_eq!(out.code, 126, "{out:?}");
    assert!(out.stderr.contains("is not running"), "{out:?}");
    assert_eq!(env.run(&["exec", "nosuch", "true"]).code, 125, "no such container");
}

#[test]
fn logs_since_and_until_keep_a_time_span() {
    let Some((f, env)) = env() else { return };
    let script = "echo one; sleep 0.1; echo two; sleep 0.1; echo three";
    env.run(&["run", "--name", "talker", &f.busybox_ref, "sh", "-c", script]).ok();
    let stamped = env.run(&["logs", "-t", "talker"]).ok().to_string();
    let times: Vec<&str> = stamped.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(times.len(), 3, "{stamped}");
    let logs = |args: &[&str]| {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        all.push("talker");
        env.run(&all).ok().to_string()
    };
    assert_eq!(logs(&["--since", times[1]]), "two\nthree\n");
    assert_eq!(logs(&["--until", times[1]]), "one\n");
    assert_eq!(logs(&["--since", times[0], "--until", times[2]]), "one\ntwo\n");
    assert_eq!(logs(&["--since", "1h"]), "one\ntwo\nthree\n");
    assert_eq!(logs(&["--until", "1h"]), "");
    assert!(env.run(&["logs", "--since", "yesterday", "talker"]).failed().contains("is no time"));
}

#[test]
fn prune_removes_stopped_containers_and_unused_images_and_df_counts_them() {
    let Some((f, env)) = env() else { return };
    let other = format!("{}/prune/other:v1", f.registry.addr);
    env.run(&["pull", &f.busybox_ref]).ok();
    env.run(&["tag", &f.busybox_ref, &other]).ok();
    env.run(&["run", "--name", "done", &f.busybox_ref, "sh", "-c", "echo data > /f"]).ok();
    let running = env.detach(&["--name", "up", &f.busybox_ref, "sleep", "1000"]);
    let info: serde_json::Value = serde_json::from_str(env.run(&["info", "--format", "json"]).ok()).unwrap();
    let counts = ["Containers", "ContainersRunning", "ContainersStopped", "Images"].map(|k| info[k].as_u64());
    assert_eq!(counts, [Some(2), Some(1), Some(1), Some(2)], "{info:#}");
    let df = env.run(&["system", "df"]).ok().to_string();
    let row =
        |name: &str| df.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{df}")).to_string();
    let cells = |line: String| line.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(&cells(row("Containers"))[1..3], ["2", "1"], "{df}");
    assert_eq!(&cells(row("Images"))[1..3], ["2", "2"], "both names are of the image in use: {df}");
    // Asked first; no answer, nothing removed.
    let out = env.skiff.run_with_input(&["container", "prune"], "n\n");
    assert!(out.ok().contains("Are you sure"));
    assert_eq!(env.run(&["ps", "-aq"]).ok().lines().count(), 2);
    let out = env.run(&["container", "prune", "-f"]).ok().to_string();
    assert!(out.contains("Deleted Containers:") && out.contains("Total reclaimed space"), "{out}");
    assert_eq!(env.run(&["ps", "-aq", "--no-trunc"]).ok().trim(), running);
    // Every image a container uses stays, under all its names.
    env.run(&["image", "prune", "-a", "-f"]).ok();
    assert_eq!(env.run(&["images", "-q"]).ok().lines().count(), 2);
    env.run(&["rm", "-f", "up"]).ok();
    let out = env.run(&["system", "prune", "-a", "-f"]).ok().to_string();
    assert!(out.contains(&format!("Untagged: {other}")) && out.contains("Deleted cached chunks"), "{out}");
    assert_eq!(env.run(&["images", "-q"]).ok(), "");
    assert!(env.skiff.store().objects().unwrap().is_empty(), "no object left");
}

#[test]
fn update_changes_a_running_containers_limits_and_keeps_them() {
    let Some((f, env)) = env() else { return };
    env.detach(&["--name", "grow", "-m", "64m", &f.busybox_ref, "sleep", "1000"]);
    let limit = || {
        let stats = env.run(&["stats", "--no-stream", "grow"]).ok().to_string();
        stats
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split("   ")
            .map(str::trim)
            .nth(3)
            .unwrap_or_default()
            .to_string()
    };
    assert!(limit().ends_with("/ 64MiB"), "{}", limit());
    assert_eq!(
        env.run(&["update", "-m", "128m", "--cpus", "0.5", "--pids-limit", "20", "grow"]).ok(),
        "grow\n"
    );
    assert!(limit().ends_with("/ 128MiB"), "{}", limit());
    let inspected: serde_json::Value = serde_json::from_str(env.run(&["inspect", "grow"]).ok()).unwrap();
    let resources = &inspected[0]["spec"]["resources"];
    assert_eq!(
        (resources["memory"].as_u64(), resources["cpus"].as_f64(), resources["pids"].as_u64()),
        (Some(128 << 20), Some(0.5), Some(20))
    );
    // Kept for the next start; 0 lifts a limit.
    env.run(&["stop", "-t", "0", "grow"]).ok();
    env.run(&["start", "grow"]).ok();
    assert!(limit().ends_with("/ 128MiB"), "{}", limit());
    env.run(&["update", "-m", "0", "grow"]).ok();
    assert!(!limit().ends_with("/ 128MiB"), "{}", limit());
    assert!(env.run(&["update", "grow"]).failed().contains("nothing to update"));
    assert!(env.run(&["update", "-m", "1k", "grow"]).failed().contains("6M"));
}

#[test]
fn cpuset_cpus_pin_the_container_and_update_moves_it() {
    let Some((f, env)) = env() else { return };
    let allowed = |pid: &str| format!("grep Cpus_allowed_list /proc/{pid}/status");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap().trim().to_string();
    let run = |flags: &[&str], pid: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend(flags);
        let script = allowed(pid);
        args.extend([f.busybox_ref.as_str(), "sh", "-c", &script]);
        env.run(&args)
    };
    assert_eq!(run(&[], "self").ok(), format!("Cpus_allowed_list:\t{online}\n"), "unpinned: every CPU");
    assert_eq!(run(&["--cpuset-cpus", "0"], "self").ok(), "Cpus_allowed_list:\t0\n");
    assert_eq!(run(&["--cpuset-cpus", "0", "--cpuset-mems", "0"], "self").ok(), "Cpus_allowed_list:\t0\n");
    // A CPU this machine does not have, or no list at all, is refused by name.
    let out = run(&["--cpuset-cpus", "0,4096"], "self");
    assert!(out.failed().contains("--cpuset-cpus 0,4096: 4096 is not available"), "{out:?}");
    let out = run(&["--cpuset-cpus", "1-a"], "self");
    assert!(out.failed().contains("\"1-a\" is not a list of ids"), "{out:?}");
    // update moves a running container to other CPUs, and keeps them for its next start.
    if online != "0" {
        env.detach(&["--name", "pinned", "--cpuset-cpus", "0", &f.busybox_ref, "sleep", "1000"]);
        let pinned = || env.run(&["exec", "pinned", "sh", "-c", &allowed("1")]).ok().to_string();
        assert_eq!(pinned(), "Cpus_allowed_list:\t0\n");
        env.run(&["update", "--cpuset-cpus", "1", "pinned"]).ok();
        assert_eq!(pinned(), "Cpus_allowed_list:\t1\n");
        env.run(&["restart", "-t", "0", "pinned"]).ok();
        assert_eq!(pinned(), "Cpus_allowed_list:\t1\n");
        env.run(&["update", "--cpuset-cpus", "", "pinned"]).ok();
        assert_eq!(pinned(), format!("Cpus_allowed_list:\t{online}\n"), "\"\" gives every CPU back");
        env.run(&["rm", "-f", "pinned"]).ok();
    }
}

/// A host directory `name` in the test's root and its `-v` to `/v`, where the containers of
/// the restart tests log each run.
fn run_log_volume(env: &Root, name: &str) -> (std::path::PathBuf, String) {
    let dir = env.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let volume = format!("{}:/v", dir.display());
    (dir, volume)
}

/// Waits until the container `name` (whose command exits with 3) has run `n` times, as
/// `runs` counts them, and stays exited; then it has been restarted `n - 1` times.
fn runs_then_stays_exited(env: &Root, name: &str, runs: impl Fn() -> usize, n: usize) {
    wait_for("its runs", || runs() == n);
    wait_for("it to stay exited", || {
        let filter = format!("name={name}");
        env.run(&["ps", "-a", "-f", &filter, "--format", "{{.Status}}"]).ok().starts_with("Exited (3)")
    });
    assert_eq!(env.run(&["inspect", "-f", "{{.restart_count}}", name]).ok(), format!("{}\n", n - 1));
}

#[test]
fn update_changes_the_restart_policy() {
    let Some((f, env)) = env() else { return };
    let (dir, volume) = run_log_volume(&env, "restarts");
    let runs = || std::fs::read_to_string(dir.join("runs")).unwrap_or_default().lines().count();
    let script = "echo >> /v/runs; exit 3";
    env.run(&["create", "--name", "later", "-v", &volume, &f.busybox_ref, "sh", "-c", script]).ok();
    assert_eq!(env.run(&["update", "--restart", "on-failure:1", "later"]).ok(), "later\n");
    let policy = "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}";
    assert_eq!(env.run(&["inspect", "-f", policy, "later"]).ok(), "on-failure 1\n");
    // The new policy is the one its supervisor follows: the first run and one more.
    env.run(&["start", "later"]).ok();
    runs_then_stays_exited(&env, "later", runs, 2);
    assert_eq!(runs(), 2);
    // As docker: a --rm container keeps no restart policy, and a bad one is refused by name.
    let gone = env.detach(&["--rm", &f.busybox_ref, "sleep", "1000"]);
    let out = env.run(&["update", "--restart", "always", &gone]);
    assert!(out.failed().contains("--rm removes it when it ends"), "{out:?}");
    let out = env.run(&["update", "--restart", "sometimes", "later"]);
    assert!(out.failed().contains("expected no, on-failure[:N], always or unless-stopped"), "{out:?}");
    env.run(&["rm", "-f", &gone, "later"]).ok();
}

#[test]
fn swap_reservation_and_cpu_shares_reach_the_cgroup() {
    let Some((f, env)) = env() else { return };
    let limits = ["-m", "64m", "--memory-swap", "128m", "--memory-reservation", "32m", "--cpu-shares", "512"];
    let mut run = vec!["--name", "weighed"];
    run.extend(limits);
    run.extend([f.busybox_ref.as_str(), "sleep", "1000"]);
    let id = env.detach(&run);
    // The first of `files` found in the container's cgroup directories, as a number.
    let read = |files: &[&str]| -> String {
        cgroup_dirs(&id)
            .iter()
            .flat_map(|dir| files.iter().map(move |f| dir.join(f)))
            .find_map(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let v1 = Path::new("/sys/fs/cgroup/memory").exists();
    let (swap, soft, weight) = if v1 {
        ("memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes", "cpu.shares")
    } else {
        ("memory.swap.max", "memory.low", "cpu.weight")
    };
    let expected_swap = if v1 { 128 << 20 } else { 64 << 20 };
    assert_eq!(read(&[swap]), expected_swap.to_string());
    assert_eq!(read(&[soft]), (32 << 20).to_string());
    assert_eq!(read(&[weight]), if v1 { "512" } else { "20" });
    env.run(&["update", "--cpu-shares", "256", "weighed"]).ok();
    assert_eq!(read(&[weight]), if v1 { "256" } else { "10" });
    let out = env.run(&["run", "--rm", "-m", "64m", "--memory-swap", "32m", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--memory-swap (33554432) must be at least --memory"), "{out:?}");
    let out = env.run(&["run", "--rm", "--memory-swap", "1g", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--memory-swap needs --memory"), "{out:?}");
}

#[test]
fn host_namespaces_are_shared_only_when_asked() {
    let Some((f, env)) = env() else { return };
    let read = "for ns in pid ipc uts; do readlink /proc/self/ns/$ns; done; cat /proc/sys/kernel/hostname";
    let host: String = ["pid", "ipc", "uts"]
        .iter()
        .map(|ns| format!("{}\n", std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().display()))
        .chain([std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap()])
        .collect();
    let shared = ["--pid", "host", "--ipc", "host", "--uts", "host"];
    let mut run = vec!["run", "--rm"];
    run.extend(shared);
    run.extend([f.busybox_ref.as_str(), "sh", "-c", read]);
    assert_eq!(env.run(&run).ok(), host);
    let own = env.run(&["run", "--rm", &f.busybox_ref, "sh", "-c", read]).ok().to_string();
    assert!(own.lines().zip(host.lines()).all(|(a, b)| a != b), "{own} against {host}");
    // Its hostname is the host's; it may not set another, nor the host's IPC parameters.
    let out = env.run(&["run", "--rm", "--uts", "host", "--hostname", "x", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--uts host and --hostname cannot go together"), "{out:?}");
    let out =
        env.run(&["run", "--rm", "--ipc", "host", "--sysctl", "kernel.shmmni=1000", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--sysctl kernel.shmmni"), "{out:?}");
    assert!(env
        .run(&["run", "--pid", "container:x", &f.busybox_ref, "true"])
        .failed()
        .contains("expected host"));
}

#[test]
fn log_options_rotate_the_log_and_logs_reads_across_files() {
    let Some((f, env)) = env() else { return };
    let script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done; sleep 1000";
    let rotate = ["--log-opt", "max-size=2k", "--log-opt", "max-file=3"];
    let mut run = vec!["--name", "chatty"];
    run.extend(rotate);
    run.extend([f.busybox_ref.as_str(), "sh", "-c", script]);
    let id = env.detach(&run);
    wait_for("the last line", || env.run(&["logs", "--tail", "1", "chatty"]).stdout == "line 299\n");
    let dir = env.containers_dir().join(&id);
    assert!(dir.join("log.2").exists() && !dir.join("log.3").exists());
    let numbers: Vec<u32> = env
        .run(&["logs", "chatty"])
        .ok()
        .lines()
        .map(|l| l.trim_start_matches("line ").parse().unwrap())
        .collect();
    // What the three files keep: the last lines, in order.
    assert_eq!(numbers.last(), Some(&299));
    assert!(numbers[0] > 0 && numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    let out = env.run(&["run", "--rm", "--log-opt", "max-file=2", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("max-file needs max-size"), "{out:?}");
    let out = env.run(&["run", "--rm", "--log-opt", "mode=non-blocking", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--log-opt mode=non-blocking: unsupported"), "{out:?}");
}

#[test]
fn security_opts_turn_off_seccomp_and_no_new_privs() {
    let Some((f, env)) = env() else { return };
    // Seccomp and NoNewPrivs of the container's process, from its /proc/self/status.
    let status = |options: &[&str]| -> (String, String) {
        let mut run = vec!["run", "--rm"];
        run.extend(options);
        run.extend([f.busybox_ref.as_str(), "cat", "/proc/self/status"]);
        let text = env.run(&run).ok().to_string();
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_string()
        };
        (field("Seccomp:"), field("NoNewPrivs:"))
    };
    // docker's defaults: a seccomp filter, and no no_new_privs.
    assert_eq!(status(&[]), ("2".to_string(), "0".to_string()));
    assert_eq!(status(&["--security-opt", "seccomp=unconfined"]).0, "0");
    assert_eq!(status(&["--security-opt", "no-new-privileges", "--security-opt", "label=disable"]).1, "1");
    assert_eq!(status(&["--security-opt", "no-new-privileges=true"]).1, "1");
    assert_eq!(status(&["--security-opt", "no-new-privileges=false"]).1, "0");
    let out = env.run(&["run", "--rm", "--security-opt", "seccomp=/x.json", &f.busybox_ref, "true"]);
    assert!(out.failed().contains("--security-opt seccomp=/x.json: unsupported"), "{out:?}");
}

#[test]
fn named_volumes_outlive_their_containers() {
    let Some((f, env)) = env() else { return };
    // The first container fills a new volume from its image, and its writes stay.
    let out = env.run(&[
        "run",
        "--rm",
        "-v",
        "shared:/etc",
        &f.busybox_ref,
        "sh",
        "-c",
        "cat /etc/group; echo kept > /etc/mine",
    ]);
    assert_eq!(out.ok(), "root:x:0:\nnogroup:x:65534:\n");
    assert_eq!(
        env.run(&["run", "--rm", "-v", "shared:/data", &f.busybox_ref, "cat", "/data/mine"]).ok(),
        "kept\n"
    );
    // --mount, read-only, and a tmpfs.
    let mount = "type=volume,source=shared,target=/data,readonly";
    let out = env.run(&["run", "--rm", "--mount", mount, &f.busybox_ref, "sh", "-c", "echo x > /data/new"]);
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    let tmpfs = "type=tmpfs,target=/scratch,tmpfs-size=1m";
    let out =
        env.run(&["run", "--rm", "--mount", tmpfs, &f.busybox_ref, "cat", "/proc/mounts"]).ok().to_string();
    assert!(out.lines().any(|l| l.contains(" /scratch tmpfs ") && l.contains("size=1024k")), "{out}");
    // Listed; kept while a container (running or not) uses it.
    assert_eq!(env.run(&["volume", "create", "spare"]).ok(), "spare\n");
    assert_eq!(env.run(&["volume", "ls", "-q"]).ok(), "shared\nspare\n");
    env.run(&["create", "--name", "holder", "-v", "shared:/data", &f.busybox_ref, "true"]).ok();
    assert!(env.run(&["volume", "rm", "shared"]).failed().contains("in use by container holder"));
    let inspected: serde_json::Value =
        serde_json::from_str(env.run(&["volume", "inspect", "shared"]).ok()).unwrap();
    let data = std::path::PathBuf::from(inspected[0]["Mountpoint"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(data.join("mine")).unwrap(), "kept\n");
    // docker inspect's Mounts name it.
    let mounts = env.run(&["inspect", "-f", "{{json .Mounts}}", "holder"]).ok().to_string();
    let mounts: serde_json::Value = serde_json::from_str(&mounts).unwrap();
    assert_eq!((mounts[0]["Type"].as_str(), mounts[0]["Name"].as_str()), (Some("volume"), Some("shared")));
    assert_eq!(mounts[0]["Source"].as_str(), data.to_str());
    let out = env.run(&["volume", "prune", "-a", "-f"]).ok().to_string();
    assert!(out.contains("spare") && !out.contains("shared"), "{out}");
    env.run(&["rm", "holder"]).ok();
    env.run(&["volume", "rm", "shared"]).ok();
    assert_eq!(env.run(&["volume", "ls", "-q"]).ok(), "");
    assert!(!data.exists());
    assert!(env.run(&["volume", "create", "bad name"]).failed().contains("invalid volume name"));
    assert!(env
        .run(&["run", "--mount", "type=volume,target=/x", &f.busybox_ref, "true"])
        .failed()
        .contains("source=NAME"));
}

#[test]
fn restart_policies_start_a_container_again_until_stopped() {
    let Some((f, env)) = env() else { return };
    let (dir, volume) = run_log_volume(&env, "runs");
    let runs = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default().lines().count();
    // on-failure:2: the first run and two more, then it stays exited with its code.
    env.detach(&[
        "--name",
        "fails",
        "--restart",
        "on-failure:2",
        "-v",
        &volume,
        &f.busybox_ref,
        "sh",
        "-c",
        "echo >> /v/fails; exit 3",
    ]);
    runs_then_stays_exited(&env, "fails", || runs("fails"), 3);
    // A clean exit is not a failure.
    env.detach(&[
        "--name",
        "fine",
        "--restart",
        "on-failure",
        "-v",
        &volume,
        &f.busybox_ref,
        "sh",
        "-c",
        "echo >> /v/fine",
    ]);
    wait_for("its exit", || {
        env.run(&["ps", "-a", "-f", "name=fine", "--format", "{{.State}}"]).ok() == "exited\n"
    });
    assert_eq!(runs("fine"), 1);
    // always: again and again, until `stop`; `start` starts the policy again.
    env.detach(&[
        "--name",
        "loops",
        "--restart",
        "always",
        "-v",
        &volume,
        &f.busybox_ref,
        "sh",
        "-c",
        "echo >> /v/loops",
    ]);
    wait_for("three runs", || runs("loops") >= 3);
    env.run(&["stop", "loops"]).ok();
    let after_stop = runs("loops");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(runs("loops"), after_stop, "restarted after stop");
    assert!(env.run(&["ps", "-a", "-f", "name=loops", "--format", "{{.Status}}"]).ok().starts_with("Exited"));
    env.run(&["start", "loops"]).ok();
    wait_for("runs again", || runs("loops") > after_stop + 1);
    env.run(&["rm", "-f", "loops"]).ok();
    assert!(env
        .run(&["run", "--rm", "--restart", "always", &f.busybox_ref, "true"])
        .failed()
        .contains("--restart and --rm"));
    assert!(env
        .run(&["run", "--restart", "sometimes", &f.busybox_ref, "true"])
        .failed()
        .contains("on-failure"));
}

/// Whether something holds the waiters' lock of container `name` (an attach does while it
/// follows the output).
fn waiter_attached(env: &Root, name: &str) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let path = env.containers_dir().join(env.id_of(name)).join("wait.lock");
    let Ok(file) = std::fs::File::open(&path) else { return false };
    Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
}

#[test]
fn attach_follows_a_running_containers_output_to_its_exit_code() {
    let Some((f, env)) = env() else { return };
    let script = "echo early; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo late; echo oops >&2; exit 5";
    env.detach(&["--rm", "--name", "talk", &f.busybox_ref, "sh", "-c", script]);
    wait_for("the first line", || env.run(&["logs", "talk"]).stdout.contains("early"));
    // Attached (it holds the waiters' lock) before the container goes on: only what comes
    // after shows.
    let attach_then_go = |args: &[&str], name: &str| {
        let attached = env
            .skiff
            .command()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for("the attach to hold the waiters' lock", || waiter_attached(&env, name));
        env.run(&["exec", name, "sh", "-c", ": > /tmp/go"]).ok();
        attached.wait_with_output().unwrap()
    };
    let out = attach_then_go(&["attach", "talk"], "talk");
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        (String::from_utf8_lossy(&out.stdout).as_ref(), String::from_utf8_lossy(&out.stderr).as_ref()),
        ("late\n", "oops\n")
    );
    wait_for("the --rm container to go", || env.run(&["ps", "-aq"]).ok().is_empty());
    // start -a of a running container attaches too; a stopped one cannot be attached to.
    env.detach(&[
        "--name",
        "again",
        &f.busybox_ref,
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two; exit 2",
    ]);
    let out = attach_then_go(&["start", "-a", "again"], "again");
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(2), "two\n"));
    assert!(env.run(&["attach", "again"]).failed().contains("is not running"));
}

#[test]
fn attach_passes_its_signals_to_the_container_unless_told_not_to() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some((f, env)) = env() else { return };
    let script = "trap 'echo got INT; exit 7' INT; echo up; while true; do sleep 0.05; done";
    env.detach(&["--name", "trapper", &f.busybox_ref, "sh", "-c", script]);
    wait_for("the trap", || env.run(&["logs", "trapper"]).stdout.contains("up"));
    let attach = |extra: &[&str]| {
        use std::os::unix::process::CommandExt;
        let mut args = vec!["attach"];
        args.extend(extra);
        args.push("trapper");
        let mut cmd = env.skiff.command();
        cmd.args(&args).stdout(std::process::Stdio::piped());
        // SIGINT as a terminal's Ctrl-C finds it, whatever this test was started with (a shell
        // starts a background job with SIGINT ignored, and children inherit that).
        // SAFETY: between fork and exec the child only calls sigaction, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl)
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        let attached = cmd.spawn().unwrap();
        wait_for("the attach to hold the waiters' lock", || waiter_attached(&env, "trapper"));
        kill(Pid::from_raw(attached.id() as i32), Signal::SIGINT).unwrap();
        attached.wait_with_output().unwrap()
    };
    // --sig-proxy=false: Ctrl-C ends the attach; the container runs on.
    let out = attach(&["--sig-proxy=false"]);
    assert_eq!(out.status.signal(), Some(Signal::SIGINT as i32), "{out:?}");
    assert_eq!(env.run(&["inspect", "-f", "{{.status}}", "trapper"]).ok(), "running\n");
    // By default the container gets it, and the attach ends with the container's code.
    let out = attach(&[]);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(7), "got INT\n"));
}

#[test]
fn restart_and_dockers_container_and_image_groups() {
    let Some((f, env)) = env() else { return };
    // `container run` is `run`, `container ls` is `ps`, `image ls` is `images`.
    assert_eq!(env.run(&["container", "run", "--rm", &f.busybox_ref, "echo", "grouped"]).ok(), "grouped\n");
    env.run(&[
        "container",
        "run",
        "-d",
        "--name",
        "again",
        &f.busybox_ref,
        "sh",
        "-c",
        "echo up; sleep 1000",
    ])
    .ok();
    assert_eq!(env.run(&["container", "ls", "--format", "{{.Names}}"]).ok(), "again\n");
    assert_eq!(env.run(&["image", "ls", "-q"]).ok(), env.run(&["images", "-q"]).ok());
    // restart: stopped (SIGKILL after -t, its PID 1 ignoring SIGTERM) and started again.
    let first = env.state(&env.id_of("again"))["started_at"].clone();
    assert_eq!(env.run(&["restart", "-t", "0", "again"]).ok(), "again\n");
    wait_for("the second start's output", || env.run(&["logs", "again"]).stdout == "up\nup\n");
    assert_ne!(env.state(&env.id_of("again"))["started_at"], first);
    assert_eq!(env.run(&["container", "ls", "--format", "{{.State}}"]).ok(), "running\n");
    env.run(&["container", "rm", "-f", "again"]).ok();
    assert!(env.run(&["container", "prune", "-f"]).ok().contains("Total reclaimed space"));
}

#[test]
fn health_checks_make_a_container_healthy_or_unhealthy() {
    let Some((f, env)) = env() else { return };
    let args = ["--health-cmd", "cat /tmp/ok", "--health-interval", "100ms", "--health-retries", "2"];
    let mut run = vec!["--name", "checked"];
    run.extend(args);
    run.extend([f.busybox_ref.as_str(), "sleep", "1000"]);
    env.detach(&run);
    let status = |name: &str| {
        env.run(&["ps", "-f", &format!("name={name}"), "--format", "{{.Status}}"]).ok().to_string()
    };
    assert!(status("checked").contains("(health: starting)") || status("checked").contains("(unhealthy)"));
    wait_for("two failures in a row", || status("checked").contains("(unhealthy)"));
    env.run(&["exec", "checked", "sh", "-c", "echo fine > /tmp/ok"]).ok();
    wait_for("a passing check", || status("checked").contains("(healthy)"));
    assert_eq!(env.run(&["ps", "-f", "health=healthy", "--format", "{{.Names}}"]).ok(), "checked\n");
    let health: serde_json::Value =
        serde_json::from_str(env.run(&["inspect", "-f", "{{json .health}}", "checked"]).ok()).unwrap();
    let last = health["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["exit_code"].as_i64(), last["output"].as_str()), (Some(0), Some("fine\n")));
    // A check past its timeout fails (-1), and is ended.
    let slow = [
        "--health-cmd",
        "sleep 30",
        "--health-timeout",
        "100ms",
        "--health-interval",
        "100ms",
        "--health-retries",
        "1",
    ];
    let mut run = vec!["--name", "slow"];
    run.extend(slow);
    run.extend([f.busybox_ref.as_str(), "sleep", "1000"]);
    env.detach(&run);
    wait_for("the timed-out check", || status("slow").contains("(unhealthy)"));
    let health: serde_json::Value =
        serde_json::from_str(env.run(&["inspect", "-f", "{{json .health}}", "slow"]).ok()).unwrap();
    assert_eq!(health["log"][0]["exit_code"].as_i64(), Some(-1));
    // One that ignores the SIGTERM is killed, not left running in the container.
    let stubborn = "echo $$ >> /tmp/checks; trap '' TERM; while true; do sleep 0.1; done";
    let run = ["--name", "stubborn", "--health-cmd", stubborn, "--health-timeout", "100ms"];
    let mut run = run.to_vec();
    run.extend(["--health-interval", "100ms", &f.busybox_ref, "sleep", "1000"]);
    env.detach(&run);
    wait_for("the timed-out check", || status("stubborn").contains("(unhealthy)"));
    let first = "kill -0 $(head -n 1 /tmp/checks) 2>/dev/null && echo running || echo ended";
    wait_for("the first check to be killed", || {
        env.run(&["exec", "stubborn", "sh", "-c", first]).stdout == "ended\n"
    });
    assert!(env
        .run(&["run", "--health-interval", "soon", &f.busybox_ref, "true"])
        .failed()
        .contains("duration"));
}

#[test]
fn on_cgroup_v2_a_container_opens_only_the_devices_docker_allows() {
    let Some((f, env)) = env() else { return };
    // A hybrid host's unified hierarchy, mounted over /sys/fs/cgroup in a mount namespace of
    // the test's own, makes skiff take the host for a cgroup v2 one.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup2")) {
        skiff_tests::skip::<()>("no cgroup2 hierarchy is mounted");
        return;
    }
    // /dev/fuse, made in the container (mknod is allowed, as in docker), is not on docker's
    // list: opening it is refused. /dev/zero is on it.
    let script = ": < /dev/zero && echo zero; mknod /dev/fuse c 10 229 && : < /dev/fuse && echo fuse";
    let skiff = env.skiff.command();
    let mut unshare = std::process::Command::new("unshare");
    unshare.envs(skiff.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    unshare.args([
        "-m",
        "sh",
        "-c",
        "mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec \"$@\"",
        "sh",
    ]);
    unshare.arg(skiff.get_program());
    unshare.args(["run", "--rm", &f.busybox_ref, "sh", "-c", script]);
    let out = unshare.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "zero\n", "{stderr}");
    assert!(stderr.contains("/dev/fuse: Operation not permitted"), "{stderr}");
}

#[test]
fn a_process_the_oom_killer_ends_at_the_memory_limit_is_reported() {
    let Some((f, env)) = env() else { return };
    // sort holds its whole input: 32 MB against a 6 MB limit (and no swap on top).
    let hog = "head -c 32000000 /dev/zero | tr '\\0' a | sort > /dev/null";
    let out = env.run(&["run", "--name", "hog", "--memory", "6m", &f.busybox_ref, "sh", "-c", hog]);
    assert_eq!(out.code, 137, "{out:?}");
    let state = "{{.State.OOMKilled}} {{.State.ExitCode}}";
    assert_eq!(env.run(&["inspect", "-f", state, "hog"]).ok(), "true 137\n");
    // A run that stays within its limit is not.
    env.run(&["run", "--name", "fits", "--memory", "6m", &f.busybox_ref, "true"]).ok();
    assert_eq!(env.run(&["inspect", "-f", state, "fits"]).ok(), "false 0\n");
}

#[test]
fn oom_score_adj_is_the_containers_and_its_execs() {
    let Some((f, env)) = env() else { return };
    // Raised: lowering it takes CAP_SYS_RESOURCE, which the host's root may not hold.
    let adj = ["--oom-score-adj", "300"];
    let out = env.run(&["run", "--rm", adj[0], adj[1], &f.busybox_ref, "cat", "/proc/self/oom_score_adj"]);
    assert_eq!(out.ok(), "300\n");
    env.detach(&["--name", "scored", "--oom-score-adj", "700", &f.busybox_ref, "sleep", "1000"]);
    assert_eq!(env.run(&["exec", "scored", "cat", "/proc/self/oom_score_adj"]).ok(), "700\n");
    let out = env.run(&["run", "--rm", "--oom-score-adj", "1001", &f.busybox_ref, "true"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--oom-score-adj"), "{out:?}");
}
