//! Round trips through the whole format: tar → [`convert`] → blob → [`EstargzReader`] and
//! [`decompress_chunk`], checked byte for byte and field for field against what went in.

use std::collections::BTreeMap;
use std::io::Read;

use flate2::read::MultiGzDecoder;

use super::*;
use crate::{BlobSource, Digest, SourceError};

/// Cross-checks against the system's GNU tar.
mod system;

/// A blob in memory.
struct MemSource(Vec<u8>);

impl BlobSource for MemSource {
    fn name(&self) -> String {
        "test blob".to_string()
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One input entry and everything the layer must say about it.
#[derive(Clone)]
struct Spec {
    path: String,
    /// What `path` normalizes to.
    name: String,
    kind: EntryKind,
    mode: u32,
    owner: (u64, u64, &'static str, &'static str),
    mtime: u64,
    /// Written as a PAX `mtime` record instead (and rounded in the TOC).
    pax_mtime: Option<&'static str>,
    link: String,
    device: (u32, u32),
    xattrs: Vec<(&'static str, Vec<u8>)>,
    content: Vec<u8>,
    gnu: bool,
    /// Write the long path in a PAX `path` record rather than a GNU long-name entry.
    pax_path: bool,
}

impl Spec {
    fn new(path: &str, kind: EntryKind) -> Spec {
        Spec {
            path: path.to_string(),
            name: normalize_name(path).unwrap(),
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            owner: (0, 0, "root", "root"),
            mtime: 1_600_000_000,
            pax_mtime: None,
            link: String::new(),
            device: (0, 0),
            xattrs: Vec::new(),
            content: Vec::new(),
            gnu: true,
            pax_path: false,
        }
    }

    fn file(path: &str, content: Vec<u8>) -> Spec {
        Spec { content, ..Spec::new(path, EntryKind::Reg) }
    }

    fn link(path: &str, kind: EntryKind, target: &str) -> Spec {
        Spec { link: target.to_string(), ..Spec::new(path, kind) }
    }

    fn expected_link(&self) -> String {
        match self.kind {
            EntryKind::Hardlink => normalize_name(&self.link).unwrap(),
            _ => self.link.clone(),
        }
    }

    fn append_to(&self, b: &mut tar::Builder<Vec<u8>>) {
        let mut records: Vec<(String, Vec<u8>)> =
            self.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone())).collect();
        if let Some(t) = self.pax_mtime {
            records.push(("mtime".to_string(), t.as_bytes().to_vec()));
        }
        if self.pax_path {
            records.push(("path".to_string(), self.path.as_bytes().to_vec()));
        }
        if !records.is_empty() {
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        }
        let mut h = if self.gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
        h.set_entry_type(match self.kind {
            EntryKind::Dir => tar::EntryType::Directory,
            EntryKind::Reg => tar::EntryType::Regular,
            EntryKind::Symlink => tar::EntryType::Symlink,
            EntryKind::Hardlink => tar::EntryType::Link,
            EntryKind::Char => tar::EntryType::Char,
            EntryKind::Block => tar::EntryType::Block,
            EntryKind::Fifo => tar::EntryType::Fifo,
        });
        h.set_mode(self.mode);
        h.set_uid(self.owner.0);
        h.set_gid(self.owner.1);
        h.set_username(self.owner.2).unwrap();
        h.set_groupname(self.owner.3).unwrap();
        h.set_mtime(self.mtime);
        h.set_size(self.content.len() as u64);
        if matches!(self.kind, EntryKind::Char | EntryKind::Block) {
            h.set_device_major(self.device.0).unwrap();
            h.set_device_minor(self.device.1).unwrap();
        }
        match self.kind {
            EntryKind::Symlink | EntryKind::Hardlink => {
                b.append_link(&mut h, &self.path, &self.link).unwrap()
            }
            _ if self.pax_path => {
                let stub = &self.path.as_bytes()[..90];
                h.as_old_mut().name[..90].copy_from_slice(stub);
                h.set_cksum();
                b.append(&h, &self.content[..]).unwrap();
            }
            _ => b.append_data(&mut h, &self.path, &self.content[..]).unwrap(),
        }
    }
}

fn build_tar(specs: &[Spec]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for spec in specs {
        spec.append_to(&mut b);
    }
    b.into_inner().unwrap()
}

const CHUNK: u64 = 1024;

/// Every kind of entry and metadata a layer can hold, with files around the chunk size.
fn sample(rng: &mut Rng) -> Vec<Spec> {
    use EntryKind::*;
    vec![
        Spec::new("./", Dir),
        Spec::new("bin/", Dir),
        Spec { mode: 0o1777, ..Spec::new("tmp", Dir) },
        Spec { mode: 0o2775, owner: (0, 50, "root", "staff"), ..Spec::new("srv/", Dir) },
        Spec::file("bin/empty", Vec::new()),
        Spec::file("bin/a.txt", rng.bytes(10)),
        Spec { gnu: false, ..Spec::file("bin/b.txt", rng.bytes(100)) },
        Spec::file("./bin/c.txt", rng.bytes(250)),
        Spec::file("bin/big", rng.bytes(3 * CHUNK as usize + 17)),
        Spec::file("bin/exact", rng.bytes(CHUNK as usize)),
        Spec::file("bin/two", rng.bytes(2 * CHUNK as usize)),
        Spec::file("bin/one-over", rng.bytes(CHUNK as usize + 1)),
        Spec { mode: 0o4755, ..Spec::file("bin/su", rng.bytes(700)) },
        Spec { mode: 0o2711, ..Spec::file("bin/wall", rng.bytes(20)) },
        Spec::link("bin/sh", Symlink, "/bin/busybox"),
        Spec::link("lib", Symlink, "usr/lib"),
        Spec::link("bin/a-link", Hardlink, "bin/a.txt"),
        Spec::new("dev/", Dir),
        Spec { device: (1, 3), mode: 0o666, ..Spec::new("dev/null", Char) },
        Spec { device: (8, 0), mode: 0o660, owner: (0, 6, "root", "disk"), ..Spec::new("dev/sda", Block) },
        Spec::new("run/fifo", Fifo),
        Spec {
            xattrs: vec![
                ("user.comment", b"hello\nworld".to_vec()),
                ("security.capability", vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0]),
            ],
            ..Spec::file("bin/ping", rng.bytes(64))
        },
        Spec { xattrs: vec![("trusted.overlay.opaque", b"y".to_vec())], ..Spec::new("opaque", Dir) },
        Spec {
            owner: (1000, 1000, "user", "users"),
            pax_mtime: Some("1600000000.7"),
            mtime: 5,
            ..Spec::file("home/user/notes", rng.bytes(30))
        },
        Spec { owner: (1000, 1000, "user", "users"), ..Spec::new("home/user/", Dir) },
        Spec::file(&format!("deep/{}/file-gnu", "d".repeat(120)), rng.bytes(1500)),
        Spec { pax_path: true, ..Spec::file(&format!("deep/{}/file-pax", "p".repeat(130)), rng.bytes(40)) },
        Spec::link("deep/long-link", Symlink, &format!("/{}", "t".repeat(150))),
        Spec { gnu: false, ..Spec::file("données/ファイル.txt", "non-ASCII ✓".as_bytes().to_vec()) },
        Spec::file("etc/.wh.removed", Vec::new()),
        Spec::file("var/.wh..wh..opq", Vec::new()),
        Spec::file("etc/hosts", rng.bytes(40)),
    ]
}

fn options() -> ConvertOptions {
    ConvertOptions {
        chunk_size: CHUNK,
        small_file_threshold: 300,
        pack_limit: 4096,
        ..ConvertOptions::default()
    }
}

fn convert_specs(specs: &[Spec], options: &ConvertOptions) -> (Vec<u8>, ConvertResult) {
    let mut blob = Vec::new();
    let result = convert(&build_tar(specs)[..], &mut blob, options).unwrap();
    (blob, result)
}

fn gunzip_all(blob: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    MultiGzDecoder::new(blob).read_to_end(&mut tar).unwrap();
    tar
}

/// Checks everything a reader can see against the specs, every chunk on its own included.
fn verify(blob: &[u8], specs: &[Spec], result: &ConvertResult) -> EstargzReader {
    let source = MemSource(blob.to_vec());
    let reader = EstargzReader::open(&source, Some(&result.toc_digest)).unwrap();
    assert_eq!(reader.toc_digest(), result.toc_digest);
    let tar = gunzip_all(blob);
    assert_eq!(result.diff_id, Digest::of(&tar));
    assert_eq!(result.uncompressed_size, tar.len() as u64);
    assert_eq!(result.compressed_size, blob.len() as u64);
    assert_eq!(result.blob_digest, Digest::of(blob));

    // The last spec of each name is the one that counts.
    let mut last: BTreeMap<&str, &Spec> = BTreeMap::new();
    for spec in specs {
        last.insert(spec.name.as_str(), spec);
    }
    for spec in last.values() {
        let e = reader.entry(&spec.name).unwrap_or_else(|| panic!("{:?} missing", spec.name));
        let what = &spec.name;
        assert_eq!(e.kind, spec.kind, "{what}");
        assert_eq!(e.mode, spec.mode, "{what}");
        assert_eq!((e.uid, e.gid), (spec.owner.0, spec.owner.1), "{what}");
        assert_eq!((e.user_name.as_str(), e.group_name.as_str()), (spec.owner.2, spec.owner.3), "{what}");
        let mtime = if spec.pax_mtime.is_some() { 1_600_000_001 } else { spec.mtime as i64 };
        assert_eq!(e.mtime, mtime, "{what}");
        assert_eq!(e.link_name, spec.expected_link(), "{what}");
        assert_eq!(
            (e.dev_major, e.dev_minor),
            (u64::from(spec.device.0), u64::from(spec.device.1)),
            "{what}"
        );
        let xattrs: BTreeMap<String, Vec<u8>> =
            spec.xattrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(e.xattrs, xattrs, "{what}");
        if spec.kind != EntryKind::Reg {
            continue;
        }
        assert_eq!(e.size, spec.content.len() as u64, "{what}");
        assert_eq!(e.digest, Some(Digest::of(&spec.content)), "{what}");
        assert_eq!(reader.read_file(&source, &spec.name).unwrap(), spec.content, "{what}");
        let mut next = 0;
        for chunk in &e.chunks {
            assert_eq!(chunk.uncompressed_offset, next, "{what}");
            assert!(chunk.uncompressed_len <= CHUNK, "{what}");
            next += chunk.uncompressed_len;
            let range = chunk.compressed_range();
            assert!(range.end <= reader.toc_offset(), "{what}");
            let bytes = decompress_chunk(&blob[range.start as usize..range.end as usize], chunk).unwrap();
            let file_range = chunk.file_range();
            assert_eq!(bytes, &spec.content[file_range.start as usize..file_range.end as usize], "{what}");
        }
        assert_eq!(next, spec.content.len() as u64, "{what}");
    }
    for link in specs.iter().filter(|s| s.kind == EntryKind::Hardlink) {
        let target = last[link.expected_link().as_str()];
        assert_eq!(reader.read_file(&source, &link.name).unwrap(), target.content);
    }
    reader
}

#[test]
fn round_trip_preserves_every_byte_and_every_field() {
    let specs = sample(&mut Rng(7));
    let (blob, result) = convert_specs(&specs, &options());
    let reader = verify(&blob, &specs, &result);

    assert_eq!(result.toc.entries[0].name, NO_PREFETCH_LANDMARK);
    assert_eq!(reader.prefetch_end(), Some(0));
    assert_eq!(reader.chunks("bin/big").unwrap().len(), 4);
    assert_eq!(reader.chunks("bin/exact").unwrap().len(), 1);
    assert_eq!(reader.chunks("bin/one-over").unwrap().len(), 2);
    // Small neighbours share a member; the 250-byte file follows the 100-byte one in it.
    let b = reader.chunks("bin/b.txt").unwrap()[0];
    let c = reader.chunks("bin/c.txt").unwrap()[0];
    assert_eq!(b.compressed_range(), c.compressed_range());
    assert!(c.inner_offset > b.inner_offset + 100);
    // One fetch and one pass over that member yields all its files.
    let member = reader.member_chunks(b.compressed_offset);
    let names: Vec<&str> = member.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["bin/a.txt", "bin/b.txt", "bin/c.txt"]);
    let range = b.compressed_range();
    let locations: Vec<ChunkLocation> = member.iter().map(|(_, c)| **c).collect();
    let contents = decompress_member(&blob[range.start as usize..range.end as usize], &locations).unwrap();
    for ((name, _), content) in member.iter().zip(contents) {
        assert_eq!(content, specs.iter().find(|s| s.name == *name).unwrap().content);
    }
    // ... but never with a chunk of a large file.
    let big = reader.chunks("bin/big").unwrap();
    assert!(big.windows(2).all(|w| w[0].compressed_range().end == w[1].compressed_offset));
    assert!(big.iter().all(|c| c.inner_offset == 0));

    // Header blocks are copied byte for byte: the input tar, less its end-of-archive blocks,
    // follows the landmark (one header block and one data block) in the decompressed layer.
    let input = build_tar(&specs);
    let body = &input[..input.len() - 1024];
    assert_eq!(&gunzip_all(&blob)[1024..1024 + body.len()], body);

    let annotations = result.annotations();
    assert_eq!(annotations[0], (TOC_DIGEST_ANNOTATION, result.toc_digest.to_string()));
    assert_eq!(annotations[1], (UNCOMPRESSED_SIZE_ANNOTATION, result.uncompressed_size.to_string()));
    let footer = super::footer::read_footer(&blob).unwrap();
    assert_eq!(annotations[2], (TOC_OFFSET_ANNOTATION, footer.toc_offset.to_string()));
}

/// The names a tar reader sees in the converted layer, normalized.
fn listed_names(blob: &[u8]) -> Vec<String> {
    let tar = gunzip_all(blob);
    let mut archive = tar::Archive::new(&tar[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| normalize_name(std::str::from_utf8(&e.unwrap().path_bytes()).unwrap()).unwrap())
        .collect()
}

fn expected_names(specs: &[Spec]) -> Vec<String> {
    let mut names = vec![NO_PREFETCH_LANDMARK.to_string()];
    names.extend(specs.iter().map(|s| s.name.clone()));
    names.push(TOC_TAR_NAME.to_string());
    names
}

#[test]
fn the_layer_is_one_gzip_stream_of_one_tar_with_the_same_entries() {
    let specs = sample(&mut Rng(11));
    let (blob, _) = convert_specs(&specs, &options());
    assert_eq!(listed_names(&blob), expected_names(&specs));

    let tar = gunzip_all(&blob);
    let mut archive = tar::Archive::new(&tar[..]);
    for (entry, spec) in archive.entries().unwrap().skip(1).zip(&specs) {
        let mut entry = entry.unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, spec.content, "{}", spec.name);
        assert_eq!(entry.header().mode().unwrap(), spec.mode, "{}", spec.name);
    }
}

#[test]
fn a_corrupted_chunk_is_an_error_naming_its_digest() {
    let specs = sample(&mut Rng(17));
    // Stored deflate blocks: a flipped payload byte still inflates, so only the digest
    // check stands between the corruption and the caller.
    let (mut blob, _) = convert_specs(&specs, &ConvertOptions { compression_level: 0, ..options() });
    let source = MemSource(blob.clone());
    let reader = EstargzReader::open(&source, None).unwrap();
    let chunk = reader.chunks("bin/big").unwrap()[1];
    let digest = chunk.chunk_digest.unwrap().to_string();
    // 10 bytes of gzip header, 5 of stored-block header, then the chunk's bytes.
    blob[chunk.compressed_offset as usize + 15 + 100] ^= 0x55;
    let corrupted = MemSource(blob.clone());
    let err = reader.read_file(&corrupted, "bin/big").unwrap_err();
    let message = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(message.contains(&digest), "{message}");
    assert!(message.contains("bin/big"), "{message}");
    let range = chunk.compressed_range();
    let err = decompress_chunk(&blob[range.start as usize..range.end as usize], &chunk).unwrap_err();
    assert!(matches!(err, ChunkError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest));
    // The other chunks are intact.
    assert!(reader.read_chunk(&corrupted, &reader.chunks("bin/big").unwrap()[0]).is_ok());

    // With real compression the same flip breaks inflating; still an error naming the chunk.
    let (mut blob, _) = convert_specs(&specs, &options());
    let reader = EstargzReader::open(&MemSource(blob.clone()), None).unwrap();
    let chunk = reader.chunks("bin/big").unwrap()[1];
    blob[chunk.compressed_offset as usize + 200] ^= 0x55;
    let err = reader.read_chunk(&MemSource(blob), &chunk).unwrap_err();
    let message = format!("{}", std::error::Error::source(&err).unwrap());
    assert!(message.contains(&chunk.chunk_digest.unwrap().to_string()), "{message}");
}

#[test]
fn a_wrong_toc_digest_is_refused_naming_both_digests() {
    let (blob, result) = convert_specs(&sample(&mut Rng(19)), &options());
    let wrong = Digest::of(b"some other TOC");
    let err = EstargzReader::open(&MemSource(blob.clone()), Some(&wrong)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ReadError::TocDigest { .. }), "{message}");
    assert!(
        message.contains(&wrong.to_string()) && message.contains(&result.toc_digest.to_string()),
        "{message}"
    );

    let err = EstargzReader::open(&MemSource(gunzip_all(&blob)), None).unwrap_err();
    assert!(matches!(err, ReadError::NoFooter { .. }), "{err}");
}

#[test]
fn prioritized_files_come_first_then_the_prefetch_landmark() {
    let specs = sample(&mut Rng(23));
    let prioritized = ["/bin/big", "bin/a-link", "./etc/hosts", "not/there"].map(String::from).to_vec();
    let (blob, result) = convert_specs(&specs, &ConvertOptions { prioritized, ..options() });
    assert_eq!(result.missing_prioritized, ["not/there"]);
    let reader = verify(&blob, &specs, &result);
    assert!(reader.entry(NO_PREFETCH_LANDMARK).is_none());

    let names: Vec<&str> = reader.entries().iter().map(|e| e.name.as_str()).collect();
    let landmark = names.iter().position(|n| *n == PREFETCH_LANDMARK).unwrap();
    // Each file after its directories, the hardlink after its target.
    assert_eq!(names[..landmark], ["", "bin", "bin/big", "bin/a.txt", "bin/a-link", "etc/hosts"]);
    let mut listed = listed_names(&blob);
    assert_eq!(listed.remove(landmark), PREFETCH_LANDMARK);
    let mut want = expected_names(&specs)[1..].to_vec();
    listed.sort();
    want.sort();
    assert_eq!(listed, want, "every entry exactly once");

    // Prefetching the blob up to the landmark fetches the prioritized files whole.
    let end = reader.prefetch_end().unwrap();
    assert_eq!(end, reader.chunks(PREFETCH_LANDMARK).unwrap()[0].compressed_offset);
    for name in ["bin/big", "bin/a.txt", "etc/hosts"] {
        assert!(reader.chunks(name).unwrap().iter().all(|c| c.compressed_range().end <= end), "{name}");
    }
    assert!(reader.chunks("bin/b.txt").unwrap()[0].compressed_offset >= end);

    // The layer's index keeps where they end, through its JSON too, and lists them.
    let index = crate::lazy::index_estargz(&reader, "test blob").unwrap();
    let index = crate::index::LayerIndex::from_bytes(&index.to_bytes()).unwrap();
    let prioritized: Vec<String> =
        index.prioritized_files().into_iter().map(|(_, id)| index.path_of(id)).collect();
    assert_eq!(prioritized, ["bin/big", "bin/a.txt", "etc/hosts"], "files only, the hardlink's target once");
    let (blob, result) = convert_specs(&specs, &options());
    let plain = EstargzReader::open(&MemSource(blob), Some(&result.toc_digest)).unwrap();
    assert!(crate::lazy::index_estargz(&plain, "test blob").unwrap().prioritized_files().is_empty());
}

#[test]
fn read_cuts_bound_each_range_and_join_ranges_close_together() {
    let gap = MIN_CUT_GAP;
    assert_eq!(read_cuts(&[]), Vec::<u64>::new());
    // Unsorted, overlapping, empty and touching ranges; a range from 0 needs no cut there.
    let ranges = [(100_000, 104_096), (0, 4096), (2048, 8192), (50, 50), (104_096 + gap - 1, 200_000)];
    assert_eq!(read_cuts(&ranges), [8192, 100_000, 200_000]);
    assert_eq!(read_cuts(&[(0, 4096), (4096 + gap, 3 * gap)]), [4096, 4096 + gap, 3 * gap]);
}

#[test]
fn cuts_end_chunks_where_the_read_ranges_do() {
    let mut rng = Rng(41);
    let big = rng.bytes(10 * CHUNK as usize + 17);
    let small = rng.bytes(250);
    let specs = vec![
        Spec::file("a/tiny", rng.bytes(20)),
        Spec::file("a/small", small),
        Spec::file("a/big", big),
        Spec::file("a/other", rng.bytes(3 * CHUNK as usize)),
    ];
    let cuts = [
        // Inside the first chunk, across a chunk boundary, and one past the end (ignored).
        ("./a/big", vec![30, 70, CHUNK * 3 + 5, CHUNK * 4 + 9, CHUNK * 20]),
        ("a/small", vec![100]),
        ("a/missing", vec![5]),
    ];
    let cut = ConvertOptions {
        cuts: cuts.into_iter().map(|(p, c)| (p.to_string(), c)).collect(),
        prioritized: vec!["a/big".into()],
        ..options()
    };
    let (blob, result) = convert_specs(&specs, &cut);
    let reader = verify(&blob, &specs, &result);
    let starts = |name: &str| -> Vec<u64> {
        reader.chunks(name).unwrap().iter().map(|c| c.uncompressed_offset).collect()
    };
    // After a cut, chunks run their full size from the cut.
    let c = CHUNK;
    assert_eq!(
        starts("a/big"),
        [
            0,
            30,
            70,
            70 + c,
            70 + 2 * c,
            3 * c + 5,
            4 * c + 5,
            4 * c + 9,
            5 * c + 9,
            6 * c + 9,
            7 * c + 9,
            8 * c + 9
        ]
        .into_iter()
        .chain([9 * c + 9, 10 * c + 9])
        .collect::<Vec<_>>()
    );
    assert_eq!(starts("a/small"), [0, 100]);
    assert_eq!(starts("a/other"), [0, c, 2 * c]);
    // A cut chunk is a member of its own: fetching it fetches nothing of its neighbours.
    let big = reader.chunks("a/big").unwrap();
    assert!(big.windows(2).all(|w| w[0].compressed_offset < w[1].compressed_offset));

    let bad = ConvertOptions { cuts: [("../x".to_string(), vec![1])].into(), ..options() };
    let err = convert(&build_tar(&specs)[..], &mut Vec::new(), &bad).unwrap_err();
    assert!(err.to_string().contains("../x"), "{err}");
}

#[test]
fn a_legacy_footer_still_opens() {
    let specs = sample(&mut Rng(29));
    let (mut blob, result) = convert_specs(&specs, &options());
    let toc_offset = parse_footer(&blob).unwrap();
    blob.truncate(blob.len() - FOOTER_SIZE);
    let mut legacy = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
    legacy.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    legacy.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(legacy.len(), LEGACY_FOOTER_SIZE);
    blob.extend_from_slice(&legacy);
    let source = MemSource(blob);
    let reader = EstargzReader::open(&source, Some(&result.toc_digest)).unwrap();
    let big = specs.iter().find(|s| s.name == "bin/big").unwrap();
    assert_eq!(reader.read_file(&source, "bin/big").unwrap(), big.content);
}

#[test]
fn reconverting_a_layer_replaces_its_toc_and_landmarks() {
    let specs = sample(&mut Rng(31));
    let (blob, _) = convert_specs(&specs, &options());
    let mut again = Vec::new();
    let result = convert(&gunzip_all(&blob)[..], &mut again, &options()).unwrap();
    assert_eq!(listed_names(&again), expected_names(&specs));
    verify(&again, &specs, &result);
}

#[test]
fn bad_input_and_options_are_errors() {
    let tar = build_tar(&sample(&mut Rng(37)));
    let mut out = Vec::new();
    let err = convert(&tar[..], &mut out, &ConvertOptions { chunk_size: 0, ..options() }).unwrap_err();
    assert!(matches!(err, ConvertError::ZeroChunkSize));
    let err =
        convert(&tar[..], &mut out, &ConvertOptions { compression_level: 10, ..options() }).unwrap_err();
    assert!(matches!(err, ConvertError::CompressionLevel(10)));
    // Cut inside the content of bin/big.
    let at = tar.windows(7).position(|w| w == b"bin/big").unwrap() + 512 + 1000;
    let err = convert(&tar[..at], &mut Vec::new(), &options()).unwrap_err();
    assert!(err.to_string().contains("bin/big"), "{err}");
    let err =
        convert(&tar[..at], &mut Vec::new(), &ConvertOptions { prioritized: vec!["x".into()], ..options() })
            .unwrap_err();
    assert!(matches!(err, ConvertError::Tar(TarError::Truncated { .. })), "{err}");

    // An empty input is an empty layer: only the landmark.
    let (blob, result) = convert_specs(&[], &options());
    assert_eq!(listed_names(&blob), [NO_PREFETCH_LANDMARK, TOC_TAR_NAME]);
    verify(&blob, &[], &result);
}

/// Random layers with file sizes on and around chunk boundaries, random packing limits,
/// levels and priorities: every byte must come back through every path.
#[test]
fn random_layers_round_trip() {
    for seed in 1..=120u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let chunk = 1 + rng.below(300);
        let mut specs = vec![Spec::new("d", EntryKind::Dir)];
        for i in 0..1 + rng.below(14) {
            let size = match rng.below(10) {
                0 => 0,
                1 => 1,
                2 => chunk - 1,
                3 => chunk,
                4 => chunk + 1,
                5 => 2 * chunk - 1,
                6 => 2 * chunk,
                7 => 2 * chunk + 1,
                _ => rng.below(5 * chunk),
            };
            let dir = if rng.below(2) == 0 { "d/" } else { "" };
            specs.push(Spec::file(&format!("{dir}f{i}"), rng.bytes(size as usize)));
        }
        let prioritized = if rng.below(3) == 0 {
            specs.iter().filter(|_| rng.below(3) == 0).map(|s| s.name.clone()).collect()
        } else {
            Vec::new()
        };
        let mut cuts = std::collections::HashMap::new();
        for spec in &specs {
            if rng.below(3) == 0 {
                let size = spec.content.len() as u64 + 2;
                cuts.insert(spec.name.clone(), (0..rng.below(6)).map(|_| rng.below(size)).collect());
            }
        }
        let options = ConvertOptions {
            chunk_size: chunk,
            cuts,
            small_file_threshold: rng.below(2 * chunk + 2),
            pack_limit: rng.below(4 * chunk + 2),
            compression_level: [0, 1, 6, 9][rng.below(4) as usize],
            prioritized,
            ..ConvertOptions::default()
        };
        let (blob, result) = convert_specs(&specs, &options);
        let reader = EstargzReader::open(&MemSource(blob.clone()), Some(&result.toc_digest)).unwrap();
        for spec in specs.iter().filter(|s| s.kind == EntryKind::Reg) {
            let chunks = reader.chunks(&spec.name).unwrap();
            assert!(chunks.iter().all(|c| c.uncompressed_len <= chunk), "seed {seed}");
            let mut content = Vec::new();
            for c in chunks {
                let range = c.compressed_range();
                content.extend(decompress_chunk(&blob[range.start as usize..range.end as usize], c).unwrap());
            }
            assert_eq!(content, spec.content, "seed {seed}, {}", spec.name);
        }
        // Each member inflated once yields the same bytes as chunk by chunk.
        let mut members: Vec<u64> =
            reader.entries().iter().flat_map(|e| e.chunks.iter().map(|c| c.compressed_offset)).collect();
        members.dedup();
        for offset in members {
            let member: Vec<ChunkLocation> = reader.member_chunks(offset).iter().map(|(_, c)| **c).collect();
            let range = member[0].compressed_range();
            let compressed = &blob[range.start as usize..range.end as usize];
            let together = decompress_member(compressed, &member).unwrap();
            for (c, bytes) in member.iter().zip(together) {
                assert_eq!(bytes, decompress_chunk(compressed, c).unwrap(), "seed {seed}");
            }
        }
        let mut listed = listed_names(&blob);
        listed.sort();
        let mut want: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let landmark = if options.prioritized.is_empty() { NO_PREFETCH_LANDMARK } else { PREFETCH_LANDMARK };
        want.extend([TOC_TAR_NAME.to_string(), landmark.to_string()]);
        want.sort();
        assert_eq!(listed, want, "seed {seed}");
        assert_eq!(result.diff_id, Digest::of(&gunzip_all(&blob)), "seed {seed}");
    }
}

/// 3000 small files `f/NNNNN`: a TOC of a few hundred KiB, past the first read of the tail.
fn large_toc_layer(seed: u64) -> (Vec<u8>, ConvertResult) {
    let mut rng = Rng(seed);
    let specs: Vec<Spec> = (0..3000).map(|i| Spec::file(&format!("f/{i:05}"), rng.bytes(8))).collect();
    convert_specs(&specs, &options())
}

#[test]
fn a_toc_larger_than_the_tail_read_costs_one_more_range_and_no_byte_twice() {
    let (blob, result) = large_toc_layer(7);
    let size = blob.len() as u64;
    let source = crate::source::testing::LoggedBlob::new(blob);
    let reader = EstargzReader::open(&source, Some(&result.toc_digest)).unwrap();
    let tail = super::reader::TAIL_READ;
    assert!(size - reader.toc_offset() > tail, "the TOC fits in the tail read");
    assert_eq!(reader.entries().iter().filter(|e| e.name.starts_with("f/")).count(), 3000);
    let reads = source.take_reads();
    assert_eq!(reads, [(size - tail, size), (reader.toc_offset(), size - tail)]);
}

#[test]
fn the_toc_offset_annotation_brings_the_toc_in_one_range_and_a_wrong_one_costs_only_a_range() {
    let (blob, result) = large_toc_layer(8);
    let size = blob.len() as u64;
    let annotations = result.annotations();
    assert_eq!(annotations[2], (TOC_OFFSET_ANNOTATION, result.toc_offset.to_string()));
    let source = crate::source::testing::LoggedBlob::new(blob);
    let reader = EstargzReader::open_at(&source, Some(&result.toc_digest), result.toc_offset).unwrap();
    assert_eq!(reader.toc_offset(), result.toc_offset);
    assert_eq!(reader.entries().iter().filter(|e| e.name.starts_with("f/")).count(), 3000);
    assert_eq!(source.take_reads(), [(result.toc_offset, size)], "the TOC and footer, once");

    // An offset that is not the TOC's: found from the footer after all, and checked.
    for wrong in [result.toc_offset - 1000, size - 10, size + 5] {
        let reader = EstargzReader::open_at(&source, Some(&result.toc_digest), wrong).unwrap();
        assert_eq!(reader.toc_offset(), result.toc_offset, "hint {wrong}");
        assert_eq!(reader.entries().len(), EstargzReader::open(&source, None).unwrap().entries().len());
    }
}
