// The Node reference for the benchmark: socket-identity's contract written the way a Node team would,
// with socket.io v4, @socket.io/redis-adapter and `fetchSockets()` reading `socket.data.id_user`; and seed 001's
// `POST /send` (push an event to rooms of a site's namespace, user rooms reliably: stored in Redis, emitted with
// an ack callback across the cluster, deleted on ack, sent again as one `batch` when the user reconnects).
// Configured like the Rust server, by environment: PORT, BIND, NODE_ID, REDIS_URL (unset: one node),
// TLS_CERT, TLS_KEY, REQUEST_TIMEOUT_MS, PRESENCE_EVENTS; for /send: SEND_SITE (the namespace `/${SEND_SITE}`,
// unset: no /send), SEND_API_KEY, USER_ROOM_PREFIX (unset: no reliable delivery), CLIENT_TTL_S (default 3600);
// RECOVERY_WINDOW_S (unset or 0: off): connection state recovery, which socket.io has across a cluster only with
// @socket.io/redis-streams-adapter, so that adapter replaces @socket.io/redis-adapter when it is on.
// Client events as RPC (docs/rpc.md), what a Node team writes for it: RPC_NAMESPACE (unset: none) with the same
// handshake, whose events named in RPC_EVENTS (comma-separated) are POSTed with fetch to RPC_URL, signed with
// RPC_SECRET (`whsec_...`) as Standard Webhooks says, and acked with the JSON answer.
// The bench's handshake phase, as its config gives our server (`rooms = ["handshake", "user"]`): CLAIM_NAMESPACE
// (unset: none) with the same handshake, and JWT_NAMESPACE (unset: none) whose middleware verifies an HS256 token
// signed with JWT_SECRET (from `auth.token` or `?token=`, with `jsonwebtoken`, `exp` required, 30 s of leeway) and
// takes the user from its `sub`; both join the handshake room and `user.{id_user}`.
import { createHmac, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import { fileURLToPath } from "node:url";
import { createAdapter } from "@socket.io/redis-adapter";
import { createAdapter as createStreamsAdapter } from "@socket.io/redis-streams-adapter";
import jwt from "jsonwebtoken";
import { createClient } from "redis";
import { Server } from "socket.io";

const env = process.env;
const repo = (p) => fileURLToPath(new URL(`../../${p}`, import.meta.url));
const PORT = Number(env.PORT ?? 5009);
const BIND = env.BIND ?? "0.0.0.0";
const NODE_ID = env.NODE_ID ?? randomUUID();
const PRESENCE = (env.PRESENCE_EVENTS ?? "true") !== "false";
const TIMEOUT = Number(env.REQUEST_TIMEOUT_MS ?? 1000);
const SEND_SITE = env.SEND_SITE;
const SEND_API_KEY = env.SEND_API_KEY;
const USER_ROOM_PREFIX = env.USER_ROOM_PREFIX;
const CLIENT_TTL_S = Number(env.CLIENT_TTL_S ?? 3600);
const RECOVERY_WINDOW_S = Number(env.RECOVERY_WINDOW_S ?? 0);
// How long a live message waits for its ack (the same as the Rust server); unacknowledged, it stays stored.
const ACK_TIMEOUT_MS = 30000;
const MAX_BODY_BYTES = 256 * 1024;
const RPC_NAMESPACE = env.RPC_NAMESPACE;
const RPC_URL = env.RPC_URL;
const RPC_EVENTS = new Set((env.RPC_EVENTS ?? "").split(",").filter((e) => e !== ""));
const RPC_KEY = Buffer.from((env.RPC_SECRET ?? "").replace(/^whsec_/, ""), "base64");
// As the Rust server: 5 s for a call's answer.
const RPC_TIMEOUT_MS = 5000;
const CLAIM_NAMESPACE = env.CLAIM_NAMESPACE;
const JWT_NAMESPACE = env.JWT_NAMESPACE;
const JWT_SECRET = env.JWT_SECRET;

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
      const sockets = [...io._nsps.values()].reduce((n, nsp) => n + nsp.sockets.size, 0);
      return json(res, 200, { status: "ok", node: NODE_ID, mode: env.REDIS_URL ? "cluster" : "single", sockets });
    }
    if (req.method === "POST" && path === "/send") return send(req, res);
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

// With recovery, the handshake middleware runs on a recovered socket too (`skipMiddlewares: false`), as our server
// verifies a recovering client's identity again.
const recovery =
  RECOVERY_WINDOW_S > 0
    ? { connectionStateRecovery: { maxDisconnectionDuration: RECOVERY_WINDOW_S * 1000, skipMiddlewares: false } }
    : {};
const io = new Server(server, { transports: ["polling", "websocket"], ...recovery });

// The adapter's two clients, and a third for the messages of /send (the adapter's pub client would do too).
let db = null;
let pub = null;
if (env.REDIS_URL) {
  pub = createClient({ url: env.REDIS_URL });
  const sub = pub.duplicate();
  db = pub.duplicate();
  for (const c of [pub, sub, db]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect(), db.connect()]);
  // The streams adapter keeps the broadcasts in one Redis stream (each event's offset is its entry id) and a
  // disconnected socket's session under `sio:session:<pid>`, written when the socket disconnects.
  io.adapter(RECOVERY_WINDOW_S > 0 ? createStreamsAdapter(pub) : createAdapter(pub, sub, { requestsTimeout: TIMEOUT }));
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
function handshake(socket, next) {
  const { auth, query } = socket.handshake;
  const idUser = auth?.id_user ?? query.id_user;
  const room = auth?.room ?? query.room;
  if (idUser === undefined) return next(new Error("id_user is required"));
  if (room === undefined) return next(new Error("room is required"));
  const bad = checkUser(idUser) ?? checkRoom(room);
  if (bad) return next(new Error(bad));
  Object.assign(socket.data, { id_user: idUser, room, node: NODE_ID });
  next();
}

// `rooms`: every room the socket joins, its handshake room first.
function onConnection(socket, rooms = [socket.data.room]) {
  const { room } = socket.data;
  socket.join(rooms);
  socket.emit("handshake", {
    node: NODE_ID,
    id_socket: socket.id,
    id_user: socket.data.id_user,
    namespace: socket.nsp.name,
    room,
    rooms,
  });
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
}

io.use(handshake);
io.on("connection", onConnection);
// The /send site's namespace: the same handshake (its room may be a user room), plus the pending messages.
const site = SEND_SITE ? io.of(`/${SEND_SITE}`) : null;
if (site) {
  site.use(handshake);
  site.on("connection", (socket) => {
    onConnection(socket);
    if (isUserRoom(socket.data.room)) sendPending(socket, socket.data.room).catch((e) => console.error(`batch: ${e.message}`));
  });
}

// Client events as RPC: the same body, signature, timeout and error acks as the Rust server (docs/rpc.md).
const rpc = RPC_NAMESPACE && RPC_URL ? io.of(RPC_NAMESPACE) : null;
if (rpc) {
  rpc.use(handshake);
  rpc.on("connection", (socket) => {
    onConnection(socket);
    for (const event of RPC_EVENTS) {
      socket.on(event, (...args) => {
        const ack = typeof args.at(-1) === "function" ? args.pop() : () => {};
        call(socket, event, args).then(ack, (e) => ack({ error: e.message }));
      });
    }
  });
}

// The handshake phase's namespaces: the socket also joins its user room, as ours does with `rooms = ["handshake",
// "user"]`.
const withUserRoom = (socket) => onConnection(socket, [socket.data.room, `user.${socket.data.id_user}`]);
if (CLAIM_NAMESPACE) {
  const claim = io.of(CLAIM_NAMESPACE);
  claim.use(handshake);
  claim.on("connection", withUserRoom);
}
if (JWT_NAMESPACE && JWT_SECRET) {
  const verified = io.of(JWT_NAMESPACE);
  verified.use(jwtHandshake);
  verified.on("connection", withUserRoom);
}

// A JWT middleware as a Node team writes it with `jsonwebtoken`: the token from auth, then the query string; the
// user from `sub` (a number written out); the room from the handshake, not another user's room.
function jwtHandshake(socket, next) {
  const { auth, query } = socket.handshake;
  const token = auth?.token ?? query.token;
  if (typeof token !== "string") return next(new Error("no token"));
  let claims;
  try {
    claims = jwt.verify(token, JWT_SECRET, { algorithms: ["HS256"], clockTolerance: 30 });
  } catch (e) {
    return next(new Error(e.name === "TokenExpiredError" ? "token expired" : "invalid token"));
  }
  if (typeof claims.exp !== "number") return next(new Error("the token has no exp claim"));
  const idUser = typeof claims.sub === "number" ? String(claims.sub) : claims.sub;
  const room = auth?.room ?? query.room;
  if (room === undefined) return next(new Error("room is required"));
  const bad = checkUser(idUser) ?? checkRoom(room);
  if (bad) return next(new Error(bad));
  if (room.startsWith("user.") && room !== `user.${idUser}`) return next(new Error(`room ${room} is private`));
  Object.assign(socket.data, { id_user: idUser, room, node: NODE_ID, claims });
  next();
}

async function call(socket, event, args) {
  const rooms = [...socket.rooms].filter((r) => r !== socket.id).sort();
  const body = JSON.stringify({
    event,
    args,
    namespace: socket.nsp.name,
    id_socket: socket.id,
    id_user: socket.data.id_user ?? null,
    verified: false,
    rooms,
  });
  const id = `msg_${randomUUID().replaceAll("-", "")}`;
  const timestamp = Math.floor(Date.now() / 1000);
  const signature = createHmac("sha256", RPC_KEY).update(`${id}.${timestamp}.${body}`).digest("base64");
  let res;
  try {
    res = await fetch(RPC_URL, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "webhook-id": id,
        "webhook-timestamp": String(timestamp),
        "webhook-signature": `v1,${signature}`,
      },
      body,
      redirect: "manual",
      signal: AbortSignal.timeout(RPC_TIMEOUT_MS),
    });
  } catch (e) {
    return { error: e.name === "TimeoutError" ? `the backend did not answer within ${RPC_TIMEOUT_MS} ms` : "the backend cannot be reached" };
  }
  if (res.status < 200 || res.status > 299) return { error: `the backend answered ${res.status}` };
  const text = await res.text();
  if (text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: "the backend's answer is not JSON" };
  }
}

// Reliable delivery (seed 001): each user room's pending messages in a Redis hash, field = message id, value =
// JSON [event, ...args]; the hash expires CLIENT_TTL_S after the last push (0: never).
const isUserRoom = (room) => USER_ROOM_PREFIX !== undefined && room.startsWith(USER_ROOM_PREFIX);
const pendingKey = (room) => `send:/${SEND_SITE}:${room}`;
let sequence = 0;
// Ids grow in send order on one node (time, then a counter), as seed 001's flake ids.
const nextId = () => `${String(Date.now()).padStart(15, "0")}-${String(sequence++ % 1e9).padStart(9, "0")}-${NODE_ID}`;

async function store(room, event, args) {
  const id = nextId();
  const key = pendingKey(room);
  const multi = db.multi().hSet(key, id, JSON.stringify([event, ...args]));
  if (CLIENT_TTL_S > 0) multi.expire(key, CLIENT_TTL_S);
  await multi.exec();
  return id;
}

// A socket joining its user room gets what is pending there as one `batch`; its ack deletes exactly those.
async function sendPending(socket, room) {
  const pending = await db.hGetAll(pendingKey(room));
  const ids = Object.keys(pending).sort();
  if (ids.length === 0) return;
  const batch = ids.map((id) => JSON.parse(pending[id]));
  socket.timeout(ACK_TIMEOUT_MS).emit("batch", batch, (err) => {
    if (!err) db.hDel(pendingKey(room), ids).catch((e) => console.error(`batch ack: ${e.message}`));
  });
}

// POST /send?site=&apiKey= (or Authorization: Bearer), JSON {rooms, event, args}: seed 001's request.
async function send(req, res) {
  const url = new URL(req.url, "https://localhost");
  const bearer = req.headers.authorization?.startsWith("Bearer ") ? req.headers.authorization.slice(7) : undefined;
  const key = url.searchParams.get("apiKey") ?? bearer;
  let body;
  try {
    body = await readBody(req);
  } catch (e) {
    return json(res, e.status ?? 400, { error: e.message });
  }
  if (!site || url.searchParams.get("site") !== SEND_SITE || !SEND_API_KEY || key !== SEND_API_KEY) {
    return json(res, 401, { error: "unknown site or wrong API key" });
  }
  if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
    return json(res, 415, { error: "the body must be application/json" });
  }
  let push;
  try {
    push = JSON.parse(body);
  } catch (e) {
    return json(res, 400, { error: `invalid body: ${e.message}` });
  }
  const rooms = typeof push?.rooms === "string" ? [push.rooms] : push?.rooms;
  const { event, args = [] } = push ?? {};
  if (!Array.isArray(rooms) || rooms.length === 0 || rooms.some((r) => checkRoom(r))) {
    return json(res, 400, { error: "invalid rooms" });
  }
  if (typeof event !== "string" || event.length === 0) return json(res, 400, { error: "invalid event" });
  if (!Array.isArray(args)) return json(res, 400, { error: "invalid args: must be a list" });
  const userRooms = rooms.filter(isUserRoom);
  const otherRooms = rooms.filter((r) => !isUserRoom(r));
  // Stored before anything is emitted: a message Redis did not take is not sent (503, the backend retries).
  let ids;
  try {
    if (userRooms.length > 0 && !db) throw new Error("no Redis");
    ids = await Promise.all(userRooms.map((room) => store(room, event, args)));
  } catch (e) {
    return json(res, 503, { error: `the message could not be stored: ${e.message}` });
  }
  userRooms.forEach((room, i) => {
    // Every socket of the room, on every node; the callback runs once all have answered (or at the timeout).
    site.to(room).timeout(ACK_TIMEOUT_MS).emit(event, ...args, (err, responses) => {
      if (responses?.length > 0) db.hDel(pendingKey(room), ids[i]).catch((e) => console.error(`ack: ${e.message}`));
    });
  });
  // A socket also in a user room has the message from there, with its callback.
  if (otherRooms.length > 0) site.to(otherRooms).except(userRooms).emit(event, ...args);
  json(res, 200, {
    namespace: site.name,
    event,
    rooms: rooms.map((room) => ({ room, queued: isUserRoom(room) ? 1 : 0 })),
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on("end", () =>
      size > MAX_BODY_BYTES
        ? reject(Object.assign(new Error(`the body is larger than ${MAX_BODY_BYTES} bytes`), { status: 413 }))
        : resolve(Buffer.concat(chunks).toString("utf8")),
    );
    req.on("error", reject);
  });
}

server.listen(PORT, BIND, () => console.log(`listening on https://${BIND}:${PORT} (node ${NODE_ID})`));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    setTimeout(() => process.exit(0), 5000).unref();
    // QUIT goes after the commands the shutdown queued (the streams adapter's sessions of the sockets it closes,
    // which it does not wait for), so those reach Redis before the exit.
    io.close(() => (pub ? pub.quit() : Promise.resolve()).finally(() => process.exit(0)));
  });
}
