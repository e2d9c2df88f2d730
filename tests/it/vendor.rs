//! The vendored crates (vendor/: socketioxide, engineioxide, tungstenite): the build uses them, each is the exact version its
//! vendor/<crate>.source names, and each is that crate with our patches and nothing else.

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
