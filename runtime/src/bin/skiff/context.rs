//! What every verb needs: the store, the registry client and skiff's configuration.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use serde::Deserialize;
use skiff::registry::{Client, RegistryOptions};
use skiff::store::Store;

/// skiff's configuration file.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    insecure_registries: Vec<String>,
}

pub struct Context {
    root: PathBuf,
    cache_size: u64,
    config_path: PathBuf,
    insecure_registries: Vec<String>,
    /// One registry client per process: it holds the TLS roots (read from the system's
    /// certificate files, slow on a cold page cache) and each registry's probed endpoint.
    client: OnceLock<Arc<Client>>,
}

impl Context {
    pub fn new(
        root: PathBuf,
        cache_size: u64,
        config_path: PathBuf,
        insecure_registries: Vec<String>,
    ) -> Context {
        Context { root, cache_size, config_path, insecure_registries, client: OnceLock::new() }
    }

    /// The chunk cache under the root, held to the `--cache-size` budget.
    pub fn cache(&self) -> anyhow::Result<skiff_fs::ChunkCache> {
        let dir = self.root.join("cache");
        skiff_fs::ChunkCache::open(&dir, self.cache_size)
            .with_context(|| format!("opening the chunk cache at {}", dir.display()))
    }

    /// The global flags as given, to pass on to a skiff started in the background.
    pub fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = vec!["--root".into(), self.root.clone().into()];
        out.extend(["--cache-size".into(), self.cache_size.to_string().into()]);
        out.extend(["--config".into(), self.config_path.clone().into()]);
        for r in &self.insecure_registries {
            out.extend(["--insecure-registry".into(), r.into()]);
        }
        out
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.root).with_context(|| format!("opening the image store at {}", self.root.display()))
    }

    pub fn registry_options(&self) -> anyhow::Result<RegistryOptions> {
        let config: Config = match std::fs::read(&self.config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading skiff's config {}", self.config_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.config_path.display())),
        };
        let mut options = RegistryOptions::default();
        options.insecure_registries.extend(config.insecure_registries);
        options.insecure_registries.extend(self.insecure_registries.iter().cloned());
        options.cert_dirs.push(self.root.join("certs.d"));
        Ok(options)
    }

    pub fn client(&self) -> anyhow::Result<Arc<Client>> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let client = Arc::new(Client::new(self.registry_options()?)?);
        Ok(self.client.get_or_init(|| client).clone())
    }
}
