//! The page, in headless Chromium: two browsers on two nodes see each other in the room's live table; a page on
//! a listed origin connects across origins by long-polling.

use crate::harness::*;

/// The socket.io bundle the pages load must be there.
fn need_bundle() {
    let bundle = root().join("deploy/static/socket.io.min.js");
    assert!(
        bundle.exists(),
        "run scripts/fetch-client.sh first (scripts/test.sh does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_two_nodes_list_both_users() {
    let (dir, _redis, nodes) = cluster("pages_on_two_nodes_list_both_users", 2, 1000).await;
    need_bundle();
    let artifacts = root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("room-page.png");
    let _ = std::fs::remove_file(&shot);
    let page_a = nodes[0].url("/Maths?id_user=foo");
    let page_b = nodes[1].url("/Maths?id_user=bar");

    // The page script runs in its own process, bounded, with a visible log on failure.
    let args = vec![shot.display().to_string(), "bar,foo".into(), page_a, page_b];
    let result = browser_script(&dir, "browser.mjs", args, nodes[0].log_text()).await;
    let pages = result["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 2);
    for (page, node) in pages.iter().zip(["a", "b"]) {
        let mut users: Vec<&str> = page["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        users.sort();
        assert_eq!(users, ["bar", "foo"], "{page}");
        assert_eq!(page["node"], node, "{page}");
        assert_eq!(page["status"], "connected", "{page}");
        let mut holders: Vec<&str> = page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap())
            .collect();
        holders.sort();
        assert_eq!(holders, ["a", "b"], "{page}");
    }
    // Each table lists exactly the two pages' own sockets.
    let own: std::collections::BTreeSet<&str> = pages
        .iter()
        .map(|p| p["socket"].as_str().unwrap())
        .collect();
    assert_eq!(own.len(), 2);
    for page in pages {
        let listed: std::collections::BTreeSet<&str> = page["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(listed, own, "{page}");
    }
    // The browser is gone: so are its sockets, on every node.
    let http = Http::new();
    for node in &nodes {
        eventually(
            std::time::Duration::from_secs(2),
            "the pages' sockets to leave",
            async || {
                http.users(node, "Maths")
                    .await
                    .set()
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
    }
    assert!(root().join("tests/artifacts/room-page.png").exists());
    println!("screenshot: tests/artifacts/room-page.png");
}

/// A page on `https://127.0.0.1:{port}`, a listed origin, connects to the same node as `https://localhost:{port}`
/// (another origin to the browser) over long-polling only, with credentials, and reads the room list: the browser
/// enforces CORS on every request, the preflighted ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_a_listed_origin_long_polls_across_origins() {
    let dir = log_dir("cors_browser");
    let port = free_port();
    let origin = format!("https://127.0.0.1:{port}");
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "n",
            port: Some(port),
            args: &["--cors-origins", &format!("https://app.example,{origin}")],
            ..NodeOpts::default()
        },
    )
    .await;
    need_bundle();
    let page = node.url("/health");
    let base = format!("https://localhost:{port}");
    let result = browser_script(&dir, "cors.mjs", vec![page, base], node.log_text()).await;
    println!("cross-origin page: {result}");
    assert_eq!(
        result["socket"],
        serde_json::json!({"event": "connect", "transport": "polling"}),
        "{result}"
    );
    assert_eq!(result["users"], serde_json::json!(["browser"]), "{result}");
}
