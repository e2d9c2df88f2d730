// PM2: N instances (default 4) of the release binary on one host, one cluster through Redis.
//
//   cargo build --release && scripts/fetch-client.sh
//   pm2 start deploy/ecosystem.config.js      # start (or add missing instances)
//   pm2 reload deploy/ecosystem.config.js     # rolling restart, one instance at a time
//   pm2 stop deploy/ecosystem.config.js       # graceful stop (SIGINT, then SIGKILL after kill_timeout)
//   pm2 delete deploy/ecosystem.config.js
//
// PORT_MODE=shared (default): every instance listens on PORT (5009) with SO_REUSEPORT, as the Node identity
// service's PM2 cluster did; the kernel spreads connections, so clients must use websocket only (no long-polling), and the
// server enforces it. PORT_MODE=separate: instance i listens on PORT + i - 1, for a sticky proxy in front
// (deploy/nginx/socket-identity.conf), which lets clients fall back to long-polling. docs/operations.md, "Deployment".
//
// Every setting comes from the environment of `pm2 start` (see deploy/socket-identity.env.example);
// SOCKET_IDENTITY_BIN names the binary, SOCKET_IDENTITY_INSTANCES the number of instances.
const os = require("node:os");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const env = process.env;
const instances = Number.parseInt(env.SOCKET_IDENTITY_INSTANCES || "4", 10);
const basePort = Number.parseInt(env.PORT || "5009", 10);
const mode = env.PORT_MODE || "shared";
if (!["shared", "separate"].includes(mode)) {
  throw new Error(`PORT_MODE must be "shared" or "separate", not "${mode}"`);
}
if (!(instances >= 1 && instances <= 64)) {
  throw new Error(`SOCKET_IDENTITY_INSTANCES must be 1..64, not "${env.SOCKET_IDENTITY_INSTANCES}"`);
}

// The instances share the host's cores: each runs cores / instances threads (at least 1) unless WORKER_THREADS is
// set. With one per core each, 4 instances on 2 cores would run 8 threads that take turns and wake each other.
const threads = env.WORKER_THREADS || String(Math.max(1, Math.floor(os.availableParallelism() / instances)));

const apps = [];
for (let i = 1; i <= instances; i++) {
  apps.push({
    name: `socket-identity-${i}`,
    script: env.SOCKET_IDENTITY_BIN || path.join(root, "target/release/socket-identity"),
    interpreter: "none",
    exec_mode: "fork",
    // Relative paths in the settings (certs-dev/, deploy/static/) are from the repository root.
    cwd: root,
    // Our graceful shutdown closes clients, leaves Redis and drains requests in at most ~15 s.
    kill_timeout: 20000,
    autorestart: true,
    // Back off when an instance keeps failing (e.g. a bad certificate), rather than spinning.
    exp_backoff_restart_delay: 200,
    // A stable id per instance: it appears in logs, metrics and `GET /:room/users` answers.
    env: {
      NODE_ID: `${env.NODE_ID_PREFIX || os.hostname().replace(/[^A-Za-z0-9._-]/g, "-")}-${i}`,
      PORT: String(mode === "shared" ? basePort : basePort + i - 1),
      REUSE_PORT: String(mode === "shared"),
      REDIS_URL: env.REDIS_URL || "redis://127.0.0.1:6379",
      WORKER_THREADS: threads,
    },
  });
}

module.exports = { apps };
