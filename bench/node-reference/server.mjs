// The Node reference for the benchmark: socket-identity's contract written the way a Node team would,
// with socket.io v4, @socket.io/redis-adapter and `fetchSockets()` reading `socket.data.id_user`.
// Configured like the Rust server, by environment: PORT, BIND, NODE_ID, REDIS_URL (unset: one node),
// TLS_CERT, TLS_KEY, REQUEST_TIMEOUT_MS, PRESENCE_EVENTS.
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import { fileURLToPath } from "node:url";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const env = process.env;
const repo = (p) => fileURLToPath(new URL(`../../${p}`, import.meta.url));
const PORT = Number(env.PORT ?? 5009);
const BIND = env.BIND ?? "0.0.0.0";
const NODE_ID = env.NODE_ID ?? randomUUID();
const PRESENCE = (env.PRESENCE_EVENTS ?? "true") !== "false";
const TIMEOUT = Number(env.REQUEST_TIMEOUT_MS ?? 1000);

const json = (res, status, body) => {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
};

const server = createServer(
  { cert: readFileSync(env.TLS_CERT ?? repo("certs-dev/cert.pem")), key: readFileSync(env.TLS_KEY ?? repo("certs-dev/key.pem")) },
  async (req, res) => {
    if (req.url.startsWith("/socket.io/")) return; // socket.io answers these itself
    const path = req.url.split("?")[0];
    if (req.method === "GET" && path === "/health") {
      return json(res, 200, { status: "ok", node: NODE_ID, mode: env.REDIS_URL ? "cluster" : "single", sockets: io.of("/").sockets.size });
    }
    const m = req.method === "GET" && path.match(/^\/([^/]+)\/users$/);
    if (!m) return json(res, 404, { error: "not found" });
    let room;
    try {
      room = decodeURIComponent(m[1]);
    } catch {
      return json(res, 400, { error: "invalid room: bad percent-encoding" });
    }
    const bad = checkRoom(room);
    if (bad) return json(res, 400, { error: `invalid room: ${bad}` });
    try {
      const sockets = await io.in(room).fetchSockets();
      const users = sockets.map((s) => ({ id_socket: s.id, id_user: s.data.id_user, node: s.data.node }));
      users.sort((a, b) => (a.id_user < b.id_user ? -1 : a.id_user > b.id_user ? 1 : a.id_socket < b.id_socket ? -1 : 1));
      json(res, 200, users);
    } catch (e) {
      json(res, 503, { error: `cluster: ${e.message}` });
    }
  },
);

const io = new Server(server, { transports: ["polling", "websocket"] });

if (env.REDIS_URL) {
  const pub = createClient({ url: env.REDIS_URL });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub, { requestsTimeout: TIMEOUT }));
}

function checkRoom(room) {
  if (typeof room !== "string") return "room must be a string";
  if (room.length === 0) return "room must not be empty";
  if (room.length > 64) return "room must be at most 64 characters";
  if (room.includes("/")) return "room contains a character that is not allowed";
  return null;
}

function checkUser(id) {
  if (typeof id !== "string") return "id_user must be a string";
  if (id.length === 0) return "id_user must not be empty";
  if (id.length > 128) return "id_user must be at most 128 characters";
  return null;
}

// The handshake: id_user and room from auth first, then the query string.
io.use((socket, next) => {
  const { auth, query } = socket.handshake;
  const idUser = auth?.id_user ?? query.id_user;
  const room = auth?.room ?? query.room;
  if (idUser === undefined) return next(new Error("id_user is required"));
  if (room === undefined) return next(new Error("room is required"));
  const bad = checkUser(idUser) ?? checkRoom(room);
  if (bad) return next(new Error(bad));
  Object.assign(socket.data, { id_user: idUser, room, node: NODE_ID });
  next();
});

io.on("connection", (socket) => {
  const { room } = socket.data;
  socket.join(room);
  socket.emit("handshake", { node: NODE_ID, id_socket: socket.id, id_user: socket.data.id_user, room });
  if (PRESENCE) {
    socket.to(room).emit("socket-connected", { id_socket: socket.id, id_user: socket.data.id_user });
    socket.on("disconnect", () => {
      socket.to(room).emit("socket-disconnected", { id_socket: socket.id, id_user: socket.data.id_user });
    });
  }
  socket.on("identity-change", (payload, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    const next = typeof payload === "string" ? payload : payload?.id_user;
    const bad = checkUser(next);
    if (bad) return reply({ error: bad });
    const previous = socket.data.id_user;
    socket.data.id_user = next;
    reply({ ok: true, id_user: next });
    socket.to(room).emit("identity-change", { id_socket: socket.id, id_user: next, previous_id_user: previous });
  });
});

server.listen(PORT, BIND, () => console.log(`listening on https://${BIND}:${PORT} (node ${NODE_ID})`));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    setTimeout(() => process.exit(0), 5000).unref();
    io.close(() => process.exit(0));
  });
}
