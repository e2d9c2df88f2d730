// Opens the official admin UI at <base>/admin/ in headless Chromium, logs in with its form, and waits until the
// dashboard knows every server and socket; saves a screenshot of the dashboard and of the sockets page.
// usage: node admin.mjs <base url> <username> <password> <servers> <sockets> <dashboard.png> <sockets.png>
// Prints one JSON line: {"servers":[...],"sockets":N,"dashboard":"<text>","socketsPage":"<text>"}.
import { chromium } from "playwright-core";

const [base, username, password, servers, sockets, dashboardShot, socketsShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
  // The UI's fonts and icons come from public CDNs: not reachable here, and not needed.
  await page.route(/^https?:\/\/(?!127\.0\.0\.1|localhost)/, (route) => route.abort());
  await page.goto(`${base}/admin/`);
  await page.getByLabel(/server url/i).fill(base);
  await page.getByLabel(/username/i).fill(username);
  await page.getByLabel(/password/i).fill(password);
  await page.getByRole("button", { name: /connect/i }).click();
  // The UI's own state (Vue 2 keeps the root instance on its element): what the dashboard renders from.
  const state = () => document.querySelector("#app").__vue__.$store.state;
  await page.waitForFunction(
    ([servers, sockets]) => {
      const s = document.querySelector("#app").__vue__.$store.state;
      const healthy = s.servers.servers.filter((x) => x.healthy !== false);
      const count = s.main.namespaces.reduce((n, ns) => n + ns.sockets.length, 0);
      return s.connection.connected && healthy.length === servers && count === sockets;
    },
    [Number(servers), Number(sockets)],
    { timeout: 20000 },
  );
  await page.waitForTimeout(500);
  await page.screenshot({ path: dashboardShot, fullPage: true });
  const dashboard = await page.innerText("main");
  const result = await page.evaluate(`(${state.toString()})()`).then((s) => ({
    servers: s.servers.servers.map((x) => x.serverId).sort(),
    sockets: s.main.namespaces.reduce((n, ns) => n + ns.sockets.length, 0),
    namespaces: s.main.namespaces.map((ns) => ns.name),
  }));
  await page.goto(`${base}/admin/#/sockets`);
  await page.waitForFunction((n) => document.querySelectorAll("main tbody tr").length >= n, Number(sockets), {
    timeout: 10000,
  });
  await page.waitForTimeout(800); // the page fades in
  await page.screenshot({ path: socketsShot, fullPage: true });
  const socketsPage = await page.innerText("main");
  console.log(JSON.stringify({ ...result, dashboard, socketsPage }));
} finally {
  await browser.close();
}
