// A Node socket.io 4 server with @socket.io/redis-adapter, for the mixed-cluster tests (tests/it/node_migration.rs):
//   node node-server.mjs <redis port> <key> '<JSON array of namespaces>'
// Plain HTTP on a free port of 127.0.0.1. A socket joins the room its handshake query names (`?room=r1`), as our
// `rooms = ["handshake"]` namespaces do. `POST /emit` with {"ns", "to": [...], "except": [...], "volatile",
// "event", "args"} broadcasts through the adapter (`io.of(ns).to(to).except(except).emit(event, ...args)`); in
// args, {"$binary": base64} becomes a Buffer (nested too).
// Prints one line, {"port": <port>}, once it listens and the adapter of every namespace is subscribed; exits when
// stdin closes (the test's end), or on a Redis error.
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";

function binary(v) {
  if (Array.isArray(v)) return v.map(binary);
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$binary" && typeof v.$binary === "string") return Buffer.from(v.$binary, "base64");
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, binary(x)]));
  }
  return v;
}

const [port, key, namespaces] = process.argv.slice(2);
const fail = (e) => {
  console.error(`node-server.mjs: ${e.message ?? e}`);
  process.exit(1);
};
const pub = createClient({ url: `redis://127.0.0.1:${port}` });
const sub = pub.duplicate();
pub.on("error", fail);
sub.on("error", fail);
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/emit") {
    res.writeHead(404).end();
    return;
  }
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    try {
      const op = JSON.parse(body);
      let e = io.of(op.ns ?? "/");
      if (op.to) e = e.to(op.to);
      if (op.except) e = e.except(op.except);
      if (op.volatile) e = e.volatile;
      e.emit(op.event, ...binary(op.args ?? []));
      res.writeHead(200).end();
    } catch (e) {
      res.writeHead(400).end(String(e));
    }
  });
});
const io = new Server(http, { adapter: createAdapter(pub, sub, { key }) });
const names = JSON.parse(namespaces);
for (const name of names) {
  io.of(name).on("connection", (socket) => {
    const room = socket.handshake.query.room;
    if (typeof room === "string" && room) socket.join(room);
  });
}

// The adapter subscribes as each namespace is created, without a promise to wait on: its request channel (a plain
// SUBSCRIBE, sent after the PSUBSCRIBE of its broadcasts on the same connection) counts a subscriber once both are
// done.
for (;;) {
  const counts = await pub.pubSubNumSub(names.map((n) => `${key}-request#${n}#`));
  if (Object.values(counts).every((n) => n > 0)) break;
  await new Promise((r) => setTimeout(r, 20));
}
http.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: http.address().port }) + "\n");
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
