// The console: loads the sandbox's lists once the live stream is open (so nothing falls
// between the two), then keeps them current from /sandbox/events without reloading.

import { api, listen } from './api.js';
import { Controls } from './controls.js';
import { InboxView, SHOWN } from './inbox.js';
import { StatsView } from './stats.js';

const $ = (id) => document.getElementById(id);

/** The sandbox's demo user (docs/sandbox.md), the controls' default in the all-users view. */
const DEMO_OPENID = 'o6_bmjrPTlm6_2sgVt7hMZOPfL2M';

const openid = new URLSearchParams(window.location.search).get('openid') || '';

const inbox = new InboxView({
  openid,
  inbox: $('inbox'),
  inboxEmpty: $('inbox-empty'),
  failures: $('failures'),
  failuresEmpty: $('failures-empty'),
});
const controls = new Controls({
  openid: openid || DEMO_OPENID,
  onOpenInbox: (user) => {
    window.location.search = user ? `?${new URLSearchParams({ openid: user })}` : '';
  },
});
const stats = new StatsView();

$('inbox-scope').textContent = openid || 'all users';
$('all-users').hidden = !openid;

async function loadTemplates() {
  const { templates } = await api.templates();
  inbox.setTemplates(templates);
  controls.setTemplates(templates);
}

async function loadInbox() {
  inbox.setMessages((await api.inbox(openid, SHOWN)).messages);
}

async function loadFailures() {
  inbox.setFailures((await api.failures(openid, SHOWN)).failures);
}

async function loadAll() {
  const overview = await api.overview();
  $('exposed-banner').hidden = !overview.exposed;
  $('exposed-address').textContent = overview.listen || '';
  controls.setApps(overview.apps);
  await loadTemplates();
  await Promise.all([loadInbox(), loadFailures(), controls.refresh()]);
  stats.update(await api.stats());
}

/** A failed reload is reported on the page, never left as an unhandled rejection. */
const report = (error) => controls.status(`cannot load from the sandbox: ${error.message}`, true);

/** Subscriptions and faults change with sends too (a grant used, a fault counting down). */
let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => controls.refresh(), 150);
}

// Events that arrive while the lists load wait, then apply (duplicates are recognised).
let loaded = false;
let pending = [];
const whenLoaded = (handle) => (data) => (loaded ? handle(data) : pending.push(() => handle(data)));

async function reload() {
  loaded = false;
  await loadAll().catch(report);
  loaded = true;
  const queued = pending;
  pending = [];
  queued.forEach((apply) => apply());
}

function showConnection(state) {
  $('live').dataset.state = state;
  $('live').textContent = state;
}

listen({
  connection(state) {
    if (state === 'live') {
      // Every (re)connection reloads: events may have been missed while it was down.
      reload().then(() => showConnection('live'));
    } else {
      showConnection(state);
    }
  },
  resync: () => reload(),
  delivered: whenLoaded(async (message) => {
    if (inbox.missingTemplate(message)) await loadTemplates().catch(report);
    inbox.addMessage(message);
    scheduleRefresh();
  }),
  failed: whenLoaded((failure) => {
    inbox.addFailure(failure);
    scheduleRefresh();
  }),
  changed: whenLoaded(({ what }) => {
    if (what === 'inbox') loadInbox().catch(report);
    else if (what === 'failures') loadFailures().catch(report);
    else if (what === 'templates') loadTemplates().catch(report);
    else scheduleRefresh();
  }),
  stats: (snapshot) => stats.update(snapshot),
});
