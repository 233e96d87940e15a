//! The generated `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`: written by the supervisor
//! into the container's state directory (never into the image) and bind-mounted over the
//! image's files, as docker does.

use std::path::{Path, PathBuf};

use super::spec::{ContainerSpec, Dns, Network};

/// The three files, by their path in the state directory.
#[derive(Debug, Clone)]
pub struct EtcFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct EtcError {
    path: PathBuf,
    source: std::io::Error,
}

impl EtcFiles {
    /// The container paths each file is mounted on, with its state-dir source.
    pub fn mounts(&self) -> [(&'static str, &Path); 3] {
        [
            ("/etc/hostname", &self.hostname),
            ("/etc/hosts", &self.hosts),
            ("/etc/resolv.conf", &self.resolv_conf),
        ]
    }
}

/// Writes the three files into `state_dir`, owned by the container's root: with a user
/// namespace (`ids`), the host ids its root maps to, so that root inside may change them as
/// under docker (host root would show as nobody, and they would be read-only).
pub fn write(spec: &ContainerSpec, ids: Option<&skiff_fs::IdMap>) -> Result<EtcFiles, EtcError> {
    let (state_dir, hostname, network) = (spec.state_dir.as_path(), spec.hostname.as_str(), &spec.network);
    let write = |name: &str, text: String| {
        let path = state_dir.join(name);
        let err = |source| EtcError { path: path.clone(), source };
        std::fs::write(&path, text).map_err(err)?;
        if let Some(ids) = ids {
            std::os::unix::fs::chown(&path, Some(ids.uid_to_host(0)), Some(ids.gid_to_host(0)))
                .map_err(err)?;
        }
        Ok::<_, EtcError>(path)
    };
    std::fs::create_dir_all(state_dir)
        .map_err(|source| EtcError { path: state_dir.to_path_buf(), source })?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (hosts, resolv) = match network {
        Network::Host => {
            (std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(hostname)), host_resolv)
        }
        // The host's loopback resolvers are unreachable from a network namespace of its own.
        Network::None | Network::Join(_) => (hosts(hostname), without_loopback_nameservers(&host_resolv)),
    };
    let resolv = with_dns(&resolv, &spec.dns);
    // `--add-host` lines after the others, as docker adds them.
    let extra: String = spec.extra_hosts.iter().map(|h| format!("{}\t{}\n", h.ip, h.name)).collect();
    Ok(EtcFiles {
        hostname: write("hostname", format!("{hostname}\n"))?,
        hosts: write("hosts", hosts + &extra)?,
        resolv_conf: write("resolv.conf", resolv)?,
    })
}

fn hosts(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.0.1\t{hostname}\n"
    )
}

/// `resolv` with each kind of line `dns` sets replaced by its values, as docker's `--dns`,
/// `--dns-search` and `--dns-option` replace the host's.
fn with_dns(resolv: &str, dns: &Dns) -> String {
    let set = |key: &str| match key {
        "nameserver" => !dns.servers.is_empty(),
        "search" | "domain" => !dns.search.is_empty(),
        "options" => !dns.options.is_empty(),
        _ => false,
    };
    let mut out: String = resolv
        .lines()
        .filter(|line| !line.split_whitespace().next().is_some_and(set))
        .map(|line| format!("{line}\n"))
        .collect();
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

fn without_loopback_nameservers(resolv: &str) -> String {
    resolv
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            !(words.next() == Some("nameserver")
                && words.next().is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_options_replace_the_hosts_lines_of_their_kind() {
        let host = "# from the host\nnameserver 10.1.1.1\nnameserver 10.1.1.2\nsearch corp.example\noptions rotate\n";
        let servers = Dns { servers: vec!["192.0.2.53".parse().unwrap()], ..Dns::default() };
        assert_eq!(
            with_dns(host, &servers),
            "# from the host\nsearch corp.example\noptions rotate\nnameserver 192.0.2.53\n"
        );
        let rest = Dns {
            search: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:2".into()],
            ..Dns::default()
        };
        assert_eq!(
            with_dns(host, &rest),
            "# from the host\nnameserver 10.1.1.1\nnameserver 10.1.1.2\nsearch a.example b.example\noptions ndots:2\n"
        );
        assert_eq!(with_dns(host, &Dns::default()), host);
    }

    #[test]
    fn each_file_is_a_mount_point_the_init_layer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ContainerSpec::new("c1", "/nonexistent", dir.path(), vec!["true".into()]);
        spec.extra_hosts = vec!["db:10.0.0.2".parse().unwrap()];
        let files = write(&spec, None).unwrap();
        for (target, _) in files.mounts() {
            assert!(
                super::super::MOUNT_POINTS.contains(&(target, super::super::paths::Kind::File)),
                "{target}"
            );
        }
        let hosts = std::fs::read_to_string(dir.path().join("hosts")).unwrap();
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost\n") && hosts.ends_with("\n10.0.0.2\tdb\n"),
            "{hosts}"
        );
    }

    #[test]
    fn loopback_nameservers_are_dropped() {
        let text = "nameserver 127.0.0.53\nnameserver 10.0.0.1\noptions edns0\n";
        assert_eq!(without_loopback_nameservers(text), "nameserver 10.0.0.1\noptions edns0\n");
    }
}
