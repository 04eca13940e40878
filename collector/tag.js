/* Crumb tag: page views, engaged time and custom events. Served minified, no build step.
 * Commands: crumb.push(['init', {site, collector, categories?, spa?, segments?, sync?}]),
 * ['track', type, props], ['segments', callback]. Once consent is known it sets the page's
 * googletag targeting and Prebid ortb2.user.data from /v1/segments (unless segments: false) and
 * loads the ID sync frame (unless sync: false). What it sends: docs/collector-wire.md. */
(() => {
  'use strict';
  const w = window, d = document, nav = navigator;
  const MAX_BATCH = 100, MAX_BYTES = 64000; // the collector takes at most 100 events and 64 KB a POST
  const ID = /^[0-9a-f]{32}$/;

  let cfg = null, queue = [], timer = 0;
  let ready = true;   // false until the CMP has the user's choice: nothing is sent, no cookie touched
  let consent = {};
  let fpId = '';      // _crumb, or '' without consent or cookies
  let pv = null;      // the current page view: {id, url}
  let shownMs = 0;    // its visible time not reported yet
  let shownAt = 0;    // performance.now() when it last became visible; 0 while the clock is stopped
  let waiting = [];   // what runs once consent is known
  let sync = 0;       // the ID sync frame: 1 wanted, 2 scheduled

  // Every way into the tag goes through this: it must never throw into the page.
  const safe = f => function () { try { return f.apply(this, arguments); } catch (e) { /* ignored */ } };

  const cookie = name => (d.cookie.match(new RegExp('(?:^|;\\s*)' + name + '=([^;]*)')) || [])[1] || '';
  const optedOut = () => cookie('crumb_optout') === '1';
  const visible = () => d.visibilityState === 'visible';
  const random = () => crypto.getRandomValues(new Uint8Array(16));
  const hex = bytes => Array.from(bytes, b => (b | 256).toString(16).slice(1)).join('');

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID(); // only in secure contexts
    const b = random();
    b[6] = b[6] & 15 | 64; // version 4
    b[8] = b[8] & 63 | 128; // RFC 4122 variant
    return hex(b).replace(/(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
  }

  // Read (or create) _crumb and write it back, so its 396 days roll from the last visit.
  function firstPartyId() {
    const id = ID.test(cookie('_crumb')) ? cookie('_crumb') : hex(random());
    d.cookie = '_crumb=' + id + '; path=/; max-age=34214400; SameSite=Lax' +
      (location.protocol === 'https:' ? '; Secure' : '');
    return cookie('_crumb') === id ? id : ''; // cookies may be blocked
  }

  // The collector rejects a whole batch for one bad field, so events are made valid here.
  const cut = (s, n) => s.length > n ? Array.from(s).slice(0, n).join('') : s; // whole code points

  function cleanProps(props) {
    const out = {};
    Object.keys(props || {}).slice(0, 50).forEach(k => {
      const v = props[k], t = typeof v;
      if (!k || k.length > 64) return;
      if (t === 'string') out[k] = cut(v, 512);
      else if (t === 'boolean' || t === 'number' && isFinite(v)) out[k] = v; // NaN would be JSON null
    });
    return out;
  }

  function add(type, fields) {
    if (queue.length >= 1000) queue.shift(); // a CMP that never answers must not grow memory forever
    const e = Object.assign({
      event_id: uuid(), ts: Date.now(), type, url: location.href.slice(0, 2048), referrer: '',
      categories: [], engaged_ms: 0, props: {},
    }, fields);
    e.referrer = e.referrer.slice(0, 2048);
    queue.push(e);
    if (!timer) timer = setTimeout(safe(flush), 300); // batch what the page does in one go
    return e;
  }

  // -- page views and engaged time

  function pageview(referrer) {
    pv = {url: location.href, id: add('pageview', {referrer, categories: cfg.categories}).event_id};
    shownMs = 0;
    shownAt = visible() ? performance.now() : 0;
  }

  // Reports the visible time not reported yet and stops the clock (becoming visible restarts it):
  // a page hidden and shown again sends one engagement per hiding; their sum is the total.
  function engagement() {
    if (shownAt) shownMs += performance.now() - shownAt;
    shownAt = 0; // stopped even if pagehide comes while still 'visible'
    const ms = Math.min(Math.round(shownMs), 86400000);
    if (!pv || ms < 1) return;
    shownMs = 0;
    add('engagement', {engaged_ms: ms, props: {pageview_id: pv.id}});
  }

  function hidden() {
    engagement();
    flush(); // the page may never run a timer again
  }

  // A fragment change is an in-page jump, not a navigation, unless it looks like a route (#/, #!).
  const route = u => u.replace(/#(?![!/]).*$/, '');

  function navigated() {
    if (!pv || route(location.href) === route(pv.url)) return;
    engagement();
    pageview(pv.url);
  }

  // -- sending

  function flush() {
    clearTimeout(timer);
    timer = 0;
    if (!cfg || !ready) return;
    if (optedOut()) { queue = []; return; }
    while (queue.length) {
      let n = Math.min(queue.length, MAX_BATCH), json = body(queue.slice(0, n));
      while (size(json) > MAX_BYTES && n > 1) json = body(queue.slice(0, n >>= 1)); // halve until it fits
      const events = queue.splice(0, n);
      if (size(json) <= MAX_BYTES) post(json, events); // else a single event too big to send: dropped
    }
  }

  const size = s => new Blob([s]).size; // in bytes, as the collector counts

  function body(events) {
    const b = {site: cfg.site};
    if (fpId) b.fp_id = fpId;
    if (Object.keys(consent).length) b.consent = consent;
    b.events = events;
    return JSON.stringify(b);
  }

  function post(json, events) {
    const url = cfg.collector + '/e', fallback = () => events.forEach(pixel);
    if (sync === 1) {
      sync = 2;
      setTimeout(safe(syncFrame), 1000);
    }
    if (nav.sendBeacon) {
      // text/plain keeps the request "simple": no CORS preflight, and it survives page unload.
      if (!nav.sendBeacon(url, new Blob([json], {type: 'text/plain'}))) fallback();
    } else if (w.fetch) {
      fetch(url, {method: 'POST', body: json, keepalive: true, credentials: 'include',
        headers: {'content-type': 'text/plain'}}).catch(safe(fallback));
    } else fallback();
  }

  // The same event as a GET /p.gif: the same event_id, so a batch that did arrive counts once.
  function pixel(e) {
    const f = Object.assign({
      site: cfg.site, event_id: e.event_id, type: e.type, ts: e.ts, url: e.url, ref: e.referrer,
      fp_id: fpId, cat: e.categories.join(), engaged_ms: e.engaged_ms || '',
    }, consent), q = new URLSearchParams();
    for (const k in e.props) f['pr.' + k] = e.props[k];
    for (const k in f) if (f[k] !== '') q.append(k, f[k]);
    new Image().src = cfg.collector + '/p.gif?' + q;
  }

  // -- start-up and consent

  function start() {
    if (nav.globalPrivacyControl === true) consent.gpc = 1;
    safe(usPrivacy)(); // a broken CMP stub must not stop the rest
    safe(tcf)();
    pageview(d.referrer);
    d.addEventListener('visibilitychange', safe(() => {
      if (!visible()) hidden();
      else if (!shownAt) shownAt = performance.now();
    }));
    addEventListener('pagehide', safe(hidden));
    whenReady(activate); // once per page load, when consent is known
    if (cfg.spa) {
      const push = history.pushState;
      history.pushState = function () {
        const r = push.apply(this, arguments);
        safe(navigated)();
        return r;
      };
      addEventListener('popstate', safe(navigated));
    }
  }

  function usPrivacy() {
    if (!w.__uspapi) return;
    w.__uspapi('getUSPData', 1, safe((data, ok) => {
      if (ok !== false && data && /^1[YN-]{3}$/.test(data.uspString)) consent.us_privacy = data.uspString;
    }));
  }

  function tcf() {
    if (typeof w.__tcfapi !== 'function') {
      fpId = firstPartyId();
      return;
    }
    ready = false;
    w.__tcfapi('addEventListener', 2, safe((tc, ok) => {
      if (!ok || !tc || !/^(tcloaded|useractioncomplete)$/.test(tc.eventStatus)) return;
      consent.gdpr = tc.gdprApplies ? 1 : 0;
      if (tc.tcString) consent.gdpr_consent = tc.tcString;
      // Without Purpose 1 (store/access on a device) we create no first-party ID.
      const store = !tc.gdprApplies || !!(tc.purpose && tc.purpose.consents && tc.purpose.consents[1]);
      fpId = store ? firstPartyId() : '';
      ready = true;
      consented(); // first: the batch flushed next is the one the sync frame waits for
      flush();
    }));
  }

  // -- once consent is known: segments into the page's ad stack, and the ID sync frame

  function consented() {
    const run = waiting;
    waiting = [];
    run.forEach(f => safe(f)());
  }

  const whenReady = f => ready ? safe(f)() : waiting.push(f);

  function consentQuery(q) {
    ['gdpr', 'gdpr_consent', 'gpc', 'us_privacy'].forEach(k => { if (k in consent) q.append(k, consent[k]); });
    return q;
  }

  // GET /v1/segments in a form (json, openrtb, gam) with the consent signals, the cookie included.
  function lookup(format, done) {
    if (!w.fetch || optedOut()) return done(null);
    fetch(cfg.collector + '/v1/segments?' + consentQuery(new URLSearchParams({format})), {credentials: 'include'})
      .then(r => r.ok ? r.json() : null).catch(() => null).then(safe(done));
  }

  function activate() {
    if (optedOut()) return;
    const gt = w.googletag, pb = w.pbjs;
    if (cfg.segments && gt && gt.cmd && gt.cmd.push) lookup('gam', kv => kv && gt.cmd.push(safe(() => {
      for (const k in kv) gt.pubads().setTargeting(k, kv[k]);
    })));
    if (cfg.segments && pb && pb.que && pb.que.push) lookup('openrtb', r => r && r.user && pb.que.push(safe(() => {
      const o = (pb.getConfig && pb.getConfig('ortb2')) || {}, u = o.user || {};
      const data = (u.data || []).filter(x => x.name !== 'crumb').concat(r.user.data);
      const c = {ortb2: Object.assign({}, o, {user: Object.assign({}, u, {data})})};
      if (pb.mergeConfig) pb.mergeConfig(c); else pb.setConfig(c);
    })));
    if (cfg.sync && !sync) sync = 1; // loaded after the first batch: its answer gives a new browser its crumb_id
  }

  function syncFrame() {
    if (optedOut()) return;
    if (!d.body) return d.addEventListener('DOMContentLoaded', safe(syncFrame), {once: true});
    const f = d.createElement('iframe');
    f.width = f.height = '0';
    f.style.display = 'none';
    f.title = 'crumb';
    f.src = cfg.collector + '/sync/frame?' + consentQuery(new URLSearchParams());
    d.body.appendChild(f);
  }

  // -- commands

  const commands = {
    init(o) {
      if (cfg || !o || !o.site || !o.collector || optedOut()) return;
      cfg = {
        site: String(o.site),
        collector: String(o.collector).replace(/\/+$/, ''),
        categories: [].concat(o.categories || []).map(String).filter(c => /^[A-Za-z0-9]{1,16}$/.test(c)).slice(0, 20),
        spa: o.spa !== false,
        segments: o.segments !== false,
        sync: o.sync !== false,
      };
      if (d.prerendering) d.addEventListener('prerenderingchange', safe(start), {once: true}); // unseen yet
      else start();
    },
    track(type, props) {
      if (optedOut()) return; // before init too: the events wait in the queue for it
      if (type === 'pageview') return navigated(); // a manual page view for a site with spa: false
      if (typeof type === 'string' && type !== 'engagement' && /^[A-Za-z0-9_.:-]{1,64}$/.test(type)) {
        add(type, {props: cleanProps(props)});
      }
    },
    segments(cb) {
      const done = v => safe(cb)(v);
      if (!cfg || optedOut()) return done(null);
      whenReady(() => lookup('json', done));
    },
  };

  const run = safe(cmd => commands[cmd[0]] && commands[cmd[0]].apply(null, cmd.slice(1)));

  try {
    const earlier = w.crumb;
    if (earlier && !Array.isArray(earlier)) return; // loaded twice: the first copy runs
    w.crumb = {push() { Array.prototype.forEach.call(arguments, run); }};
    (earlier || []).forEach(run);
  } catch (e) { /* ignored */ }
})();
