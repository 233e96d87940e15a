//! Basic auth against a real registry with htpasswd: refused without credentials, `skiff
//! login` checks and stores them in docker's config.json, `skiff logout` removes them.

use skiff_tests::cli::Skiff;
use skiff_tests::registry::{Registry, RegistryConfig};
use skiff_tests::{fixtures, temp_dir};

#[test]
fn basic_auth_login_pull_push_logout() {
    let config =
        RegistryConfig { basic_auth: Some(("tester".into(), "s3cret pass".into())), ..Default::default() };
    let Some(registry) = Registry::start(config) else { return };
    let Some(f) = fixtures::shared() else { return };
    let dir = temp_dir();
    let skiff = Skiff::new(dir.path());
    let reg = registry.addr.as_str();
    let image = format!("{reg}/private/busybox:v1");

    // Get an image into the store to push (from the open shared registry).
    skiff.run(&["pull", &f.busybox_ref]).ok();
    let err = skiff.run(&["push", &f.busybox_ref, &image]);
    let err = err.failed();
    assert!(err.contains("access denied") && err.contains(&format!("skiff login {reg}")), "{err}");

    let err = skiff.run(&["login", "-u", "tester", "-p", "wrong", reg]);
    assert!(err.failed().contains("credentials were refused"), "{}", err.stderr);
    assert!(!skiff.docker_config.join("config.json").exists(), "a refused login stores nothing");

    let out = skiff.run_with_input(&["login", "-u", "tester", "--password-stdin", reg], "s3cret pass\n");
    assert!(out.ok().contains("Login Succeeded"));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(skiff.docker_config.join("config.json")).unwrap()).unwrap();
    assert!(stored["auths"][reg]["auth"].is_string(), "{stored}");

    let out = skiff.run(&["push", &f.busybox_ref, &image]);
    assert!(out.ok().contains(&f.busybox_digest.to_string()), "{}", out.stdout);
    let other = Skiff { root: dir.path().join("other-root"), docker_config: skiff.docker_config.clone() };
    other.run(&["pull", "--full", &image]).ok();
    assert!(other.store().has(&f.busybox.digest));

    assert!(skiff.run(&["logout", reg]).ok().contains("Removing login credentials"));
    assert!(skiff.run(&["logout", reg]).failed().contains("not logged in"));
    let third = Skiff { root: dir.path().join("third-root"), docker_config: skiff.docker_config.clone() };
    assert!(third.run(&["pull", &image]).failed().contains("access denied"));
    assert!(third.store().images().unwrap().is_empty());
}
