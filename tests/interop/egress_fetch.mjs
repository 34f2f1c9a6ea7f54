// Node's fetch through tokenproxy's egress listener, set up by the environment alone:
// undici's EnvHttpProxyAgent reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY, and Node's TLS adds
// NODE_EXTRA_CA_CERTS to its roots. Prints {status, body} as one JSON line.
import { EnvHttpProxyAgent, setGlobalDispatcher } from 'undici';

setGlobalDispatcher(new EnvHttpProxyAgent());
const response = await fetch(process.argv[2], { signal: AbortSignal.timeout(20000) });
console.log(JSON.stringify({ status: response.status, body: await response.text() }));
