// A backend's HTTP receiver for the integration tests: every request to it is verified with the official
// `standardwebhooks` package (as a backend would) and recorded; the test tells it how to answer.
//
//   node webhook-receiver.mjs '<whsec_ secret>'
// prints {"port": N} once it listens on 127.0.0.1 (a free port), and exits when its stdin closes.
//
// Control (JSON, on the same port):
//   GET  /_requests          every request so far: [{path, headers, body (parsed JSON or text), verified, error?}]
//   POST /_answer            {path?, status?, body?, delay_ms?, times?}: the next `times` (default: all) requests
//                            to `path` (default: any) get this answer; rules are taken in order, spent ones dropped
//   POST /_reset             forgets the requests and the rules
// Any other request is a webhook or RPC call: verified, recorded, answered (200 `{}` unless a rule says otherwise).
import http from "node:http";
import { Webhook } from "standardwebhooks";

const secret = process.argv[2];
if (!secret) {
  console.error("usage: webhook-receiver.mjs <whsec_ secret>");
  process.exit(2);
}
const webhook = new Webhook(secret.replace(/^whsec_/, ""));
let requests = [];
let rules = [];

function read(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function json(res, status, value) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

function ruleFor(path) {
  const i = rules.findIndex((r) => !r.path || r.path === path);
  if (i < 0) return null;
  const rule = rules[i];
  if (rule.times !== undefined) {
    rule.times -= 1;
    if (rule.times <= 0) rules.splice(i, 1);
  }
  return rule;
}

const server = http.createServer(async (req, res) => {
  const text = await read(req);
  const path = req.url;
  if (path === "/_requests" && req.method === "GET") return json(res, 200, requests);
  if (path === "/_reset" && req.method === "POST") {
    requests = [];
    rules = [];
    return json(res, 200, {});
  }
  if (path === "/_answer" && req.method === "POST") {
    rules.push(JSON.parse(text));
    return json(res, 200, {});
  }
  const entry = { path, method: req.method, headers: req.headers, verified: false, at: Date.now() };
  try {
    webhook.verify(text, req.headers);
    entry.verified = true;
  } catch (e) {
    entry.error = String(e && e.message ? e.message : e);
  }
  try {
    entry.body = JSON.parse(text);
  } catch {
    entry.body = text;
  }
  requests.push(entry);
  const rule = ruleFor(path);
  if (rule && rule.delay_ms) await new Promise((r) => setTimeout(r, rule.delay_ms));
  if (!entry.verified) return json(res, 401, { error: entry.error });
  json(res, rule?.status ?? 200, rule?.body ?? {});
});

server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
