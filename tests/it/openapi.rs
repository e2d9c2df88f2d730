//! The REST API against its OpenAPI document, with a property-based API fuzzer: schemathesis (from PyPI, installed
//! by scripts/setup.sh into target/schemathesis) reads `/openapi.json` from a running node over TLS, generates
//! valid and invalid requests for every operation from it, and fails on any `5xx`, on any answer whose status,
//! content type, headers or body the document does not describe, and on its other checks (a valid request
//! refused, a method the path does not have answered other than `405` with `Allow`, a credential ignored, ...).
//! tests/schemathesis.toml holds its settings, and the few exceptions with their reasons.
//!
//! Two nodes of the real binary on a real Redis, with a config file whose namespace `/shop` takes pushes, an
//! `API_TOKEN` and no `QUERY_RATE`; a real socket.io client on each node sits in room `Maths` of `/` (the
//! document's example room), so the room queries answer with members from both nodes. schemathesis asks node `a`,
//! with the token and the push key (so `POST /send` is exercised past the `401`), and `site=shop` (so pushes reach
//! a real site and go through Redis to the other node).
//!
//! Reproduce a run with the seed it printed: `SCHEMATHESIS_SEED=<seed> cargo test --test it openapi::`; search longer
//! with `SCHEMATHESIS_MAX_EXAMPLES=1000` (about 10 times as long).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use crate::harness::*;

const API_TOKEN: &str = "openapi-test-token-0123456789";
const SHOP_KEY: &str = "shop-key-0123456789abcdef";

const CONFIG: &str = r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake", "user"]

[[namespace]]
name = "/shop"
auth = "claim"
rooms = ["handshake", "user"]
api_key = "shop-key-0123456789abcdef"
"#;

/// Generated cases per operation and phase, unless `SCHEMATHESIS_MAX_EXAMPLES` says otherwise.
const MAX_EXAMPLES: &str = "50";
/// The whole run may take this long (it takes about 10 s with [`MAX_EXAMPLES`]).
const TIME_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says() {
    let schemathesis = root().join("target/schemathesis/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/setup.sh (scripts/test.sh does)",
        schemathesis.display()
    );
    let dir = log_dir("openapi");
    let config = dir.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--api-token",
        API_TOKEN,
    ];
    let redis = Redis::start(&dir);
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let opts = NodeOpts {
            id,
            redis: Some(redis.url()),
            prefix: "openapi",
            args: &args,
            ..NodeOpts::default()
        };
        nodes.push(Node::start(&dir, opts).await);
    }
    let (node, other) = (&nodes[0], &nodes[1]);
    let mut io = Clients::start();
    io.join(Conn::to("foo", node).user("foo", "Maths")).await;
    io.join(Conn::to("bar", other).user("bar", "Maths")).await;

    let mut cmd = tokio::process::Command::new(&schemathesis);
    // Credentials and the site for tests/schemathesis.toml, which says which checks run where, and why.
    cmd.current_dir(&dir)
        .env("API_TOKEN", API_TOKEN)
        .env("SEND_KEY", SHOP_KEY)
        .env("SITE", "shop")
        .arg("--config-file")
        .arg(root().join("tests/schemathesis.toml"))
        .arg("run")
        .arg(node.url("/openapi.json"))
        .arg("--tls-verify")
        .arg(root().join("certs-dev/ca.pem"))
        .arg("--max-examples")
        .arg(std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or(MAX_EXAMPLES.into()))
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit,har", "--report-dir"])
        .arg(&dir)
        .arg("--no-color");
    if let Ok(seed) = std::env::var("SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let started = Instant::now();
    let run = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start schemathesis");
    let limit = match std::env::var("SCHEMATHESIS_MAX_EXAMPLES") {
        Ok(_) => Duration::from_secs(3600),
        Err(_) => TIME_LIMIT,
    };
    let out = tokio::time::timeout(limit, run.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {limit:?}"))
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("schemathesis.log"), &output).unwrap();
    println!("schemathesis took {:.1?}:\n{output}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found answers that break openapi.json ({}):\n{output}\nlogs in {}",
        out.status,
        dir.display()
    );
    // The nodes served the whole run.
    let http = Http::new();
    for node in &nodes {
        assert_eq!(http.status(node, "/health").await, 200, "{}", node.id);
    }
}
