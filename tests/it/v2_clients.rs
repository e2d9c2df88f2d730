//! socket.io-client 2.x (protocol v4 over Engine.IO 3), what apps built for socket.io 2 ship, beside 4.x clients.

use serde_json::json;

use crate::harness::*;

const CONFIG: &str = r#"
[[namespace]]
name = "/"
auth = "claim"
rooms = ["handshake"]
api_key = "root-key-0123456789abcdef"
user_room_prefix = "user_"
client_ttl_s = 0

[[namespace]]
name = "/claim"
auth = "claim"
rooms = ["handshake"]

[[namespace]]
name = "/do-*"
auth = "none"
rooms = []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore() {
    let (_dir, _redis, nodes) = cluster_with_config("v2_explore", 2, CONFIG).await;
    let mut io = Clients::start();
    for (id, ns, t) in [
        ("r", "/", "websocket"),
        ("rp", "/", "polling"),
        ("c", "/claim", "websocket"),
        ("cn", "/claim", "polling"),
        ("d", "/do-x", "websocket"),
    ] {
        let ev = io
            .connect(
                Conn::to(id, &nodes[0])
                    .ns(ns)
                    .user(id, "R")
                    .transports(&[t])
                    .v2(),
            )
            .await;
        eprintln!("EXPLORE {id} {ns} {t}: {ev}");
    }
    let http = Http::new();
    eprintln!("EXPLORE users {:?}", http.users(&nodes[1], "R").await.body);
    eprintln!(
        "EXPLORE users claim {:?}",
        http.users_in(&nodes[1].base(), "R", "/claim").await.body
    );
    let _ = json!(1);
}
