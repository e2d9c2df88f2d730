// Opens <page url> in headless Chromium and, from that page (so from its origin), connects the official
// socket.io client to <server base> over long-polling only, with credentials (as the socket.io admin UI does),
// then reads <server base>/R/users with fetch. A cross-origin page: the browser enforces CORS on every request.
// usage: node cors.mjs <page url> <server base>
// Prints one JSON line: {"socket":{"event":"connect","transport":"polling"} | {"event":"connect_error",...},
// "users":[...] | {"error":...}}; exits non-zero only if the browser itself fails.
import { chromium } from "playwright-core";

const [pageUrl, base] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
  await page.goto(pageUrl);
  // A script from another origin loads whatever CORS says.
  await page.addScriptTag({ url: `${base}/socket.io.js` });
  const socket = await page.evaluate(
    (base) =>
      new Promise((resolve) => {
        const s = io(base, {
          transports: ["polling"],
          withCredentials: true,
          query: { id_user: "browser", room: "R" },
          reconnection: false,
          timeout: 5000,
        });
        s.on("connect", () => resolve({ event: "connect", transport: s.io.engine.transport.name }));
        s.on("connect_error", (e) => resolve({ event: "connect_error", message: e.message }));
        setTimeout(() => resolve({ event: "none within 8 s" }), 8000);
      }),
    base,
  );
  const users = await page.evaluate(async (base) => {
    try {
      const res = await fetch(`${base}/R/users`, { credentials: "include" });
      return (await res.json()).map((u) => u.id_user);
    } catch (e) {
      return { error: e.message };
    }
  }, base);
  console.log(JSON.stringify({ socket, users }));
} finally {
  await browser.close();
}
