// The buttons that play the user (wx.requestSubscribeMessage's answers) and WeChat's bad days
// (faults, revoked tokens). Each calls one control route, as curl would (docs/sandbox.md).

import { api } from './api.js';
import { el, replaceChildren } from './dom.js';

const $ = (id) => document.getElementById(id);

/** A number field's value, or undefined when empty. */
function numberOf(input) {
  const text = input.value.trim();
  return text === '' ? undefined : Number(text);
}

export class Controls {
  /** `onOpenInbox(openid)` navigates; `status(text, isError)` reports an outcome. */
  constructor({ openid, onOpenInbox }) {
    this.apps = [];
    this.templates = [];
    this.onOpenInbox = onOpenInbox;
    $('openid-input').value = openid;
    this.wire();
  }

  get openid() {
    return $('openid-input').value.trim();
  }

  /** The chosen app; undefined with one app, where the sandbox picks it. */
  get appid() {
    return this.apps.length > 1 ? $('app-select').value : undefined;
  }

  setApps(apps) {
    this.apps = apps;
    $('app-row').hidden = apps.length < 2;
    replaceChildren($('app-select'), apps.map((appid) => el('option', { value: appid, text: appid })));
    this.renderTemplates();
  }

  setTemplates(templates) {
    this.templates = templates;
    this.renderTemplates();
  }

  renderTemplates() {
    const select = $('template-select');
    const chosen = select.value;
    const appid = this.appid;
    const mine = this.templates.filter((t) => !appid || t.appids.length === 0 || t.appids.includes(appid));
    replaceChildren(select, mine.map((t) =>
      el('option', { value: t.id, text: `${t.title} (${t.id}, ${t.kind})` })));
    if (mine.some((t) => t.id === chosen)) select.value = chosen;
  }

  status(text, isError = false) {
    const status = $('status');
    status.textContent = text;
    status.classList.toggle('error', isError);
  }

  /** Runs a control call, reports its outcome, and refreshes what it may have changed. */
  async act(describe, action) {
    try {
      const answer = await action();
      this.status(describe(answer));
    } catch (error) {
      this.status(error.message, true);
    }
    await this.refresh();
  }

  wire() {
    $('open-inbox-btn').addEventListener('click', () => this.onOpenInbox(this.openid));
    $('openid-input').addEventListener('change', () => this.refresh());
    $('app-select').addEventListener('change', () => {
      this.renderTemplates();
      this.refresh();
    });

    const subscribe = (status) => {
      const request = {
        appid: this.appid,
        openid: this.openid,
        template_id: $('template-select').value,
        status,
      };
      if (status === 'accept') request.count = numberOf($('accept-count')) ?? 1;
      return this.act(
        (s) => (s.rejected
          ? `${s.openid} rejected ${s.template_id}: sends answer 43101`
          : `${s.openid} accepted ${s.template_id}: ${s.long_term ? 'long-term' : `${s.one_time_remaining} left`}`),
        () => api.subscribe(request),
      );
    };
    $('accept-btn').addEventListener('click', () => subscribe('accept'));
    $('reject-btn').addEventListener('click', () => subscribe('reject'));

    $('auto-accept').addEventListener('change', (event) => {
      const enabled = event.target.checked;
      this.act((a) => `auto-accept ${a.enabled ? 'on' : 'off'}`, () => api.setAutoAccept(enabled));
    });

    $('inject-btn').addEventListener('click', () => {
      const endpoint = $('fault-endpoint').value;
      const fault = {
        endpoint,
        errcode: numberOf($('fault-errcode')),
        http_status: numberOf($('fault-http-status')),
        latency_ms: numberOf($('fault-latency')),
        times: numberOf($('fault-times')),
        appid: this.appid,
      };
      if ($('fault-only-user').checked) fault.openid = this.openid;
      this.act((answer) => `fault ${answer.id} injected`, () => api.injectFault(fault));
    });
    $('clear-faults-btn').addEventListener('click', () =>
      this.act((a) => `${a.cleared} fault(s) cleared`, () => api.clearFaults()));

    $('revoke-btn').addEventListener('click', () =>
      this.act((a) => `${a.revoked} token(s) of ${a.appid} revoked: they answer 40001`, () => api.revokeTokens(this.appid)));
    $('clear-inbox-btn').addEventListener('click', () =>
      this.act((cleared) => `cleared ${cleared[0].cleared} message(s) and ${cleared[1].cleared} failure(s)`,
        () => Promise.all([api.clearInbox(), api.clearFailures()])));
  }

  /** Reads the user's subscriptions, auto-accept and the faults again. */
  async refresh() {
    try {
      const [subscriptions, autoAccept, faults] = await Promise.all([
        this.openid ? api.subscriptions(this.openid) : { subscriptions: [] },
        api.autoAccept(),
        api.faults(),
      ]);
      this.renderSubscriptions(subscriptions.subscriptions);
      $('auto-accept').checked = autoAccept.enabled;
      this.renderFaults(faults.faults);
    } catch (error) {
      this.status(error.message, true);
    }
  }

  renderSubscriptions(subscriptions) {
    const appid = this.appid;
    const items = subscriptions
      .filter((s) => !appid || s.appid === appid)
      .map((s) => {
        const template = this.templates.find((t) => t.id === s.template_id);
        let state;
        if (s.rejected) state = 'rejected';
        else if (s.long_term) state = 'long-term';
        else state = `${s.one_time_remaining} left`;
        return el('li', { class: 'subscription', data: { templateId: s.template_id, state } },
          el('span', { text: template ? template.title : s.template_id }),
          el('span', { class: s.rejected ? 'tag bad' : 'tag', text: state }));
      });
    replaceChildren($('subscriptions'), items.length ? items : [el('li', { class: 'empty', text: 'No subscription recorded for this openid.' })]);
  }

  renderFaults(faults) {
    const items = faults.map((fault) => {
      const parts = [fault.endpoint];
      if (fault.errcode !== undefined) parts.push(`errcode ${fault.errcode}`);
      if (fault.http_status !== undefined) parts.push(`HTTP ${fault.http_status}`);
      if (fault.latency_ms !== undefined) parts.push(`${fault.latency_ms} ms`);
      if (fault.openid) parts.push(`only ${fault.openid}`);
      const left = fault.times === undefined ? 'until cleared' : `${fault.times} left`;
      return el('li', { class: 'fault', data: { id: fault.id, times: fault.times } },
        el('span', { text: parts.join(', ') }),
        el('span', { class: 'tag', text: left }));
    });
    replaceChildren($('faults'), items.length ? items : [el('li', { class: 'empty', text: 'No fault injected.' })]);
  }
}
