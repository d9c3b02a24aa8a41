// The counters at a glance (GET /sandbox/stats, pushed once a second on /sandbox/events) and a
// hand-drawn chart of send requests per second over the last minute.

import { el, replaceChildren, svg } from './dom.js';

const $ = (id) => document.getElementById(id);

/** Seconds of history in the chart. */
const WINDOW = 60;
const CHART_WIDTH = 300;
const CHART_HEIGHT = 80;

export class StatsView {
  constructor() {
    this.rates = [];
    this.previous = null;
  }

  /** One counters snapshot; the rate is the change since the previous one. */
  update(stats) {
    const now = performance.now();
    if (this.previous) {
      const seconds = Math.max((now - this.previous.at) / 1000, 0.001);
      const sends = Math.max(stats.send_requests - this.previous.sends, 0);
      this.rates.push(sends / seconds);
      if (this.rates.length > WINDOW) this.rates.shift();
    }
    this.previous = { at: now, sends: stats.send_requests };
    this.renderNumbers(stats);
    this.renderChart();
  }

  renderNumbers(stats) {
    const rows = [];
    const row = (name, value, key) => rows.push(
      el('div', { class: 'stat', data: { stat: key } },
        el('dt', { text: name }),
        el('dd', { text: value })));

    const fetches = Object.entries(stats.token_fetches);
    if (fetches.length === 0) row('token fetches', '0', 'token_fetches');
    for (const [appid, f] of fetches) {
      const label = fetches.length > 1 ? `token fetches ${appid}` : 'token fetches';
      row(label, `${f.classic + f.stable} (classic ${f.classic}, stable ${f.stable}, forced ${f.force_refreshes})`, 'token_fetches');
    }
    row('send requests', String(stats.send_requests), 'send_requests');
    row('delivered (errcode 0)', String(stats.delivered), 'delivered');
    for (const [errcode, count] of Object.entries(stats.rejected)) {
      row(`errcode ${errcode}`, String(count), `errcode_${errcode}`);
    }
    if (stats.http_errors) row('HTTP errors', String(stats.http_errors), 'http_errors');
    row('in flight / most at once', `${stats.in_flight_sends} / ${stats.max_concurrent_sends}`, 'concurrency');
    for (const [appid, left] of Object.entries(stats.quotas_left || {})) {
      const parts = [];
      if (left.daily !== null && left.daily !== undefined) parts.push(`${left.daily} today (45009)`);
      if (left.minute !== null && left.minute !== undefined) parts.push(`${left.minute} this minute (45011)`);
      row(`quota left ${appid}`, parts.join(', '), 'quotas_left');
    }
    replaceChildren($('stats'), rows);
  }

  renderChart() {
    const chart = $('sends-chart');
    const max = Math.max(1, ...this.rates);
    const slot = CHART_WIDTH / WINDOW;
    // Newest on the right; missing history is empty on the left.
    const offset = WINDOW - this.rates.length;
    const bars = this.rates.map((rate, index) => {
      const height = (rate / max) * (CHART_HEIGHT - 4);
      return svg('rect', {
        class: 'bar',
        x: ((offset + index) * slot + 0.5).toFixed(2),
        y: (CHART_HEIGHT - height).toFixed(2),
        width: Math.max(slot - 1, 1).toFixed(2),
        height: height.toFixed(2),
      });
    });
    const baseline = svg('line', { class: 'baseline', x1: 0, y1: CHART_HEIGHT - 0.5, x2: CHART_WIDTH, y2: CHART_HEIGHT - 0.5 });
    replaceChildren(chart, [baseline, ...bars]);
    const last = this.rates.length ? this.rates[this.rates.length - 1] : 0;
    $('chart-max').textContent = `(now ${formatRate(last)}/s, peak ${formatRate(Math.max(0, ...this.rates))}/s)`;
  }
}

function formatRate(rate) {
  return rate >= 10 ? String(Math.round(rate)) : rate.toFixed(1);
}
