// The sandbox console in a real browser: headless Debian Chromium driven by playwright-core,
// against a running `wechat-notify serve --sandbox`. Messages are sent through the service's
// gRPC API, as an application would; the page is only looked at and clicked, as a person would.
//
// Started by tests/it/console.rs (which starts the binary on free ports), with:
//   CONSOLE_URL          the sandbox's base URL, e.g. http://127.0.0.1:8089
//   NOTIFY_TARGET        the service's gRPC address, e.g. 127.0.0.1:50051
//   NOTIFY_PROTO         proto/notify/v1/notify.proto
//   CHROMIUM             the browser (default /usr/bin/chromium)
//   CONSOLE_SCREENSHOT   optional: where to save a screenshot of the inbox with two messages
//                        (docs/console.png is made this way; see docs/sandbox.md)
//   FAILURE_SCREENSHOT   optional: where to save a screenshot of the page when a step fails
// Exits non-zero on the first failed step, and when the page logged a JavaScript error.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

const CONSOLE_URL = required('CONSOLE_URL').replace(/\/$/, '');
const NOTIFY_TARGET = required('NOTIFY_TARGET');
const NOTIFY_PROTO = required('NOTIFY_PROTO');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.CONSOLE_SCREENSHOT;
const FAILURE_SCREENSHOT = process.env.FAILURE_SCREENSHOT;

// Generous bounds on waits for the page: they only matter when something is broken.
const WAIT_MS = 15_000;
const DEADLINE_MS = 15_000;

const DEMO_USER = 'o6_bmjrPTlm6_2sgVt7hMZOPfL2M';
const SECOND_USER = 'oSandboxUser0000000000000002';
const COURSE = 'sandbox-course-reminder';
const SHIPPED = 'sandbox-order-shipped';
const COURSE_DATA = { phrase1: '张三', date5: '2019年10月1日 15:01', phrase4: '李老师' };
const SHIPPED_DATA = { character_string1: 'SBX2019100100001', thing2: '无线耳机', date3: '2019年10月1日 15:01', phrase4: '已发货' };

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/it/console.rs sets it)`);
  return value;
}

// ---- the service, through gRPC ----

const definition = protoLoader.loadSync(NOTIFY_PROTO, { keepCase: true, longs: String, enums: String, defaults: true });
const notify = grpc.loadPackageDefinition(definition).notify.v1;
const client = new notify.NotifyService(NOTIFY_TARGET, grpc.credentials.createInsecure());

/** SendSubscribe; resolves with { msgid } or { errcode, code } for a failed call. */
function send(request) {
  const deadline = new Date(Date.now() + DEADLINE_MS);
  return new Promise((resolve) => {
    client.SendSubscribe(request, { deadline }, (error, response) => {
      if (!error) return resolve({ msgid: response.msgid });
      const [errcode] = error.metadata ? error.metadata.get('wechat-errcode') : [];
      resolve({ code: error.code, details: error.details, errcode: errcode === undefined ? undefined : Number(errcode) });
    });
  });
}

async function sendOk(request) {
  const answer = await send(request);
  assert.ok(answer.msgid, `send failed: ${JSON.stringify(answer)}`);
  return answer.msgid;
}

/** The control API, read directly: proof that the page used it. */
async function control(method, route, body) {
  const response = await fetch(`${CONSOLE_URL}${route}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.equal(response.status, 200, `${method} ${route}`);
  return response.json();
}

// ---- the browser ----

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'console-test-chromium-'));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1360, height: 860 },
});
browser.setDefaultTimeout(WAIT_MS);

/** JavaScript errors of every page: the test fails on any. */
const pageErrors = [];
function watch(page, name) {
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(`${name}: console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => pageErrors.push(`${name}: uncaught: ${error.message}`));
  return page;
}

const page = watch(browser.pages()[0] || (await browser.newPage()), 'console');

async function openConsole(route) {
  await page.goto(`${CONSOLE_URL}${route}`);
  await page.locator('#live[data-state="live"]').waitFor();
  // Survives only as long as the page is not reloaded.
  await page.evaluate(() => { window.loadedOnce = 'yes'; });
}

async function assertNotReloaded() {
  assert.equal(await page.evaluate(() => window.loadedOnce), 'yes', 'the page was reloaded');
}

const card = (msgid) => page.locator(`.message[data-msgid="${msgid}"]`);
const texts = (locator) => locator.allTextContents();

/** Waits until an element of `locator` has exactly the text `expected`. */
async function waitForText(locator, expected) {
  const exactly = new RegExp(`^${expected.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  await locator.filter({ hasText: exactly }).first().waitFor();
}

// ---- the steps ----

const steps = [];
const step = (name, run) => steps.push({ name, run });

step('the page opens on every user\'s inbox, live, without a warning on loopback', async () => {
  await openConsole('/');
  assert.equal(await page.locator('#inbox-scope').textContent(), 'all users');
  assert.equal(await page.locator('#exposed-banner').isVisible(), false);
  assert.equal(await page.locator('.message').count(), 0);
});

let firstMsgid;
step('a message sent through gRPC appears without a reload: title, keywords in order, page', async () => {
  firstMsgid = await sendOk({
    touser: DEMO_USER,
    template_id: COURSE,
    page: 'pages/course/detail?id=42',
    data: COURSE_DATA,
    miniprogram_state: 'MINIPROGRAM_STATE_TRIAL',
    lang: 'en_US',
  });
  const message = card(firstMsgid);
  await message.waitFor();
  await assertNotReloaded();
  assert.equal(await message.locator('.card-title').textContent(), '课程提醒');
  assert.deepEqual(await texts(message.locator('.kw-label')), ['学员', '上课时间', '老师']);
  assert.deepEqual(await texts(message.locator('.kw-value')), ['张三', '2019年10月1日 15:01', '李老师']);
  assert.equal(await message.locator('.card-link-text').textContent(), '进入小程序查看');
  assert.equal(await message.locator('.card-page').textContent(), 'pages/course/detail?id=42');
  assert.equal(await message.locator('.chip.state').textContent(), 'trial');
  assert.equal(await message.locator('.chip.lang').textContent(), 'en_US');
  // Every digit of a msgid above 2^53 survives the trip to the page.
  assert.equal(await message.locator('.chip.msgid').textContent(), `msgid ${firstMsgid}`);
  assert.match(await message.locator('.user-link').textContent(), new RegExp(DEMO_USER));
});

step('a second user\'s message joins the all-users inbox', async () => {
  const msgid = await sendOk({ touser: SECOND_USER, template_id: SHIPPED, page: 'pages/order/detail?id=SBX2019100100001', data: SHIPPED_DATA });
  await card(msgid).waitFor();
  assert.equal(await page.locator('.message').count(), 2);
  assert.deepEqual(await texts(card(msgid).locator('.kw-label')), ['订单号', '商品名称', '发货时间', '订单状态']);
  if (SCREENSHOT) {
    await page.waitForTimeout(1_500); // a few stats ticks for the chart
    await page.screenshot({ path: SCREENSHOT });
    console.log(`screenshot saved to ${SCREENSHOT}`);
  }
});

step('?openid= opens one user\'s inbox', async () => {
  await openConsole(`/sandbox/ui?openid=${DEMO_USER}`);
  assert.equal(await page.locator('#inbox-scope').textContent(), DEMO_USER);
  assert.equal(await page.locator('.message').count(), 1);
  await card(firstMsgid).waitFor();
  assert.equal(await page.locator('#openid-input').inputValue(), DEMO_USER);
  // Another user's message does not join this inbox: once the page's counters show the send,
  // its events have reached the page, and still one card.
  await sendOk({ touser: SECOND_USER, template_id: SHIPPED, data: SHIPPED_DATA });
  const { send_requests: sendRequests } = await control('GET', '/sandbox/stats');
  await waitForText(page.locator('[data-stat="send_requests"] dd'), String(sendRequests));
  assert.equal(await page.locator('.message').count(), 1);
});

step('reject in the page; the next send fails with 43101, listed with its cause', async () => {
  await page.locator('#template-select').selectOption(COURSE);
  await page.locator('#reject-btn').click();
  await page.locator(`#subscriptions li[data-template-id="${COURSE}"][data-state="rejected"]`).waitFor();
  const { subscriptions } = await control('GET', `/sandbox/subscriptions?openid=${DEMO_USER}`);
  assert.deepEqual(subscriptions.map((s) => [s.template_id, s.rejected]), [[COURSE, true]]);

  const answer = await send({ touser: DEMO_USER, template_id: COURSE, data: COURSE_DATA });
  assert.equal(answer.errcode, 43101, JSON.stringify(answer));
  const failure = page.locator('.failure[data-errcode="43101"]');
  await failure.waitFor();
  await assertNotReloaded();
  assert.match(await failure.locator('.failure-errmsg').textContent(), /^user refuse to accept the msg rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$/);
  assert.match(await failure.locator('.failure-cause').textContent(), /rejected this template/);
});

step('accept with a count in the page; a send uses one', async () => {
  await page.locator('#accept-count').fill('2');
  await page.locator('#accept-btn').click();
  const subscription = (state) => page.locator(`#subscriptions li[data-template-id="${COURSE}"][data-state="${state}"]`);
  await subscription('2 left').waitFor();
  const msgid = await sendOk({ touser: DEMO_USER, template_id: COURSE, data: COURSE_DATA });
  await card(msgid).waitFor();
  // No page: the card opens the mini program's home page.
  assert.equal(await card(msgid).locator('.card-page').textContent(), 'home page');
  await subscription('1 left').waitFor();
});

step('inject an errcode fault from the page and see it applied, counting down', async () => {
  await page.locator('#fault-errcode').fill('48001');
  await page.locator('#fault-times').fill('2');
  await page.locator('#fault-only-user').check();
  await page.locator('#inject-btn').click();
  await page.locator('#faults li[data-times="2"]').waitFor();
  const before = await control('GET', '/sandbox/faults');
  assert.equal(before.faults.length, 1);
  assert.equal(before.faults[0].errcode, 48001);
  assert.equal(before.faults[0].times, 2);
  assert.equal(before.faults[0].openid, DEMO_USER);

  const answer = await send({ touser: DEMO_USER, template_id: COURSE, data: COURSE_DATA });
  assert.equal(answer.errcode, 48001, JSON.stringify(answer));
  const failure = page.locator('.failure[data-errcode="48001"]');
  await failure.waitFor();
  assert.equal(await failure.locator('.tag').textContent(), 'injected');
  assert.match(await failure.locator('.failure-cause').textContent(), /^injected fault: /);
  await page.locator('#faults li[data-times="1"]').waitFor();
  await waitForText(page.locator('[data-stat="errcode_48001"] dd'), '1');
  await waitForText(page.locator('[data-stat="errcode_43101"] dd'), '1');
});

step('an HTTP status and latency fault from the page reaches the control API; clear removes it', async () => {
  await page.locator('#clear-faults-btn').click();
  await page.locator('#faults li.empty').waitFor();
  await page.locator('#fault-errcode').fill('');
  await page.locator('#fault-http-status').fill('503');
  await page.locator('#fault-latency').fill('20');
  await page.locator('#fault-times').fill('1');
  await page.locator('#inject-btn').click();
  await page.locator('#faults li[data-times="1"]').waitFor();
  const { faults } = await control('GET', '/sandbox/faults');
  assert.equal(faults.length, 1);
  assert.deepEqual(
    [faults[0].http_status, faults[0].latency_ms, faults[0].times, faults[0].errcode],
    [503, 20, 1, undefined],
  );
  await page.locator('#clear-faults-btn').click();
  await page.locator('#faults li.empty').waitFor();
  assert.deepEqual((await control('GET', '/sandbox/faults')).faults, []);
});

step('auto-accept and revoking tokens from the page go through the control API', async () => {
  await page.locator('#auto-accept').uncheck();
  await page.locator('#status').filter({ hasText: 'auto-accept off' }).waitFor();
  assert.equal((await control('GET', '/sandbox/auto-accept')).enabled, false);
  await page.locator('#auto-accept').check();
  await page.locator('#status').filter({ hasText: 'auto-accept on' }).waitFor();
  assert.equal((await control('GET', '/sandbox/auto-accept')).enabled, true);

  await page.locator('#revoke-btn').click();
  await page.locator('#status').filter({ hasText: 'revoked' }).waitFor();
  // The service's token is now refused (40001); it fetches a new one and the send goes through.
  const msgid = await sendOk({ touser: DEMO_USER, template_id: COURSE, data: COURSE_DATA });
  await card(msgid).waitFor();
  await page.locator('.failure[data-errcode="40001"]').waitFor();
});

step('values are shown as text, never run as HTML (script injection)', async () => {
  const imgValue = '<img src=x onerror=pwned=1>';
  const scriptValue = '<script>x=1</script>';
  const msgid = await sendOk({
    touser: DEMO_USER,
    template_id: SHIPPED,
    page: 'pages/x?a=<b>bold</b>',
    data: { ...SHIPPED_DATA, character_string1: imgValue, thing2: scriptValue },
  });
  const message = card(msgid);
  await message.waitFor();
  assert.deepEqual((await texts(message.locator('.kw-value'))).slice(0, 2), [imgValue, scriptValue]);
  assert.equal(await message.locator('.card-page').textContent(), 'pages/x?a=<b>bold</b>');
  assert.equal(await message.locator('img, script, b').count(), 0);

  // An errmsg is shown as text too (here an injected one, through the control API).
  await control('POST', '/sandbox/faults', { errcode: 48001, errmsg: '<img src=y onerror=pwned=2>', times: 1, openid: DEMO_USER });
  const answer = await send({ touser: DEMO_USER, template_id: SHIPPED, data: SHIPPED_DATA });
  assert.equal(answer.errcode, 48001, JSON.stringify(answer));
  const failure = page.locator('.failure').filter({ hasText: 'onerror=pwned=2' });
  await failure.waitFor();
  assert.match(await failure.locator('.failure-errmsg').textContent(), /^<img src=y onerror=pwned=2> rid: /);
  assert.equal(await page.locator('#inbox img, #failures img, #inbox script, #failures script').count(), 0);
  assert.equal(await page.evaluate(() => typeof window.pwned), 'undefined');
});

step('clear inbox and failures from the page', async () => {
  await page.locator('#clear-inbox-btn').click();
  await page.waitForFunction(() => document.querySelectorAll('.message, .failure').length === 0);
  assert.deepEqual((await control('GET', '/sandbox/inbox')).messages, []);
  assert.deepEqual((await control('GET', '/sandbox/failures')).failures, []);
  assert.equal(await page.locator('#inbox-empty').isVisible(), true);
});

step('a warning banner when the sandbox listens beyond loopback', async () => {
  // The page trusts the sandbox's own overview; here it is answered as an exposed sandbox would.
  const exposed = watch(await browser.newPage(), 'exposed console');
  await exposed.route((url) => url.pathname === '/sandbox/', async (route) => {
    const response = await route.fetch();
    const overview = await response.json();
    await route.fulfill({ response, json: { ...overview, listen: '0.0.0.0:8089', exposed: true } });
  });
  await exposed.goto(`${CONSOLE_URL}/`);
  await exposed.locator('#live[data-state="live"]').waitFor();
  const banner = exposed.locator('#exposed-banner');
  assert.equal(await banner.isVisible(), true);
  assert.match(await banner.textContent(), /listens on 0\.0\.0\.0:8089, not a loopback address/);
  await exposed.close();
});

step('the pages logged no JavaScript error', async () => {
  assert.deepEqual(pageErrors, []);
});

// ---- run ----

let failed = false;
for (const { name, run } of steps) {
  try {
    await run();
    console.log(`ok - ${name}`);
  } catch (error) {
    failed = true;
    console.log(`not ok - ${name}`);
    console.error(error);
    if (pageErrors.length) console.error(`page errors so far:\n${pageErrors.join('\n')}`);
    console.error(`the page's status line: ${await page.locator('#status').textContent().catch(() => '?')}`);
    if (FAILURE_SCREENSHOT) {
      await page.screenshot({ path: FAILURE_SCREENSHOT }).catch(() => {});
      console.error(`screenshot of the page saved to ${FAILURE_SCREENSHOT}`);
    }
    break;
  }
}
await browser.close();
client.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
process.exitCode = failed ? 1 : 0;
