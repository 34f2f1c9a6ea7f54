// Interop test OAuth2 / OpenID Connect server for tokenproxy.
//
// Runs the certified `oidc-provider` package on 127.0.0.1 with an ephemeral
// port, prints exactly one line `{"issuer":"http://127.0.0.1:PORT"}` to stdout
// once it is ready, and logs everything else to stderr. Exits when stdin is
// closed (so a crashed test runner never leaves it behind) or on SIGTERM/SIGINT.
//
// Environment:
//   ACCESS_TTL   access token / client credentials token lifetime, seconds (60)
//   REFRESH_TTL  refresh token lifetime, seconds (3600)
//   DEVICE_TTL   device code lifetime, seconds (600)
//   DEBUG        e.g. `oidc-provider:*` for oidc-provider's debug output (stderr)
//   IGNORE_STDIN `1`: do not exit when stdin closes (for `node server.mjs &`)

import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';

// oidc-provider writes some notices with console.info (stdout). stdout is the
// machine-readable channel of this process, so route all console output to
// stderr *before* oidc-provider is loaded (hence the dynamic import below).
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;
console.warn = toStderr;

const { default: Provider } = await import('oidc-provider');

function envSeconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    console.error(`interop server: ${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

const ACCESS_TTL = envSeconds('ACCESS_TTL', 60);
const REFRESH_TTL = envSeconds('REFRESH_TTL', 3600);
const DEVICE_TTL = envSeconds('DEVICE_TTL', 600);

const ACCOUNT_ID = 'alice';
const SCOPES = ['openid', 'offline_access', 'api:read'];

// --- lifecycle ---------------------------------------------------------------

function shutdown(code = 0) {
  process.exit(code);
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
if (process.env.IGNORE_STDIN !== '1') {
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('close', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
  process.stdin.resume();
}

// --- stats ---------------------------------------------------------------------

const stats = {
  token_requests: {}, // grant_type -> count (every POST to the token endpoint)
  token_errors: {}, // OAuth error code -> count (token endpoint only)
  invalid_grant: 0, // shortcut for token_errors.invalid_grant
};

function bump(map, key) {
  map[key] = (map[key] || 0) + 1;
}

// --- HTTP server ---------------------------------------------------------------

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-rs256', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'cc-client',
      client_secret: 'cc-secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'api:read',
    },
    {
      client_id: 'cc-basic',
      client_secret: 'cc-basic-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'api:read',
    },
    {
      client_id: 'device-client',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      scope: 'openid offline_access api:read',
    },
    {
      client_id: 'code-client',
      token_endpoint_auth_method: 'none', // public client => PKCE (S256) required
      application_type: 'native', // loopback redirect URIs may use any port (RFC 8252 7.3)
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/-/callback/interop'],
      scope: 'openid offline_access api:read',
    },
  ],
  scopes: SCOPES,
  claims: { openid: ['sub'] },
  jwks: { keys: [signingKey] },
  cookies: { keys: ['tokenproxy-interop-test-cookie-key'] },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub }),
  }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  // oidc-provider's default only issues refresh tokens when `offline_access`
  // survived the authorization request, and for the authorization endpoint it
  // drops `offline_access` unless `prompt=consent` is also sent. For interop
  // tests every client allowed the refresh_token grant gets one.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Rotate on every use; presenting a rotated (consumed) refresh token again
  // fails with invalid_grant and revokes the whole grant.
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: ACCESS_TTL,
    ClientCredentials: ACCESS_TTL,
    RefreshToken: REFRESH_TTL,
    DeviceCode: DEVICE_TTL,
    AuthorizationCode: 600,
    Interaction: 3600,
    Session: 86400,
    Grant: Math.max(REFRESH_TTL, 86400),
    IdToken: 3600,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Count token-endpoint traffic. This outer middleware sees the final response,
// including errors rendered by oidc-provider's own error handler.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method !== 'POST' || ctx.oidc?.route !== 'token') return;
  const grantType = ctx.oidc.params?.grant_type || ctx.oidc.body?.grant_type || 'unknown';
  bump(stats.token_requests, grantType);
  if (ctx.status >= 400) {
    const error = ctx.body?.error || `http_${ctx.status}`;
    bump(stats.token_errors, error);
    if (error === 'invalid_grant') stats.invalid_grant += 1;
  }
});

provider.on('server_error', (_ctx, err) => console.error('interop server: server_error', err));

// --- interactions: auto-login as alice, auto-consent to everything -------------

async function handleInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: ACCOUNT_ID } };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: `unsupported prompt ${prompt.name}` };
  }
  // Responds with a 303 redirect back to the authorization endpoint.
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

// --- test-only endpoints ---------------------------------------------------------

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  return raw ? JSON.parse(raw) : {};
}

// Approves a pending device code as alice with every requested scope, exactly
// as oidc-provider's own device flow UI does after login + consent.
async function approveDevice(req, res) {
  let body;
  try {
    body = await readJson(req);
  } catch {
    return sendJson(res, 400, { error: 'invalid_json' });
  }
  if (typeof body.user_code !== 'string' || !body.user_code) {
    return sendJson(res, 400, { error: 'user_code required' });
  }
  const normalized = body.user_code.toUpperCase().replace(/\W/g, '');
  const code = await provider.DeviceCode.findByUserCode(normalized, { ignoreExpiration: true });
  if (!code) return sendJson(res, 404, { error: 'unknown user_code' });
  if (code.isExpired) return sendJson(res, 404, { error: 'expired user_code' });
  if (code.accountId || code.error || code.consumed) {
    return sendJson(res, 409, { error: 'user_code already used' });
  }

  const requested = (code.params?.scope || '').split(' ').filter((s) => SCOPES.includes(s));
  const grant = new provider.Grant({ accountId: ACCOUNT_ID, clientId: code.clientId });
  if (requested.length) grant.addOIDCScope(requested.join(' '));
  const grantId = await grant.save();

  Object.assign(code, {
    accountId: ACCOUNT_ID,
    authTime: Math.floor(Date.now() / 1000),
    grantId,
    scope: requested.join(' ') || undefined,
  });
  await code.save();
  return sendJson(res, 200, { approved: true, scope: code.scope ?? '' });
}

// oidc-provider treats client_secret_basic and client_secret_post as
// interchangeable for any client with a secret. For interop tests that must
// prove which method the caller used, enforce the *registered* method: a
// client_secret_basic client sending its secret in the body, or a
// client_secret_post client using the Authorization header, gets 401
// invalid_client. The body is read here and handed to oidc-provider as
// `req.body` (it supports pre-parsed bodies).
const REGISTERED_AUTH = new Map([
  ['cc-client', 'client_secret_post'],
  ['cc-basic', 'client_secret_basic'],
]);

async function enforceRegisteredAuthMethod(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks);
  req.body = raw;
  const form = new URLSearchParams(raw.toString('utf8'));
  let clientId = form.get('client_id');
  let used;
  const authz = req.headers.authorization;
  if (authz && /^basic /i.test(authz)) {
    used = 'client_secret_basic';
    const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i !== -1) {
      try {
        clientId = decodeURIComponent(decoded.slice(0, i).replace(/\+/g, ' '));
      } catch { /* oidc-provider reports the malformed header */ }
    }
  } else if (form.has('client_secret')) {
    used = 'client_secret_post';
  }
  const registered = REGISTERED_AUTH.get(clientId);
  if (!used || !registered || used === registered) return true;
  bump(stats.token_requests, form.get('grant_type') || 'unknown');
  bump(stats.token_errors, 'invalid_client');
  sendJson(res, 401, {
    error: 'invalid_client',
    error_description: `client ${clientId} is registered for ${registered} but used ${used}`,
  });
  return false;
}

// --- routing -------------------------------------------------------------------

const callback = provider.callback();
const tokenPath = '/token'; // oidc-provider's default route for the token endpoint

server.on('request', async (req, res) => {
  try {
    const path = new URL(req.url, issuer).pathname;
    if (req.method === 'GET' && path.startsWith('/interaction/')) {
      return await handleInteraction(req, res);
    }
    if (req.method === 'POST' && path === '/test/device/approve') {
      return await approveDevice(req, res);
    }
    if (req.method === 'GET' && path === '/test/stats') {
      return sendJson(res, 200, stats);
    }
    if (req.method === 'POST' && path === tokenPath && !(await enforceRegisteredAuthMethod(req, res))) {
      return undefined;
    }
    return callback(req, res);
  } catch (err) {
    console.error('interop server: request failed', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: String(err?.message ?? err) });
    else res.destroy();
  }
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
console.error(`interop server: ready at ${issuer} (access ttl ${ACCESS_TTL}s, refresh ttl ${REFRESH_TTL}s, device ttl ${DEVICE_TTL}s)`);
