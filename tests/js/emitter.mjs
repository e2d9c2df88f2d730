// Drives the real @socket.io/redis-emitter for the Rust integration tests (tests/it/emitter.rs):
//   node emitter.mjs <redis port> <key> '<JSON array of operations>'
// Each operation: {"op": "emit" | "join" | "leave" | "disconnect" | "serverSideEmit", "ns": "/chat", "to": [...],
// "except": [...], "volatile": true, "event": "...", "args": [...], "rooms": [...], "close": false}.
// In args, {"$binary": base64} becomes a Buffer (nested too). The operations are published in order; the process
// exits once Redis has taken them all.
import { createClient } from "redis";
import { Emitter } from "@socket.io/redis-emitter";

function binary(v) {
  if (Array.isArray(v)) return v.map(binary);
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$binary" && typeof v.$binary === "string") return Buffer.from(v.$binary, "base64");
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, binary(x)]));
  }
  return v;
}

const [port, key, ops] = process.argv.slice(2);
const client = createClient({ url: `redis://127.0.0.1:${port}` });
client.on("error", (e) => {
  console.error(`emitter.mjs: ${e.message}`);
  process.exit(1);
});
await client.connect();
const root = new Emitter(client, { key });
for (const op of JSON.parse(ops)) {
  const ns = root.of(op.ns ?? "/");
  let e = ns;
  if (op.to) e = e.to(op.to);
  if (op.except) e = e.except(op.except);
  if (op.volatile) e = e.volatile;
  switch (op.op) {
    case "emit":
      e.emit(op.event, ...binary(op.args ?? []));
      break;
    case "join":
      e.socketsJoin(op.rooms);
      break;
    case "leave":
      e.socketsLeave(op.rooms);
      break;
    case "disconnect":
      e.disconnectSockets(op.close ?? false);
      break;
    case "serverSideEmit":
      ns.serverSideEmit(op.event, ...(op.args ?? []));
      break;
    default:
      throw new Error(`unknown op ${op.op}`);
  }
}
// QUIT is queued after the PUBLISHes: they are all answered first.
await client.quit();
