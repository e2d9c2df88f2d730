//! HTTPS to the nodes (a client trusting the development CA, raw TLS connections), their answers, and loopback
//! servers the tests play (auth webhooks, backends).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use serde_json::Value;

use super::{Node, root};

pub struct Http {
    pub client: reqwest::Client,
}

/// A TLS client that trusts the development CA, for raw connections (no HTTP client in the way).
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A raw TLS connection to `localhost:{port}`, handshake done.
pub async fn tls(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tls_connector()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A raw Engine.IO websocket session (`EIO=4`, no polling first) to `localhost:{port}`, `query` appended to the URL
/// (`&id_user=u1`), its open packet read.
pub async fn engine_websocket(
    port: u16,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    let url = format!("wss://localhost:{port}/socket.io/?EIO=4&transport=websocket{query}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls(port).await)
        .await
        .unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
    ws
}

/// A `GET /{room}/users` answer.
#[derive(Debug)]
pub struct Users {
    pub status: u16,
    pub nodes: String,
    pub partial: String,
    pub body: Value,
}

impl Users {
    /// Whether the entries are in the documented order: by `id_user` (none first), then `id_socket`.
    pub fn in_listing_order(&self) -> bool {
        let keys: Vec<(Option<&str>, &str)> = self
            .body
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {}", self.body))
            .iter()
            .map(|u| (u["id_user"].as_str(), u["id_socket"].as_str().unwrap()))
            .collect();
        keys.is_sorted()
    }

    /// `(id_socket, id_user)` pairs, as a set.
    pub fn set(&self) -> BTreeSet<(String, String)> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {}", self.body))
            .iter()
            .map(|u| {
                (
                    u["id_socket"].as_str().unwrap().to_owned(),
                    u["id_user"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

impl Http {
    pub fn new() -> Self {
        let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            // Nodes close a keep-alive connection idle for HEADER_READ_TIMEOUT_MS (10 s by default): a client that
            // reuses one as the node closes it gets an EOF instead of an answer. Let idle ones go well before.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self { client }
    }

    /// The status of `GET {path}` on `node`.
    pub async fn status(&self, node: &Node, path: &str) -> u16 {
        let res = self.client.get(node.url(path)).send().await.unwrap();
        res.status().as_u16()
    }

    /// `GET {node}{path}`'s body as JSON.
    pub async fn json(&self, node: &Node, path: &str) -> Value {
        let res = self.client.get(node.url(path)).send().await.unwrap();
        res.json().await.unwrap()
    }

    /// `POST {node}/send?{query}` with `body` as JSON: the status and the JSON answer (`null` if none).
    pub async fn push(&self, node: &Node, query: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(node.url(&format!("/send?{query}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The value of one sample of `node`'s `/metrics` (its exact name and labels), if present.
    pub async fn metric(&self, node: &Node, sample: &str) -> Option<f64> {
        let res = self.client.get(node.url("/metrics")).send().await.unwrap();
        let text = res.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics text: {text}");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    pub async fn users(&self, node: &Node, room: &str) -> Users {
        self.users_at(&node.base(), room).await
    }

    /// `GET {base}/{room}/users`.
    pub async fn users_at(&self, base: &str, room: &str) -> Users {
        self.users_in(base, room, "/").await
    }

    /// `GET {base}/{room}/users?namespace={ns}`.
    pub async fn users_in(&self, base: &str, room: &str, ns: &str) -> Users {
        let res = self
            .client
            .get(format!("{base}/{room}/users"))
            .query(&[("namespace", ns)])
            .send()
            .await
            .unwrap();
        let h = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (nodes, partial) = (h("x-cluster-nodes"), h("x-cluster-partial"));
        let status = res.status().as_u16();
        let body = res.json().await.unwrap();
        Users {
            status,
            nodes,
            partial,
            body,
        }
    }
}

/// Serves `app` (an auth webhook, a backend) over plain HTTP on a free loopback port, for the test's life; returns
/// the port.
pub async fn serve_loopback(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A set of expected `(id_socket, id_user)` pairs.
pub fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(s, u)| (s.to_string(), u.to_string()))
        .collect()
}
