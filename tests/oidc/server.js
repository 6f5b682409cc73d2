// Test-only OpenID provider for gate's login tests: panva's certified oidc-provider on loopback.
//
// Usage: node server.js PORT   (PORT 0 picks a free port). Prints one line
// `listening http://127.0.0.1:PORT` when ready; the pytest fixture waits for it.
//
// devInteractions gives a login form (fields `login` and `password`, any password);
// consent is skipped for the fixed first-party clients so the flow is login → code.
import http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);

// Users known to the provider. Any other login is refused at the login prompt.
const ACCOUNTS = {
  alice: { email: 'alice@example.com', email_verified: true, name: 'Alice' },
  bob: { email: 'bob@other.test', email_verified: true, name: 'Bob' },
  carol: { email: 'carol@example.com', email_verified: false, name: 'Carol (unverified)' },
  eve: { email: 'eve@badexample.com', email_verified: true, name: 'Eve' },
  trick: { email: 'a@evil.test@example.com', email_verified: true, name: 'Trick' },
  noemail: { name: 'No Email' },
  // An address the provider does not say it verified (no email_verified claim at all).
  dave: { email: 'dave@example.com', name: 'Dave (email_verified absent)' },
};

const server = http.createServer();

server.listen(port, '127.0.0.1', () => {
  const { port: actual } = server.address();
  const issuer = `http://127.0.0.1:${actual}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        // gate's client: confidential, loopback redirect on any port (RFC 8252 native rules).
        client_id: 'gate',
        client_secret: 'gate-test-secret',
        application_type: 'native',
        redirect_uris: ['http://127.0.0.1/oauth2callback'],
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    pkce: { required: () => true },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['test-only-cookie-key'] },
    ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
    async findAccount(_ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, ...account };
        },
      };
    },
    // Skip the consent screen for these first-party test clients: grant what was asked.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid email profile');
      await grant.save();
      return grant;
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
