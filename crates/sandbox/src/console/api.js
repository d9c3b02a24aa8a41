// The sandbox's control API, as curl would call it (docs/sandbox.md), and its live events.

/**
 * JSON.parse that keeps `msgid` exact: msgids are above 2^53, which a JS number would round.
 * Browsers that give revivers the source text (Chromium 114+, Firefox 135+, Safari 18.4+) keep
 * every digit; older ones fall back to the rounded number.
 */
export function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    key === 'msgid' && context && typeof context.source === 'string' ? context.source : value,
  );
}

/** Calls a control route; resolves with its JSON, or rejects with the sandbox's error text. */
export async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json;
  try {
    json = parseJson(text);
  } catch {
    throw new Error(`${method} ${path}: HTTP ${response.status}, not JSON`);
  }
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${json.error || `HTTP ${response.status}`}`);
  }
  return json;
}

/** `path` with the query parameters that are set. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export const api = {
  overview: () => call('GET', '/sandbox/'),
  templates: () => call('GET', '/sandbox/templates'),
  inbox: (openid, limit) => call('GET', withQuery('/sandbox/inbox', { openid, limit })),
  failures: (openid, limit) => call('GET', withQuery('/sandbox/failures', { openid, limit })),
  clearInbox: () => call('DELETE', '/sandbox/inbox'),
  clearFailures: () => call('DELETE', '/sandbox/failures'),
  subscriptions: (openid) => call('GET', withQuery('/sandbox/subscriptions', { openid })),
  subscribe: (request) => call('POST', '/sandbox/subscriptions', request),
  autoAccept: () => call('GET', '/sandbox/auto-accept'),
  setAutoAccept: (enabled) => call('POST', '/sandbox/auto-accept', { enabled }),
  faults: () => call('GET', '/sandbox/faults'),
  injectFault: (fault) => call('POST', '/sandbox/faults', fault),
  clearFaults: () => call('DELETE', '/sandbox/faults'),
  revokeTokens: (appid) => call('POST', '/sandbox/tokens/revoke', appid ? { appid } : {}),
  stats: () => call('GET', '/sandbox/stats'),
};

/**
 * Listens to `/sandbox/events`. `handlers` has one function per event name (delivered, failed,
 * changed, stats, resync) and `connection(state)`, called with "live" on every (re)connection
 * (events may have been missed before it) and "reconnecting" when the stream drops (the
 * browser reconnects by itself).
 */
export function listen(handlers) {
  const source = new EventSource('/sandbox/events');
  source.addEventListener('open', () => handlers.connection('live'));
  source.addEventListener('error', () => handlers.connection('reconnecting'));
  for (const name of ['delivered', 'failed', 'changed', 'stats', 'resync']) {
    source.addEventListener(name, (event) => handlers[name](parseJson(event.data)));
  }
  return source;
}
