//! Bad input gets a clear error naming the object at fault, a non-zero exit, and leaves
//! the store as it was: damaged blobs in a real registry, and a server that serves broken
//! manifests, lies about sizes or sends the wrong digest.

use std::collections::HashMap;

use skiff::manifest::{OCI_CONFIG, OCI_MANIFEST};
use skiff::Digest;
use skiff_tests::cli::Skiff;
use skiff_tests::hostile::{Hostile, Reply, Request};
use skiff_tests::registry::{Registry, RegistryConfig};
use skiff_tests::{fixtures, temp_dir};

/// Checks that a store holds no image and no object.
fn assert_store_empty(skiff: &Skiff) {
    let store = skiff.store();
    assert!(store.images().unwrap().is_empty(), "{:?}", store.images());
    assert!(store.objects().unwrap().is_empty(), "{:?}", store.objects());
}

#[test]
fn corrupt_layer_or_config_in_the_registry_fails_the_pull_and_stores_nothing() {
    let Some(registry) = Registry::start(RegistryConfig::default()) else { return };
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let store = skiff::store::Store::open(&dir.path().join("fixture-store")).unwrap();
    let image = format!("{}/damaged/hard:v1", registry.addr);
    let record = fixtures::store_image(
        &store,
        &image,
        &[f.busybox.clone(), f.hard.clone()],
        fixtures::Format::Oci,
        "amd64",
    );
    fixtures::push(&store, &record, &image);

    // Flip bytes in the middle of the second layer, keeping its size.
    let data = registry.blob_data(&f.hard.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();

    let skiff = Skiff::new(dir.path());
    let err = skiff.run(&["pull", "--full", &image]);
    let err = err.failed();
    assert!(err.contains(&f.hard.digest.to_string()) && err.contains(&image), "{err}");
    assert_store_empty(&skiff);

    // A damaged config fails even the lazy pull.
    let config = skiff::image::StoredImage::load(&store, &record).unwrap().manifest.config.digest;
    std::fs::write(registry.blob_data(&config), b"{\"not\": \"the config\"}").unwrap();
    let err = skiff.run(&["pull", &image]);
    let err = err.failed();
    assert!(err.contains(&config.to_string()), "{err}");
    assert_store_empty(&skiff);
}

/// Serves one image: `manifest` under tag `v1` with `content_type`, and `blobs`.
fn serve(
    manifest: Vec<u8>,
    content_type: &str,
    blobs: HashMap<Digest, Vec<u8>>,
    digest_header: Option<String>,
) -> Hostile {
    let content_type = content_type.to_string();
    Hostile::start(move |req: &Request| {
        if req.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        if req.path == "/v2/bad/image/manifests/v1" {
            let digest = digest_header.clone().unwrap_or_else(|| Digest::of(&manifest).to_string());
            return Reply::new(200, manifest.clone())
                .header("Content-Type", &content_type)
                .header("Docker-Content-Digest", &digest);
        }
        for (digest, data) in &blobs {
            if req.path == format!("/v2/bad/image/blobs/{digest}") {
                return Reply::new(200, data.clone());
            }
        }
        Reply::new(404, r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#)
    })
}

fn manifest_json(config: &[u8], config_size: usize, layer: &[u8], layer_size: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": Digest::of(config).to_string(), "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(layer).to_string(), "size": layer_size }],
    }))
    .unwrap()
}

fn config_json(layer_diff: &Digest) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [layer_diff.to_string()] },
    }))
    .unwrap()
}

/// Pulls `bad/image:v1` from `server` into a fresh store; expects failure with every
/// `needle` in the message and an untouched store.
fn expect_pull_error(server: &Hostile, args: &[&str], needles: &[&str]) {
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let image = format!("{}/bad/image:v1", server.addr);
    let mut full_args = vec!["pull"];
    full_args.extend_from_slice(args);
    full_args.push(&image);
    let run = skiff.run(&full_args);
    let err = run.failed();
    assert!(err.contains(&image), "the error names the image: {err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert_store_empty(&skiff);
}

#[test]
fn broken_manifests_are_refused_with_a_clear_error() {
    let layer = fixtures::noise(1000, 1);
    let config = config_json(&Digest::of(b"x"));
    let good = manifest_json(&config, config.len(), &layer, layer.len());

    let server = serve(b"{\"schemaVersion\": 2, \"layers\": [".to_vec(), OCI_MANIFEST, HashMap::new(), None);
    expect_pull_error(&server, &[], &["not valid JSON"]);

    let html = String::from_utf8(good.clone()).unwrap().replace(OCI_MANIFEST, "text/html");
    let server = serve(html.into_bytes(), "text/html", HashMap::new(), None);
    expect_pull_error(&server, &[], &["unsupported media type", "text/html"]);

    let schema1 = br#"{"schemaVersion":1,"name":"bad/image","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
    let server = serve(
        schema1.to_vec(),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        HashMap::new(),
        None,
    );
    expect_pull_error(&server, &[], &["schema 1", "not supported"]);

    let wrong = Digest::of(b"another manifest").to_string();
    let server = serve(good, OCI_MANIFEST, HashMap::new(), Some(wrong.clone()));
    expect_pull_error(&server, &[], &["does not match its digest", &wrong]);
}

#[test]
fn a_registry_that_lies_about_sizes_or_content_is_caught() {
    let layer = fixtures::noise(5000, 2);
    let config = config_json(&Digest::of(b"x"));
    let blobs = HashMap::from([(Digest::of(&config), config.clone()), (Digest::of(&layer), layer.clone())]);

    // The manifest claims a smaller config than the registry sends.
    let server = serve(
        manifest_json(&config, config.len() - 5, &layer, layer.len()),
        OCI_MANIFEST,
        blobs.clone(),
        None,
    );
    expect_pull_error(&server, &[], &[&Digest::of(&config).to_string(), "larger than"]);

    // ... or a larger one.
    let server = serve(
        manifest_json(&config, config.len() + 5, &layer, layer.len()),
        OCI_MANIFEST,
        blobs.clone(),
        None,
    );
    expect_pull_error(&server, &[], &[&Digest::of(&config).to_string(), "size mismatch"]);

    // The layer is longer than the manifest says.
    let server = serve(
        manifest_json(&config, config.len(), &layer, layer.len() - 100),
        OCI_MANIFEST,
        blobs.clone(),
        None,
    );
    expect_pull_error(&server, &["--full"], &[&Digest::of(&layer).to_string(), "size mismatch"]);

    // A blob whose bytes do not hash to the digest it is served under.
    let mut swapped = blobs.clone();
    swapped.insert(Digest::of(&layer), fixtures::noise(5000, 40));
    let server =
        serve(manifest_json(&config, config.len(), &layer, layer.len()), OCI_MANIFEST, swapped, None);
    expect_pull_error(&server, &["--full"], &[&Digest::of(&layer).to_string(), "expected"]);

    // A config whose diff_ids do not match the manifest's layers.
    let two_layers = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [Digest::of(b"a").to_string(), Digest::of(b"b").to_string()] },
    }))
    .unwrap();
    let blobs = HashMap::from([(Digest::of(&two_layers), two_layers.clone())]);
    let server =
        serve(manifest_json(&two_layers, two_layers.len(), &layer, layer.len()), OCI_MANIFEST, blobs, None);
    expect_pull_error(&server, &[], &["2 layer diff_ids", "1 layers"]);
}

#[test]
fn unknown_hosts_invalid_references_and_wrong_flags_fail_cleanly() {
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let err = skiff.run(&["pull", "no-such-host.invalid/app:v1"]);
    assert!(err.failed().contains("cannot reach registry no-such-host.invalid"), "{}", err.stderr);
    let err = skiff.run(&["pull", "UPPER/Case:tag"]);
    assert!(err.failed().contains("invalid reference format"), "{}", err.stderr);
    let err = skiff.run(&["pull", "ok/name@sha256:1234"]);
    assert!(err.failed().contains("invalid reference format"), "{}", err.stderr);
    let err = skiff.run(&["pull", "--no-such-flag", "busybox"]);
    assert_eq!(err.code, 2, "usage errors exit 2, as in clap and docker");
    assert!(skiff.run(&["inspect", "never-pulled"]).failed().contains("no such image"));
    // A capability that does not exist, or a limit docker refuses, is refused before
    // anything is pulled or created.
    for (flag, value, message) in [
        ("--cap-add", "bogus", "unknown capability \"bogus\""),
        ("--cpus", "5000", "the CPUs range from 0.01 to"),
        ("--cpus", "-1", "the CPUs range from 0.01 to"),
        ("--memory", "1M", "the least memory limit allowed is 6M"),
    ] {
        let err = skiff.run(&["run", flag, value, "busybox", "true"]);
        assert_eq!(err.code, 2, "{flag} {value}: {}", err.stderr);
        assert!(err.stderr.contains(message), "{flag} {value}: {}", err.stderr);
    }
    assert_eq!(skiff.run(&["ps", "-a", "-q"]).ok().trim(), "", "no container was created");
    assert_store_empty(&skiff);
}
