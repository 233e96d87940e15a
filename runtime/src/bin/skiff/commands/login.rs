use std::io::BufRead;

use anyhow::{bail, Context as _};
use skiff::registry::{docker_config_path, store_credentials, Credentials};

use crate::context::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short, long)]
    username: String,
    /// The password (visible to other users of this machine; prefer --password-stdin).
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The registry, `host[:port]`; Docker Hub when left out.
    #[arg(default_value = skiff::reference::DOCKER_HUB)]
    registry: String,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    #[arg(default_value = skiff::reference::DOCKER_HUB)]
    registry: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let password = match args.password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        bail!("no password given for {}", args.registry);
    }
    let registry = normalize_registry(&args.registry);
    let credentials = Credentials { username: args.username, password };
    let client = ctx.client()?;
    client
        .verify_credentials(&registry, &credentials)
        .with_context(|| format!("logging in to {registry}"))?;
    let path = config_path(ctx)?;
    store_credentials(&path, &registry, Some(&credentials))?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(ctx: &Context, args: LogoutArgs) -> anyhow::Result<()> {
    let registry = normalize_registry(&args.registry);
    let path = config_path(ctx)?;
    if !store_credentials(&path, &registry, None)? {
        bail!("not logged in to {registry}");
    }
    println!("Removing login credentials for {registry}");
    Ok(())
}

fn config_path(ctx: &Context) -> anyhow::Result<std::path::PathBuf> {
    ctx.registry_options()?
        .auth_file
        .or_else(docker_config_path)
        .context("no HOME or DOCKER_CONFIG to keep credentials in")
}

/// `https://host/v2/` or `index.docker.io` → the registry name references use.
fn normalize_registry(input: &str) -> String {
    let host = input.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" => skiff::reference::DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}
