//! Published ports (`-p`): listeners on the host, and a proxy that carries each connection
//! they accept into the container's network namespace, to the port on its loopback.
//!
//! A container has a network namespace of its own with only `lo`, so nothing outside can
//! reach it; the supervisor listens for it instead. The proxy's thread enters the
//! container's namespace, and each connection it opens to the container is made there.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

/// How often the proxy looks whether its container has ended.
const TICK: Duration = Duration::from_millis(100);

/// `-p [IP:][HOST_PORT:]CONTAINER_PORT[/tcp]`: a host address whose connections go to a
/// port of the container. Host port 0 is any free one, chosen at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

impl fmt::Display for PortMapping {
    /// As docker's ps shows it: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}/tcp", SocketAddr::new(self.host_ip, self.host_port), self.container_port)
    }
}

impl FromStr for PortMapping {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid port mapping {spec:?}: {why}");
        let (addresses, protocol) = spec.rsplit_once('/').unwrap_or((spec, "tcp"));
        if protocol != "tcp" {
            return Err(bad(&format!("only tcp ports can be published, not {protocol}")));
        }
        // An IPv6 address comes in brackets: `[::1]:8080:80`.
        let (ip, ports) = match addresses.strip_prefix('[') {
            Some(rest) => {
                let (ip, ports) = rest.split_once("]:").ok_or_else(|| bad("no ports after the address"))?;
                (Some(ip), ports)
            }
            None => match addresses.matches(':').count() {
                2 => addresses.split_once(':').map(|(ip, ports)| (Some(ip), ports)).unwrap(),
                0 | 1 => (None, addresses),
                _ => return Err(bad("expected [IP:][HOST_PORT:]CONTAINER_PORT")),
            },
        };
        let host_ip = match ip {
            Some(ip) => ip.parse().map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let (host, container) = ports.split_once(':').unwrap_or(("", ports));
        let port = |text: &str| -> Result<u16, String> {
            if text.contains('-') {
                return Err(bad("port ranges are not supported"));
            }
            text.parse().map_err(|_| bad(&format!("{text:?} is not a port number")))
        };
        let host_port = if host.is_empty() { 0 } else { port(host)? };
        let container_port = port(container)?;
        if container_port == 0 {
            return Err(bad("the container's port cannot be 0"));
        }
        Ok(PortMapping { host_ip, host_port, container_port })
    }
}

/// `-P`: a mapping to a free host port for each TCP port the image exposes (`80/tcp`, or
/// `80`) that `given` does not publish already.
pub fn exposed(image_ports: &[String], given: &[PortMapping]) -> Vec<PortMapping> {
    let mut all: Vec<PortMapping> = Vec::new();
    for port in image_ports {
        let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
        let Ok(container_port) = number.parse::<u16>() else { continue };
        if protocol != "tcp" || container_port == 0 {
            continue;
        }
        if given.iter().chain(&all).all(|m| m.container_port != container_port) {
            all.push(PortMapping {
                host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                host_port: 0,
                container_port,
            });
        }
    }
    all
}

/// The host's side of a container's published ports, bound before it starts.
#[derive(Debug)]
pub struct Listeners {
    bound: Vec<(PortMapping, TcpListener)>,
}

impl Listeners {
    /// Listens on every mapping's host address; a port taken fails the whole start, naming it.
    pub fn bind(ports: &[PortMapping]) -> io::Result<Listeners> {
        let mut bound = Vec::with_capacity(ports.len());
        for mapping in ports {
            let listener = TcpListener::bind((mapping.host_ip, mapping.host_port)).map_err(|e| {
                let at = SocketAddr::new(mapping.host_ip, mapping.host_port);
                io::Error::new(
                    e.kind(),
                    format!("publishing port {}: listening on {at}: {e}", mapping.container_port),
                )
            })?;
            listener.set_nonblocking(true)?;
            let host_port = listener.local_addr()?.port();
            bound.push((PortMapping { host_port, ..*mapping }, listener));
        }
        Ok(Listeners { bound })
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// The mappings with the host ports actually bound (a free one for port 0).
    pub fn mappings(&self) -> Vec<PortMapping> {
        self.bound.iter().map(|(m, _)| *m).collect()
    }

    /// Carries connections into the network namespace `netns` (the container's) until `done`.
    /// Runs on a thread of its own, which it moves into that namespace.
    pub fn serve(self, netns: File, done: &AtomicBool) -> io::Result<()> {
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("entering the container's network namespace: {e}")))?;
        while !done.load(Ordering::Relaxed) {
            let mut fds: Vec<PollFd> =
                self.bound.iter().map(|(_, l)| PollFd::new(l.as_fd(), PollFlags::POLLIN)).collect();
            match nix::poll::poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            drop(fds);
            for (mapping, listener) in &self.bound {
                // Every pending connection; WouldBlock once there are no more.
                while let Ok((client, _)) = listener.accept() {
                    forward(client, mapping.container_port);
                }
            }
        }
        Ok(())
    }
}

/// Connects to `port` on the container's loopback (this thread is in its namespace) and
/// copies both ways until each side has closed; a port nobody listens on closes the client.
fn forward(client: TcpStream, port: u16) {
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { return };
    if client.set_nonblocking(false).is_err() {
        return;
    }
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(client_back), Ok(server_back)) = (client.try_clone(), server.try_clone()) else { return };
    let spawned = std::thread::Builder::new().name("skiff-port".into()).spawn(move || {
        let copier =
            std::thread::Builder::new().name("skiff-port".into()).spawn(move || copy(client, server));
        copy(server_back, client_back);
        if let Ok(copier) = copier {
            let _ = copier.join();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(port, error = %e, "forwarding a connection");
    }
}

/// Copies `from` into `to` until `from` ends, then ends `to`'s writing side.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(spec: &str) -> Result<(String, u16, u16), String> {
        spec.parse::<PortMapping>().map(|m| (m.host_ip.to_string(), m.host_port, m.container_port))
    }

    #[test]
    fn mappings_parse_as_docker_writes_them() {
        assert_eq!(parsed("80"), Ok(("0.0.0.0".into(), 0, 80)));
        assert_eq!(parsed("8080:80"), Ok(("0.0.0.0".into(), 8080, 80)));
        assert_eq!(parsed("127.0.0.1:8080:80/tcp"), Ok(("127.0.0.1".into(), 8080, 80)));
        assert_eq!(parsed("127.0.0.1::80"), Ok(("127.0.0.1".into(), 0, 80)));
        assert_eq!(parsed("[::1]:8080:80"), Ok(("::1".into(), 8080, 80)));
        assert!(parsed("53:53/udp").unwrap_err().contains("only tcp"));
        assert!(parsed("8000-8010:80-90").unwrap_err().contains("ranges"));
        assert!(parsed("host:8080:80").unwrap_err().contains("not an IP address"));
        assert!(parsed("8080:http").unwrap_err().contains("\"http\" is not a port number"));
        assert!(parsed("8080:0").unwrap_err().contains("cannot be 0"));
        assert!(parsed("1:2:3:4").is_err());
        let shown = "127.0.0.1:8080:80".parse::<PortMapping>().unwrap().to_string();
        assert_eq!(shown, "127.0.0.1:8080->80/tcp");
    }

    #[test]
    fn publish_all_maps_each_exposed_tcp_port_not_given() {
        let image: Vec<String> = ["80/tcp", "53/udp", "8080", "80/tcp", "443/tcp"].map(String::from).into();
        let given = ["127.0.0.1:9443:443".parse().unwrap()];
        let ports: Vec<(String, u16, u16)> = exposed(&image, &given)
            .iter()
            .map(|m| (m.host_ip.to_string(), m.host_port, m.container_port))
            .collect();
        assert_eq!(ports, [("0.0.0.0".into(), 0, 80), ("0.0.0.0".into(), 0, 8080)]);
    }

    #[test]
    fn a_connection_reaches_the_port_in_the_namespace_and_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: entering a network namespace needs root");
            return;
        }
        // This test's own namespace stands in for the container's: the echo server below
        // listens on its loopback.
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut back = conn.try_clone().unwrap();
            io::copy(&mut conn, &mut back).unwrap();
        });
        let mapping: PortMapping = format!("127.0.0.1::{port}").parse().unwrap();
        let listeners = Listeners::bind(&[mapping]).unwrap();
        let published = listeners.mappings()[0];
        assert_ne!(published.host_port, 0);
        assert!(Listeners::bind(&[published]).unwrap_err().to_string().contains("listening on 127.0.0.1:"));
        let netns = File::open("/proc/self/ns/net").unwrap();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let serving = {
            let done = done.clone();
            std::thread::spawn(move || listeners.serve(netns, &done))
        };
        let mut client = TcpStream::connect((published.host_ip, published.host_port)).unwrap();
        io::Write::write_all(&mut client, b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        io::Read::read_to_string(&mut client, &mut answer).unwrap();
        assert_eq!(answer, "ping");
        done.store(true, Ordering::Relaxed);
        serving.join().unwrap().unwrap();
    }
}
