//! Lazy layers: eStargz conversion read back chunk by chunk from the registry, the chunk
//! cache under load and damage, and plain gzip layers streamed into the cache.

use std::process::Command;
use std::sync::atomic::Ordering;

use skiff::layers::{open_layers, OpenedLayer};
use skiff::Digest;
use skiff_fs::ChunkCache;
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, LayerBuilder};
use skiff_tests::registry::{Registry, RegistryConfig};
use skiff_tests::{temp_dir, tree};

/// Pulls `image` lazily into `skiff`'s store and opens its layers with a cache of `budget`.
fn open(skiff: &Skiff, image: &str, cache: &ChunkCache) -> Vec<OpenedLayer> {
    skiff.run(&["pull", image]).ok();
    let store = skiff.store();
    let record = store.find_image(image).unwrap();
    open_layers(&fixtures::client(), &store, cache, &record).unwrap()
}

fn fetched(layer: &OpenedLayer) -> u64 {
    layer.fetched.as_ref().map_or(0, |s| s.bytes.load(Ordering::Relaxed))
}

#[test]
fn converted_image_reads_back_entry_for_entry_and_stays_valid_gzip_tar() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let converter = Skiff::new(&dir.path().join("converter"));
    let dest = format!("{}/converted/hard:estargz", f.registry.addr);
    let out = converter.run(&["convert", "--chunk-size", "1M", &f.hard_ref, &dest]);
    let out = out.ok();
    assert!(out.contains(&dest), "{out}");

    let reader = Skiff::new(&dir.path().join("reader"));
    let cache = ChunkCache::open(&dir.path().join("cache"), 64 << 20).unwrap();
    let layers = open(&reader, &dest, &cache);
    let inspect: serde_json::Value = serde_json::from_str(reader.run(&["inspect", &dest]).ok()).unwrap();
    for (i, original) in [&f.busybox, &f.hard].into_iter().enumerate() {
        assert_eq!(inspect[0]["Layers"][i]["Format"], "eStargz");
        assert!(layers[i].format.to_string().starts_with("eStargz"));
        tree::assert_same(&tree::from_tar(&original.path), &tree::from_lazy(&layers[i].layer, 100_000));

        // The converted blob is still a gzip'd tar listing the same names (plus the
        // landmark and the TOC).
        let blob = converter.store().path_of(&layers[i].descriptor.digest);
        let listed = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
        assert!(listed.status.success());
        let mut names: Vec<String> = String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        names.sort();
        names.dedup();
        let mut expected: Vec<String> = tree::from_tar(&original.path).into_keys().collect();
        expected.extend(["stargz.index.json".to_string(), ".no.prefetch.landmark".to_string()]);
        expected.sort();
        assert_eq!(names, expected);
    }
}

#[test]
fn reading_one_small_file_of_a_large_layer_fetches_little() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let big = {
        let mut l = LayerBuilder::new(&dir.path().join("big.tar.gz"));
        l.dir("data", 0o755);
        for i in 0..8 {
            l.file(&format!("data/blob-{i}.bin"), 0o644, &fixtures::noise(4 << 20, 100 + i));
        }
        l.file("etc/small.conf", 0o644, b"small = true\n");
        l.finish()
    };
    let store = skiff::store::Store::open(&dir.path().join("build")).unwrap();
    let plain = format!("{}/laziness/big:plain", f.registry.addr);
    let record =
        fixtures::store_image(&store, &plain, std::slice::from_ref(&big), fixtures::Format::Oci, "amd64");
    fixtures::push(&store, &record, &plain);
    let converted = format!("{}/laziness/big:estargz", f.registry.addr);
    Skiff::new(&dir.path().join("converter")).run(&["convert", &plain, &converted]).ok();

    let reader = Skiff::new(&dir.path().join("reader"));
    let cache = ChunkCache::open(&dir.path().join("cache"), 1 << 30).unwrap();
    let layers = open(&reader, &converted, &cache);
    let layer = &layers[0];
    let after_toc = fetched(layer);
    let id = layer.layer.index().resolve("etc/small.conf").unwrap();
    let mut buf = [0u8; 64];
    let n = layer.layer.read(id, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"small = true\n");
    let total = fetched(layer);
    assert!(layer.descriptor.size > 32 << 20);
    assert!(total - after_toc < 64 << 10, "reading a 13-byte file fetched {} bytes", total - after_toc);
    assert!(
        total < 128 << 10,
        "opening the layer and reading one file fetched {total} bytes of {}",
        layer.descriptor.size
    );
}

#[test]
fn cache_stays_within_its_budget_and_refetches_damaged_chunks() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let dest = format!("{}/converted/hard:budget", f.registry.addr);
    Skiff::new(&dir.path().join("converter"))
        .run(&["convert", "--chunk-size", "256K", &f.hard_ref, &dest])
        .ok();
    let reader = Skiff::new(&dir.path().join("reader"));
    let budget = 1 << 20;
    let cache_dir = dir.path().join("cache");
    let expected = Digest::of(&fixtures::noise(fixtures::BIG_FILE_SIZE, 7));
    {
        let cache = ChunkCache::open(&cache_dir, budget).unwrap();
        let layers = open(&reader, &dest, &cache);
        let layer = &layers[1].layer;
        let id = layer.index().resolve("fixture/big.bin").unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = layer.read(id, all.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let on_disk = dir_bytes(&cache_dir.join("sha256"));
            assert!(on_disk <= budget, "cache holds {on_disk} bytes on disk, budget {budget}");
            assert!(cache.stats().bytes_used <= budget);
        }
        assert_eq!(Digest::of(&all), expected, "5 MiB read through a 1 MiB cache");
        assert!(cache.stats().evictions > 0);
    }

    // Damage every cached chunk on disk; a new process detects it and fetches again.
    let mut damaged = 0;
    for file in files(&cache_dir.join("sha256")) {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let cache = ChunkCache::open(&cache_dir, budget).unwrap();
    let layers = open(&reader, &dest, &cache);
    let layer = &layers[1].layer;
    let id = layer.index().resolve("fixture/big.bin").unwrap();
    let size = layer.index().node(id).size;
    let mut tail = vec![0u8; 100_000];
    layer.read(id, size - 100_000, &mut tail).unwrap();
    assert_eq!(tail, fixtures::noise(fixtures::BIG_FILE_SIZE, 7)[(size - 100_000) as usize..]);
    assert!(cache.stats().corrupt > 0, "{:?}", cache.stats());
}

#[test]
fn a_corrupt_blob_in_the_registry_gives_an_error_not_data() {
    let Some(registry) = Registry::start(RegistryConfig::default()) else { return };
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let dest = format!("{}/damaged/hard:estargz", registry.addr);
    let converter = Skiff::new(&dir.path().join("converter"));
    converter.run(&["convert", "--chunk-size", "1M", &f.hard_ref, &dest]).ok();
    let reader = Skiff::new(&dir.path().join("reader"));
    let cache = ChunkCache::open(&dir.path().join("cache"), 64 << 20).unwrap();
    let layers = open(&reader, &dest, &cache);
    let layer = &layers[1];

    // Flip bytes inside the compressed chunk that holds big.bin's third MiB.
    let id = layer.layer.index().resolve("fixture/big.bin").unwrap();
    let chunk = layer.layer.index().chunks(id, (2 << 20)..(2 << 20) + 1)[0];
    let data = registry.blob_data(&layer.descriptor.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = (chunk.offset + chunk.compressed_len / 2) as usize;
    for b in &mut bytes[at..at + 32] {
        *b ^= 0x5a;
    }
    std::fs::write(&data, bytes).unwrap();

    let mut buf = vec![0u8; 4096];
    let err = layer.layer.read(id, 2 << 20, &mut buf).unwrap_err();
    let text = skiff_tests::error_chain(&err);
    assert!(text.contains("fixture/big.bin"), "{text}");
    assert!(text.contains(&chunk.digest.to_string()) || text.contains("gunzip"), "{text}");
    // Other chunks still read.
    assert_eq!(layer.layer.read(id, 0, &mut buf).unwrap(), 4096);
}

#[test]
fn plain_gzip_layers_stream_into_the_cache_and_read_back_entry_for_entry() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let reader = Skiff::new(dir.path());
    let cache_dir = dir.path().join("cache");
    {
        let cache = ChunkCache::open(&cache_dir, 1 << 30).unwrap();
        let layers = open(&reader, &f.hard_ref, &cache);
        for (opened, original) in layers.iter().zip([&f.busybox, &f.hard]) {
            assert_eq!(opened.format.to_string(), "gzip");
            assert_eq!(opened.streamed, original.size, "the first open streams the layer once");
            tree::assert_same(&tree::from_tar(&original.path), &tree::from_lazy(&opened.layer, 64 << 10));
        }
    }
    // The index is kept: the next open streams nothing and reads come from the cache.
    let cache = ChunkCache::open(&cache_dir, 1 << 30).unwrap();
    let layers = open(&reader, &f.hard_ref, &cache);
    assert!(layers.iter().all(|l| l.streamed == 0));
    let hits = cache.stats().hits;
    tree::assert_same(&tree::from_tar(&f.hard.path), &tree::from_lazy(&layers[1].layer, 1 << 20));
    assert!(cache.stats().hits > hits);
    assert_eq!(cache.stats().fills, 0, "{:?}", cache.stats());
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    files(dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

#[test]
fn a_converted_image_runs_under_podman() {
    let Some(f) = fixtures::shared() else { return };
    if !skiff_tests::have("podman") {
        return;
    }
    let dir = temp_dir();
    let dest = format!("{}/converted/busybox:podman", f.registry.addr);
    Skiff::new(&dir.path().join("converter")).run(&["convert", &f.busybox_ref, &dest]).ok();
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\",\"nproc=32768:32768\"]\n\
         [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    let out = Command::new("podman")
        .env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(dir.path().join("podman-root"))
        .arg("--runroot")
        .arg(dir.path().join("podman-run"))
        .args(["--storage-driver", "vfs", "run", "--rm", "--tls-verify=false", "--network", "none", &dest])
        .args(["/bin/sh", "-c", "cat /fixture/deleted-file && echo converted-runs"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "podman failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "deleted by the next layer\nconverted-runs\n");
}

#[test]
fn a_foreground_mount_ends_cleanly_when_skiff_umount_unmounts_it() {
    let Some(f) = fixtures::shared() else { return };
    if !skiff_tests::mount::nix_is_root() || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: FUSE mounts need root and /dev/fuse");
        return;
    }
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let mut serving = skiff
        .command()
        .args(["mount", &f.busybox_ref, target.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !skiff::mount::is_skiff_mount(&target) {
        assert!(serving.try_wait().unwrap().is_none(), "skiff mount exited before mounting");
        assert!(std::time::Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(target.join("bin/busybox").exists());
    skiff.run(&["umount", target.to_str().unwrap()]).ok();
    let status = serving.wait().unwrap();
    assert!(status.success(), "the foreground mount ended with {status}");
    assert!(!skiff::mount::is_skiff_mount(&target));
}

#[test]
fn a_pull_for_a_mount_fetches_the_tables_of_contents_ahead_and_the_opening_takes_them() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let converted = format!("{}/laziness/hard:estargz-ahead", f.registry.addr);
    Skiff::new(&dir.path().join("converter")).run(&["convert", &f.hard_ref, &converted]).ok();
    let store = skiff::store::Store::open(&dir.path().join("root")).unwrap();
    let client = fixtures::client();
    let reference: skiff::Reference = converted.parse().unwrap();
    let ahead = skiff::image::PullOptions { tocs_ahead: true, ..Default::default() };
    let pull = || skiff::image::pull(&client, &store, &reference, &ahead, &skiff::image::Quiet).unwrap();
    let record = pull().record;
    let image = skiff::image::StoredImage::load(&store, &record).unwrap();
    let mut layers: Vec<Digest> = image.manifest.layers.iter().map(|l| l.digest).collect();
    assert_eq!(layers.len(), 2);
    for layer in &image.manifest.layers {
        assert!(layer.annotations.contains_key(skiff_fs::estargz::TOC_OFFSET_ANNOTATION), "{layer:?}");
    }
    let mut started = client.tocs_ahead();
    started.sort();
    layers.sort();
    assert_eq!(started, layers, "every layer's table of contents is on its way after the pull");

    let cache = ChunkCache::open(&dir.path().join("cache"), 1 << 30).unwrap();
    let opened = open_layers(&client, &store, &cache, &record).unwrap();
    assert!(client.tocs_ahead().is_empty(), "the opening took them");
    for layer in &opened {
        // The fetch ahead is the layer's only request: the opening did not fetch it again.
        let stats = layer.fetched.as_ref().unwrap();
        assert_eq!(stats.requests.load(Ordering::Relaxed), 1, "{}", layer.descriptor.digest);
        let offset: u64 =
            layer.descriptor.annotations[skiff_fs::estargz::TOC_OFFSET_ANNOTATION].parse().unwrap();
        assert_eq!(fetched(layer), layer.descriptor.size - offset);
    }
    // The layers read from the tables of contents fetched ahead.
    let group = opened[0].layer.index().resolve("etc/group").unwrap();
    let mut buf = [0u8; 64];
    let n = opened[0].layer.read(group, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"root:x:0:\nnogroup:x:65534:\n");
    // Their indexes are stored now: pulling again starts no fetch.
    drop(opened);
    pull();
    assert!(client.tocs_ahead().is_empty());
}
