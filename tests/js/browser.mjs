// Opens the room page of two nodes in headless Chromium and waits until each lists every expected user.
// usage: node browser.mjs <screenshot.png> <expected users, comma-separated> <url> [<url>...]
// Prints one JSON line: {"pages":[{"url","users":[...],"node","socket"}]}; exits non-zero on failure.
import { chromium } from "playwright-core";

const [shot, expectedList, ...urls] = process.argv.slice(2);
const expected = expectedList.split(",").sort();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 900, height: 760 } });
  const pages = [];
  for (const url of urls) {
    const page = await context.newPage();
    page.on("console", (m) => process.stderr.write(`[page ${url}] ${m.text()}\n`));
    await page.goto(url);
    pages.push({ url, page });
  }
  const result = [];
  for (const { url, page } of pages) {
    await page.waitForFunction(
      (want) => {
        const got = [...document.querySelectorAll("#users tr")].map((tr) => tr.cells[0].textContent).sort();
        return JSON.stringify(got) === JSON.stringify(want);
      },
      expected,
      { timeout: 10000 },
    );
    result.push({
      url,
      users: await page.$$eval("#users tr", (rows) => rows.map((r) => r.cells[0].textContent)),
      sockets: await page.$$eval("#users tr", (rows) => rows.map((r) => r.cells[1].textContent)),
      nodes: await page.$$eval("#users tr", (rows) => rows.map((r) => r.cells[2].textContent)),
      node: await page.textContent("#me-node"),
      socket: await page.textContent("#me-socket"),
      status: await page.textContent("#status"),
    });
  }
  await pages[0].page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ pages: result }));
} finally {
  await browser.close();
}
