// The status page's script. The server renders the table (page.rs); this keeps it live:
// it polls /-/status every second and updates the rows in place (so focus and selection
// survive), ticks the countdowns locally, and drives the buttons. Values from the server
// reach the page only as text and attributes, never as markup.
'use strict';

(() => {
  const POLL_MS = 1000;
  const LABELS = {
    backing_off: 'backing off', needs_login: 'needs login', logged_out: 'logged out',
    invalid_credentials: 'invalid credentials',
  };
  const ATTENTION = new Set(['needs_login', 'failed', 'expired', 'backing_off', 'invalid_credentials']);
  const DOING = { refresh: 'Refreshing', login: 'Logging in to', logout: 'Logging out of' };

  const table = document.getElementById('upstreams');
  const message = document.getElementById('message');
  if (!table || !message) return;
  const tbody = table.tBodies[0];

  // Server clock minus browser clock, in seconds, as the interval every answer allows:
  // `now_unix` is a whole second somewhere between sending the request and reading it.
  const clock = { lo: -Infinity, hi: Infinity };
  function learnClock(nowUnix, sentMs, receivedMs) {
    const lo = nowUnix - receivedMs / 1000;
    const hi = nowUnix + 1 - sentMs / 1000;
    if (Math.max(lo, clock.lo) > Math.min(hi, clock.hi)) {
      // The browser's clock jumped: start over.
      clock.lo = lo;
      clock.hi = hi;
    } else {
      clock.lo = Math.max(lo, clock.lo);
      clock.hi = Math.min(hi, clock.hi);
    }
  }
  function serverNow() {
    return Date.now() / 1000 + (clock.lo + clock.hi) / 2;
  }

  let generation = 0; // bumped by every action: a poll sent before it is stale
  let online = null;
  const deviceShown = new Set(); // upstreams whose device code panel is open
  const browserLogins = new Map(); // upstream -> {url, state, lastRefresh} at the start

  // ---- text formats (the same as page.rs writes) ----

  function duration(secs) {
    if (secs < 60) return `${secs} s`;
    if (secs < 3600) return `${Math.floor(secs / 60)} min ${secs % 60} s`;
    if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
    return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`;
  }
  function secondsLeft(at) {
    return Math.max(0, Math.ceil(at - serverNow()));
  }
  function expiry(at) {
    const left = secondsLeft(at);
    return left > 0 ? `expires in ${duration(left)}` : 'expired';
  }
  function ago(at) {
    const secs = Math.max(0, Math.floor(serverNow() - at));
    if (secs < 60) return `${secs} s ago`;
    if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
    if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
    return `${Math.floor(secs / 86400)} d ago`;
  }
  function label(state) {
    return LABELS[state] || state || '';
  }
  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }
  function webAddress(text) {
    return typeof text === 'string' && /^https?:\/\//i.test(text) ? text : null;
  }

  // ---- small DOM helpers ----

  // The same text as `fleet_text` in page.rs.
  function fleetText(fleet) {
    if (!fleet) return '';
    if (!fleet.redis_reachable) return 'fleet: Redis unreachable';
    if (fleet.this_replica) return 'fleet: refreshed here';
    if (!fleet.holder) return 'fleet: no refresher yet';
    return `fleet: refreshed by ${fleet.holder}`;
  }
  function setText(node, text) {
    if (node && node.textContent !== text) node.textContent = text;
  }
  function setAttr(node, name, value) {
    if (!node) return;
    if (value === null || value === undefined) node.removeAttribute(name);
    else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
  }
  function span(className, text) {
    const node = document.createElement('span');
    node.className = className;
    node.textContent = text;
    return node;
  }
  function rows() {
    return [...tbody.querySelectorAll('tr[data-upstream]')];
  }
  function rowFor(name) {
    return rows().find((row) => row.dataset.upstream === name) || null;
  }
  function loginRowFor(name) {
    return [...tbody.querySelectorAll('tr.login-row')].find((row) => row.dataset.loginFor === name) || null;
  }

  /// A `<time>` counting towards or from unix second `at`; the text comes from tick().
  function setTime(node, at) {
    if (!node) return;
    if (typeof at !== 'number') {
      for (const name of ['data-at', 'datetime', 'title']) node.removeAttribute(name);
      return;
    }
    if (node.dataset.at === String(at)) return;
    const date = new Date(at * 1000);
    node.dataset.at = String(at);
    node.setAttribute('datetime', date.toISOString().replace(/\.\d{3}Z$/, 'Z'));
    node.setAttribute('title', date.toLocaleString());
  }

  function tick() {
    for (const node of document.querySelectorAll('time.countdown[data-at]')) {
      setText(node, expiry(Number(node.dataset.at)));
    }
    for (const node of document.querySelectorAll('time.code-countdown[data-at]')) {
      setText(node, duration(secondsLeft(Number(node.dataset.at))));
    }
    for (const node of document.querySelectorAll('time.ago[data-at]')) {
      setText(node, ago(Number(node.dataset.at)));
    }
  }

  // ---- rows ----

  function fill(row, upstream) {
    const token = upstream.token || {};
    const state = token.state || '';
    setAttr(row, 'data-state', state);

    const route = row.querySelector('td.route .paths');
    const parts = [['prefix', upstream.prefix], ['host', upstream.host], ['port', upstream.listen]]
      .filter(([, value]) => typeof value === 'string');
    const routeKey = JSON.stringify(parts);
    if (route && route.dataset.key !== routeKey) {
      route.replaceChildren(...parts.map(([name, value]) => span(name, value)));
      route.dataset.key = routeKey;
    }
    setText(row.querySelector('td.route .target'), upstream.target || '');
    setText(row.querySelector('.auth .kind'), upstream.kind || '');

    const cell = row.querySelector('td.state');
    setAttr(cell, 'data-state', state);
    setText(cell && cell.querySelector('.badge'), label(state));

    const expires = row.querySelector('td.state time.countdown');
    if (typeof token.expires_at_unix === 'number') {
      setTime(expires, token.expires_at_unix);
    } else {
      setTime(expires, null);
      setText(expires, ['valid', 'expiring', 'refreshing'].includes(state) ? 'no expiry' : '');
    }
    const refreshed = row.querySelector('time.ago');
    if (typeof token.last_refresh_unix === 'number') {
      setTime(refreshed, token.last_refresh_unix);
    } else {
      setTime(refreshed, null);
      setText(refreshed, 'never');
    }
    const tally = [plural(token.refreshes || 0, 'refresh', 'refreshes')];
    if (token.failures) tally.push(plural(token.failures, 'failure', 'failures'));
    setText(row.querySelector('.tally'), tally.join(' · '));
    setText(row.querySelector('.fleet'), fleetText(upstream.fleet));
    setText(row.querySelector('.last-error'), token.last_error || '');

    const requests = upstream.requests || {};
    setText(row.querySelector('td.requests .total'), String(requests.total || 0));
    const errors = row.querySelector('td.requests .errors');
    setAttr(errors, 'data-count', String(requests.errors || 0));
    setText(errors, plural(requests.errors || 0, 'error', 'errors'));
    setText(row.querySelector('td.requests .egress'), egressText(requests.egress || 0));
  }

  // page.rs writes the same text (`egress_text`).
  function egressText(count) {
    return count ? `${count} via egress` : '';
  }

  function showDevice(name, view, expiresAt) {
    const row = loginRowFor(name);
    if (!row) return;
    const panel = row.querySelector('.login-panel.device');
    const link = panel.querySelector('a.verification');
    setAttr(link, 'href', webAddress(view.verification_uri_complete) || webAddress(view.verification_uri) || '#');
    setText(link, view.verification_uri || '');
    setText(panel.querySelector('.user-code'), view.user_code || '');
    const expiry = panel.querySelector('time.code-countdown');
    // Re-anchor only when the server's count drifts: it moves in whole seconds.
    if (Math.abs(Number(expiry.dataset.at || 0) - expiresAt) > 2) setTime(expiry, expiresAt);
    panel.hidden = false;
    row.querySelector('.login-panel.browser').hidden = true;
    row.hidden = false;
    deviceShown.add(name);
  }

  function showBrowser(name, url) {
    const row = loginRowFor(name);
    if (!row) return;
    const panel = row.querySelector('.login-panel.browser');
    setAttr(panel.querySelector('a.authorize'), 'href', url);
    panel.hidden = false;
    row.querySelector('.login-panel.device').hidden = true;
    row.hidden = false;
  }

  function hideLogin(name) {
    deviceShown.delete(name);
    const row = loginRowFor(name);
    if (!row) return;
    for (const panel of row.querySelectorAll('.login-panel')) panel.hidden = true;
    row.hidden = true;
  }

  /// The login panel follows the server: a pending device login shows its code; the end of
  /// one (or of a browser login) hides it and says how it went.
  function followLogin(upstream, nowUnix) {
    const name = upstream.name;
    const token = upstream.token || {};
    const pending = upstream.pending_login;
    if (pending && typeof pending === 'object') {
      showDevice(name, pending, nowUnix + (pending.expires_in || 0));
      return;
    }
    if (deviceShown.has(name)) {
      hideLogin(name);
      if (token.state === 'valid') say(`Logged in to ${name}.`, 'ok');
      else say(`The login to ${name} ended without a token${token.last_error ? `: ${token.last_error}` : '.'}`, 'error');
      return;
    }
    const browser = browserLogins.get(name);
    if (browser) {
      const arrived = token.state === 'valid'
        && (browser.state !== 'valid' || token.last_refresh_unix !== browser.lastRefresh);
      if (arrived) {
        browserLogins.delete(name);
        hideLogin(name);
        say(`Logged in to ${name}.`, 'ok');
      } else {
        showBrowser(name, browser.url);
      }
    }
  }

  // ---- the whole page ----

  /// True when the table has exactly these upstreams, in this order, logging in the same way.
  function sameShape(upstreams) {
    const current = rows();
    return current.length === upstreams.length
      && upstreams.every((upstream, i) => current[i].dataset.upstream === upstream.name
        && current[i].dataset.login === (upstream.login || ''));
  }

  /// Upstreams came or went (a reload of the config): the server renders the new table.
  function reloadForNewShape() {
    let last = 0;
    try {
      last = Number(sessionStorage.getItem('tokenproxy-reloaded') || 0);
      sessionStorage.setItem('tokenproxy-reloaded', String(Date.now()));
    } catch {
      last = Date.now();
    }
    if (Date.now() - last > 10000) location.reload();
    else say('The configured upstreams changed: reload the page to see them.', 'info');
  }

  function update(status) {
    const upstreams = Array.isArray(status.upstreams) ? status.upstreams : [];
    if (!sameShape(upstreams)) {
      reloadForNewShape();
      return;
    }
    const nowUnix = typeof status.now_unix === 'number' ? status.now_unix : serverNow();
    for (const upstream of upstreams) {
      const row = rowFor(upstream.name);
      fill(row, upstream);
      followLogin(upstream, nowUnix);
    }

    const ready = document.getElementById('ready');
    setAttr(ready, 'data-ready', String(Boolean(status.ready)));
    setText(ready, status.ready ? 'Ready: every upstream has a valid token'
      : 'Not ready: an upstream has no valid token');
    setText(document.getElementById('version'), status.version || '');
    const refusals = status.browser_guard_refusals || {};
    for (const node of document.querySelectorAll('[data-refusal]')) {
      setText(node, String(refusals[node.dataset.refusal] || 0));
    }
    const egress = status.egress || {};
    for (const node of document.querySelectorAll('[data-egress]')) {
      setText(node, String(egress[node.dataset.egress] || 0));
    }
    const attention = upstreams.filter((u) => ATTENTION.has((u.token || {}).state)).length;
    const title = attention ? `(${attention}) tokenproxy status` : 'tokenproxy status';
    if (document.title !== title) document.title = title;
  }

  function setOnline(now) {
    const live = document.getElementById('live');
    setAttr(live, 'data-live', now ? 'live' : 'offline');
    setText(live, now ? 'Live: updates every second' : 'tokenproxy is not answering');
    if (online === now) return;
    if (!now) say('tokenproxy is not answering; this page keeps trying every second.', 'error');
    else if (online === false) say('tokenproxy answers again.', 'ok');
    online = now;
  }

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    const started = generation;
    const sent = Date.now();
    try {
      const response = await fetch('/-/status', { cache: 'no-store', headers: { accept: 'application/json' } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const status = await response.json();
      if (typeof status.now_unix === 'number') learnClock(status.now_unix, sent, Date.now());
      if (started === generation) update(status);
      setOnline(true);
    } catch {
      setOnline(false);
    }
    tick();
    timer = setTimeout(poll, POLL_MS);
  }

  // ---- messages and actions ----

  function say(text, kind) {
    message.dataset.kind = kind;
    message.textContent = text;
  }

  async function act(name, action, button) {
    if (button.getAttribute('aria-disabled') === 'true') return;
    const row = rowFor(name);
    button.setAttribute('aria-disabled', 'true');
    setAttr(row, 'aria-busy', 'true');
    generation += 1;
    say(`${DOING[action]} ${name}…`, 'busy');
    let response;
    let body = null;
    try {
      response = await fetch(`/-/upstreams/${encodeURIComponent(name)}/${action}`, {
        method: 'POST',
        cache: 'no-store',
        headers: { 'tokenproxy-action': '1', accept: 'application/json, application/problem+json' },
      });
      try {
        body = await response.json();
      } catch {
        body = null;
      }
    } catch (error) {
      say(`${DOING[action]} ${name} failed: tokenproxy did not answer (${error.message}).`, 'error');
      return;
    } finally {
      generation += 1;
      button.removeAttribute('aria-disabled');
      setAttr(row, 'aria-busy', null);
    }
    if (!response.ok || !body || typeof body !== 'object') {
      const detail = (body && (body.detail || body.title)) || `HTTP ${response.status}`;
      say(`${DOING[action]} ${name} failed: ${detail}`, 'error');
      return;
    }
    if (action === 'refresh') {
      fill(row, body);
      const token = body.token || {};
      const expires = typeof token.expires_at_unix === 'number' ? `, ${expiry(token.expires_at_unix)}` : '';
      say(`Refreshed ${name}: token ${label(token.state)}${expires}.`, 'ok');
    } else if (action === 'logout') {
      fill(row, body);
      browserLogins.delete(name);
      hideLogin(name);
      say(logoutMessage(name, body), body.revocation_error ? 'error' : 'ok');
    } else if (action === 'login') {
      loggingIn(name, body, row);
    }
    tick();
  }

  /// The same words as `tokenproxy logout`: revoked only when the vendor said so.
  function logoutMessage(name, body) {
    if (body.revoked) return `Logged out of ${name}: the vendor revoked the token, and tokenproxy forgot it.`;
    if (!body.had_token) return `Logged out of ${name}: there was no token to forget.`;
    const until = typeof body.still_valid_until_unix === 'number'
      ? `stays valid until ${new Date(body.still_valid_until_unix * 1000).toLocaleString()}`
      : 'stays valid until the vendor expires it';
    const failed = body.revocation_error ? ` (revocation failed: ${body.revocation_error})` : '';
    return `Logged out of ${name}: forgotten here; the vendor's token ${until}${failed}.`;
  }

  function loggingIn(name, body, row) {
    if (body.method === 'device_code') {
      showDevice(name, body, serverNow() + (body.expires_in || 0));
      say(`To log in to ${name}, approve the code ${body.user_code} at ${body.verification_uri}.`, 'info');
    } else if (body.method === 'browser') {
      const url = webAddress(body.authorize_url);
      if (!url) {
        say(`Logging in to ${name} failed: the vendor's login page is not a web address.`, 'error');
        return;
      }
      const refreshed = row && row.querySelector('time.ago');
      browserLogins.set(name, {
        url,
        state: (row && row.dataset.state) || '',
        lastRefresh: refreshed && refreshed.dataset.at ? Number(refreshed.dataset.at) : undefined,
      });
      showBrowser(name, url);
      say(`Log in to ${name} in the new tab; the vendor sends you back to tokenproxy.`, 'info');
      window.open(url, '_blank', 'noopener');
    } else {
      say(`Logged in to ${name}.`, 'ok');
    }
  }

  tbody.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const row = button.closest('tr');
    const action = button.dataset.action;
    if (action === 'dismiss') {
      browserLogins.delete(row.dataset.loginFor);
      hideLogin(row.dataset.loginFor);
      return;
    }
    if (row && row.dataset.upstream !== undefined && DOING[action]) act(row.dataset.upstream, action, button);
  });

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') poll();
  });

  // The rendered page was "now" at about the time the navigation started.
  const rendered = Number(table.dataset.now);
  if (rendered > 0) learnClock(rendered, performance.timeOrigin, Date.now());
  tick();
  poll();
})();
