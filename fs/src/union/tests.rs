//! Profiles through the union, without a mount: what a recording keeps, and the order a
//! prefetch follows.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Mutex;

use super::*;
use crate::index::LayerIndex;
use crate::lazy::Ticket;
use crate::Digest;

const CHUNK: u64 = 128 << 10;

/// A lower layer of files in 128 KiB chunks whose bytes are zeros; it keeps what the union
/// plans to prefetch, and each prefetch asked of it (in a log shared by the layers).
struct Layer {
    index: LayerIndex,
    planned: Mutex<HashSet<Digest>>,
    prefetches: Arc<Mutex<Vec<Vec<Digest>>>>,
    /// How far its registry is (see [`LayerView::delay`]).
    delay: Option<Duration>,
    /// Whether its prefetches are cut into a request per chunk (else one for all).
    chunk_requests: bool,
    /// The bytes some files begin with (the rest, and other files, are zeros).
    contents: HashMap<NodeId, Vec<u8>>,
    /// Each read: file and offset.
    reads: Mutex<Vec<(NodeId, u64)>>,
}

impl Layer {
    /// `files` by path and size in chunks; each chunk weighs `compressed` in the blob.
    fn new(files: &[(&str, u64)], compressed: u64) -> Layer {
        let index = LayerIndex::of_test_files("", files, CHUNK, compressed);
        Layer {
            index,
            planned: Mutex::default(),
            prefetches: Arc::default(),
            delay: None,
            chunk_requests: false,
            contents: HashMap::new(),
            reads: Mutex::default(),
        }
    }
}

impl LayerView for Layer {
    fn index(&self) -> &LayerIndex {
        &self.index
    }

    fn read(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.lock().unwrap().push((node, offset));
        let n = (self.index.node(node).size.saturating_sub(offset) as usize).min(buf.len());
        buf[..n].fill(0);
        if let Some(content) = self.contents.get(&node) {
            let start = (offset as usize).min(content.len());
            let k = (content.len() - start).min(n);
            buf[..k].copy_from_slice(&content[start..start + k]);
        }
        Ok(n)
    }

    fn plan_prefetch(&self, chunks: HashSet<Digest>) {
        *self.planned.lock().unwrap() = chunks;
    }

    fn prefetch(&self, chunks: &[PrefetchChunk], _ticket: &Ticket<'_>) -> io::Result<u64> {
        self.prefetches.lock().unwrap().push(chunks.iter().map(|(_, c)| c.digest).collect());
        Ok(0)
    }

    fn delay(&self) -> Option<Duration> {
        self.delay
    }

    fn prefetch_requests(&self, chunks: Vec<PrefetchChunk>) -> Vec<Vec<PrefetchChunk>> {
        match self.chunk_requests {
            true => chunks.into_iter().map(|c| vec![c]).collect(),
            false => vec![chunks],
        }
    }
}

fn union(layer: Layer) -> (tempfile::TempDir, Arc<Union>, Arc<Layer>) {
    let dir = tempfile::tempdir().unwrap();
    let layer = Arc::new(layer);
    let lower: Arc<dyn LayerView> = layer.clone();
    let union = Union::new(vec![lower], &dir.path().join("upper"), &dir.path().join("work")).unwrap();
    (dir, Arc::new(union), layer)
}

fn read(union: &Union, name: &str, offset: u64, size: u32) {
    let ino = union.lookup(ROOT_INO, name).unwrap().ino;
    let (fh, _) = union.open(ino, libc::O_RDONLY).unwrap();
    union.read(fh, offset, size).unwrap();
    union.release(fh);
}

fn entry(path: &str, ranges: &[(u64, u64)]) -> ProfiledFile {
    ProfiledFile { path: path.into(), ranges: ranges.to_vec() }
}

#[test]
fn a_profile_keeps_the_order_bytes_were_first_read_in() {
    let (_dir, union, _) = union(Layer::new(&[("bin", 8), ("lib", 1)], 1000));
    union.record_reads();
    // A binary's pages, faulted in here and there, with a library read in between.
    read(&union, "bin", 6 * CHUNK, 4096);
    read(&union, "bin", 6 * CHUNK + 4096, 4096);
    read(&union, "lib", 0, 100);
    read(&union, "bin", 0, 4096);
    read(&union, "bin", 6 * CHUNK, 8192);
    read(&union, "bin", 2 * CHUNK, 4096);
    assert_eq!(
        union.recorded(),
        [
            entry("bin", &[(6 * CHUNK, 6 * CHUNK + 8192)]),
            entry("lib", &[(0, 100)]),
            entry("bin", &[(0, 4096), (2 * CHUNK, 2 * CHUNK + 4096)]),
        ],
        "bytes read again are not listed again"
    );
}

#[test]
fn a_prefetch_follows_the_profiles_order_in_batches() {
    // Chunks of 200 KB compressed: batches of 512 KiB hold three.
    let (_dir, union, layer) = union(Layer::new(&[("bin", 8), ("lib", 2)], 200_000));
    let profile = [
        entry("bin", &[(6 * CHUNK, 6 * CHUNK + 10)]),
        entry("lib", &[]),
        entry("missing", &[]),
        entry("bin", &[(0, 10), (6 * CHUNK, 7 * CHUNK + 10)]),
    ];
    let batches = union.prefetch_batches(&profile);
    let node = |path| union.layers[0].index().resolve(path).unwrap();
    let chunk = |path, i: u64| {
        let n = node(path);
        (0, (n, union.layers[0].index().chunks(n, i * CHUNK..i * CHUNK + 1)[0]))
    };
    assert_eq!(
        batches,
        [vec![chunk("bin", 6), chunk("lib", 0), chunk("lib", 1)], vec![chunk("bin", 0), chunk("bin", 7)],],
        "in first-read order, each chunk once; what is not in a lower layer is skipped"
    );
    union.prefetch(&profile);
    let planned: HashSet<Digest> = batches.iter().flatten().map(|(_, (_, c))| c.digest).collect();
    assert_eq!(*layer.planned.lock().unwrap(), planned, "the layer is told the plan");
}

#[test]
fn a_batch_across_layers_asks_first_the_layer_of_its_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let base = Layer::new(&[("etc/passwd", 1)], 1000);
    let mut top = Layer::new(&[("usr/bin/tool", 2)], 1000);
    top.prefetches = base.prefetches.clone();
    let log = base.prefetches.clone();
    let digest = |layer: &Layer, path: &str, i: u64| {
        let node = layer.index.resolve(path).unwrap();
        layer.index.chunks(node, i * CHUNK..i * CHUNK + 1)[0].digest
    };
    let (passwd, tool0, tool1) =
        (digest(&base, "etc/passwd", 0), digest(&top, "usr/bin/tool", 0), digest(&top, "usr/bin/tool", 1));
    let lowers: Vec<Arc<dyn LayerView>> = vec![Arc::new(base), Arc::new(top)];
    let union = Union::new(lowers, &dir.path().join("upper"), &dir.path().join("work")).unwrap();
    // One batch: the base layer's file is read first, though the top layer is searched first.
    let profile = [entry("etc/passwd", &[]), entry("usr/bin/tool", &[(CHUNK, CHUNK + 1), (0, 1)])];
    let batches = union.prefetch_batches(&profile);
    assert_eq!(batches.len(), 1);
    let requests: Vec<Vec<Digest>> = prefetch_requests(&union.layers, &batches)
        .into_iter()
        .map(|(_, r)| r.iter().map(|(_, c)| c.digest).collect())
        .collect();
    assert_eq!(requests, [vec![passwd], vec![tool1, tool0]]);
    union.prefetch(&profile);
    // Both on their way together: which the mock logs first is a race.
    let mut fetched = log.lock().unwrap().clone();
    fetched.sort_by_key(|r| r.len());
    assert_eq!(fetched, [vec![passwd], vec![tool1, tool0]]);
}

#[test]
fn mount_points_come_from_an_init_layer_and_leave_the_upper_alone() {
    let layer = Layer::new(&[("etc/passwd", 1), ("usr/bin/sh", 1)], 100);
    let dir = tempfile::tempdir().unwrap();
    let lower: Arc<dyn LayerView> = Arc::new(layer);
    let plain = Union::new(vec![lower.clone()], &dir.path().join("u1"), &dir.path().join("w1")).unwrap();
    let etc_before = plain.lookup(ROOT_INO, "etc").unwrap();
    let points = [("/etc/hosts", Kind::File), ("/proc", Kind::Dir), ("/usr/bin/sh", Kind::File)];
    let union = Union::new(vec![lower], &dir.path().join("upper"), &dir.path().join("work"))
        .unwrap()
        .with_mount_points(&points);

    let etc = union.lookup(ROOT_INO, "etc").unwrap();
    let same = |a: &Attr| (a.kind, a.perm, a.uid, a.gid, a.mtime, a.nlink);
    assert_eq!(same(&etc), same(&etc_before), "/etc shows as the image has it");
    let hosts = union.lookup(etc.ino, "hosts").unwrap();
    assert_eq!((hosts.kind, hosts.size, hosts.upper), (Kind::File, 0, false));
    assert_eq!(union.lookup(ROOT_INO, "proc").unwrap().kind, Kind::Dir);
    assert!(union.lookup(etc.ino, "passwd").is_ok(), "the image's /etc is still merged beneath");
    let sh = union.lookup(union.lookup(ROOT_INO, "usr").unwrap().ino, "bin").unwrap();
    assert_eq!(union.lookup(sh.ino, "sh").unwrap().size, CHUNK, "an image's file is not replaced");
    let names: Vec<String> = union.readdir(etc.ino, 0, 100).unwrap().into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"hosts".to_string()) && names.contains(&"passwd".to_string()), "{names:?}");

    assert_eq!(std::fs::read_dir(dir.path().join("upper")).unwrap().count(), 0, "nothing in the upper");
    assert_eq!(union.changes().unwrap(), []);
}

/// A layer of a one-chunk file, a binary of four chunks and a file too large to read through
/// (300 chunks of 120 KiB compressed: 35 MiB), `delay` from its registry.
fn far_layer(delay: Option<Duration>) -> Layer {
    let files = [("passwd", 1), ("tool", 4), ("huge", 300)];
    Layer { delay, chunk_requests: true, ..Layer::new(&files, 120 << 10) }
}

/// The files queued to be read through, by path.
fn queued(union: &Union) -> Vec<String> {
    let queued = union.read_through.queued();
    let mut paths: Vec<String> = queued.iter().map(|&(l, n)| union.layers[l].index().path_of(n)).collect();
    paths.sort();
    paths
}

#[test]
fn far_from_the_registry_a_file_of_several_chunks_is_read_through_once() {
    let (_dir, union, layer) = union(far_layer(Some(Duration::from_millis(20))));
    read(&union, "tool", 2 * CHUNK, 4096);
    read(&union, "tool", 0, 4096);
    read(&union, "passwd", 0, 100);
    read(&union, "huge", 0, 4096);
    assert_eq!(queued(&union), ["tool"]);
    // The whole file, in the requests the layer cuts it into (here one a chunk), fetched by
    // the union's reading threads side by side.
    let tool = union.resolve("tool").unwrap();
    let Found::Lower { node, .. } = tool.found else { panic!("a lower file") };
    let mut whole: Vec<Vec<Digest>> = layer.index.file_chunks(node).iter().map(|c| vec![c.digest]).collect();
    let waited = std::time::Instant::now();
    while layer.prefetches.lock().unwrap().len() < whole.len() && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut fetched = layer.prefetches.lock().unwrap().clone();
    fetched.sort();
    whole.sort();
    assert_eq!(fetched, whole);
}

#[test]
fn near_a_registry_before_its_distance_is_known_or_with_a_profile_only_what_is_read_is_fetched() {
    for delay in [None, Some(Duration::from_millis(1))] {
        let (_dir, union, _) = union(far_layer(delay));
        read(&union, "tool", 0, 4096);
        assert_eq!(queued(&union), Vec::<String>::new(), "{delay:?}");
    }
    let (_dir, union, _) = union(far_layer(Some(Duration::from_millis(20))));
    union.prefetch(&[entry("passwd", &[])]);
    read(&union, "tool", 0, 4096);
    assert_eq!(queued(&union), Vec::<String>::new(), "a profile is prefetched");
}

/// A merged-usr tree, `delay` from its registry: a program needing `libfoo.so.1` (a link to
/// a library of four chunks, which needs `libbar.so.3`), and a library nothing needs.
fn loader_layer(delay: Option<Duration>) -> Layer {
    let files = [
        ("usr/bin/app", 1),
        ("usr/lib/x86_64-linux-gnu/libfoo.so.1.2", 4),
        ("usr/lib/x86_64-linux-gnu/libbar.so.3", 1),
        ("usr/lib/x86_64-linux-gnu/libunused.so.1", 4),
    ];
    let links =
        [("lib", "usr/lib"), ("usr/lib/x86_64-linux-gnu/libfoo.so.1", "../x86_64-linux-gnu/libfoo.so.1.2")];
    let index = LayerIndex::of_test_tree("", &files, &links, CHUNK, 60_000);
    let (app, foo) = (index.resolve(files[0].0).unwrap(), index.resolve(files[1].0).unwrap());
    let mut layer = Layer { delay, chunk_requests: true, ..Layer::new(&[], 1) };
    layer.index = index;
    layer.contents.insert(app, super::elf::test_file(&["libfoo.so.1"], None));
    layer.contents.insert(foo, super::elf::test_file(&["libbar.so.3", "libmissing.so.9"], None));
    layer
}

fn read_path(union: &Union, path: &str, offset: u64, size: u32) {
    let mut ino = ROOT_INO;
    for name in path.split('/') {
        ino = union.lookup(ino, name).unwrap().ino;
    }
    let (fh, _) = union.open(ino, libc::O_RDONLY).unwrap();
    union.read(fh, offset, size).unwrap();
    union.release(fh);
}

#[test]
fn far_from_the_registry_the_libraries_a_program_needs_are_read_through_before_the_loader_asks() {
    let (_dir, union, layer) = union(loader_layer(Some(Duration::from_millis(20))));
    // The loader's first read of the program: its headers.
    read_path(&union, "usr/bin/app", 0, 832);
    let node = |path: &str| match union.resolve(path).unwrap().found {
        Found::Lower { node, .. } => node,
        Found::Upper(_) => panic!("a lower file"),
    };
    let (foo, bar) =
        (node("usr/lib/x86_64-linux-gnu/libfoo.so.1.2"), node("usr/lib/x86_64-linux-gnu/libbar.so.3"));
    // libfoo (through its link) is read through; its own headers then name libbar, whose
    // headers are read in turn; nothing reads the library no one needs.
    let waited = std::time::Instant::now();
    while !layer.reads.lock().unwrap().contains(&(bar, 0)) && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(queued(&union), ["usr/lib/x86_64-linux-gnu/libfoo.so.1.2"]);
    let read: HashSet<NodeId> = layer.reads.lock().unwrap().iter().map(|&(n, _)| n).collect();
    assert!(read.contains(&foo) && read.contains(&bar), "{read:?}");
    assert_eq!(read.len(), 3, "the program, libfoo and libbar only: {read:?}");
}

#[test]
fn near_a_registry_no_library_is_looked_for() {
    let (_dir, union, layer) = union(loader_layer(Some(Duration::from_millis(1))));
    read_path(&union, "usr/bin/app", 0, 832);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(queued(&union), Vec::<String>::new());
    assert_eq!(layer.reads.lock().unwrap().len(), 1, "the program's own read only");
}
