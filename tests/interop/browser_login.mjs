// A browser login as a person does it, in the system Chromium: open the status page, press
// "Log in" on an authorization-code upstream; the vendor's page (npm oidc-provider) opens in
// a new tab, signs the user in and redirects back to tokenproxy's /-/callback/NAME, a
// navigation the browser marks as coming from another site; the callback page says
// "Logged in", and the first tab's row turns valid by itself.
//
//   node tests/interop/browser_login.mjs http://127.0.0.1:PORT/-/ NAME
//
// Prints one JSON line of what it saw; exits 1 (with the reason on stderr) on any failure.
import { launchChromium } from './chromium.mjs';

const [url, name] = process.argv.slice(2);
if (!url || !name) {
  console.error('usage: node browser_login.mjs STATUS_PAGE_URL UPSTREAM');
  process.exit(2);
}
const WAIT = 20000;
const browser = await launchChromium();
setTimeout(async () => {
  console.error('browser login test timed out');
  await browser.close().catch(() => {});
  process.exit(1);
}, 60000).unref();

const result = {};
let exitCode = 0;
try {
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: 'load', timeout: WAIT });
  await page.waitForSelector('#live[data-live="live"]', { timeout: WAIT });

  // The vendor's login opens in a new tab.
  const origin = new URL(url).origin;
  const vendorTab = new Promise((resolve) => {
    browser.on('targetcreated', async (target) => {
      if (target.type() === 'page') resolve(await target.page());
    });
  });
  await page.click(`tr[data-upstream="${name}"] button[data-action="login"]`);
  const tab = await vendorTab;
  await tab.waitForFunction(
    (origin) => location.href.startsWith(`${origin}/-/callback/`) && document.readyState === 'complete',
    { timeout: WAIT, polling: 100 },
    origin,
  );
  result.callback_status = await tab.evaluate(() => performance.getEntriesByType('navigation')[0].responseStatus);
  result.callback_heading = await tab.$eval('h1', (h) => h.textContent.trim());

  await page.waitForFunction((name) => {
    const row = [...document.querySelectorAll('tr[data-upstream]')].find((r) => r.dataset.upstream === name);
    return row && row.querySelector('td.state').dataset.state === 'valid';
  }, { timeout: WAIT, polling: 100 }, name);
  result.state = 'valid';
} catch (error) {
  console.error(`browser login failed: ${error.message}; seen: ${JSON.stringify(result)}`);
  exitCode = 1;
} finally {
  console.log(JSON.stringify(result));
  await browser.close().catch(() => {});
}
process.exit(exitCode);
