// The inbox as the phone shows it (service-notification cards) and the failed sends beside it.

import { el, formatTime, replaceChildren } from './dom.js';

/** Cards and failures kept on the page; older ones are left to the control API. */
export const SHOWN = 200;

/** A link to one user's inbox. */
export function userLink(openid) {
  const href = `/sandbox/ui?${new URLSearchParams({ openid })}`;
  return el('a', { class: 'user-link', href, title: 'open this user\'s inbox', text: openid });
}

/**
 * The keyword rows of a message in the template's order, each with its label from the
 * template's content (`学员:{{phrase1.DATA}}`). Without the template, the keys stand in.
 */
export function keywordRows(message, template) {
  const keywords = template ? template.keywords : Object.keys(message.data).map((key) => ({ key, label: key }));
  return keywords.map((keyword) =>
    el('div', { class: 'kw-row', data: { key: keyword.key } },
      el('dt', { class: 'kw-label', text: keyword.label || keyword.key }),
      el('dd', { class: 'kw-value', text: message.data[keyword.key] ?? '' })),
  );
}

/** One delivered message as a 服务通知 card. */
export function messageCard(message, template, showRecipient) {
  return el('article', {
    class: 'message',
    data: { msgid: message.msgid, openid: message.openid, templateId: message.template_id },
  },
  el('div', { class: 'timestamp', text: formatTime(message.time_unix_ms) }),
  el('div', { class: 'card' },
    el('div', { class: 'card-app' },
      el('span', { class: 'app-icon', 'aria-hidden': 'true' }),
      el('span', { class: 'app-name', text: message.appid })),
    el('div', { class: 'card-title', text: message.title }),
    el('dl', { class: 'card-keywords' }, ...keywordRows(message, template)),
    el('div', { class: 'card-link', title: 'the page the card opens' },
      el('span', { class: 'card-link-text', text: '进入小程序查看' }),
      el('span', { class: message.page ? 'card-page' : 'card-page none', text: message.page || 'home page' }),
      el('span', { class: 'chevron', 'aria-hidden': 'true' }))),
  el('div', { class: 'card-meta' },
    showRecipient ? el('span', { class: 'chip' }, 'to ', userLink(message.openid)) : null,
    el('span', { class: 'chip state', title: 'miniprogram_state', text: message.miniprogram_state }),
    el('span', { class: 'chip lang', title: 'lang', text: message.lang }),
    el('span', { class: 'chip msgid', title: 'msgid', text: `msgid ${message.msgid}` }),
    el('span', { class: 'chip template', title: 'template_id', text: message.template_id })));
}

/** One refused send: what was answered, and why in words. */
export function failureItem(failure) {
  const code = failure.errcode !== null && failure.errcode !== undefined ? String(failure.errcode) : `HTTP ${failure.http_status}`;
  return el('li', { class: 'failure', data: { errcode: failure.errcode, httpStatus: failure.http_status } },
    el('div', { class: 'failure-head' },
      el('span', { class: 'failure-errcode', text: code }),
      failure.injected ? el('span', { class: 'tag', text: 'injected' }) : null,
      el('span', { class: 'failure-time', text: formatTime(failure.time_unix_ms) })),
    el('div', { class: 'failure-errmsg', text: failure.errmsg ?? '(a body that is not JSON)' }),
    el('div', { class: 'failure-cause', text: failure.cause }),
    el('div', { class: 'failure-meta' },
      failure.openid ? userLink(failure.openid) : el('span', { text: 'no openid' }),
      failure.template_id ? el('span', { class: 'chip', text: failure.template_id }) : null));
}

/** The two lists, kept in step with the sandbox. */
export class InboxView {
  constructor({ openid, inbox, inboxEmpty, failures, failuresEmpty }) {
    this.openid = openid;
    this.nodes = { inbox, inboxEmpty, failures, failuresEmpty };
    this.templates = [];
    this.messages = [];
    this.failures = [];
  }

  /** True for an event about the user this page shows (every user without ?openid=). */
  concerns(openid) {
    return !this.openid || this.openid === openid;
  }

  setTemplates(templates) {
    this.templates = templates;
    this.renderMessages();
  }

  templateOf(message) {
    return this.templates.find((t) => t.id === message.template_id && (t.appids.length === 0 || t.appids.includes(message.appid)));
  }

  /** True when a message names a template the page has not loaded (added while running). */
  missingTemplate(message) {
    return !this.templateOf(message);
  }

  setMessages(messages) {
    this.messages = messages.slice(-SHOWN);
    this.renderMessages();
  }

  addMessage(message) {
    if (!this.concerns(message.openid) || this.messages.some((m) => m.msgid === message.msgid)) return;
    this.messages = [...this.messages, message].slice(-SHOWN);
    const inbox = this.nodes.inbox;
    const atBottom = inbox.scrollHeight - inbox.scrollTop - inbox.clientHeight < 40;
    this.renderMessages();
    if (atBottom) inbox.scrollTop = inbox.scrollHeight;
  }

  renderMessages() {
    const cards = this.messages.map((m) => messageCard(m, this.templateOf(m), !this.openid));
    replaceChildren(this.nodes.inbox, [this.nodes.inboxEmpty, ...cards]);
    this.nodes.inboxEmpty.hidden = cards.length > 0;
  }

  setFailures(failures) {
    this.failures = failures.slice(-SHOWN);
    this.renderFailures();
  }

  addFailure(failure) {
    if (!this.concerns(failure.openid)) return;
    const key = failureKey(failure);
    if (this.failures.some((f) => failureKey(f) === key)) return;
    this.failures = [...this.failures, failure].slice(-SHOWN);
    this.renderFailures();
  }

  renderFailures() {
    // Newest first: the one just caused is the one looked for.
    const items = this.failures.slice().reverse().map(failureItem);
    replaceChildren(this.nodes.failures, items);
    this.nodes.failuresEmpty.hidden = items.length > 0;
  }
}

/** Failures have no id; the errmsg's rid (random) makes this unique in practice. */
function failureKey(failure) {
  return [failure.time_unix_ms, failure.errcode, failure.errmsg, failure.http_status, failure.openid].join('|');
}
