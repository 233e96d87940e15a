//! The image commands through the `skiff` binary: pull, inspect, images, tag, push, rmi.

use skiff::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use skiff_tests::cli::Skiff;
use skiff_tests::{fixtures, temp_dir};

fn inspect(skiff: &Skiff, image: &str) -> serde_json::Value {
    let out = skiff.run(&["inspect", image]);
    let v: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    v[0].clone()
}

#[test]
fn pull_and_inspect_show_the_digest_skopeo_shows_for_both_formats() {
    let Some(images) = fixtures::skopeo_images() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    for (reference, media_type) in [(&images.oci_ref, OCI_MANIFEST), (&images.docker_ref, DOCKER_MANIFEST)] {
        let expected = fixtures::skopeo_digest(reference);
        let out = skiff.run(&["pull", reference]);
        assert!(out.ok().contains(&format!("Digest: {expected}")), "{}", out.stdout);
        let details = inspect(&skiff, reference);
        assert_eq!(details["Digest"], expected);
        assert_eq!(details["ManifestDigest"], expected);
        assert_eq!(details["MediaType"], media_type);
        assert_eq!(details["Layers"][0]["Format"], "gzip", "{details:#}");
        assert_eq!(details["Layers"][0]["Local"], false, "a lazy pull downloads no layer");
        assert_eq!(details["Config"]["Cmd"][0], "/bin/sh");
    }
}

#[test]
fn lazy_pull_stores_manifest_and_config_only_and_full_pull_stores_verified_layers() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let out = skiff.run(&["pull", &f.hard_ref]);
    assert!(out.ok().contains(&f.hard_digest.to_string()));
    let store = skiff.store();
    assert_eq!(store.objects().unwrap().len(), 2, "manifest and config only");
    assert!(!store.has(&f.busybox.digest) && !store.has(&f.hard.digest));

    let out = skiff.run(&["pull", "--full", &f.hard_ref]);
    assert!(out.ok().contains("Downloaded 2 layers"), "{}", out.stdout);
    for layer in [&f.busybox, &f.hard] {
        assert_eq!(std::fs::read(store.path_of(&layer.digest)).unwrap(), std::fs::read(&layer.path).unwrap());
    }
    let details = inspect(&skiff, &f.hard_ref);
    assert_eq!(details["MediaType"], DOCKER_MANIFEST);
    assert_eq!(details["Layers"][1]["Local"], true);
    assert_eq!(details["Layers"][1]["Format"], "gzip");
}

#[test]
fn images_lists_and_rmi_removes_everything_no_other_image_needs() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    skiff.run(&["pull", "--full", &f.busybox_ref]).ok();
    skiff.run(&["pull", "--full", &f.hard_ref]).ok();
    skiff.run(&["tag", &f.busybox_ref, "localhost/renamed:v2"]).ok();

    let table = skiff.run(&["images"]);
    let table = table.ok();
    let header = table.lines().next().unwrap();
    for col in ["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.contains("localhost/renamed") && table.contains("v2"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(skiff.run(&["images", "--format", "json"]).ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let hard = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Repository"].as_str().unwrap().ends_with("fixtures/hard"))
        .unwrap();
    assert_eq!(hard["Digest"], f.hard_digest.to_string());
    assert!(hard["Size"].as_u64().unwrap() > f.busybox.size + f.hard.size);

    // The busybox layer is shared: removing the hard image keeps it for busybox.
    let out = skiff.run(&["rmi", &f.hard_ref]);
    assert!(out.ok().contains(&f.hard.digest.to_string()));
    let store = skiff.store();
    assert!(store.has(&f.busybox.digest) && !store.has(&f.hard.digest));
    skiff.run(&["rmi", &f.busybox_ref, "localhost/renamed:v2"]).ok();
    assert!(store.objects().unwrap().is_empty(), "{:?}", store.objects());
    assert!(skiff.run(&["rmi", &f.busybox_ref]).failed().contains("no such image"));
}

#[test]
fn multi_platform_pull_selects_the_host_or_the_requested_platform() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    skiff.run(&["pull", &f.multi_ref]).ok();
    let details = inspect(&skiff, &f.multi_ref);
    assert_eq!(details["Digest"], f.multi_digest.to_string());
    assert_eq!(details["ManifestDigest"], f.multi_host_manifest.to_string());

    let platform = format!("linux/{}", f.other_arch);
    skiff.run(&["pull", "--platform", &platform, &f.multi_ref]).ok();
    let details = inspect(&skiff, &f.multi_ref);
    assert_eq!(details["ManifestDigest"], f.multi_other_manifest.to_string());
    assert_eq!(details["Platform"], platform);

    let err = skiff.run(&["pull", "--platform", "linux/s390x", &f.multi_ref]);
    let err = err.failed();
    assert!(err.contains("linux/s390x") && err.contains(&platform), "{err}");
    assert!(skiff.run(&["pull", "--platform", "linux", &f.multi_ref]).failed().contains("os/arch"));
}

#[test]
fn push_of_a_lazily_pulled_image_mounts_its_blobs_and_round_trips() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    skiff.run(&["pull", &f.hard_ref]).ok();
    let copy = format!("{}/copies/hard:pushed", f.registry.addr);
    let out = skiff.run(&["push", &f.hard_ref, &copy]);
    let out = out.ok();
    assert!(out.contains("0 blobs uploaded, 3 mounted"), "{out}");
    assert!(out.contains(&f.hard_digest.to_string()), "the manifest is pushed byte for byte: {out}");

    // Pushing again finds everything there.
    assert!(skiff.run(&["push", &f.hard_ref, &copy]).ok().contains("3 already there"));

    // A fresh store pulls the copy in full and gets the same bytes.
    let other = Skiff::new(&dir.path().join("other"));
    other.run(&["pull", "--full", &copy]).ok();
    assert_eq!(
        std::fs::read(other.store().path_of(&f.hard.digest)).unwrap(),
        std::fs::read(&f.hard.path).unwrap()
    );
}

#[test]
fn push_of_an_index_sends_every_platform() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let store = skiff.store();
    let reg = &f.registry.addr;
    let a = fixtures::store_image(
        &store,
        &format!("{reg}/local/a:1"),
        std::slice::from_ref(&f.busybox),
        fixtures::Format::Oci,
        "amd64",
    );
    let b = fixtures::store_image(
        &store,
        &format!("{reg}/local/b:1"),
        std::slice::from_ref(&f.hard),
        fixtures::Format::Oci,
        "arm64",
    );
    let index = fixtures::store_index(
        &store,
        &format!("{reg}/local/index:1"),
        &[(&a, "amd64"), (&b, "arm64")],
        fixtures::Format::Oci,
    );
    let out = skiff.run(&["push", "--chunk-size-mib", "1", &index.name]);
    assert!(out.ok().contains(&index.digest.to_string()), "{}", out.stdout);

    let other = Skiff::new(&dir.path().join("other"));
    other.run(&["pull", "--full", "--platform", "linux/arm64", &index.name]).ok();
    let details = inspect(&other, &index.name);
    assert_eq!(details["Digest"], index.digest.to_string());
    assert_eq!(details["ManifestDigest"], b.manifest.to_string());
    let raw = other.store().read(&index.digest).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["mediaType"], OCI_INDEX);
    assert!(other.store().has(&f.hard.digest));
}

#[test]
fn save_and_load_move_images_without_a_registry() {
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    // Pulled lazily: save downloads the layers it needs.
    skiff.run(&["pull", &f.busybox_ref]).ok();
    skiff.run(&["tag", &f.busybox_ref, "local/saved:v1"]).ok();
    let archive = dir.path().join("images.tar");
    skiff.run(&["save", "-o", archive.to_str().unwrap(), &f.busybox_ref, "local/saved:v1"]).ok();

    // Another machine: nothing stored, no registry named.
    let other_dir = temp_dir();
    let other = Skiff::new(other_dir.path());
    let loaded = other.run(&["load", "-i", archive.to_str().unwrap()]).ok().to_string();
    assert_eq!(loaded, format!("Loaded image: {}\nLoaded image: docker.io/local/saved:v1\n", f.busybox_ref));
    let (saved, restored) = (
        skiff.store().find_image(&f.busybox_ref).unwrap(),
        other.store().find_image("local/saved:v1").unwrap(),
    );
    assert_eq!(saved.manifest, restored.manifest);
    let store = other.store();
    let image = skiff::image::StoredImage::load(&store, &restored).unwrap();
    assert!(image.manifest.layers.iter().all(|l| store.has(&l.digest)), "every layer is stored");
    if skiff_tests::have("skopeo") {
        // Read by another tool as the OCI layout it is.
        let name = format!("oci-archive:{}:v1", archive.display());
        let out = std::process::Command::new("skopeo").args(["inspect", &name]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["Digest"], restored.manifest.to_string());
    }

    // Bad archives: the blob at fault named, and nothing loaded.
    let bytes = std::fs::read(&archive).unwrap();
    let layer = image.manifest.layers[0].digest;
    let name = format!("blobs/sha256/{}", layer.hex());
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
    let mut corrupt = bytes.clone();
    let data = (at / 512 + 1) * 512 + 100;
    corrupt[data] ^= 0xff;
    let third_dir = temp_dir();
    let third = Skiff::new(third_dir.path());
    let out = third.run_with_input(&["load"], &corrupt);
    assert!(out.failed().contains(&name), "{out:?}");
    assert_eq!(third.run(&["images", "-q"]).ok(), "");
    let out = third.run_with_input(&["load"], b"not a tar at all".repeat(100));
    assert!(out.failed().contains("the archive on stdin"), "{out:?}");
    assert!(skiff
        .run(&["save", "-o", archive.to_str().unwrap(), "no/such:image"])
        .failed()
        .contains("no/such:image"));
}
