//! A hostile-config corpus (`tests/corpus/config/*.toml`): every file must stop the real binary at start-up
//! with a message naming the file, the line (when the file says which) and what is wrong. The first line of
//! each file says what the message must contain: `# expect: [:<line>:] <text>`.

use std::{process::Command, time::Duration};

use crate::harness::*;

#[test]
fn every_bad_config_file_stops_the_node_with_a_clear_message() {
    let dir = root().join("tests/corpus/config");
    let mut seen = 0;
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", path.display()));
        let out = Command::new(env!("CARGO_BIN_EXE_socket-identity"))
            .current_dir(root())
            .env_clear()
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--plain-http",
                "--config",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = path.display().to_string();
        if out.status.success() {
            wrong.push(format!("{name} was accepted:\n{said}"));
            continue;
        }
        let (line, text) = match expect.strip_prefix(':') {
            Some(rest) => {
                let (n, text) = rest.split_once(':').unwrap();
                (Some(n), text.trim())
            }
            None => (None, expect),
        };
        let located = match line {
            Some(n) => format!("{name}:{n}:"),
            None => name.clone(),
        };
        assert!(
            said.contains(&located),
            "{name}: no {located:?} in:\n{said}"
        );
        assert!(said.contains(text), "{name}: no {text:?} in:\n{said}");
        seen += 1;
    }
    assert!(seen >= 25, "corpus not found: {seen} files");
}

/// A good file starts a node that serves its namespaces and refuses others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_starts_a_node() {
    let dir = log_dir("config_example");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[[namespace]]\nname = \"/open\"\nauth = \"none\"\nrooms = []\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let node = Node::start(
        &dir,
        NodeOpts {
            args: &args,
            ..NodeOpts::default()
        },
    )
    .await;
    let mut io = Clients::start();
    let ev = io.connect(Conn::to("open", &node).ns("/open")).await;
    assert_eq!(ev["event"], "connect", "{ev}");
    // `/` is not in the file: not served.
    let ev = io.connect(Conn::to("root", &node)).await;
    assert_eq!(ev["message"], "Invalid namespace", "{ev}");
    let users = Http::new().users_in(&node.base(), "x", "/").await;
    assert_eq!(users.status, 404);
    let _ = Duration::ZERO;
}
