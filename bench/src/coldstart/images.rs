//! The workloads and their images. The bench builds its images once into an OCI layout under
//! the cache dir: a Debian bookworm minbase rootfs (debootstrap), one variant per workload with
//! its packages installed by apt in a chroot (a second layer), and busybox. Each is pushed to
//! the bench's registry as plain gzip (skopeo) and as eStargz (`skiff convert`), once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use regex::Regex;

use super::link::{Link, REGISTRY};
use super::proc::{remove_tree, run_checked, run_logged, Ready};

/// What a built image holds on top of the Debian base.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    Busybox,
    Python,
    Gcc,
    Jdk,
    Postgres,
}

impl Variant {
    pub const ALL: [Variant; 5] =
        [Variant::Python, Variant::Gcc, Variant::Jdk, Variant::Postgres, Variant::Busybox];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Busybox => "busybox",
            Variant::Python => "python",
            Variant::Gcc => "gcc",
            Variant::Jdk => "jdk",
            Variant::Postgres => "postgres",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Variant> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .with_context(|| format!("unknown workload {name:?} (python, gcc, jdk, postgres, busybox)"))
    }

    /// The image's tag in the layout and its repository in the registry: the name, with a
    /// revision once its recipe changed, so that an image cached from an older recipe is
    /// built again rather than measured.
    pub fn tag(self) -> &'static str {
        match self {
            // 2: PGDATA on a VOLUME, as in the official postgres image.
            Variant::Postgres => "postgres-2",
            _ => self.name(),
        }
    }

    /// The image's environment beyond PATH.
    fn env(self) -> &'static [&'static str] {
        match self {
            Variant::Postgres => &["PGDATA=/var/lib/postgresql/data"],
            _ => &[],
        }
    }

    /// The image's VOLUMEs: where the official image of the same software declares one.
    fn volumes(self) -> &'static [&'static str] {
        match self {
            Variant::Postgres => &["/var/lib/postgresql/data"],
            _ => &[],
        }
    }

    fn packages(self) -> &'static [&'static str] {
        match self {
            Variant::Busybox => &[],
            Variant::Python => &["python3"],
            Variant::Gcc => &["gcc", "libc6-dev"],
            Variant::Jdk => &["openjdk-17-jdk-headless"],
            Variant::Postgres => &["postgresql"],
        }
    }

    /// The workload's command (also the image's Cmd).
    pub fn command(self) -> Vec<String> {
        let v: &[&str] = match self {
            Variant::Busybox => &["echo", "hello"],
            Variant::Python => &["python3", "-c", "print(\"hello\")"],
            Variant::Gcc => &["sh", "-c", "gcc -o /tmp/hello /opt/bench/hello.c && /tmp/hello"],
            Variant::Jdk => &["sh", "-c", "java -version && java -cp /opt/bench Hello"],
            Variant::Postgres => &["/opt/bench/postgres.sh"],
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    pub fn ready(self) -> Ready {
        match self {
            Variant::Postgres => Ready::Line(
                Regex::new("database system is ready to accept connections").expect("valid regex"),
            ),
            // Every one-shot workload ends by printing "hello".
            _ => Ready::ExitAfter(Regex::new("^hello$").expect("valid regex")),
        }
    }

    /// Files the workload needs, written into the image under /opt/bench.
    fn files(self) -> &'static [(&'static str, &'static str, u32)] {
        match self {
            Variant::Gcc => &[(
                "hello.c",
                "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
                0o644,
            )],
            Variant::Jdk => &[(
                "Hello.java",
                "public class Hello { public static void main(String[] a) { System.out.println(\"hello\"); } }\n",
                0o644,
            )],
            Variant::Postgres => &[(
                "postgres.sh",
                "#!/bin/sh\n\
                 # As the official image's entrypoint does: initdb into the (empty) data volume as\n\
                 # the postgres user, then run the server in the foreground.\n\
                 set -e\n\
                 bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)\n\
                 mkdir -p \"$PGDATA\" /tmp/pg\n\
                 chown postgres:postgres \"$PGDATA\" /tmp/pg\n\
                 chmod 700 \"$PGDATA\"\n\
                 setpriv --reuid=postgres --regid=postgres --clear-groups \"$bin/initdb\" -D \"$PGDATA\" >/dev/null\n\
                 exec setpriv --reuid=postgres --regid=postgres --clear-groups \"$bin/postgres\" -D \"$PGDATA\" \
                 -k /tmp/pg -c listen_addresses=''\n",
                0o755,
            )],
            _ => &[],
        }
    }

    /// Shell run in the chroot after the packages are installed.
    fn finish_script(self) -> &'static str {
        match self {
            Variant::Jdk => "javac -d /opt/bench /opt/bench/Hello.java",
            // The official image makes its data directory this way.
            Variant::Postgres => {
                "mkdir -p \"$PGDATA\" && chown -R postgres:postgres \"$PGDATA\" && chmod 1777 \"$PGDATA\""
            }
            _ => "true",
        }
    }
}

/// One thing to start: a built variant or an image the user named.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    /// The repository of its images in the bench's registry, and its tag in the OCI layout.
    pub repository: String,
    /// Plain gzip layers, in the bench's registry (podman, skiff full).
    pub gzip_ref: String,
    /// eStargz layers, in the bench's registry (skiff lazy), tagged with their chunk size:
    /// images converted with another chunk size (an older default) are not reused.
    pub estargz_ref: String,
    /// eStargz layers converted with the workload's recorded profile (optimized mode),
    /// converted again in every bench run, as the profile is recorded again.
    pub optimized_ref: String,
    pub command: Vec<String>,
    pub ready: Ready,
    /// `skiff convert --chunk-size`, always given: the skiff measured may have another
    /// default than the one this bench was built with, and the tag must tell the truth.
    pub chunk_size: u64,
}

impl Workload {
    /// Converts with `size`-byte chunks, into an image of its own.
    pub fn set_chunk_size(&mut self, size: u64) {
        self.chunk_size = size;
        self.estargz_ref = estargz_ref(&self.repository, size);
        self.optimized_ref = optimized_ref(&self.repository, size);
    }

    /// A workload reported as `name` whose images are in the registry's `repository`.
    fn new(name: &str, repository: &str, command: Vec<String>, ready: Ready) -> Workload {
        let chunk_size = skiff_fs::estargz::DEFAULT_CHUNK_SIZE;
        Workload {
            name: name.to_string(),
            repository: repository.to_string(),
            gzip_ref: format!("{REGISTRY}/skiff-bench/{repository}:gzip"),
            estargz_ref: estargz_ref(repository, chunk_size),
            optimized_ref: optimized_ref(repository, chunk_size),
            command,
            ready,
            chunk_size,
        }
    }

    pub fn built(v: Variant) -> Workload {
        Workload::new(v.name(), v.tag(), v.command(), v.ready())
    }

    /// A user's image: `name` for the report, `source` in skopeo's transport syntax (a bare
    /// reference means `docker://`).
    pub fn custom(name: &str, command: Vec<String>, ready: Ready) -> Workload {
        Workload::new(name, name, command, ready)
    }
}

fn estargz_ref(repository: &str, chunk_size: u64) -> String {
    format!("{REGISTRY}/skiff-bench/{repository}:estargz-{chunk_size}")
}

fn optimized_ref(repository: &str, chunk_size: u64) -> String {
    format!("{REGISTRY}/skiff-bench/{repository}:optimized-{chunk_size}")
}

/// The OCI layout the bench builds its images in, and where it logs the build.
pub struct Builder {
    layout: PathBuf,
    build_dir: PathBuf,
    deb_cache: PathBuf,
    log: PathBuf,
    mirror: String,
}

impl Builder {
    pub fn new(cache_dir: &Path, mirror: String) -> anyhow::Result<Builder> {
        let b = Builder {
            layout: cache_dir.join("oci"),
            build_dir: cache_dir.join("build"),
            deb_cache: cache_dir.join("debootstrap-debs"),
            log: cache_dir.join("build.log"),
            mirror,
        };
        for d in [&b.build_dir, &b.deb_cache] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        if !b.layout.join("index.json").exists() {
            run_checked(Command::new("umoci").args(["init", "--layout"]).arg(&b.layout))?;
        }
        Ok(b)
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.layout.display())
    }

    fn has_tag(&self, tag: &str) -> anyhow::Result<bool> {
        let out =
            Command::new("umoci").args(["ls", "--layout"]).arg(&self.layout).output().context("umoci ls")?;
        if !out.status.success() {
            bail!("umoci ls --layout {}: {}", self.layout.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == tag))
    }

    /// Builds what is missing of `variant` (and of the Debian base it needs) in the layout.
    pub fn ensure(&self, variant: Variant) -> anyhow::Result<()> {
        if self.has_tag(variant.tag())? {
            return Ok(());
        }
        match variant {
            Variant::Busybox => self.build_busybox(),
            _ => {
                self.ensure_base()?;
                self.build_variant(variant)
            }
        }
    }

    /// Copies a user's image into the layout (from the host's view, before the namespace).
    pub fn import(&self, name: &str, source: &str) -> anyhow::Result<()> {
        if self.has_tag(name)? {
            return Ok(());
        }
        let source = if source.contains(':') && source.split(':').next().is_some_and(is_transport) {
            source.to_string()
        } else {
            format!("docker://{source}")
        };
        eprintln!("importing {source} as {name}");
        run_logged(
            Command::new("skopeo").args([
                "--insecure-policy",
                "copy",
                &source,
                &format!("oci:{}", self.image(name)),
            ]),
            &self.log,
        )
    }

    fn bundle(&self, tag: &str) -> anyhow::Result<PathBuf> {
        let dir = self.build_dir.join(tag);
        remove_tree(&dir)?;
        Ok(dir)
    }

    fn ensure_base(&self) -> anyhow::Result<()> {
        if self.has_tag("base")? {
            return Ok(());
        }
        eprintln!(
            "building the Debian bookworm minbase image (debootstrap from {}); log in {}",
            self.mirror,
            self.log.display()
        );
        let bundle = self.bundle("base")?;
        run_checked(Command::new("umoci").args(["new", "--image", &self.image("base")]))?;
        run_checked(Command::new("umoci").args(["unpack", "--image", &self.image("base")]).arg(&bundle))?;
        let rootfs = bundle.join("rootfs");
        run_logged(
            Command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(format!("--cache-dir={}", self.deb_cache.display()))
                .arg("bookworm")
                .arg(&rootfs)
                .arg(&self.mirror),
            &self.log,
        )?;
        // debootstrap copies the host's resolv.conf (the runtime provides its own) and leaves
        // apt's lists and the .debs behind; images in the wild drop them.
        let _ = std::fs::write(rootfs.join("etc/resolv.conf"), "");
        for dir in ["var/lib/apt/lists", "var/cache/apt/archives"] {
            empty_dir_files(&rootfs.join(dir))?;
        }
        run_checked(Command::new("umoci").args(["repack", "--image", &self.image("base")]).arg(&bundle))?;
        self.configure_command("base", &["/bin/bash".to_string()], &[], &[])?;
        remove_tree(&bundle)
    }

    fn build_variant(&self, variant: Variant) -> anyhow::Result<()> {
        eprintln!(
            "building the {} image (apt-get install {}); log in {}",
            variant.name(),
            variant.packages().join(" "),
            self.log.display()
        );
        let bundle = self.bundle(variant.tag())?;
        run_checked(Command::new("umoci").args(["unpack", "--image", &self.image("base")]).arg(&bundle))?;
        let rootfs = bundle.join("rootfs");
        let write = |rel: &str, text: &str, mode: u32| -> anyhow::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let path = rootfs.join(rel);
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            Ok(())
        };
        // No services start in the chroot; name resolution as on the host while apt runs.
        write("usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)?;
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        write("etc/resolv.conf", &resolv, 0o644)?;
        for (name, text, mode) in variant.files() {
            write(&format!("opt/bench/{name}"), text, *mode)?;
        }
        let script = format!(
            "set -e; export DEBIAN_FRONTEND=noninteractive {}; apt-get update -q; \
             apt-get install -y -q --no-install-recommends {}; apt-get clean; rm -rf /var/lib/apt/lists/*; {}",
            variant.env().join(" "),
            variant.packages().join(" "),
            variant.finish_script()
        );
        run_logged(
            Command::new("unshare")
                .args(["--mount", "--pid", "--fork"])
                .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
                .arg("chroot")
                .arg(&rootfs)
                .args(["/bin/sh", "-c", &script]),
            &self.log,
        )?;
        std::fs::remove_file(rootfs.join("usr/sbin/policy-rc.d"))?;
        write("etc/resolv.conf", "", 0o644)?;
        run_checked(
            Command::new("umoci").args(["repack", "--image", &self.image(variant.tag())]).arg(&bundle),
        )?;
        self.configure(variant.tag(), variant)?;
        remove_tree(&bundle)
    }

    fn build_busybox(&self) -> anyhow::Result<()> {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            bail!("/bin/busybox is missing (apt-get install busybox-static)");
        }
        let bundle = self.bundle("busybox")?;
        run_checked(Command::new("umoci").args(["new", "--image", &self.image("busybox")]))?;
        run_checked(Command::new("umoci").args(["unpack", "--image", &self.image("busybox")]).arg(&bundle))?;
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(busybox, bin.join("busybox")).context("copying /bin/busybox")?;
        for applet in ["sh", "echo", "cat", "ls", "sleep", "true"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        for dir in ["tmp", "proc", "sys", "dev", "etc"] {
            std::fs::create_dir_all(bundle.join("rootfs").join(dir))?;
        }
        run_checked(Command::new("umoci").args(["repack", "--image", &self.image("busybox")]).arg(&bundle))?;
        self.configure("busybox", Variant::Busybox)?;
        remove_tree(&bundle)
    }

    fn configure(&self, tag: &str, variant: Variant) -> anyhow::Result<()> {
        self.configure_command(tag, &variant.command(), variant.env(), variant.volumes())
    }

    fn configure_command(
        &self,
        tag: &str,
        cmd: &[String],
        env: &[&str],
        volumes: &[&str],
    ) -> anyhow::Result<()> {
        let mut c = Command::new("umoci");
        c.args(["config", "--image", &self.image(tag)])
            .arg("--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("--clear=config.cmd");
        for a in cmd {
            c.arg(format!("--config.cmd={a}"));
        }
        c.args(env.iter().map(|e| format!("--config.env={e}")));
        c.args(volumes.iter().map(|v| format!("--config.volume={v}")));
        run_checked(&mut c)
    }

    /// Pushes the workload's image to the registry as gzip and as eStargz, unless it is there already.
    pub fn publish(
        &self,
        link: &Link,
        skiff: &Path,
        convert_root: &Path,
        w: &Workload,
    ) -> anyhow::Result<()> {
        if !exists_in_registry(link, &w.gzip_ref) {
            eprintln!("pushing {}", w.gzip_ref);
            let src = format!("oci:{}", self.image(&w.repository));
            let dst = format!("docker://{}", w.gzip_ref);
            run_logged(
                &mut link.exec_command(&[
                    "skopeo",
                    "--insecure-policy",
                    "copy",
                    "--dest-tls-verify=false",
                    &src,
                    &dst,
                ]),
                &self.log,
            )?;
        }
        if !exists_in_registry(link, &w.estargz_ref) {
            eprintln!("converting to {}", w.estargz_ref);
            self.convert(link, skiff, convert_root, w, &w.estargz_ref, &[])?;
        }
        Ok(())
    }

    /// Converts the workload's gzip image with its recorded `profile` (a skiff profile file)
    /// into `w.optimized_ref`, replacing what is there.
    pub fn optimize(
        &self,
        link: &Link,
        skiff: &Path,
        convert_root: &Path,
        w: &Workload,
        profile: &Path,
    ) -> anyhow::Result<()> {
        eprintln!("converting to {} with the recorded profile", w.optimized_ref);
        let profile = profile.to_string_lossy();
        self.convert(link, skiff, convert_root, w, &w.optimized_ref, &["--prioritize", &profile])
    }

    fn convert(
        &self,
        link: &Link,
        skiff: &Path,
        convert_root: &Path,
        w: &Workload,
        dest: &str,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let root = convert_root.to_string_lossy();
        let skiff = skiff.to_string_lossy();
        let chunk = w.chunk_size.to_string();
        let mut argv = vec![
            &*skiff,
            "--root",
            &root,
            "--insecure-registry",
            REGISTRY,
            "convert",
            "--chunk-size",
            &chunk,
        ];
        argv.extend(extra);
        argv.extend([w.gzip_ref.as_str(), dest]);
        run_logged(&mut link.exec_command(&argv), &self.log)
    }
}

/// Removes the plain files directly in `dir` (apt's `lock` and `partial/` stay).
fn empty_dir_files(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != "lock" {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn is_transport(s: &str) -> bool {
    ["docker", "oci", "oci-archive", "docker-archive", "dir", "containers-storage", "docker-daemon"]
        .contains(&s)
}

fn exists_in_registry(link: &Link, reference: &str) -> bool {
    let reference = format!("docker://{reference}");
    link.exec_command(&["skopeo", "inspect", "--raw", "--tls-verify=false", &reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_name_their_images_and_readiness() {
        let pg = Workload::built(Variant::Postgres);
        assert_eq!(pg.name, "postgres");
        assert_eq!(pg.gzip_ref, "127.0.0.1:5000/skiff-bench/postgres-2:gzip");
        let chunk = skiff_fs::estargz::DEFAULT_CHUNK_SIZE;
        assert_eq!(pg.estargz_ref, format!("127.0.0.1:5000/skiff-bench/postgres-2:estargz-{chunk}"));
        assert!(pg.ready.matches("LOG:  database system is ready to accept connections"));
        assert!(matches!(Workload::built(Variant::Python).ready, Ready::ExitAfter(_)));
        assert_eq!(Variant::parse("jdk").unwrap(), Variant::Jdk);
        assert!(Variant::parse("node").is_err());
    }
}
