//! Prefetch profiles: a mount records what is read; the next mount prefetches it in the
//! background; `skiff convert --prioritize` places the same files first in the layer.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, LayerBuilder};
use skiff_tests::mount::Mount;
use skiff_tests::temp_dir;

fn cache_bytes(root: &std::path::Path) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
            .sum()
    }
    walk(&root.join("cache/sha256"))
}

/// Waits until the cache under `root` holds at least `least` bytes, then a little more for a
/// prefetch to overrun if it would; the bytes it then holds.
fn cache_after_prefetch(root: &std::path::Path, least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache_bytes(root) < least {
        assert!(Instant::now() < deadline, "nothing was prefetched into {}", root.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    cache_bytes(root)
}

#[test]
fn a_recorded_profile_is_prefetched_by_the_next_mount_and_orders_conversion() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let layer = {
        let mut l = LayerBuilder::new(&dir.path().join("layer.tar.gz"));
        for i in 0..6 {
            l.file(&format!("data/blob-{i}.bin"), 0o644, &fixtures::noise(2 << 20, 200 + i));
        }
        l.file("etc/app.conf", 0o644, b"answer = 42\n");
        l.finish()
    };
    let store = skiff::store::Store::open(&dir.path().join("build")).unwrap();
    let plain = format!("{}/profiles/app:plain", f.registry.addr);
    let record =
        fixtures::store_image(&store, &plain, std::slice::from_ref(&layer), fixtures::Format::Oci, "amd64");
    fixtures::push(&store, &record, &plain);
    let lazy = format!("{}/profiles/app:estargz", f.registry.addr);
    Skiff::new(&dir.path().join("converter")).run(&["convert", &plain, &lazy]).ok();

    // Record: the workload reads two files.
    let base = dir.path().join("node");
    {
        let Some(m) = Mount::with_flags(&base, &lazy, &["--record-profile"]) else { return };
        assert_eq!(fs::read_to_string(m.p("etc/app.conf")).unwrap(), "answer = 42\n");
        assert_eq!(fs::read(m.p("data/blob-4.bin")).unwrap(), fixtures::noise(2 << 20, 204));
    }
    let skiff = Skiff::new(&base);
    // The mount's fetches are in the totals: about the two files read, not the layer.
    let stats: serde_json::Value =
        serde_json::from_str(skiff.run(&["cache", "stats", "--format", "json"]).ok()).unwrap();
    let fetched = stats["totals"]["registry_bytes"].as_u64().unwrap();
    assert!(fetched > 2 << 20 && fetched < 4 << 20, "{stats}");
    assert!(stats["totals"]["fills"].as_u64().unwrap() > 0);
    let manifest = skiff.store().find_image(&lazy).unwrap().manifest;
    let profile = skiff.store().read_profile(&manifest).expect("profile saved at unmount");
    let paths: Vec<&str> = profile.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["etc/app.conf", "data/blob-4.bin"]);
    assert_eq!(profile[1].ranges, [(0, 2 << 20)], "the whole file was read");
    // Beside it, the first batch of its prefetch resolved to chunks, for the next start to
    // fetch while it reads the tables of contents: app.conf's chunk first.
    let plan = skiff.store().read_profile_plan(&manifest).expect("plan saved with the profile");
    assert_eq!(plan.batches.len(), skiff::plan::EARLY_BATCHES);
    assert_eq!(plan.batches[0][0].5, skiff::Digest::of(b"answer = 42\n"), "{plan:?}");
    assert!(plan.batches[0].len() > 1, "blob-4's first chunks come in the same batch: {plan:?}");

    // Prefetch: with a cold cache, the next mount fetches the profile's files unasked.
    skiff.run(&["cache", "prune"]).ok();
    assert!(cache_bytes(&skiff.root) < 1 << 20);
    let Some(m) = Mount::new(&base, &lazy) else { return };
    assert!(cache_after_prefetch(&skiff.root, 2 << 20) < 4 << 20, "only the profile's files are prefetched");
    assert_eq!(fs::read(m.p("data/blob-4.bin")).unwrap(), fixtures::noise(2 << 20, 204));
    drop(m);

    // The same list reorders a conversion: those files first, then the landmark.
    let list = dir.path().join("profile.txt");
    fs::write(&list, paths.join("\n")).unwrap();
    let ordered = format!("{}/profiles/app:ordered", f.registry.addr);
    let converter = Skiff::new(&dir.path().join("converter"));
    converter.run(&["convert", "--prioritize", list.to_str().unwrap(), &plain, &ordered]).ok();
    let converted = converter.store().find_image(&ordered).unwrap();
    let image = skiff::image::StoredImage::load(&converter.store(), &converted).unwrap();
    let blob = converter.store().path_of(&image.manifest.layers[0].digest);
    let listing = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
    let files: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .filter(|l| !l.ends_with('/'))
        .collect();
    assert_eq!(&files[..3], ["etc/app.conf", "data/blob-4.bin", ".prefetch.landmark"], "{files:?}");
    // With no profile anywhere, a start prefetches the files before the landmark.
    let landmarked = dir.path().join("landmarked");
    let Some(m) = Mount::new(&landmarked, &ordered) else { return };
    let cached = cache_after_prefetch(&Skiff::new(&landmarked).root, 2 << 20);
    assert!(cached < 4 << 20, "only the files before the landmark are prefetched: {cached}");
    drop(m);

    // Converted with the profile itself, the image carries it: a first start on another
    // machine (a fresh root, no profile of its own) prefetches it.
    let profiled = format!("{}/profiles/app:profiled", f.registry.addr);
    let profile_file = skiff.store().profile_path(&manifest);
    converter.run(&["convert", "--prioritize", profile_file.to_str().unwrap(), &plain, &profiled]).ok();
    let converted = converter.store().find_image(&profiled).unwrap();
    let image = skiff::image::StoredImage::load(&converter.store(), &converted).unwrap();
    let embedded = &image.manifest.annotations[skiff::image::PROFILE_ANNOTATION];
    let files: Vec<String> =
        skiff::store::parse_profile(embedded.as_bytes()).unwrap().into_iter().map(|f| f.path).collect();
    assert_eq!(files, paths);
    assert!(image.manifest.annotations.contains_key(skiff::plan::PREFETCH_PLAN_ANNOTATION));

    // With its plan, the first batch is on its way before the tables of contents are in:
    // opening the layers alone (no mount, no profile prefetch) brings it into the cache.
    for early in [false, true] {
        let opener = Skiff::new(&dir.path().join(format!("opener-{early}")));
        opener.run(&["pull", &profiled]).ok();
        let record = opener.store().find_image(&profiled).unwrap();
        let image = skiff::image::StoredImage::load(&opener.store(), &record).unwrap();
        let plan = skiff::plan::PrefetchPlan::from_json(
            &image.manifest.annotations[skiff::plan::PREFETCH_PLAN_ANNOTATION],
        )
        .unwrap();
        let cache = skiff_fs::ChunkCache::open(&opener.root.join("cache"), 64 << 20).unwrap();
        let layers = skiff::layers::open_image_layers(
            &skiff_tests::fixtures::client(),
            &opener.store(),
            &cache,
            &image,
            early.then_some(&plan),
        )
        .unwrap();
        if early {
            // The first batch: app.conf and the first 512 KiB chunk of blob-4.
            let cached = cache_after_prefetch(&opener.root, 512 << 10);
            assert!(cached < 2 << 20, "only the first batch comes early: {cached}");
        } else {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(cache_bytes(&opener.root), 0, "no plan, no early prefetch");
        }
        drop(layers);
    }
    let elsewhere = dir.path().join("elsewhere");
    let fresh = Skiff::new(&elsewhere);
    let Some(m) = Mount::new(&elsewhere, &profiled) else { return };
    assert!(cache_after_prefetch(&fresh.root, 2 << 20) < 4 << 20, "only the profile's files are prefetched");
    assert_eq!(fs::read_to_string(m.p("etc/app.conf")).unwrap(), "answer = 42\n");
    drop(m);

    // Unless told not to.
    let elsewhere = dir.path().join("elsewhere-no-prefetch");
    let Some(m) = Mount::with_flags(&elsewhere, &profiled, &["--no-prefetch"]) else { return };
    assert_eq!(fs::read_to_string(m.p("etc/app.conf")).unwrap(), "answer = 42\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(cache_bytes(&Skiff::new(&elsewhere).root) < 1 << 20, "--no-prefetch prefetched");
    drop(m);
}

#[test]
fn a_profile_of_part_of_a_large_file_prefetches_only_the_chunks_read() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let big = fixtures::noise(16 << 20, 300);
    let layer = {
        let mut l = LayerBuilder::new(&dir.path().join("layer.tar.gz"));
        l.file("data/big.bin", 0o644, &big);
        l.finish()
    };
    let store = skiff::store::Store::open(&dir.path().join("build")).unwrap();
    let plain = format!("{}/profiles/big:plain", f.registry.addr);
    let record =
        fixtures::store_image(&store, &plain, std::slice::from_ref(&layer), fixtures::Format::Oci, "amd64");
    fixtures::push(&store, &record, &plain);
    let lazy = format!("{}/profiles/big:estargz", f.registry.addr);
    Skiff::new(&dir.path().join("converter"))
        .run(&["convert", "--chunk-size", "1048576", &plain, &lazy])
        .ok();

    // Record: 100 bytes from the middle of the 16 MiB file.
    let base = dir.path().join("node");
    {
        let Some(m) = Mount::with_flags(&base, &lazy, &["--record-profile"]) else { return };
        let file = fs::File::open(m.p("data/big.bin")).unwrap();
        let mut buf = [0u8; 100];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 8 << 20).unwrap();
        assert_eq!(&buf[..], &big[8 << 20..(8 << 20) + 100]);
    }
    let skiff = Skiff::new(&base);
    let manifest = skiff.store().find_image(&lazy).unwrap().manifest;
    let profile = skiff.store().read_profile(&manifest).expect("profile saved at unmount");
    assert_eq!(profile.len(), 1);
    let read: u64 = profile[0].ranges.iter().map(|(s, e)| e - s).sum();
    assert!(profile[0].ranges[0].0 <= 8 << 20 && read < 4 << 20, "{profile:?}");

    // The next mount prefetches the chunks those ranges touch, not the file.
    skiff.run(&["cache", "prune"]).ok();
    let Some(m) = Mount::new(&base, &lazy) else { return };
    let cached = cache_after_prefetch(&skiff.root, 1 << 20);
    assert!(cached <= read + (2 << 20), "prefetched {cached} bytes for {read} read");
    drop(m);

    // Converted with the profile, the bytes read get chunks of their own: the same read then
    // fetches about them, not the 1 MiB chunk around them.
    let cut = format!("{}/profiles/big:cut", f.registry.addr);
    let profile = skiff.store().profile_path(&manifest);
    let converter = Skiff::new(&dir.path().join("converter"));
    converter
        .run(&["convert", "--chunk-size", "1048576", "--prioritize", profile.to_str().unwrap(), &plain, &cut])
        .ok();
    for (image, least, most) in [(&lazy, 1 << 20, 2 << 20), (&cut, read, read + (64 << 10))] {
        let base = dir.path().join(format!("reader-{}", image.rsplit(':').next().unwrap()));
        let Some(m) = Mount::new(&base, image) else { return };
        let file = fs::File::open(m.p("data/big.bin")).unwrap();
        let mut buf = [0u8; 100];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 8 << 20).unwrap();
        assert_eq!(&buf[..], &big[8 << 20..(8 << 20) + 100]);
        drop(file);
        drop(m);
        let stats: serde_json::Value =
            serde_json::from_str(Skiff::new(&base).run(&["cache", "stats", "--format", "json"]).ok())
                .unwrap();
        // The table of contents of one file is a few hundred bytes.
        let fetched = stats["totals"]["registry_bytes"].as_u64().unwrap();
        assert!(fetched >= least && fetched <= most, "{image}: fetched {fetched} for {read} read: {stats}");
    }
}
