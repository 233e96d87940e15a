//! `skiff port`: where a running container's ports are published, as docker port lists them.

use anyhow::bail;

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    container: String,
    /// Only this port of the container (PORT or PORT/tcp).
    port: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let containers = super::run::containers(ctx)?;
    let state = containers.find(&args.container)?;
    let wanted = match args.port.as_deref() {
        None => None,
        Some(p) => {
            let (number, protocol) = p.split_once('/').unwrap_or((p, "tcp"));
            match (number.parse::<u16>(), protocol) {
                (Ok(n), "tcp") => Some(n),
                _ => bail!("invalid port {p:?}: expected PORT or PORT/tcp"),
            }
        }
    };
    let published: Vec<_> =
        state.published.iter().filter(|m| wanted.is_none_or(|p| m.container_port == p)).collect();
    if let (Some(port), true) = (wanted, published.is_empty()) {
        bail!("no public port {port}/tcp published for {}", args.container);
    }
    for m in published {
        let host = std::net::SocketAddr::new(m.host_ip, m.host_port);
        match wanted {
            Some(_) => println!("{host}"),
            None => println!("{}/tcp -> {host}", m.container_port),
        }
    }
    Ok(())
}
