// Vantage page instrumentation. Registered with DevTools'
// Page.addScriptToEvaluateOnNewDocument, so it runs before the page's own
// scripts in every document. It records what the page's code did — every
// fetch/XHR with its outcome, JavaScript errors, unhandled rejections,
// console errors, LCP and CLS — in window.__vantage, which the agent reads
// and drains after each step. It never changes a request (no headers added:
// that would alter CORS preflights and so the very behaviour under test).
(() => {
  if (window.__vantage) return;
  const v = (window.__vantage = {
    requests: [],
    errors: [],
    console: [],
    lcp: null,
    cls: 0,
    timeOrigin: performance.timeOrigin,
  });
  const MAX = 500;
  const push = (list, item) => {
    if (list.length < MAX) list.push(item);
  };
  const abs = (u) => {
    try {
      return new URL(u, location.href).href;
    } catch (_) {
      return String(u);
    }
  };

  const origFetch = window.fetch;
  if (origFetch) {
    window.fetch = function (input, init) {
      const url = abs(input && input.url ? input.url : input);
      const method = String((init && init.method) || (input && input.method) || 'GET').toUpperCase();
      const rec = { kind: 'fetch', url, method, start: performance.now(), end: null, status: null, error: null };
      push(v.requests, rec);
      return origFetch.apply(this, arguments).then(
        (r) => {
          rec.status = r.status;
          rec.end = performance.now();
          return r;
        },
        (e) => {
          rec.error = String((e && e.message) || e);
          rec.end = performance.now();
          throw e;
        },
      );
    };
  }

  const XHR = window.XMLHttpRequest;
  if (XHR) {
    const open = XHR.prototype.open;
    const send = XHR.prototype.send;
    XHR.prototype.open = function (method, url) {
      this.__vantage = { kind: 'xhr', url: abs(url), method: String(method || 'GET').toUpperCase(), start: null, end: null, status: null, error: null };
      return open.apply(this, arguments);
    };
    XHR.prototype.send = function () {
      const rec = this.__vantage;
      if (rec) {
        rec.start = performance.now();
        push(v.requests, rec);
        this.addEventListener('loadend', () => {
          rec.end = performance.now();
          if (this.status) rec.status = this.status;
          else rec.error = 'network error';
        });
      }
      return send.apply(this, arguments);
    };
  }

  window.addEventListener('error', (e) => {
    // Resource load errors (img, script) bubble here too; keep script errors.
    if (e && e.message) push(v.errors, { message: e.message, source: e.filename || '', line: e.lineno || 0 });
  });
  window.addEventListener('unhandledrejection', (e) => {
    const r = e && e.reason;
    push(v.errors, { message: 'unhandled rejection: ' + String((r && r.message) || r), source: '', line: 0 });
  });
  const consoleError = console.error;
  console.error = function () {
    try {
      push(v.console, Array.prototype.map.call(arguments, (a) => (a && a.message) || String(a)).join(' ').slice(0, 500));
    } catch (_) {}
    return consoleError.apply(this, arguments);
  };

  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) v.lcp = e.startTime;
    }).observe({ type: 'largest-contentful-paint', buffered: true });
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) if (!e.hadRecentInput) v.cls += e.value;
    }).observe({ type: 'layout-shift', buffered: true });
  } catch (_) {}
})();
