//! Headless Chromium, driven by the scripts of `tests/js`.

use std::{path::Path, process::Command};

use serde_json::Value;

use super::root;

/// The Chromium to drive (`CHROMIUM`, default `/usr/bin/chromium`), checked to be there.
pub fn chromium() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium (scripts/test.sh does)"
    );
    chromium
}

/// Runs `tests/js/<script>` with `args` in Node (bounded to 60 s, `CHROMIUM` set), keeps its stderr in
/// `<dir>/<script>.stderr`, and returns what it printed on stdout as JSON. A failure shows the stderr and
/// `node_log` (the log of the node the script talked to).
pub async fn browser_script(
    dir: &Path,
    script: &str,
    args: Vec<String>,
    node_log: String,
) -> Value {
    let chromium = chromium();
    let path = root().join("tests/js").join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "node"])
            .arg(path)
            .args(args)
            .env("CHROMIUM", chromium)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(dir.join(format!("{script}.stderr")), stderr.as_bytes()).unwrap();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stderr}\nnode:\n{node_log}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
