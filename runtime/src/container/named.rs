//! Named volumes (`-v NAME:/path`, `skiff volume`), as docker's local volumes: a directory of
//! their own, `<root>/volumes/<name>/_data`, that outlives the containers using it. The first
//! container to start with an empty one fills it from its image, as for an anonymous volume
//! (`_data` is made then; `volume create` makes only its parent). A volume a container uses,
//! running or not, is not removed.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::State;
use crate::sandbox::is_volume_name;

#[derive(Debug, thiserror::Error)]
pub enum NamedVolumeError {
    #[error("invalid volume name {0:?}: a letter or digit, then at least one more of those or _ . -")]
    BadName(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by container {container}")]
    InUse { name: String, container: String },
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: std::io::Error },
}

/// One named volume, as `volume ls` and `volume inspect` show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NamedVolume {
    pub name: String,
    pub driver: &'static str,
    pub mountpoint: PathBuf,
    pub created_at: Option<DateTime<Utc>>,
}

/// The named volumes of one skiff root.
#[derive(Debug, Clone)]
pub struct NamedVolumes {
    dir: PathBuf,
}

impl NamedVolumes {
    pub fn open(root: &Path) -> NamedVolumes {
        NamedVolumes { dir: root.join("volumes") }
    }

    /// Where volume `name`'s files are: what containers bind.
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// Whether `path` is in a named volume.
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.dir)
    }

    /// Makes volume `name` unless it exists; whether it was made.
    pub fn create(&self, name: &str) -> Result<bool, NamedVolumeError> {
        if !is_volume_name(name) {
            return Err(NamedVolumeError::BadName(name.to_string()));
        }
        let path = self.dir.join(name);
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        match std::fs::create_dir(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("creating", &path)(e)),
        }
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<NamedVolume>, NamedVolumeError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &self.dir)(e)),
        };
        let mut volumes: Vec<NamedVolume> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| is_volume_name(name))
            .filter_map(|name| self.get(&name).ok())
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    pub fn get(&self, name: &str) -> Result<NamedVolume, NamedVolumeError> {
        let path = self.dir.join(name);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() && is_volume_name(name) => meta,
            _ => return Err(NamedVolumeError::NotFound(name.to_string())),
        };
        Ok(NamedVolume {
            name: name.to_string(),
            driver: "local",
            mountpoint: self.data(name),
            created_at: meta.modified().ok().map(DateTime::<Utc>::from),
        })
    }

    /// The containers (running or not) that use volume `name`.
    pub fn users<'a>(&self, name: &str, containers: &'a [State]) -> Vec<&'a State> {
        let data = self.data(name);
        containers.iter().filter(|c| c.spec.volumes.iter().any(|v| v.host == data)).collect()
    }

    /// Removes volume `name` and its files, unless a container uses it.
    pub fn remove(&self, name: &str, containers: &[State]) -> Result<(), NamedVolumeError> {
        self.get(name)?;
        if let Some(user) = self.users(name, containers).first() {
            return Err(NamedVolumeError::InUse { name: name.to_string(), container: user.name.clone() });
        }
        let path = self.dir.join(name);
        std::fs::remove_dir_all(&path).map_err(io_err("removing", &path))
    }
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NamedVolumeError + 'a {
    move |source| NamedVolumeError::Io { step, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_made_listed_and_removed_unless_used() {
        let root = tempfile::tempdir().unwrap();
        let volumes = NamedVolumes::open(root.path());
        assert!(volumes.create("data").unwrap());
        assert!(!volumes.create("data").unwrap(), "made once");
        assert!(matches!(volumes.create("-bad"), Err(NamedVolumeError::BadName(_))));
        volumes.create("other").unwrap();
        let names: Vec<String> = volumes.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["data", "other"]);
        assert_eq!(volumes.get("data").unwrap().mountpoint, root.path().join("volumes/data/_data"));
        volumes.remove("other", &[]).unwrap();
        assert!(matches!(volumes.get("other"), Err(NamedVolumeError::NotFound(_))));
        assert!(matches!(volumes.remove("other", &[]), Err(NamedVolumeError::NotFound(_))));
    }
}
