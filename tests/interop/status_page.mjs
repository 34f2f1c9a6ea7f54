// Drives the status page of `tokenproxy demo --manual-login` in the system Chromium
// (headless, through puppeteer-core), as a user would: BigAnimal's row says "needs login";
// Refresh now explains why it cannot; Log in (pressed from the keyboard) shows a user code
// and a link; the link opens the BigAnimal simulator's /activate page in a second tab,
// where the code is approved; the first tab, never reloaded, turns the row valid by itself.
// Then a full-page screenshot, and Refresh now and Log out on rows that have a token.
// The browser's clock runs an hour fast throughout: countdowns follow the server's clock.
//
//   node tests/interop/status_page.mjs http://127.0.0.1:PORT/-/ docs/status-page.png
//
// Prints one JSON line of what it saw; exits 1 (with the reason on stderr) on any failure,
// including a console error, an uncaught exception or a CSP violation on the page.
import { launchChromium } from './chromium.mjs';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node status_page.mjs STATUS_PAGE_URL SCREENSHOT.png');
  process.exit(2);
}
const WAIT = Number(process.env.STATUS_PAGE_WAIT_MS || 20000);
const started = Date.now();
const origin = new URL(url).origin;

const browser = await launchChromium();

const result = { problems: [] };
// A last resort: whatever hangs, the browser goes and the test fails (the caller waits 120 s).
setTimeout(async () => {
  console.error(`status page test timed out; seen so far: ${JSON.stringify(result)}`);
  await browser.close().catch(() => {});
  process.exit(1);
}, 90000).unref();
function check(condition, what) {
  if (!condition) throw new Error(what);
}

/// The text, state and flags of an upstream's row, read in the page.
function readRow(page, name) {
  return page.evaluate((name) => {
    const row = [...document.querySelectorAll('tr[data-upstream]')].find((r) => r.dataset.upstream === name);
    if (!row) return null;
    const panel = [...document.querySelectorAll('tr.login-row')].find((r) => r.dataset.loginFor === name);
    return {
      state: row.querySelector('td.state').dataset.state,
      label: row.querySelector('td.state').textContent.trim(),
      expires: row.querySelector('td.state time.countdown').textContent.trim(),
      refreshed: row.querySelector('td.refreshed time').textContent.trim(),
      error: row.querySelector('td.error').textContent.trim(),
      buttons: [...row.querySelectorAll('button')].map((b) => b.dataset.action),
      panelShown: Boolean(panel && !panel.hidden),
    };
  }, name);
}

/// Whether an upstream's Log in button stands out (bold, in the accent colour).
function loginStandsOut(page, name) {
  return page.$eval(`tr[data-upstream="${name}"] button[data-action="login"]`,
    (b) => Number(getComputedStyle(b).fontWeight) >= 600);
}

/// At the window's width, every action button whose centre is not inside the window, or is
/// covered, with the page and the table scrolled fully left: what a user could not reach
/// without scrolling sideways. Scrolls down to each in turn.
function actionsOutOfReach(page) {
  return page.evaluate(() => {
    const wrap = document.querySelector('.table-wrap');
    wrap.scrollLeft = 0;
    const missed = [];
    for (const b of document.querySelectorAll('tr[data-upstream] button[data-action]')) {
      window.scrollTo(0, b.getBoundingClientRect().top + window.scrollY - window.innerHeight / 2);
      const r = b.getBoundingClientRect();
      const [x, y] = [r.left + r.width / 2, r.top + r.height / 2];
      const hit = x >= 0 && x <= window.innerWidth && document.elementFromPoint(x, y);
      if (!hit || hit.closest('button') !== b) {
        missed.push(`${b.closest('tr').dataset.upstream}/${b.dataset.action} at x=${Math.round(x)}`);
      }
    }
    if (document.documentElement.scrollWidth > window.innerWidth) {
      missed.push(`the page is ${document.documentElement.scrollWidth} px wide`);
    }
    return missed;
  });
}

async function waitForState(page, name, state) {
  try {
    await page.waitForFunction((name, state) => {
      const row = [...document.querySelectorAll('tr[data-upstream]')].find((r) => r.dataset.upstream === name);
      return row && row.querySelector('td.state').dataset.state === state;
    }, { timeout: WAIT, polling: 100 }, name, state);
  } catch (error) {
    const row = await readRow(page, name).catch(() => null);
    throw new Error(`${name} did not turn ${state} within ${WAIT} ms (row: ${JSON.stringify(row)}): ${error.message}`);
  }
}

/// Waits for the status region to say something new of `kind`, and returns it.
async function waitForMessage(page, kind, before) {
  await page.waitForFunction((kind, before) => {
    const message = document.getElementById('message');
    return message.dataset.kind === kind && message.textContent !== before;
  }, { timeout: WAIT, polling: 50 }, kind, before);
  return page.$eval('#message', (m) => m.textContent);
}

function button(name, action) {
  return `tr[data-upstream="${name}"] button[data-action="${action}"]`;
}

let exitCode = 0;
try {
  const page = await browser.newPage();
  // Short, so the full-page screenshot is as tall as the page, not the window.
  await page.setViewport({ width: 1280, height: 480, deviceScaleFactor: 1 });
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'light' }]);
  // Everything the page reports: console errors, exceptions, CSP violations, failed loads.
  const expectedFailures = new Set();
  const events = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const at = (m.location() && m.location().url) || '';
    if (!expectedFailures.has(at)) events.push(`console: ${m.text()} (${at})`);
  });
  page.on('pageerror', (error) => events.push(`pageerror: ${error.message}`));
  page.on('requestfailed', (r) => events.push(`request failed: ${r.url()} ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400 && !expectedFailures.has(r.url())) events.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  await page.evaluateOnNewDocument(() => {
    // The browser's clock is an hour fast: countdowns must follow the server's clock.
    const realNow = Date.now.bind(Date);
    Date.now = () => realNow() + 3600 * 1000;
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  let navigations = 0;
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) navigations += 1;
  });

  const response = await page.goto(url, { waitUntil: 'load', timeout: WAIT });
  check(response.status() === 200, `GET ${url}: ${response.status()}`);
  check(response.headers()['content-security-policy'].includes("default-src 'self'"), 'no CSP');
  // The table is there before any script runs: rendered by the server.
  const html = await response.text();
  result.rendered_rows = [...html.matchAll(/<tr data-upstream="([^"]*)"/g)].map((m) => m[1]);
  check(result.rendered_rows.includes('biganimal'), `no biganimal row in the served HTML: ${html}`);

  // The script has polled /-/status at least once.
  await page.waitForSelector('#live[data-live="live"]', { timeout: WAIT });
  await waitForState(page, 'biganimal', 'needs_login');
  const before = await readRow(page, 'biganimal');
  result.before = before.state;
  result.before_label = before.label;
  check(before.buttons.join(',') === 'refresh,login,logout', `biganimal buttons: ${before.buttons}`);
  check(!before.panelShown, 'a login panel before any login');
  result.login_stands_out_before = await loginStandsOut(page, 'biganimal');
  check(result.login_stands_out_before, 'Log in does not stand out on a row that needs a login');
  const direct = await readRow(page, 'bigeval');
  check(direct.buttons.join(',') === 'refresh,logout', `bigeval buttons: ${direct.buttons}`);
  // CAEPE's tokens live 5 minutes, BigID's an hour; both were fetched seconds ago.
  const caepe = await readRow(page, 'caepe');
  const bigid = await readRow(page, 'bigid');
  result.skewed_clock = { caepe: caepe.expires, bigid: bigid.expires, refreshed: bigid.refreshed };
  check(/^expires in [1-5] min \d+ s$/.test(caepe.expires)
    && /^expires in (59|60) min \d+ s$|^expires in 1 h 0 min$/.test(bigid.expires)
    && /^\d+ s ago$/.test(bigid.refreshed), `times with a skewed clock: ${JSON.stringify(result.skewed_clock)}`);
  result.rows = await page.$$eval('tr[data-upstream]', (rows) => rows.map((r) => r.dataset.upstream));
  // The page must not navigate from here on: this marker would be gone.
  await page.evaluate(() => { window.__marker = 'still-here'; });
  const navigationsBefore = navigations;

  // Refresh now cannot work without a login: the problem's detail is shown.
  const refreshUrl = `${origin}/-/upstreams/biganimal/refresh`;
  expectedFailures.add(refreshUrl);
  let said = await page.$eval('#message', (m) => m.textContent);
  await page.click(button('biganimal', 'refresh'));
  result.refresh_error = await waitForMessage(page, 'error', said);
  expectedFailures.delete(refreshUrl);

  // Log in, from the keyboard: focus the button and press Enter.
  said = result.refresh_error;
  await page.focus(button('biganimal', 'login'));
  await page.keyboard.press('Enter');
  result.login_message = await waitForMessage(page, 'info', said);
  await page.waitForSelector('tr.login-row[data-login-for="biganimal"] .user-code', { visible: true, timeout: WAIT });
  const shown = await page.$eval('tr.login-row[data-login-for="biganimal"]', (row) => {
    const link = row.querySelector('a.verification');
    return {
      code: row.querySelector('.user-code').textContent.trim(),
      href: link.href,
      target: link.target,
      rel: link.rel,
      codeFontPx: parseFloat(getComputedStyle(row.querySelector('.user-code')).fontSize),
      bodyFontPx: parseFloat(getComputedStyle(document.body).fontSize),
      countdown: row.querySelector('time.code-countdown').textContent.trim(),
    };
  });
  result.user_code = shown.code;
  result.verification = shown.href;
  result.code_countdown = shown.countdown;
  check(/^[A-Z0-9]{4}-[A-Z0-9]{4}$/.test(shown.code), `user code: ${shown.code}`);
  check(shown.target === '_blank' && shown.rel.split(' ').includes('noopener'), `link: ${JSON.stringify(shown)}`);
  check(shown.codeFontPx >= 2 * shown.bodyFontPx, `the code is not large: ${JSON.stringify(shown)}`);
  // Two polls later the button still has the focus: rows are updated in place.
  await new Promise((resolve) => setTimeout(resolve, 2200));
  result.focus_kept = await page.evaluate(() => document.activeElement
    && document.activeElement.dataset.action === 'login'
    && document.activeElement.closest('tr').dataset.upstream === 'biganimal');
  check(result.focus_kept, 'the Log in button lost the focus');

  // The link opens the simulator's activation page in a new tab: approve the code there.
  const opened = browser.waitForTarget((t) => t.type() === 'page' && t.url() === shown.href, { timeout: WAIT });
  await page.click('tr.login-row[data-login-for="biganimal"] a.verification');
  const activate = await (await opened).page();
  await activate.waitForSelector('input[name="user_code"]', { timeout: WAIT });
  const filled = await activate.$eval('input[name="user_code"]', (input) => input.value);
  if (filled !== shown.code) {
    await activate.$eval('input[name="user_code"]', (input) => { input.value = ''; });
    await activate.type('input[name="user_code"]', shown.code);
  }
  result.code_prefilled = filled === shown.code;
  await Promise.all([
    activate.waitForNavigation({ timeout: WAIT }),
    activate.click('button[value="approve"]'),
  ]);
  result.activation = (await activate.$eval('body', (b) => b.textContent)).trim();
  check(result.activation.includes('Device approved'), `activation page: ${result.activation}`);
  await activate.close();

  // Back on the status page, untouched: the row turns valid by itself.
  const waiting = Date.now();
  await waitForState(page, 'biganimal', 'valid');
  result.valid_after_ms = Date.now() - waiting;
  await page.waitForFunction(() => {
    const row = document.querySelector('tr.login-row[data-login-for="biganimal"]');
    return row && row.hidden;
  }, { timeout: WAIT });
  const after = await readRow(page, 'biganimal');
  result.after = after.state;
  result.after_expires = after.expires;
  result.after_refreshed = after.refreshed;
  result.logged_in_message = await page.$eval('#message', (m) => m.textContent);
  result.login_stands_out_after = await loginStandsOut(page, 'biganimal');
  check(!result.login_stands_out_after, 'Log in still stands out on a valid row');
  result.marker = await page.evaluate(() => window.__marker);
  result.navigations = navigations - navigationsBefore;
  check(result.marker === 'still-here' && result.navigations === 0, 'the status page navigated');
  // Let the relative times move off "0 s ago" before the picture.
  await new Promise((resolve) => setTimeout(resolve, 1100));

  await page.mouse.move(0, 0); // no hover highlight in the picture
  await page.screenshot({ path: screenshot, fullPage: true });
  result.screenshot = screenshot;

  // Refresh now on a row with a token; Log out of AMM (which revokes).
  said = result.logged_in_message;
  await page.click(button('biganimal', 'refresh'));
  result.refresh_message = await waitForMessage(page, 'ok', said);
  await page.click(button('amm', 'logout'));
  result.logout_message = await waitForMessage(page, 'ok', result.refresh_message);

  // A 600 px window: every action stays in view without scrolling sideways.
  await page.setViewport({ width: 600, height: 800, deviceScaleFactor: 1 });
  result.out_of_reach_at_600px = await actionsOutOfReach(page);
  check(result.out_of_reach_at_600px.length === 0,
    `actions out of reach at 600 px: ${result.out_of_reach_at_600px.join(', ')}`);

  // Dark mode is a different palette.
  const light = await page.$eval('html', (h) => getComputedStyle(h).backgroundColor);
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }]);
  const dark = await page.$eval('html', (h) => getComputedStyle(h).backgroundColor);
  check(light !== dark, `dark mode looks like light mode: ${light}`);

  result.violations = await page.evaluate(() => window.__violations);
  result.problems = events.concat(result.violations.map((v) => `CSP violation: ${v}`));
  check(result.problems.length === 0, `the page reported problems: ${result.problems.join('; ')}`);
} catch (error) {
  console.error(`status page test failed: ${error.stack || error}`);
  console.error(`seen so far: ${JSON.stringify(result)}`);
  exitCode = 1;
} finally {
  await browser.close();
}
result.elapsed_ms = Date.now() - started;
console.log(JSON.stringify(result));
process.exit(exitCode);
