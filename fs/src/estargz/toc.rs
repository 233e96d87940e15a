//! The eStargz table of contents (`stargz.index.json`): its JSON form, and its checked form
//! ([`Entry`] with resolved [`ChunkLocation`]s) that readers use.
//!
//! The JSON types are tolerant the way stargz-snapshotter's are: every field but `name` and
//! `type` may be missing, unknown fields are ignored, `userName`/`groupName` may be given only
//! on the first entry of each uid/gid, and a `chunkSize` of 0 means "to the end of the file".
//! Checking is strict: names are normalized and may not escape the root, chunks must tile
//! their file, and data offsets must not go backwards (the compressed length of a chunk is
//! derived from the next member's offset, so order is load-bearing).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::chunk::ChunkLocation;
use crate::Digest;

/// The only TOC version there is.
pub const TOC_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("parsing the TOC JSON")]
    Json(#[source] serde_json::Error),
    #[error("TOC version {0} is not supported (only version 1 exists)")]
    Version(u32),
    #[error("entry #{index} has name {name:?}: {reason}")]
    Name { index: usize, name: String, reason: NameError },
    #[error("entry {name:?} has unknown type {kind:?}")]
    UnknownType { name: String, kind: String },
    #[error("entry {name:?} has modtime {value:?}, which is not RFC 3339")]
    ModTime { name: String, value: String },
    #[error("chunk entry #{index} does not follow a regular file")]
    OrphanChunk { index: usize },
    #[error("{name:?}: chunk at file offset {found} should start at {expected}")]
    ChunkGap { name: String, expected: u64, found: u64 },
    #[error("{name:?}: chunks cover {covered} bytes of a {size}-byte file")]
    ChunkCoverage { name: String, covered: u64, size: u64 },
    #[error("{name:?}: data at compressed offset {offset} comes after data at {previous}")]
    OffsetOrder { name: String, offset: u64, previous: u64 },
    #[error("{name:?}: data at compressed offset {offset} is not before the TOC at {toc_offset}")]
    OffsetPastToc { name: String, offset: u64, toc_offset: u64 },
    #[error("hardlink {name:?} points at {target:?}, which is not in the layer")]
    HardlinkTarget { name: String, target: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a `..` component escapes the layer root")]
    DotDot,
    #[error("it contains a NUL byte")]
    Nul,
}

/// `stargz.index.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

/// One TOC entry, field for field as stargz-snapshotter writes it. `kind` stays a string so
/// that an unknown type is reported with the entry's name rather than as a JSON error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// RFC 3339, UTC, whole seconds; empty for the epoch.
    #[serde(rename = "modtime", default, skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// The tar header's mode field: permissions plus setuid/setgid/sticky.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// Compressed offset of the gzip member holding this chunk.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Where this chunk starts in the decompressed member.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "base64_values")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// sha256 of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// 0 means "to the end of the file".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// sha256 of this chunk's uncompressed bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_digest: Option<Digest>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Xattr values are bytes, written as standard base64 (what Go's JSON does with `[]byte`).
mod base64_values {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, STANDARD.encode(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let encoded = Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default();
        encoded
            .into_iter()
            .map(|(k, v)| match STANDARD.decode(&v) {
                Ok(bytes) => Ok((k, bytes)),
                Err(e) => Err(de::Error::custom(format!("xattr {k:?}: invalid base64 value: {e}"))),
            })
            .collect()
    }
}

/// What a TOC entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl EntryKind {
    /// The TOC's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::Reg => "reg",
            EntryKind::Symlink => "symlink",
            EntryKind::Hardlink => "hardlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
        }
    }

    fn parse(s: &str) -> Option<EntryKind> {
        Some(match s {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            _ => return None,
        })
    }
}

/// The `type` of the TOC entries that carry the 2nd and later chunks of a file.
pub const CHUNK_TYPE: &str = "chunk";

/// One checked TOC entry (chunk entries folded into their file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Normalized: relative to the root, no `.`/`..`/empty components; `""` is the root.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky (no file-type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub user_name: String,
    pub group_name: String,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Symlink target as written; hardlink target normalized like `name`.
    pub link_name: String,
    pub dev_major: u64,
    pub dev_minor: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// sha256 of the whole file, when the TOC has it.
    pub digest: Option<Digest>,
    /// Regular files: the chunks, in file order, tiling `0..size`.
    pub chunks: Vec<ChunkLocation>,
}

/// Normalizes a tar or TOC path: drops leading `/` and `./`, empty and `.` components and a
/// trailing `/`; `""` is the root. A `..` component is refused rather than clamped, so a
/// crafted layer cannot name a file outside itself.
pub fn normalize_name(raw: &str) -> Result<String, NameError> {
    if raw.contains('\0') {
        return Err(NameError::Nul);
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(NameError::DotDot),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// RFC 3339 (UTC, whole seconds) of `secs`, or `""` for the epoch, as stargz writes it.
pub fn format_mtime(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) if secs != 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        _ => String::new(),
    }
}

fn parse_mtime(s: &str) -> Option<i64> {
    if s.is_empty() {
        return Some(0);
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
}

impl Toc {
    pub fn from_json(bytes: &[u8]) -> Result<Toc, TocError> {
        serde_json::from_slice(bytes).map_err(TocError::Json)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TOC always serializes")
    }

    /// Checks the TOC and resolves every file's chunks. `toc_offset` (where the TOC's gzip
    /// member starts) bounds the last data member.
    pub fn checked_entries(&self, toc_offset: u64) -> Result<Vec<Entry>, TocError> {
        if self.version != TOC_VERSION {
            return Err(TocError::Version(self.version));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(self.entries.len());
        let mut user_names: HashMap<u64, String> = HashMap::new();
        let mut group_names: HashMap<u64, String> = HashMap::new();
        // The entry that `chunk` entries extend, if the last non-chunk entry was a file.
        let mut open_file: Option<usize> = None;
        for (index, raw) in self.entries.iter().enumerate() {
            if raw.kind == CHUNK_TYPE {
                let file = open_file.ok_or(TocError::OrphanChunk { index })?;
                push_chunk(&mut entries[file], raw)?;
                continue;
            }
            let name = normalize_name(&raw.name).map_err(|reason| TocError::Name {
                index,
                name: raw.name.clone(),
                reason,
            })?;
            let kind = EntryKind::parse(&raw.kind)
                .ok_or_else(|| TocError::UnknownType { name: name.clone(), kind: raw.kind.clone() })?;
            let mtime = parse_mtime(&raw.mod_time)
                .ok_or_else(|| TocError::ModTime { name: name.clone(), value: raw.mod_time.clone() })?;
            let link_name = if kind == EntryKind::Hardlink {
                normalize_name(&raw.link_name).map_err(|reason| TocError::Name {
                    index,
                    name: raw.link_name.clone(),
                    reason,
                })?
            } else {
                raw.link_name.clone()
            };
            let user_name = inherit_name(&mut user_names, raw.uid, &raw.user_name);
            let group_name = inherit_name(&mut group_names, raw.gid, &raw.group_name);
            let mut entry = Entry {
                name,
                kind,
                size: if kind == EntryKind::Reg { raw.size } else { 0 },
                mode: (raw.mode & 0o7777) as u32,
                uid: raw.uid,
                gid: raw.gid,
                user_name,
                group_name,
                mtime,
                link_name,
                dev_major: raw.dev_major,
                dev_minor: raw.dev_minor,
                xattrs: raw.xattrs.clone(),
                digest: raw.digest,
                chunks: Vec::new(),
            };
            open_file = None;
            if kind == EntryKind::Reg && raw.size > 0 {
                push_chunk(&mut entry, raw)?;
                open_file = Some(entries.len());
            }
            entries.push(entry);
        }
        for entry in &entries {
            let covered = entry.chunks.last().map_or(0, |c| c.uncompressed_offset + c.uncompressed_len);
            if covered != entry.size {
                return Err(TocError::ChunkCoverage { name: entry.name.clone(), covered, size: entry.size });
            }
        }
        set_compressed_lengths(&mut entries, toc_offset)?;
        check_hardlinks(&entries)?;
        Ok(entries)
    }
}

/// stargz writes a user or group name only the first time its id appears.
fn inherit_name(known: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
    if name.is_empty() {
        known.get(&id).cloned().unwrap_or_default()
    } else {
        known.insert(id, name.to_string());
        name.to_string()
    }
}

/// Appends the chunk that `raw` (a `reg` or `chunk` entry) describes to `file`.
fn push_chunk(file: &mut Entry, raw: &TocEntry) -> Result<(), TocError> {
    let expected = file.chunks.last().map_or(0, |c| c.uncompressed_offset + c.uncompressed_len);
    if raw.chunk_offset != expected || expected >= file.size {
        return Err(TocError::ChunkGap { name: file.name.clone(), expected, found: raw.chunk_offset });
    }
    let len = if raw.chunk_size == 0 { file.size - raw.chunk_offset } else { raw.chunk_size };
    if len > file.size - raw.chunk_offset {
        return Err(TocError::ChunkCoverage {
            name: file.name.clone(),
            covered: raw.chunk_offset + len,
            size: file.size,
        });
    }
    file.chunks.push(ChunkLocation {
        compressed_offset: raw.offset,
        compressed_len: 0,
        inner_offset: raw.inner_offset,
        uncompressed_offset: raw.chunk_offset,
        uncompressed_len: len,
        chunk_digest: raw.chunk_digest,
    });
    Ok(())
}

/// A chunk's member ends where the next member starts: the first data offset after its own
/// (several small files may share one member, and so one offset), or the TOC.
fn set_compressed_lengths(entries: &mut [Entry], toc_offset: u64) -> Result<(), TocError> {
    let mut previous = 0;
    for entry in entries.iter() {
        for chunk in &entry.chunks {
            let offset = chunk.compressed_offset;
            if offset < previous {
                return Err(TocError::OffsetOrder { name: entry.name.clone(), offset, previous });
            }
            if offset >= toc_offset {
                return Err(TocError::OffsetPastToc { name: entry.name.clone(), offset, toc_offset });
            }
            previous = offset;
        }
    }
    let mut member_start = toc_offset;
    let mut next_member = toc_offset;
    for entry in entries.iter_mut().rev() {
        for chunk in entry.chunks.iter_mut().rev() {
            if chunk.compressed_offset != member_start {
                next_member = member_start;
                member_start = chunk.compressed_offset;
            }
            chunk.compressed_len = next_member - member_start;
        }
    }
    Ok(())
}

fn check_hardlinks(entries: &[Entry]) -> Result<(), TocError> {
    let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for e in entries.iter().filter(|e| e.kind == EntryKind::Hardlink) {
        if !names.contains(e.link_name.as_str()) {
            return Err(TocError::HardlinkTarget { name: e.name.clone(), target: e.link_name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names_and_refuses_escapes() {
        for (raw, want) in [
            ("./a/b", "a/b"),
            ("/a//b/", "a/b"),
            ("a/./b", "a/b"),
            ("./", ""),
            ("/", ""),
            ("dir/", "dir"),
            ("ü/名前", "ü/名前"),
        ] {
            assert_eq!(normalize_name(raw).unwrap(), want, "{raw:?}");
        }
        for bad in ["../x", "a/../../b", "a/..", "/.."] {
            assert_eq!(normalize_name(bad), Err(NameError::DotDot), "{bad:?}");
        }
        assert_eq!(normalize_name("a\0b"), Err(NameError::Nul));
    }

    #[test]
    fn mtimes_round_trip_through_rfc3339() {
        assert_eq!(format_mtime(0), "");
        assert_eq!(format_mtime(1_600_000_000), "2020-09-13T12:26:40Z");
        assert_eq!(parse_mtime("2020-09-13T12:26:40Z"), Some(1_600_000_000));
        assert_eq!(parse_mtime("2020-09-13T14:26:40.5+02:00"), Some(1_600_000_000));
        assert_eq!(parse_mtime(""), Some(0));
        assert_eq!(parse_mtime("yesterday"), None);
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A TOC the way stargz-snapshotter writes one: names once per uid, "./" names, the last
    /// chunk without chunkSize, unknown fields, and two small files sharing a member.
    fn stargz_style_toc() -> String {
        format!(
            r#"{{"version":1,"entries":[
            {{"name":"./","type":"dir","mode":493,"userName":"root","groupName":"root"}},
            {{"name":"./bin/","type":"dir","mode":493,"modtime":"2021-01-01T00:00:00Z","future":true}},
            {{"name":"./bin/big","type":"reg","size":10,"mode":2541,"offset":100,"chunkSize":4,
              "digest":"{D1}","chunkDigest":"{D2}","xattrs":{{"user.k":"dmFs"}}}},
            {{"name":"./bin/big","type":"chunk","offset":200,"chunkOffset":4,"chunkSize":4,"chunkDigest":"{D2}"}},
            {{"name":"./bin/big","type":"chunk","offset":300,"chunkOffset":8,"chunkDigest":"{D2}"}},
            {{"name":"bin/a","type":"reg","size":3,"offset":400,"chunkDigest":"{D2}"}},
            {{"name":"bin/b","type":"reg","size":5,"offset":400,"innerOffset":515,"chunkDigest":"{D2}"}},
            {{"name":"bin/link","type":"hardlink","linkName":"./bin/a"}},
            {{"name":"bin/sh","type":"symlink","linkName":"/bin/busybox"}},
            {{"name":"empty","type":"reg"}}
            ]}}"#
        )
    }

    #[test]
    fn reads_a_stargz_snapshotter_toc() {
        let toc = Toc::from_json(stargz_style_toc().as_bytes()).unwrap();
        let entries = toc.checked_entries(1000).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["", "bin", "bin/big", "bin/a", "bin/b", "bin/link", "bin/sh", "empty"]);
        assert_eq!(entries[1].user_name, "root", "names carry over to later entries of the uid");
        assert_eq!(entries[1].mtime, 1_609_459_200);
        let big = &entries[2];
        assert_eq!(big.mode, 0o4755);
        assert_eq!(big.xattrs["user.k"], b"val");
        let spans: Vec<(u64, u64, u64, u64)> = big
            .chunks
            .iter()
            .map(|c| (c.compressed_offset, c.compressed_len, c.uncompressed_offset, c.uncompressed_len))
            .collect();
        assert_eq!(spans, [(100, 100, 0, 4), (200, 100, 4, 4), (300, 100, 8, 2)]);
        // Both small files end where the TOC starts, whichever comes first in their member.
        let a = &entries[3].chunks[0];
        let b = &entries[4].chunks[0];
        assert_eq!((a.compressed_offset, a.compressed_len, a.inner_offset), (400, 600, 0));
        assert_eq!((b.compressed_offset, b.compressed_len, b.inner_offset), (400, 600, 515));
        assert_eq!(entries[5].link_name, "bin/a");
        assert_eq!(entries[6].link_name, "/bin/busybox");
        assert!(entries[7].chunks.is_empty());
        // The JSON written back parses to the same thing.
        assert_eq!(Toc::from_json(&toc.to_json()).unwrap(), toc);
    }

    fn check(json: &str) -> Result<Vec<Entry>, TocError> {
        Toc::from_json(json.as_bytes())?.checked_entries(1000)
    }

    #[test]
    fn refuses_malformed_tocs_naming_the_entry() {
        let cases = [
            (r#"{"version":2,"entries":[]}"#, "version 2"),
            (r#"{"version":1,"entries":[{"name":"../etc/passwd","type":"reg"}]}"#, "../etc/passwd"),
            (r#"{"version":1,"entries":[{"name":"a","type":"socket"}]}"#, "socket"),
            (r#"{"version":1,"entries":[{"name":"a","type":"dir","modtime":"noon"}]}"#, "noon"),
            (r#"{"version":1,"entries":[{"name":"a","type":"chunk"}]}"#, "#0"),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":8,"offset":5,"chunkSize":4}]}"#,
                "cover 4 bytes",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":8,"offset":5,"chunkSize":4},
                   {"name":"a","type":"chunk","offset":9,"chunkOffset":5}]}"#,
                "should start at 4",
            ),
            (
                r#"{"version":1,"entries":[{"name":"a","type":"reg","size":1,"offset":50},
                   {"name":"b","type":"reg","size":1,"offset":40}]}"#,
                "\"b\": data at compressed offset 40 comes after data at 50",
            ),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","size":1,"offset":1000}]}"#, "TOC at 1000"),
            (r#"{"version":1,"entries":[{"name":"l","type":"hardlink","linkName":"nope"}]}"#, "nope"),
            (r#"{"version":1,"entries":[{"name":"a","type":"reg","xattrs":{"k":"!!"}}]}"#, "TOC JSON"),
        ];
        for (json, needle) in cases {
            let err = check(json).unwrap_err();
            let message = format!("{err}");
            assert!(message.contains(needle), "{json}: {message:?} lacks {needle:?}");
        }
    }
}
