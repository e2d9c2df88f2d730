// Drives real socket.io-client sockets for the Rust integration tests.
// stdin: one JSON command per line; stdout: one JSON event per line. Exits when stdin closes.
//   {"op":"connect","id":"a","url":"https://127.0.0.1:5009","query":{...},"auth":{...},"transports":["websocket"],
//    "reconnect":true, "headers":{"origin":"https://app.example"}, "local_address":"127.0.0.2"}
//   "shared":true: the socket shares one Engine.IO connection with the other shared sockets to the same server
//   (socket.io-client's multiplexing), one namespace each.
//   "client":2: with socket.io-client 2.x (protocol v4 over Engine.IO 3) instead of 4.x; it has no `auth` (the
//   command's is ignored), no `onAny` and no recovery, and reports a namespace's refusal (its `error` event) as
//   connect_error.
//   {"op":"emit","id":"a","event":"identity-change","args":[...],"ack":true}
//   {"op":"disconnect","id":"a"}
//   Server events sent with an ack callback are acknowledged with "ok" (reported with "acked": true), unless the
//   connect command said "ack_server": false (then "acked": false: the callback is never called); a list of event
//   names acknowledges those events only.
//   Binary data goes both ways as {"$binary":"<base64>"}: in an emit's args (anywhere, nested too) it is sent as a
//   Buffer; a Buffer, ArrayBuffer or typed array the server sends is reported so.
// Events: {"id":"a","event":"connect","sid":"...","recovered":false,"pid":"..."|null}
//           (connection state recovery: whether this (re)connection restored the previous session, and the
//           session's private id the server gave, null without recovery)
//         {"id":"a","event":"connect_error","message":"..."}
//         {"id":"a","event":"disconnect","reason":"..."} | {"id":"a","event":"ack","args":[...]}
//         {"id":"a","event":"<server event>","args":[...]}
import { createInterface } from "node:readline";
import { io } from "socket.io-client";
import ioV2 from "socket.io-client-v2";

const sockets = new Map();
const out = (msg) => process.stdout.write(JSON.stringify(report(msg)) + "\n");

// Binary as {"$binary": base64}, so a test reads it back byte for byte (JSON.stringify would give a Buffer as
// {"type":"Buffer","data":[...]} and an ArrayBuffer as {}).
function report(v) {
  if (v instanceof ArrayBuffer) return { $binary: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) return { $binary: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map(report);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, report(x)]));
  return v;
}

// The reverse, for an emit's args: {"$binary": base64} becomes a Buffer.
function binary(v) {
  if (Array.isArray(v)) return v.map(binary);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$binary" && typeof v.$binary === "string") return Buffer.from(v.$binary, "base64");
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, binary(x)]));
  }
  return v;
}

// Every server event of `socket`, as `onAny` gives them (event, ...args, ack callback if asked).
function onAny(socket, client, handler) {
  if (client !== 2) return socket.onAny(handler);
  // 2.x has no `onAny`: its `onevent` takes each EVENT/BINARY_EVENT packet.
  socket.onevent = function (packet) {
    const args = [...(packet.data ?? [])];
    if (packet.id != null) args.push(this.ack(packet.id));
    handler(...args);
  };
}

function connect({
  id,
  url,
  query,
  auth,
  transports,
  reconnect,
  headers,
  ack_server,
  shared,
  local_address,
  client,
  report_upgrade,
}) {
  const socket = (client === 2 ? ioV2 : io)(url, {
    extraHeaders: headers ?? {},
    query: query ?? {},
    auth: auth ?? undefined,
    transports: transports ?? ["polling", "websocket"],
    // Off unless asked: most tests want to see a disconnect stay a disconnect.
    reconnection: reconnect ?? false,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    forceNew: !shared,
    timeout: 5000,
    // The address the connection comes from (any of 127.0.0.0/8 reaches a server on 127.0.0.1).
    localAddress: local_address ?? undefined,
  });
  sockets.set(id, socket);
  if (report_upgrade) {
    socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => out({ id, event: "upgrade", transport: t.name })));
  }
  // `_pid` is socket.io-client's own field (no public getter): a test that plays a thief needs the value.
  socket.on("connect", () =>
    out({ id, event: "connect", sid: socket.id, recovered: socket.recovered === true, pid: socket._pid ?? null }),
  );
  socket.on("connect_error", (err) => out({ id, event: "connect_error", message: err.message }));
  // 2.x: a namespace's CONNECT_ERROR (`{message}` from our server) is an `error` event.
  if (client === 2) socket.on("error", (err) => out({ id, event: "connect_error", message: err?.message ?? err }));
  socket.on("disconnect", (reason) => out({ id, event: "disconnect", reason }));
  onAny(socket, client, (event, ...args) => {
    const last = args[args.length - 1];
    if (typeof last !== "function") return out({ id, event, args });
    args.pop();
    const acked = Array.isArray(ack_server) ? ack_server.includes(event) : (ack_server ?? true);
    out({ id, event, args, acked });
    if (acked) last("ok");
  });
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ event: "driver_error", message: `bad command: ${e.message}` });
    return;
  }
  const socket = sockets.get(cmd.id);
  switch (cmd.op) {
    case "connect":
      connect(cmd);
      break;
    case "emit": {
      const args = binary(cmd.args ?? []);
      if (cmd.ack) socket.emit(cmd.event, ...args, (...args) => out({ id: cmd.id, event: "ack", args }));
      else socket.emit(cmd.event, ...args);
      break;
    }
    case "disconnect":
      socket?.disconnect();
      break;
    default:
      out({ event: "driver_error", message: `unknown op ${cmd.op}` });
  }
});
rl.on("close", () => {
  for (const s of sockets.values()) s.disconnect();
  process.exit(0);
});
