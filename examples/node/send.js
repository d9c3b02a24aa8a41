// Calls wechat-notify from Node: one message, a declined user (43101), one batch, a report.
//
// Run it against `cargo run -- serve --sandbox` (see README.md beside this file). The protos are
// loaded at run time from proto/notify/v1/ (notify.proto and subscriptions.proto beside it): no
// generated code.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The sandbox's demo user and one of its seed templates (docs/sandbox.md).
const DEMO_USER = 'o6_bmjrPTlm6_2sgVt7hMZOPfL2M';
// A second sandbox user, who declines the subscription below so that WeChat answers 43101.
const DECLINING_USER = 'oDecliningUser00000000000002';
const SECOND_USER = 'oSandboxUser0000000000000002';
const TEMPLATE = 'sandbox-course-reminder';
const COURSE_DATA = { phrase1: '王小二', date5: '2019年10月1日 15:01', phrase4: '李老师' };

// Every call gets a deadline: without one a call waits for ever on a stuck connection, and
// BatchSend uses it to stop starting new sends once it has passed.
const DEADLINE_MS = 10_000;

const { values: options } = parseArgs({
  options: {
    target: { type: 'string', default: process.env.NOTIFY_TARGET || 'localhost:50051' },
    'sandbox-url': { type: 'string', default: process.env.SANDBOX_URL || 'http://127.0.0.1:8089' },
    // Bearer token of a configured caller (docs/callers.md); prefer the env var, since
    // arguments show in the process list.
    token: { type: 'string', default: process.env.NOTIFY_TOKEN || '' },
    // Speak TLS trusting this CA (PEM); with cert and key, present a client certificate.
    'ca-file': { type: 'string', default: process.env.NOTIFY_CA_FILE || '' },
    'cert-file': { type: 'string', default: process.env.NOTIFY_CERT_FILE || '' },
    'key-file': { type: 'string', default: process.env.NOTIFY_KEY_FILE || '' },
    proto: {
      type: 'string',
      default:
        process.env.NOTIFY_PROTO || path.join(__dirname, '..', '..', 'proto', 'notify', 'v1', 'notify.proto'),
    },
  },
});

const protos = [options.proto, path.join(path.dirname(options.proto), 'subscriptions.proto')];
const definition = protoLoader.loadSync(protos, {
  keepCase: true, // field names as in the proto: template_id, idempotency_key
  longs: String, // msgid is a uint64 above 2^53: a JS number would round it
  enums: String,
  defaults: true, // absent fields read as their defaults (deduplicated: false, failed: 0)
});
const notify = grpc.loadPackageDefinition(definition).notify.v1;

/** The caller's bearer token as call metadata; empty when none is given. */
function callMetadata() {
  const metadata = new grpc.Metadata();
  if (options.token) {
    metadata.add('authorization', `Bearer ${options.token}`);
  }
  return metadata;
}

/** Plaintext, or TLS when a CA is given (mutual TLS with a client certificate). */
function channelCredentials() {
  if (!options['ca-file']) {
    return grpc.credentials.createInsecure();
  }
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(
    read(options['ca-file']),
    read(options['key-file']),
    read(options['cert-file']),
  );
}

/** Calls a unary method with a deadline and resolves with the response. */
function call(client, method, request) {
  const deadline = new Date(Date.now() + DEADLINE_MS);
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata(), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

function sendCourseReminder(client, touser, idempotencyKey) {
  return call(client, 'SendSubscribe', {
    touser,
    template_id: TEMPLATE,
    page: 'pages/course/detail?id=42',
    data: COURSE_DATA,
    // Derive the key from the event that causes the message (here: this run's course
    // reminder), never from the attempt, so that a retry after a timeout reuses it and the
    // service sends the message at most once.
    idempotency_key: idempotencyKey,
  });
}

/** The `wechat-errcode` trailer of a failed call, as a number, or undefined when WeChat gave none. */
function wechatErrcode(error) {
  const [value] = error.metadata ? error.metadata.get('wechat-errcode') : [];
  return value === undefined ? undefined : Number(value);
}

/**
 * Demo only: record in the sandbox that `openid` declined the template. In production this is
 * the user tapping "reject" in wx.requestSubscribeMessage; the sandbox otherwise auto-accepts
 * under `serve --sandbox`, so every send would be delivered.
 */
async function declineInSandbox(sandboxUrl, openid) {
  const response = await fetch(new URL('sandbox/subscriptions', sandboxUrl.replace(/\/?$/, '/')), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ openid, template_id: TEMPLATE, status: 'reject' }),
    signal: AbortSignal.timeout(DEADLINE_MS),
  });
  if (!response.ok) {
    throw new Error(`sandbox answered ${response.status}: ${await response.text()}`);
  }
}

async function main() {
  const client = new notify.NotifyService(options.target, channelCredentials());
  // Unique per run so that every run really sends; a real caller uses its own event id.
  const run = crypto.randomUUID().slice(0, 12);
  try {
    // 1. One message.
    const key = `course-42-reminder-${run}`;
    const sent = await sendCourseReminder(client, DEMO_USER, key);
    console.log(`sent: msgid=${sent.msgid} attempts=${sent.attempts} deduplicated=${sent.deduplicated}`);

    // A retry with the same key (say, after a timeout) is answered from the record.
    const again = await sendCourseReminder(client, DEMO_USER, key);
    console.log(`retried: msgid=${again.msgid} deduplicated=${again.deduplicated}`);

    // 2. A user who declined: FAILED_PRECONDITION with the trailer wechat-errcode: 43101.
    await declineInSandbox(options['sandbox-url'], DECLINING_USER);
    try {
      await sendCourseReminder(client, DECLINING_USER, `course-42-reminder-declined-${run}`);
      console.error('error: the declining user got the message');
      return 1;
    } catch (error) {
      const errcode = wechatErrcode(error);
      if (error.code !== grpc.status.FAILED_PRECONDITION || errcode !== 43101) {
        throw error;
      }
      // Not retryable: the user must subscribe again in the mini program first.
      console.log(`not subscribed: code=${grpc.status[error.code]} wechat-errcode=${errcode}`);
    }

    // 3. One template to many users: one result per recipient, in request order.
    const batch = await call(client, 'BatchSend', {
      template_id: TEMPLATE,
      data: { date5: '2019年10月1日 15:01', phrase4: '李老师' },
      recipients: [
        { touser: DEMO_USER, data: { phrase1: '王小二' } },
        { touser: SECOND_USER, data: { phrase1: '李小三' }, page: 'pages/me' },
      ],
      idempotency_key: `course-42-batch-${run}`,
    });
    for (const result of batch.results) {
      if (result.code === grpc.status.OK) {
        console.log(`  ${result.touser}: msgid=${result.msgid}`);
      } else {
        console.log(`  ${result.touser}: code=${result.code} wechat-errcode=${result.wechat_errcode} ${result.message}`);
      }
    }
    console.log(`batch: succeeded=${batch.succeeded} failed=${batch.failed}`);

    // 4. What the mini program got from wx.requestSubscribeMessage, forwarded by its backend
    // as is: the service then knows this user may get one course reminder.
    const ledger = new notify.SubscriptionService(options.target, channelCredentials());
    try {
      const reportingUser = `oReportingUser-${run}`;
      const wxResult = { errMsg: 'requestSubscribeMessage:ok', [TEMPLATE]: 'accept' };
      const recorded = await call(ledger, 'RecordSubscriptions', { openid: reportingUser, results: wxResult });
      for (const entry of recorded.subscriptions) {
        console.log(`recorded: template=${entry.template_id} status=${entry.status} remaining=${entry.remaining}`);
      }
      const known = await call(ledger, 'GetSubscriptions', { openid: reportingUser });
      for (const entry of known.subscriptions) {
        console.log(`known: template=${entry.template_id} kind=${entry.kind} source=${entry.source} remaining=${entry.remaining}`);
      }
    } finally {
      ledger.close();
    }
    return 0;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(`error: ${error.code !== undefined ? `${grpc.status[error.code]}: ` : ''}${error.details || error.message}`);
    process.exitCode = 1;
  },
);
