// The clients of the bench's killed-node phase (bench/src/recovery.rs): N official socket.io-client sockets in one
// process, so that what is measured is how the real client recovers (its `{pid, offset}` in the CONNECT packet,
// `socket.recovered`), against our server and the Node reference alike.
// stdin: one JSON command per line; stdout: one JSON answer per command, nothing else. Exits when stdin closes.
//   {"op":"open","url":"https://127.0.0.1:P/ns","count":N,"room":"R","concurrency":C}
//       N sockets (`id_user` r0..r{N-1}, all in room R), C handshakes at a time, websocket only, no automatic
//       reconnection; answers {"connected":n,"failed":n,"errors":{"<message>":n}} once each has connected or failed.
//   {"op":"status"}  answers the counts: connected, disconnected, warm (sockets that got the event n = 0, which
//       gives each its first offset), received (events n >= 1 since the reconnection), complete (sockets that got
//       every n of 1..missed), recovered, reconnect_failed.
//   {"op":"reconnect","missed":M}  every disconnected socket calls `socket.connect()` at once, what its own
//       reconnection would do after its back-off delay: the same Manager, so the same pid and last offset.
//   {"op":"report"}  answers {"sockets":[{connected_ms, complete_ms, recovered, same_sid, received, doubled,
//       disorder}]}, times in ms since the reconnect command (null: never).
// The bench's pushes are the event "e" with one argument {"n": n}; with recovery each broadcast carries its offset
// (a string "<ms>-<seq>") as its last argument. After the reconnection, an n seen twice (or n = 0 again) is counted
// in `doubled`, an n lower than the one before or an offset not after the one before in `disorder`.
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const clients = [];
let t0 = null;
let missed = 0;
const out = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");
const since = () => performance.now() - t0;

// "<ms>-<seq>" as a pair that compares as the log orders (null: no offset).
function offset(v) {
  if (typeof v !== "string") return null;
  const m = /^(\d+)-(\d+)$/.exec(v);
  return m ? [BigInt(m[1]), BigInt(m[2])] : null;
}
const after = (a, b) => b === null || a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]);

function client(url, i, room) {
  const socket = io(url, {
    query: { id_user: `r${i}`, room },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: 20000,
  });
  const c = {
    socket,
    sid: null,
    recovered: false,
    sameSid: false,
    // The last offset and n seen, checked to grow after the reconnection.
    last: null,
    lastN: 0,
    warm: false,
    seen: new Set(),
    doubled: 0,
    disorder: 0,
    connectedMs: null,
    completeMs: null,
    reconnectFailed: false,
  };
  socket.on("e", (...args) => {
    const n = args[0]?.n;
    const at = offset(args[args.length - 1]);
    if (t0 === null) {
      if (n === 0) {
        c.warm = true;
        c.last = at;
      }
      return;
    }
    if (typeof n !== "number") return;
    if (n === 0 || c.seen.has(n)) c.doubled += 1;
    else c.seen.add(n);
    if (n < c.lastN || (at !== null && !after(at, c.last))) c.disorder += 1;
    c.lastN = Math.max(c.lastN, n);
    if (at !== null) c.last = at;
    if (c.completeMs === null && c.seen.size === missed) c.completeMs = since();
  });
  return c;
}

function open({ url, count, room, concurrency }) {
  const errors = {};
  let next = 0;
  let connected = 0;
  let failed = 0;
  return new Promise((resolve) => {
    const start = () => {
      if (next === count) {
        if (connected + failed === count) resolve({ connected, failed, errors });
        return;
      }
      const c = client(url, next++, room);
      clients.push(c);
      const done = () => {
        c.socket.off("connect", onConnect);
        c.socket.off("connect_error", onError);
        start();
      };
      const onConnect = () => {
        c.sid = c.socket.id;
        connected += 1;
        c.socket.on("connect", () => {
          c.connectedMs = since();
          c.recovered = c.socket.recovered === true;
          c.sameSid = c.socket.id === c.sid;
        });
        c.socket.on("connect_error", () => (c.reconnectFailed = true));
        done();
      };
      const onError = (err) => {
        failed += 1;
        errors[err.message] = (errors[err.message] ?? 0) + 1;
        c.socket.disconnect();
        done();
      };
      c.socket.on("connect", onConnect);
      c.socket.on("connect_error", onError);
    };
    if (count === 0) resolve({ connected, failed, errors });
    for (let i = 0; i < Math.max(1, concurrency); i++) start();
  });
}

function status() {
  const s = { connected: 0, disconnected: 0, warm: 0, received: 0, complete: 0, recovered: 0, reconnect_failed: 0 };
  for (const c of clients) {
    if (c.sid === null) continue;
    if (c.socket.connected) s.connected += 1;
    else s.disconnected += 1;
    if (c.warm) s.warm += 1;
    s.received += c.seen.size;
    if (c.completeMs !== null) s.complete += 1;
    if (c.recovered) s.recovered += 1;
    if (c.reconnectFailed) s.reconnect_failed += 1;
  }
  return s;
}

const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return out({ error: `bad command: ${e.message}` });
  }
  switch (cmd.op) {
    case "open":
      return out(await open(cmd));
    case "status":
      return out(status());
    case "reconnect": {
      missed = cmd.missed;
      t0 = performance.now();
      let count = 0;
      for (const c of clients) {
        if (c.sid !== null && !c.socket.connected) {
          c.socket.connect();
          count += 1;
        }
      }
      return out({ reconnecting: count });
    }
    case "report":
      return out({
        sockets: clients
          .filter((c) => c.sid !== null)
          .map((c) => ({
            connected_ms: c.connectedMs,
            complete_ms: c.completeMs,
            recovered: c.recovered,
            same_sid: c.sameSid,
            received: c.seen.size,
            doubled: c.doubled,
            disorder: c.disorder,
          })),
      });
    default:
      return out({ error: `unknown op ${cmd.op}` });
  }
});
rl.on("close", () => {
  for (const c of clients) c.socket.disconnect();
  process.exit(0);
});
