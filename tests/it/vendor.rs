//! The vendored socketioxide (vendor/): the build uses it, it is the exact version vendor/socketioxide.source
//! names, and it is that crate with our patches and nothing else.

use crate::harness::root;

/// `key=value` from vendor/socketioxide.source.
fn source(key: &str) -> String {
    let text = std::fs::read_to_string(root().join("vendor/socketioxide.source")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from vendor/socketioxide.source"))
        .to_owned()
}

/// Cargo.lock has one socketioxide, the patched one (a path, so no `source`), of the vendored version: a
/// socketioxide upgrade that leaves vendor/ behind (cargo would then quietly build the registry's crate without
/// our patches) fails here.
#[test]
fn cargo_lock_builds_the_vendored_socketioxide() {
    let lock: toml::Table = std::fs::read_to_string(root().join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let entries: Vec<_> = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str() == Some("socketioxide"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].get("source").is_none(),
        "socketioxide comes from a registry, not vendor/: {:?}",
        entries[0]
    );
    let version = source("version");
    assert_eq!(entries[0]["version"].as_str(), Some(version.as_str()));
    let manifest: toml::Table =
        std::fs::read_to_string(root().join("vendor/socketioxide/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(
        manifest["package"]["version"].as_str(),
        Some(version.as_str())
    );
}

/// vendor/socketioxide is the published crate (checked against its SHA-256) with vendor/patches applied, byte for
/// byte: no edit hides in the copy outside a patch.
#[test]
fn the_vendored_copy_is_the_crate_with_its_patches() {
    let out = std::process::Command::new(root().join("scripts/vendor.sh"))
        .arg("--check")
        .output()
        .expect("run scripts/vendor.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
