// A real OpenID Connect provider for aidc's end-to-end sign-in tests.
//
// It is panva/node-oidc-provider (an OpenID Certified implementation) with a tiny
// configuration around it: an in-memory store, a signing key made at start, accounts
// from a JSON file, and two interaction pages of its own (no devInteractions):
//
//   * sign-in:  a form (`login`, `password`) checked against the account's password;
//   * consent:  a form with "Allow" / "Deny" buttons for the scopes the client asks for.
//
// Usage (everything also has an environment variable, shown in brackets):
//
//   node provider.mjs [--port 0] [--accounts accounts.json]
//                     [--client-id ID --client-secret SECRET --redirect-uri URI]
//                     [--registration-token TOKEN]
//
//   --port                 port on 127.0.0.1 (IDP_PORT); 0 (the default) picks a free one.
//                          The issuer is http://127.0.0.1:PORT.
//   --accounts             JSON file (IDP_ACCOUNTS): a list of
//                          {"sub", "preferred_username", "email", "groups": [...],
//                           "password", "name"?}. It is read again at every sign-in, so
//                          a test can change someone's groups while the provider runs.
//                          Without it, the sample accounts below are used.
//   --client-id/--client-secret/--redirect-uri
//                          one confidential client (IDP_CLIENT_ID, IDP_CLIENT_SECRET,
//                          IDP_REDIRECT_URI; several redirect URIs may be comma-separated).
//   --token-auth-method    how that client authenticates at the token endpoint
//                          (IDP_TOKEN_AUTH_METHOD): client_secret_post (the default, as
//                          OAuthenticator sends) or client_secret_basic.
//   --registration-token   enables Dynamic Client Registration (RFC 7591) at
//                          <issuer>/reg for requests bearing this initial access token
//                          (IDP_REGISTRATION_TOKEN); the tests register one client per
//                          test platform this way, since each listens on its own port.
//
// Once listening, it prints one JSON line on stdout, {"issuer": "http://127.0.0.1:PORT"};
// everything else goes to stderr.
//
// Claims: `groups` is released with the `profile` scope (and with a `groups` scope of
// its own), from the userinfo endpoint, which is where OAuthenticator reads it.
//
// Try it by hand against a platform on port 8000:
//   node tests/idp/provider.mjs --port 9000 --client-id aidc --client-secret s3cret \
//     --redirect-uri http://127.0.0.1:8000/hub/oauth_callback
//   AIDC_OIDC_ISSUER=http://127.0.0.1:9000 AIDC_OIDC_CLIENT_ID=aidc \
//     AIDC_OIDC_CLIENT_SECRET=s3cret AIDC_OIDC_ROLE_GROUPS=data-science=scientist ...

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.IDP_PORT || '0' },
    accounts: { type: 'string', default: process.env.IDP_ACCOUNTS || '' },
    'client-id': { type: 'string', default: process.env.IDP_CLIENT_ID || '' },
    'client-secret': { type: 'string', default: process.env.IDP_CLIENT_SECRET || '' },
    'redirect-uri': { type: 'string', default: process.env.IDP_REDIRECT_URI || '' },
    'token-auth-method': {
      type: 'string',
      default: process.env.IDP_TOKEN_AUTH_METHOD || 'client_secret_post',
    },
    'registration-token': { type: 'string', default: process.env.IDP_REGISTRATION_TOKEN || '' },
  },
});

const log = (...parts) => console.error('[idp]', ...parts);

// --- accounts -------------------------------------------------------------------------
const SAMPLE_ACCOUNTS = [
  { sub: 'u-1001', preferred_username: 'alice', email: 'alice@example.com', groups: ['ml-admins'], password: 'alice-password' },
  { sub: 'u-1002', preferred_username: 'bob', email: 'bob@example.com', groups: ['data-science'], password: 'bob-password' },
  { sub: 'u-1003', preferred_username: 'carol', email: 'carol@example.com', groups: ['stakeholders'], password: 'carol-password' },
  { sub: 'u-1004', preferred_username: 'mallory', email: 'mallory@example.com', groups: ['contractors'], password: 'mallory-password' },
];

function accounts() {
  if (!args.accounts) return SAMPLE_ACCOUNTS;
  return JSON.parse(fs.readFileSync(args.accounts, 'utf8'));
}

const bySub = (sub) => accounts().find((a) => a.sub === sub);
const byLogin = (login) => accounts().find((a) => a.preferred_username === login || a.email === login);

function passwordMatches(account, password) {
  const digest = (s) => crypto.createHash('sha256').update(String(s)).digest();
  return Boolean(account) && crypto.timingSafeEqual(digest(account.password), digest(password));
}

async function findAccount(ctx, sub) {
  const account = bySub(sub);
  if (!account) return undefined;
  return {
    accountId: sub,
    // the provider keeps only the claims that the granted scopes/claims allow
    async claims() {
      const current = bySub(sub) || account;
      return {
        sub,
        name: current.name || current.preferred_username,
        preferred_username: current.preferred_username,
        email: current.email,
        email_verified: true,
        groups: current.groups || [],
      };
    },
  };
}

// --- HTML ----------------------------------------------------------------------------
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><main><h1>${esc(title)}</h1>${body}</main></body></html>`;
}

function loginPage(uid, clientName, error = '', login = '') {
  return page('Company sign-in', `
<p>Sign in to continue to ${esc(clientName)}.</p>
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label>User name <input type="text" name="login" value="${esc(login)}" required autofocus></label>
  <label>Password <input type="password" name="password" required></label>
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(uid, clientName, scopes) {
  return page('Allow access?', `
<p>${esc(clientName)} asks for: ${scopes.map((s) => `<code>${esc(s)}</code>`).join(', ')}.</p>
<form method="post" action="/interaction/${esc(uid)}/confirm">
  <button type="submit">Allow</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort">
  <button type="submit">Deny</button>
</form>`);
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(html);
}

async function formBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// --- interactions (sign-in and consent) ---------------------------------------------
async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Sign-in error', '<p>This sign-in page has expired; start again.</p>'));
    return;
  }
  const { prompt, params, session } = details;
  const client = await provider.Client.find(params.client_id);
  const clientName = (client && client.clientName) || params.client_id;

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      send(res, 200, loginPage(uid, clientName));
    } else if (prompt.name === 'consent') {
      send(res, 200, consentPage(uid, clientName, String(params.scope || '').split(' ')));
    } else {
      send(res, 400, page('Sign-in error', `<p>Unsupported prompt ${esc(prompt.name)}.</p>`));
    }
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, page('Method not allowed', ''));
    return;
  }

  if (action === 'login' && prompt.name === 'login') {
    const form = await formBody(req);
    const account = byLogin(form.get('login') || '');
    if (!passwordMatches(account, form.get('password') || '')) {
      log('sign-in refused for', JSON.stringify(form.get('login')));
      send(res, 401, loginPage(uid, clientName, 'Invalid user name or password.', form.get('login') || ''));
      return;
    }
    log('signed in', account.preferred_username);
    await provider.interactionFinished(
      req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false },
    );
    return;
  }

  if (action === 'confirm' && prompt.name === 'consent') {
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    if (missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    log('consent given by', session.accountId, 'to', params.client_id);
    await provider.interactionFinished(
      req, res, { consent: { grantId } }, { mergeWithLastSubmission: true },
    );
    return;
  }

  if (action === 'abort') {
    await provider.interactionFinished(
      req, res,
      { error: 'access_denied', error_description: 'The user denied the request.' },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  send(res, 400, page('Sign-in error', '<p>Unexpected step; start again.</p>'));
}

// --- provider ------------------------------------------------------------------------
function configuration() {
  const signingKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    .privateKey.export({ format: 'jwk' });
  const clients = [];
  if (args['client-id']) {
    if (!args['client-secret'] || !args['redirect-uri']) {
      throw new Error('--client-id needs --client-secret and --redirect-uri');
    }
    clients.push({
      client_id: args['client-id'],
      client_secret: args['client-secret'],
      client_name: 'aidc',
      redirect_uris: args['redirect-uri'].split(',').map((u) => u.trim()).filter(Boolean),
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: args['token-auth-method'],
    });
  }
  return {
    clients,
    findAccount,
    jwks: { keys: [{ ...signingKey, kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    features: {
      devInteractions: { enabled: false },
      registration: args['registration-token']
        ? { enabled: true, initialAccessToken: args['registration-token'] }
        : { enabled: false },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    clientBasedCORS: () => false,
    // plain-text errors, so a failing test shows what the provider disliked
    async renderError(ctx, out) {
      ctx.type = 'text/plain; charset=utf-8';
      ctx.body = Object.entries(out).map(([k, v]) => `${k}: ${v}`).join('\n');
    },
  };
}

const server = http.createServer();
server.listen(Number(args.port), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (ctx, err) => log('server error:', err));
  provider.on('grant.error', (ctx, err) => log('token request refused:', err.message, err.error_description || ''));
  const handle = provider.callback();

  server.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    const m = path.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/);
    if (!m) {
      handle(req, res);
      return;
    }
    interaction(provider, req, res, m[1], m[2]).catch((err) => {
      log('interaction failed:', err);
      if (!res.headersSent) {
        send(res, err.statusCode || 500, page('Sign-in error', `<p>${esc(err.message)}</p>`));
      } else {
        res.end();
      }
    });
  });

  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
  log('listening as', issuer);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
