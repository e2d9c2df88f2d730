//! The vendored crates (vendor/: socketioxide, socketioxide-core, engineioxide, tungstenite): the build uses them,
//! each is the exact version its vendor/<crate>.source names, and each is that crate with our patches and nothing
//! else.

use crate::harness::root;

/// The crates vendor/ holds: one vendor/<crate>.source each.
fn vendored() -> Vec<String> {
    let mut crates: Vec<String> = std::fs::read_dir(root().join("vendor"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".source").map(str::to_owned)
        })
        .collect();
    crates.sort();
    crates
}

/// `key=value` from vendor/<krate>.source.
fn source(krate: &str, key: &str) -> String {
    let path = format!("vendor/{krate}.source");
    let text = std::fs::read_to_string(root().join(&path)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from {path}"))
        .to_owned()
}

/// Cargo.toml's `[patch.crates-io]` builds every vendored crate from its copy, and nothing else from vendor/: a
/// vendor/<crate>.source without its patch entry would be checked here but never built.
#[test]
fn every_vendored_crate_is_patched_in() {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut patched: Vec<(String, String)> = manifest["patch"]["crates-io"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(name, dep)| (name.clone(), dep["path"].as_str().unwrap_or("").to_owned()))
        .filter(|(_, path)| path.starts_with("vendor/"))
        .collect();
    patched.sort();
    let expected: Vec<(String, String)> = vendored()
        .into_iter()
        .map(|k| (k.clone(), format!("vendor/{k}")))
        .collect();
    assert_eq!(patched, expected);
    assert!(expected.iter().any(|(k, _)| k == "engineioxide"));
    assert!(expected.iter().any(|(k, _)| k == "socketioxide"));
    assert!(expected.iter().any(|(k, _)| k == "tungstenite"));
}

/// Cargo.lock has one entry of each vendored crate, the patched one (a path, so no `source`), of the vendored
/// version: an upgrade that leaves vendor/ behind (cargo would then quietly build the registry's crate without our
/// patches, or both) fails here.
#[test]
fn cargo_lock_builds_every_vendored_crate() {
    let lock: toml::Table = std::fs::read_to_string(root().join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    for krate in vendored() {
        let version = source(&krate, "version");
        let entries: Vec<_> = lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str() == Some(krate.as_str()))
            // Only tungstenite has another version, from crates.io, for another dependent (axum's 0.29).
            .filter(|p| {
                krate != "tungstenite"
                    || p.get("source").is_none()
                    || p["version"].as_str() == Some(version.as_str())
            })
            .collect();
        assert_eq!(entries.len(), 1, "{krate}: {entries:?}");
        assert!(
            entries[0].get("source").is_none(),
            "{krate} comes from a registry, not vendor/: {:?}",
            entries[0]
        );
        assert_eq!(
            entries[0]["version"].as_str(),
            Some(version.as_str()),
            "{krate}"
        );
        let manifest: toml::Table =
            std::fs::read_to_string(root().join(format!("vendor/{krate}/Cargo.toml")))
                .unwrap()
                .parse()
                .unwrap();
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(version.as_str()),
            "{krate}"
        );
    }
}

/// Each vendor/<crate>/ is the published crate (checked against its SHA-256) with vendor/patches/<crate>/ applied,
/// byte for byte: no edit hides in a copy outside a patch.
#[test]
fn every_vendored_copy_is_the_crate_with_its_patches() {
    let out = std::process::Command::new(root().join("scripts/vendor.sh"))
        .arg("--check")
        .output()
        .expect("run scripts/vendor.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for krate in vendored() {
        assert!(
            stdout.contains(&format!("vendor/{krate} is {krate} ")),
            "{krate} not checked: {stdout}"
        );
    }
}

/// The vendored engineioxide passes its own unit tests, ours among them (patch 0003's: packets in order while a
/// websocket is busy, concurrent senders, the close).
#[test]
fn vendored_engineioxide_passes_its_unit_tests() {
    passes_its_unit_tests(
        "engineioxide",
        "transport::ws::tests::packets_keep_their_order_while_the_websocket_is_busy",
    );
}

/// The vendored socketioxide-core passes its own unit tests, patch 0001's among them (a room walked in join order).
#[test]
fn vendored_socketioxide_core_passes_its_unit_tests() {
    passes_its_unit_tests(
        "socketioxide-core",
        "adapter::test::a_room_is_walked_in_join_order",
    );
}

/// Runs `cargo test --lib` on a copy of vendor/<krate> made a package of its own, with its dev-dependencies, in a
/// target directory kept between runs; `ours` is one of our patches' tests, which must have run and passed.
fn passes_its_unit_tests(krate: &str, ours: &str) {
    let dir = root().join("target/vendored-tests");
    let copy = dir.join(krate);
    std::fs::remove_dir_all(&copy).ok();
    std::fs::create_dir_all(&copy).expect("create the copy's directory");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join(format!("vendor/{krate}/.")))
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(status.success(), "copy vendor/{krate}");
    let manifest = copy.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest).expect("read the copy's Cargo.toml");
    // Not a member of our workspace: a workspace of its own.
    text.push_str("\n[workspace]\n");
    std::fs::write(&manifest, text).expect("write the copy's Cargo.toml");
    // Our lock pins the versions the server builds with; cargo adds the dev-dependencies.
    std::fs::copy(root().join("Cargo.lock"), copy.join("Cargo.lock")).expect("copy Cargo.lock");

    let out = std::process::Command::new(env!("CARGO"))
        .args(["test", "--lib", "--target-dir"])
        .arg(dir.join("target"))
        .current_dir(&copy)
        .output()
        .expect("run cargo test on the copy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{ours} ... ok")),
        "{krate}: our patch's test did not run: {stdout}"
    );
}
