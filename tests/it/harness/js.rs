//! Servers of tests/js run as child processes of one test: a backend receiving webhooks and RPC calls
//! (`webhook-receiver.mjs`), a Node socket.io server (`node-server.mjs`). Each prints `{"port": N}` once it
//! listens, is killed when dropped, and exits when its stdin closes.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{need, root};

/// A tests/js server this test started.
pub struct JsServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _child: tokio::process::Child,
}

impl JsServer {
    /// Starts `node tests/js/<script> <args>`; returns once it says its port (within 20 s). `package` is one of
    /// the npm packages it needs: its absence means `npm ci` did not run.
    pub async fn start(script: &str, args: &[String], package: &str) -> Self {
        need("node", "apt-get install -y nodejs");
        let js = root().join("tests/js");
        assert!(
            js.join("node_modules").join(package).exists(),
            "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test.sh does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(js.join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start node tests/js/{script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{script} started within 20 s"))
            .unwrap_or_else(|e| panic!("{script} stdout: {e}"))
            .unwrap_or_else(|| panic!("{script} printed its port"));
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{script} prints JSON: {e}"));
        let port = ready["port"].as_u64().expect("a port");
        Self {
            base: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    }
}

/// The application's backend (`webhook-receiver.mjs`): it verifies every request with the official
/// `standardwebhooks` package and records it; the test tells it how to answer.
pub struct Receiver {
    server: JsServer,
    http: reqwest::Client,
}

impl Receiver {
    /// Starts one verifying with `secret`.
    pub async fn start(secret: &str) -> Self {
        let server = JsServer::start(
            "webhook-receiver.mjs",
            &[secret.to_owned()],
            "standardwebhooks",
        )
        .await;
        Self {
            server,
            http: reqwest::Client::new(),
        }
    }

    /// Its address, `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.server.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    /// The next requests (`times`; absent: all) to `path` (absent: any) get this answer.
    pub async fn answer(&self, rule: Value) {
        self.control("/_answer", Some(rule)).await;
    }

    /// Forgets the requests and the rules.
    pub async fn reset(&self) {
        self.control("/_reset", None).await;
    }

    /// Every request it got so far.
    pub async fn requests(&self) -> Vec<Value> {
        let res = self.http.get(self.url("/_requests")).send().await.unwrap();
        res.json().await.unwrap()
    }

    async fn control(&self, path: &str, body: Option<Value>) {
        let mut req = self.http.post(self.url(path));
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }
}
