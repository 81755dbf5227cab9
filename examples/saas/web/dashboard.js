// The usage dashboard of the saas demo. It fetches the signed-in user's
// usage from /me/dashboard.json?days=30 (quota.UsageHandler) and renders
// a card per action, the warning states and a daily chart. Plain
// JavaScript, no build step and no library.
//
// DEMO ONLY: the user comes from ?user= and is sent as the bearer token,
// as the demo's subject function expects. A real app's page relies on
// its session cookie instead.
//
// Warning states follow the level of each action that the plan limits
// (not the unlimited ones, nor those the plan does not include, whose
// limit is 0):
//   warning  (>= 80 %)  a toast,
//   critical (>= 90 %)  a banner,
//   exceeded (>= 100 %) a banner and a modal with the upgrade prompt.
// Shown elements are in the DOM; hidden ones are absent or carry the
// hidden attribute, so a DOM dump shows what a user sees.
'use strict';

(() => {
  const DAYS = 30;

  // What the demo's actions are called, and their unit.
  const ACTIONS = {
    'diagram.upload': { label: 'Diagram uploads', noun: 'diagram uploads' },
    'ai.analysis': { label: 'AI analyses', noun: 'AI analyses' },
    'procedure.view': { label: 'Procedure views', noun: 'procedure views' },
    'export.pdf': { label: 'PDF exports', noun: 'PDF exports' },
    'export.dxf': { label: 'DXF exports', noun: 'DXF exports' },
    'api.call': { label: 'API calls', noun: 'API calls' },
    'storage.bytes': { label: 'Storage', noun: 'storage', bytes: true },
    'team.seats': { label: 'Team seats', noun: 'team seats' },
  };
  const THIS_PERIOD = { hour: 'this hour', day: 'today', week: 'this week', month: 'this month', year: 'this year' };
  const LAST_PERIOD = { hour: 'Last hour', day: 'Yesterday', week: 'Last week', month: 'Last month', year: 'Last year' };

  const byId = (id) => document.getElementById(id);
  const upgrades = JSON.parse(byId('upgrades').textContent || '{}');
  const numbers = new Intl.NumberFormat('en-US');

  // el creates an HTML element with attributes and children.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    e.append(...children);
    return e;
  }

  // svg creates an SVG element with attributes and children.
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    e.append(...children);
    return e;
  }

  function describe(action) {
    return ACTIONS[action] || { label: action, noun: action };
  }

  // amount formats n in the unit of action: bytes in binary units.
  function amount(action, n) {
    if (!describe(action).bytes) return numbers.format(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
    let v = Math.abs(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    const s = i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : 1).replace(/\.0$/, '');
    return `${n < 0 ? '-' : ''}${s} ${units[i]}`;
  }

  function percent(p) {
    if (p > 0 && p < 1) return '< 1 %';
    return `${Math.floor(p)} %`;
  }

  function dateIn(tz, iso, withTime) {
    const opts = { timeZone: tz, day: 'numeric', month: 'short', year: 'numeric' };
    if (withTime) Object.assign(opts, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    return new Intl.DateTimeFormat('en-GB', opts).format(new Date(iso));
  }

  // isoDay returns the YYYY-MM-DD of iso in tz.
  function isoDay(tz, iso) {
    return new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date(iso));
  }

  function shortDay(tz, iso) {
    return new Intl.DateTimeFormat('en-GB', { timeZone: tz, day: 'numeric', month: 'short' }).format(new Date(iso));
  }

  // kind says how a card shows an action: its plan does not include it
  // (limit 0), does not limit it (-1), or meters it.
  function kind(a) {
    if (a.limit === 0) return 'locked';
    if (a.limit < 0) return 'unlimited';
    return 'metered';
  }

  function upgradeMessage(plan, action) {
    return upgrades[`${plan}/${action}`] || 'Upgrade your plan for more.';
  }

  function resetText(a, tz) {
    if (a.period === 'none') return 'Allocation: it does not reset';
    if (!a.reset_at) return '';
    const withTime = a.period === 'hour' || a.period === 'day';
    return `Resets on ${dateIn(tz, a.reset_at, withTime)}`;
  }

  function previousText(a) {
    if (a.period === 'none' || !a.limits || !a.previous) return '';
    const i = a.limits.findIndex((l) => l.period === a.period);
    const prev = a.previous[i];
    if (!prev || !LAST_PERIOD[a.period]) return '';
    return `${LAST_PERIOD[a.period]}: ${amount(a.action, prev.used)}`;
  }

  function card(a, plan, tz) {
    const k = kind(a);
    const level = k === 'metered' ? a.level : k;
    const info = describe(a.action);
    const c = el('article', { class: `card level-${level}`, 'data-testid': 'usage-card', 'data-action': a.action, 'data-level': level });
    const head = el('header', {}, el('h3', {}, info.label));
    if (k === 'metered') head.append(el('span', { class: 'badge', 'data-testid': 'usage-percent' }, percent(a.percent)));
    c.append(head);
    if (k === 'locked') {
      c.append(
        el('p', { class: 'figures', 'data-testid': 'usage-figures' }, 'Not in your plan'),
        el('p', { class: 'hint', 'data-testid': 'usage-upgrade' }, upgradeMessage(plan, a.action)),
      );
      return c;
    }
    if (k === 'unlimited') {
      c.append(
        el('p', { class: 'figures', 'data-testid': 'usage-figures' }, `${amount(a.action, a.used)} used`),
        el('p', { 'data-testid': 'usage-remaining' }, 'Unlimited'),
      );
    } else {
      const shown = Math.min(100, Math.max(0, a.percent));
      const fill = el('div', { class: 'fill' });
      fill.style.width = `${shown}%`;
      c.append(
        el('div', {
          class: 'bar', role: 'progressbar', 'aria-label': `${info.label} used`, 'data-testid': 'usage-bar',
          'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(Math.floor(shown)),
        }, fill),
        el('p', { class: 'figures', 'data-testid': 'usage-figures' }, `${amount(a.action, a.used)} / ${amount(a.action, a.limit)}`),
        el('p', { 'data-testid': 'usage-remaining' }, `${amount(a.action, a.remaining)} left`),
      );
    }
    const reset = resetText(a, tz);
    if (reset) c.append(el('p', { class: 'muted', 'data-testid': 'usage-reset' }, reset));
    const prev = previousText(a);
    if (prev) c.append(el('p', { class: 'muted', 'data-testid': 'usage-previous' }, prev));
    return c;
  }

  function dismissible(node) {
    const close = el('button', { type: 'button', 'aria-label': 'Dismiss' }, '×');
    close.addEventListener('click', () => node.remove());
    node.append(close);
    return node;
  }

  function renderWarnings(metered, plan, tz) {
    const toasts = byId('toasts');
    const banners = byId('banners');
    const list = byId('modal-limits');
    const modal = byId('limit-modal');
    toasts.replaceChildren();
    banners.replaceChildren();
    list.replaceChildren();
    const exceeded = [];
    for (const a of metered) {
      const info = describe(a.action);
      const when = THIS_PERIOD[a.period] ? ` ${THIS_PERIOD[a.period]}` : '';
      const reset = resetText(a, tz);
      const figures = `${amount(a.action, a.used)} of ${amount(a.action, a.limit)}`;
      const attrs = { 'data-action': a.action, 'data-level': a.level };
      switch (a.level) {
        case 'warning':
          toasts.append(dismissible(el('div', { class: 'toast', role: 'status', 'data-testid': 'toast', ...attrs },
            el('span', {}, `You have used ${percent(a.percent)} of your ${info.noun}${when}: ${figures}.`))));
          break;
        case 'critical':
          banners.append(dismissible(el('div', { class: 'banner level-critical', role: 'alert', 'data-testid': 'banner', ...attrs },
            el('span', {}, `Almost at your limit: ${percent(a.percent)} of your ${info.noun}${when} used (${figures}). ${reset ? `${reset}.` : ''}`.trim()))));
          break;
        case 'exceeded':
          banners.append(el('div', { class: 'banner level-exceeded', role: 'alert', 'data-testid': 'banner', ...attrs },
            el('span', {}, `You have used all your ${info.noun}${when} (${figures}). ${reset ? `${reset}.` : ''}`.trim())));
          list.append(el('li', { 'data-action': a.action },
            el('strong', {}, `${info.label}: ${figures}`),
            el('p', { 'data-testid': 'upgrade-prompt' }, upgradeMessage(plan, a.action))));
          exceeded.push(a);
          break;
      }
    }
    if (exceeded.length > 0) {
      if (!modal.open) modal.showModal();
    } else if (modal.open) {
      modal.close();
    }
  }

  // chartAction picks the action the chart shows first: the most used
  // metered one, else the one used most often in the days.
  function chartAction(metered, daily) {
    let best = null;
    for (const a of metered) if (a.percent > 0 && (!best || a.percent > best.percent)) best = a;
    if (best && daily.some((s) => s.action === best.action)) return best.action;
    let top = daily[0];
    const count = (s) => s.points.reduce((n, p) => n + p.count, 0);
    for (const s of daily) if (count(s) > count(top)) top = s;
    return top.action;
  }

  function drawChart(series, tz) {
    const W = 640, H = 220, L = 56, R = 8, T = 12, B = 28;
    const points = series.points;
    const info = describe(series.action);
    const max = Math.max(1, ...points.map((p) => p.amount));
    const total = points.reduce((n, p) => n + p.amount, 0);
    const plotW = W - L - R;
    const plotH = H - T - B;
    const step = plotW / points.length;
    const barW = Math.max(1, step * 0.72);
    const chart = svg('svg', {
      viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-testid': 'usage-chart', 'data-action': series.action,
      'aria-label': `${info.label} per day over the last ${points.length} days: ${amount(series.action, total)} in total`,
    });
    chart.append(
      svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
      svg('text', { class: 'tick', x: L - 6, y: T + 8, 'text-anchor': 'end' }, amount(series.action, max)),
      svg('text', { class: 'tick', x: L - 6, y: H - B, 'text-anchor': 'end' }, '0'),
    );
    points.forEach((p, i) => {
      const h = (Math.max(0, p.amount) / max) * plotH;
      const last = i === points.length - 1;
      chart.append(svg('rect', {
        class: last ? 'bar-rect today' : 'bar-rect', 'data-testid': 'chart-bar',
        'data-day': isoDay(tz, p.start), 'data-amount': p.amount, 'data-count': p.count,
        x: (L + i * step + (step - barW) / 2).toFixed(2), y: (H - B - h).toFixed(2),
        width: barW.toFixed(2), height: h.toFixed(2),
      }, svg('title', {}, `${shortDay(tz, p.start)}: ${amount(series.action, p.amount)}`)));
    });
    for (const i of [0, Math.floor(points.length / 2), points.length - 1]) {
      if (i < 0 || i >= points.length) continue;
      const x = L + i * step + step / 2;
      const anchor = i === 0 ? 'start' : i === points.length - 1 ? 'end' : 'middle';
      const at = i === 0 ? L + i * step : i === points.length - 1 ? L + (i + 1) * step : x;
      chart.append(svg('text', { class: 'tick', x: at.toFixed(2), y: H - 8, 'text-anchor': anchor },
        i === points.length - 1 ? 'Today' : shortDay(tz, points[i].start)));
    }
    const first = points[0];
    const lastDay = points[points.length - 1];
    byId('chart').replaceChildren(chart, el('figcaption', {},
      `${info.label} per day, ${shortDay(tz, first.start)} to ${shortDay(tz, lastDay.start)} (days in ${tz}).`));
  }

  function renderChart(daily, metered, tz) {
    const section = byId('chart-section');
    if (daily.length === 0) {
      section.hidden = true;
      return;
    }
    const select = byId('chart-action');
    select.replaceChildren(...daily.map((s) => el('option', { value: s.action }, describe(s.action).label)));
    select.value = chartAction(metered, daily);
    const draw = () => drawChart(daily.find((s) => s.action === select.value) || daily[0], tz);
    select.onchange = draw;
    draw();
    section.hidden = false;
  }

  function renderFeatures(features) {
    const list = byId('features');
    list.replaceChildren(...features.map((f) => {
      const words = f.replace(/_/g, ' ');
      return el('li', { 'data-feature': f }, words.charAt(0).toUpperCase() + words.slice(1));
    }));
    if (features.length === 0) list.append(el('li', {}, 'No extra features on this plan'));
    byId('features-section').hidden = false;
  }

  function setState(state, message) {
    document.body.dataset.state = state;
    byId('status').textContent = message;
  }

  function render(data) {
    const tz = data.time_zone || 'UTC';
    byId('whoami').textContent = `${data.subject} · ${data.plan} plan`;
    const actions = data.actions || [];
    const metered = actions.filter((a) => kind(a) === 'metered');
    // What the plan includes first, in the report's order; then the rest.
    const included = actions.filter((a) => kind(a) !== 'locked');
    const locked = actions.filter((a) => kind(a) === 'locked');
    const cards = [...included, ...locked].map((a) => card(a, data.plan, tz));
    byId('cards').replaceChildren(...cards);
    renderWarnings(metered, data.plan, tz);
    renderChart(data.daily || [], metered, tz);
    renderFeatures(data.features || []);
    setState('ready', `As of ${dateIn(tz, data.at, true)} (${tz}).`);
  }

  async function load(user) {
    let res;
    try {
      res = await fetch(`/me/dashboard.json?days=${DAYS}`, {
        headers: { Authorization: `Bearer ${user}` },
        cache: 'no-store',
      });
    } catch (e) {
      setState('error', 'The usage service cannot be reached; try again later.');
      return;
    }
    if (res.status === 401) {
      setState('signed-out', `There is no user "${user}" in this demo.`);
      return;
    }
    if (!res.ok) {
      let detail = '';
      try {
        detail = (await res.json()).detail || '';
      } catch (e) {
        // not a problem document
      }
      setState('error', `Usage is not available right now (${res.status}). ${detail}`.trim());
      return;
    }
    render(await res.json());
  }

  byId('modal-close').addEventListener('click', () => byId('limit-modal').close());
  const user = (new URLSearchParams(window.location.search).get('user') || '').trim();
  if (user === '') {
    setState('signed-out', 'Sign in with a demo user (alice, bob or carol) to see your usage.');
    return;
  }
  byId('user').value = user;
  load(user).catch(() => setState('error', 'The usage could not be shown.'));
})();
