//! The registry client against a real registry: range reads, uploads, mounts, TLS; and
//! against a misbehaving server: redirects, ignored ranges, retries, bearer tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff::registry::{Client, MountOutcome, RegistryOptions, UploadOptions};
use skiff::{Digest, Reference};
use skiff_fs::BlobSource;
use skiff_tests::hostile::{Hostile, Reply, Request};
use skiff_tests::registry::{Registry, RegistryConfig};
use skiff_tests::{fixtures, temp_dir};

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

#[test]
fn range_reads_return_the_exact_bytes_of_any_range() {
    let Some(f) = fixtures::shared() else { return };
    let client = fixtures::client();
    let bytes = std::fs::read(&f.hard.path).unwrap();
    let blob = client.blob_source(&reference(&f.hard_ref), f.hard.digest, f.hard.size);
    assert_eq!(blob.size(), bytes.len() as u64);
    let n = bytes.len() as u64;
    for (start, len) in [(0, 1), (0, 4096), (12345, 70000), (n - 10, 10), (n / 2, (n / 2) as usize)] {
        let mut buf = vec![0u8; len];
        blob.read_exact_at(start, &mut buf).unwrap();
        assert_eq!(buf, &bytes[start as usize..start as usize + len], "range {start}+{len}");
    }
    let mut past = [0u8; 20];
    assert!(blob.read_exact_at(n - 10, &mut past).is_err());
    assert_eq!(blob.read_at(n, &mut past).unwrap(), 0);
    let stats = blob.stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 5);
    assert_eq!(stats.bytes.load(Ordering::Relaxed), 1 + 4096 + 70000 + 10 + n / 2);
}

#[test]
fn chunked_and_monolithic_uploads_and_cross_repository_mounts() {
    let Some(f) = fixtures::shared() else { return };
    let client = fixtures::client();
    let dest = reference(&format!("{}/uploads/chunked:v1", f.registry.addr));
    assert_eq!(client.blob_exists(&dest, &f.hard.digest).unwrap(), None);
    client.upload_blob(&dest, &f.hard.digest, &f.hard.path, UploadOptions { chunk_size: 1 << 20 }).unwrap();
    assert_eq!(client.blob_exists(&dest, &f.hard.digest).unwrap(), Some(f.hard.size));

    let mono = reference(&format!("{}/uploads/mono:v1", f.registry.addr));
    client.upload_blob(&mono, &f.busybox.digest, &f.busybox.path, UploadOptions::default()).unwrap();
    assert_eq!(client.blob_exists(&mono, &f.busybox.digest).unwrap(), Some(f.busybox.size));

    let mounted = reference(&format!("{}/uploads/mounted:v1", f.registry.addr));
    assert_eq!(
        client.mount_blob(&mounted, &f.hard.digest, "uploads/chunked").unwrap(),
        MountOutcome::Mounted
    );
    assert_eq!(client.blob_exists(&mounted, &f.hard.digest).unwrap(), Some(f.hard.size));
    let absent = Digest::of(b"not in any repository");
    assert_eq!(client.mount_blob(&mounted, &absent, "uploads/chunked").unwrap(), MountOutcome::NotMounted);

    // An upload whose bytes do not match the digest is refused by the registry.
    let err = client.upload_blob(&mono, &absent, &f.busybox.path, UploadOptions::default()).unwrap_err();
    assert!(err.to_string().contains(&absent.to_string()), "{err}");
}

#[test]
fn tls_registry_is_verified_against_configured_cas() {
    let Some(registry) = Registry::start(RegistryConfig { tls: true, ..Default::default() }) else { return };
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let certs = dir.path().join("certs.d");
    let strict = |cert_dirs| {
        let options = RegistryOptions {
            loopback_is_insecure: false,
            auth_file: None,
            cert_dirs,
            retries: 0,
            ..Default::default()
        };
        Arc::new(Client::new(options).unwrap())
    };
    let target = reference(&format!("{}/tls/busybox:v1", registry.addr));

    // Without the CA, verification fails and skiff says why.
    let err = strict(vec![certs.clone()]).blob_exists(&target, &f.busybox.digest).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // With the CA in certs.d/<host:port>/, HTTPS works.
    std::fs::create_dir_all(certs.join(&registry.addr)).unwrap();
    std::fs::copy(registry.ca_certificate(), certs.join(&registry.addr).join("ca.crt")).unwrap();
    let client = strict(vec![certs.clone()]);
    assert_eq!(client.base_url(&registry.addr).unwrap(), format!("https://{}", registry.addr));
    client.upload_blob(&target, &f.busybox.digest, &f.busybox.path, UploadOptions::default()).unwrap();

    // Loopback registries are insecure by default (as in docker): unverified HTTPS.
    let lenient = fixtures::client();
    assert_eq!(lenient.base_url(&registry.addr).unwrap(), format!("https://{}", registry.addr));
    assert_eq!(lenient.blob_exists(&target, &f.busybox.digest).unwrap(), Some(f.busybox.size));
    // The shared registry speaks plain HTTP, which the same client falls back to.
    assert_eq!(lenient.base_url(&f.registry.addr).unwrap(), format!("http://{}", f.registry.addr));
}

#[test]
fn an_insecure_registry_is_asked_over_https_and_http_side_by_side() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Condvar;

    // A plain-HTTP registry that holds a TLS handshake open until its own `GET /v2/` has
    // come in on another connection, or 5 s have passed: asked one after the other, the HTTP
    // probe would only come once the handshake had been refused.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let probed = Arc::new((Mutex::new(false), Condvar::new()));
    let held_until_probed = Arc::new(Mutex::new(None));
    {
        let (probed, held_until_probed) = (probed.clone(), held_until_probed.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().take(2) {
                let (probed, held_until_probed) = (probed.clone(), held_until_probed.clone());
                std::thread::spawn(move || {
                    let mut conn = conn.unwrap();
                    let mut first = [0u8; 1];
                    conn.peek(&mut first).unwrap();
                    let (flag, changed) = &*probed;
                    if first[0] == 0x16 {
                        // A TLS ClientHello: wait for the HTTP probe, then refuse.
                        let guard = flag.lock().unwrap();
                        let (guard, _) =
                            changed.wait_timeout_while(guard, Duration::from_secs(5), |seen| !*seen).unwrap();
                        *held_until_probed.lock().unwrap() = Some(*guard);
                        return;
                    }
                    let mut line = String::new();
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    reader.read_line(&mut line).unwrap();
                    while reader.read_line(&mut line).unwrap() > 2 {}
                    if line.starts_with("GET /v2/ ") {
                        *flag.lock().unwrap() = true;
                        changed.notify_all();
                    }
                    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
                    let _ = conn.read(&mut [0u8; 1]);
                });
            }
        });
    }
    let client = fixtures::client();
    assert_eq!(client.base_url(&addr).unwrap(), format!("http://{addr}"));
    assert_eq!(*held_until_probed.lock().unwrap(), Some(true), "the HTTP probe waited for the TLS handshake");
}

#[test]
fn a_pulls_first_request_is_its_probe_with_no_get_v2_before_it() {
    let server = Hostile::start(|req: &Request| match req.path.as_str() {
        "/v2/repo/manifests/x" => Reply::new(200, "{}").header("Content-Type", "application/json"),
        _ => Reply::new(404, ""),
    });
    let client = fixtures::client();
    let manifest = client.get_manifest(&reference(&format!("{}/repo:x", server.addr))).unwrap();
    assert_eq!(manifest.bytes, b"{}");
    // Its answer (connecting included) is how far the registry is, until a quicker one.
    assert!(client.delay(&server.addr).is_some());
    client.get_manifest(&reference(&format!("{}/repo:x", server.addr))).unwrap();
    // (What a refused TLS handshake may leave in the log is no request path.)
    let log = server.log.lock().unwrap();
    let paths: Vec<&str> = log.iter().map(|r| r.path.as_str()).filter(|p| p.starts_with('/')).collect();
    assert_eq!(paths, ["/v2/repo/manifests/x", "/v2/repo/manifests/x"]);
}

/// A blob server that redirects blob requests to a storage path, or ignores ranges.
fn blob_server(data: Arc<Vec<u8>>, digest: Digest, redirect: bool, honour_ranges: bool) -> Hostile {
    Hostile::start(move |req: &Request| {
        let blob_path = format!("/v2/repo/blobs/{digest}");
        if req.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        if req.path == blob_path && redirect {
            return Reply::new(307, "").header("Location", "/storage/blob?signed=1");
        }
        if req.path == blob_path || req.path == "/storage/blob?signed=1" {
            return match req.range() {
                Some((a, b)) if honour_ranges => Reply::new(206, data[a as usize..=b as usize].to_vec())
                    .header("Content-Range", &format!("bytes {a}-{b}/{}", data.len())),
                _ => Reply::new(200, data.to_vec()),
            };
        }
        Reply::new(404, "")
    })
}

#[test]
fn range_reads_follow_redirects_once_and_reuse_the_final_url() {
    let data = Arc::new(fixtures::noise(300_000, 3));
    let digest = Digest::of(&data);
    let server = blob_server(data.clone(), digest, true, true);
    let client = fixtures::client();
    let blob = client.blob_source(&reference(&format!("{}/repo:x", server.addr)), digest, data.len() as u64);
    for start in [0u64, 1000, 250_000] {
        let mut buf = vec![0u8; 5000];
        blob.read_exact_at(start, &mut buf).unwrap();
        assert_eq!(buf, &data[start as usize..start as usize + 5000]);
    }
    let paths: Vec<String> = server.log.lock().unwrap().iter().map(|r| r.path.clone()).collect();
    let to_registry = paths.iter().filter(|p| p.starts_with("/v2/repo/blobs/")).count();
    let to_storage = paths.iter().filter(|p| p.starts_with("/storage/")).count();
    assert_eq!((to_registry, to_storage), (1, 3), "{paths:?}");
}

#[test]
fn a_client_knows_how_far_a_registry_is_from_its_quickest_answer() {
    let data = Arc::new(fixtures::noise(10_000, 7));
    let digest = Digest::of(&data);
    let (quick, slow) = (Duration::from_millis(40), Duration::from_millis(400));
    // Taken off the end: the first range request waits longest.
    let waits = Arc::new(Mutex::new(vec![quick, slow]));
    let server = {
        let data = data.clone();
        Hostile::start(move |req: &Request| {
            if req.path == "/v2/" {
                return Reply::new(200, "{}");
            }
            std::thread::sleep(waits.lock().unwrap().pop().unwrap_or_default());
            match req.range() {
                Some((a, b)) => Reply::new(206, data[a as usize..=b as usize].to_vec())
                    .header("Content-Range", &format!("bytes {a}-{b}/{}", data.len())),
                None => Reply::new(404, ""),
            }
        })
    };
    let client = fixtures::client();
    assert_eq!(client.delay(&server.addr), None, "nothing asked yet");
    let blob = client.blob_source(&reference(&format!("{}/repo:x", server.addr)), digest, data.len() as u64);
    let mut buf = vec![0u8; 100];
    blob.read_exact_at(0, &mut buf).unwrap();
    assert!(client.delay(&server.addr).unwrap() >= slow);
    blob.read_exact_at(5000, &mut buf).unwrap();
    assert_eq!(buf, &data[5000..5100]);
    let delay = client.delay(&server.addr).unwrap();
    assert!(delay >= quick && delay < slow, "the quicker answer: {delay:?}");
    assert_eq!(blob.delay(), Some(delay), "each blob of the registry knows it");
}

#[test]
fn a_server_that_ignores_ranges_still_yields_the_right_bytes() {
    let data = Arc::new(fixtures::noise(100_000, 5));
    let digest = Digest::of(&data);
    let server = blob_server(data.clone(), digest, false, false);
    let client = fixtures::client();
    let blob = client.blob_source(&reference(&format!("{}/repo:x", server.addr)), digest, data.len() as u64);
    let mut buf = vec![0u8; 777];
    blob.read_exact_at(54_321, &mut buf).unwrap();
    assert_eq!(buf, &data[54_321..54_321 + 777]);
}

#[test]
fn retries_on_503_and_429_then_succeeds() {
    let failures = Arc::new(AtomicUsize::new(0));
    let server = {
        let failures = failures.clone();
        Hostile::start(move |req: &Request| {
            if req.path == "/v2/" {
                return Reply::new(200, "{}");
            }
            match failures.fetch_add(1, Ordering::SeqCst) {
                0 => Reply::new(503, "busy"),
                1 => Reply::new(429, "slow down").header("Retry-After", "0"),
                _ => Reply::new(200, ""),
            }
        })
    };
    let client = fixtures::client();
    let digest = Digest::of(b"x");
    let found = client.blob_exists(&reference(&format!("{}/repo:x", server.addr)), &digest).unwrap();
    assert_eq!(found, Some(0));
    assert_eq!(failures.load(Ordering::SeqCst), 3, "two failures, then the answer");
}

#[test]
fn bearer_tokens_are_fetched_per_scope_cached_and_renewed_on_401() {
    let issued = Arc::new(AtomicUsize::new(0));
    let valid = Arc::new(std::sync::Mutex::new(String::new()));
    let own_addr = Arc::new(std::sync::OnceLock::<String>::new());
    let server = {
        let (issued, valid, own_addr) = (issued.clone(), valid.clone(), own_addr.clone());
        Hostile::start(move |req: &Request| {
            if req.path.starts_with("/token") {
                assert!(req.path.contains("service=test-registry"), "{}", req.path);
                assert!(req.path.contains("scope=repository%3Arepo%3Apull"), "{}", req.path);
                let token = format!("t{}", issued.fetch_add(1, Ordering::SeqCst) + 1);
                *valid.lock().unwrap() = token.clone();
                return Reply::new(200, format!(r#"{{"token":"{token}","expires_in":300}}"#));
            }
            let expected = format!("Bearer {}", valid.lock().unwrap());
            if req.header("authorization") != Some(expected.as_str()) {
                let addr = own_addr.get().unwrap();
                let challenge = format!(r#"Bearer realm="http://{addr}/token",service="test-registry""#);
                return Reply::new(
                    401,
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                )
                .header("WWW-Authenticate", &challenge);
            }
            Reply::new(404, "")
        })
    };
    own_addr.set(server.addr.clone()).unwrap();
    let client = fixtures::client();
    let target = reference(&format!("{}/repo:x", server.addr));
    let digest = Digest::of(b"x");
    assert_eq!(client.blob_exists(&target, &digest).unwrap(), None);
    assert_eq!(client.blob_exists(&target, &digest).unwrap(), None);
    assert_eq!(issued.load(Ordering::SeqCst), 1, "the token is cached");

    // The server revokes the token: the next request is refused once, and the client
    // fetches a fresh token and repeats it.
    *valid.lock().unwrap() = "revoked".into();
    assert_eq!(client.blob_exists(&target, &digest).unwrap(), None);
    assert_eq!(issued.load(Ordering::SeqCst), 2);
}
