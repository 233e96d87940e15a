//! What a container changed: the upper directory read back as `docker diff` lines, and as a
//! layer tar with OCI whiteouts (`.wh.NAME` for deletions, `.wh..wh..opq` for opaque
//! directories) — the layer `commit` appends to the image.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::resolve::{is_whiteout, join, OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::upper::{self, host};
use super::Union;

/// One line of `docker diff`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added(String),
    Changed(String),
    Deleted(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added(p) => write!(f, "A /{p}"),
            Change::Changed(p) => write!(f, "C /{p}"),
            Change::Deleted(p) => write!(f, "D /{p}"),
        }
    }
}

impl Union {
    /// Whether the lower layers alone show `path`.
    fn in_lowers(&self, path: &str) -> bool {
        self.resolve_lower_only(path).is_some()
    }

    /// The changes in the upper directory, in path order.
    pub fn changes(&self) -> io::Result<Vec<Change>> {
        let mut out = Vec::new();
        self.walk_changes("", &mut out)?;
        Ok(out)
    }

    fn walk_changes(&self, dir: &str, out: &mut Vec<Change>) -> io::Result<()> {
        let mut entries = upper::entries(&self.upper, dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in entries {
            let path = join(dir, &name);
            if is_whiteout(&meta) {
                out.push(Change::Deleted(path));
                continue;
            }
            let existed = self.in_lowers(&path);
            out.push(if existed { Change::Changed(path.clone()) } else { Change::Added(path.clone()) });
            if meta.is_dir() {
                if existed && upper::is_opaque(&self.upper, &path) {
                    // Everything the lowers had below it is gone, unless the upper has it anew.
                    if let Some(r) = self.resolve_lower_only(&path) {
                        for (child, _) in self.list(&r, &path)? {
                            if upper::lstat(&self.upper, &join(&path, &child)).is_none() {
                                out.push(Change::Deleted(join(&path, &child)));
                            }
                        }
                    }
                }
                self.walk_changes(&path, out)?;
            }
        }
        Ok(())
    }

    /// Writes the upper directory as an uncompressed layer tar with OCI whiteouts.
    pub fn write_layer_tar(&self, out: impl Write) -> io::Result<()> {
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        let mut links: HashMap<(u64, u64), String> = HashMap::new();
        self.write_dir(&mut tar, "", &mut links)?;
        tar.into_inner()?.flush()
    }

    fn write_dir<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        dir: &str,
        links: &mut HashMap<(u64, u64), String>,
    ) -> io::Result<()> {
        let mut entries = upper::entries(&self.upper, dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in entries {
            let path = join(dir, &name);
            let p = host(&self.upper, &path);
            if is_whiteout(&meta) {
                let mut h = header(tar::EntryType::Regular, &meta, 0);
                h.set_mode(0o644);
                tar.append_data(&mut h, join(dir, &format!("{WHITEOUT_PREFIX}{name}")), io::empty())?;
                continue;
            }
            if meta.file_type().is_socket() {
                // A tar cannot hold a socket; like docker commit, leave it out.
                continue;
            }
            let xattrs: Vec<(String, Vec<u8>)> = upper::visible_xattrs(&p)?
                .into_iter()
                .filter_map(|k| xattr::get(&p, &k).ok().flatten().map(|v| (format!("SCHILY.xattr.{k}"), v)))
                .collect();
            if !xattrs.is_empty() {
                tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
            }
            let t = meta.file_type();
            if t.is_dir() {
                let mut h = header(tar::EntryType::Directory, &meta, 0);
                tar.append_data(&mut h, format!("{path}/"), io::empty())?;
                if upper::is_opaque(&self.upper, &path) {
                    let mut h = header(tar::EntryType::Regular, &meta, 0);
                    h.set_mode(0o644);
                    tar.append_data(&mut h, join(&path, OPAQUE_MARKER), io::empty())?;
                }
                self.write_dir(tar, &path, links)?;
            } else if t.is_symlink() {
                let mut h = header(tar::EntryType::Symlink, &meta, 0);
                tar.append_link(&mut h, &path, fs::read_link(&p)?)?;
            } else if meta.nlink() > 1 && links.contains_key(&(meta.dev(), meta.ino())) {
                let mut h = header(tar::EntryType::Link, &meta, 0);
                tar.append_link(&mut h, &path, Path::new(&links[&(meta.dev(), meta.ino())]))?;
            } else if t.is_file() {
                links.insert((meta.dev(), meta.ino()), path.clone());
                let mut h = header(tar::EntryType::Regular, &meta, meta.len());
                tar.append_data(&mut h, &path, fs::File::open(&p)?)?;
            } else {
                let kind = if t.is_char_device() {
                    tar::EntryType::Char
                } else if t.is_block_device() {
                    tar::EntryType::Block
                } else {
                    tar::EntryType::Fifo
                };
                let mut h = header(kind, &meta, 0);
                let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                h.set_device_major(major)?;
                h.set_device_minor(minor)?;
                tar.append_data(&mut h, &path, io::empty())?;
            }
        }
        Ok(())
    }
}

fn header(kind: tar::EntryType, meta: &fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}
