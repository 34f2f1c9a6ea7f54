// Drives the system Chromium (headless, through puppeteer-core) for the browser-guard test:
// opens each page given on the command line, waits until the page sets its title to
// something starting with "done", and prints {"<url>": "<title>"} as one JSON line.
//
//   node tests/interop/browser.mjs http://127.0.0.1:PORT/attack http://127.0.0.1:PORT2/app
import { launchChromium } from './chromium.mjs';

const browser = await launchChromium();
const results = {};
try {
  for (const url of process.argv.slice(2)) {
    const page = await browser.newPage();
    await page.goto(url, { waitUntil: 'load', timeout: 15000 });
    await page.waitForFunction(() => document.title.startsWith('done'), { timeout: 15000 });
    results[url] = await page.title();
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(results));
