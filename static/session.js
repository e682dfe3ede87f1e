// This tab's session: a secret kept in sessionStorage, which belongs to this origin (scheme,
// host and port) and this tab alone, sent as a header with every request the page makes. No
// cookie carries anything: browsers send a 127.0.0.1 cookie to every port of 127.0.0.1.
// Loaded in <head> of the boot page and of every page, before htmx (no inline script: CSP).
(function () {
  const KEY = "bridgescope-session";
  const EXPIRED = "bridgescope-session-expired";
  const HEADER = "X-Bridgescope-Session";
  const CHANNEL = "bridgescope-session";  // BroadcastChannel: same-origin documents only
  const ASK_MS = 600;
  const EARLY_MS = 10000;  // a stream asked for early that no page takes by then is closed

  function make() {
    const read = () => { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } };
    const write = (sid) => { try { sessionStorage.setItem(KEY, sid); } catch (e) { /* private mode */ } };
    const clear = () => { try { sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ } };
    const channel = "BroadcastChannel" in window ? new BroadcastChannel(CHANNEL) : null;
    // A tab opened from a link starts with empty sessionStorage: it asks the open tabs.
    if (channel) channel.onmessage = (evt) => {
      const sid = read();
      if (evt.data && evt.data.ask && sid) channel.postMessage({ session: sid });
    };

    function askOtherTabs() {
      if (!channel) return Promise.resolve(null);
      return new Promise((resolve) => {
        const ask = new BroadcastChannel(CHANNEL);
        const done = (sid) => { ask.close(); resolve(sid); };
        const timer = setTimeout(() => done(null), ASK_MS);
        ask.onmessage = (evt) => {
          if (evt.data && typeof evt.data.session === "string") { clearTimeout(timer); done(evt.data.session); }
        };
        ask.postMessage({ ask: true });
      });
    }

    function headers(extra) {
      const sid = read();
      return sid ? { ...(extra || {}), [HEADER]: sid } : { ...(extra || {}) };
    }

    // The server forgot this session (expired, or it restarted): start over on the boot page,
    // which then says so.
    function signOut() {
      clear();
      try { sessionStorage.setItem(EXPIRED, "1"); } catch (e) { /* ignore */ }
      window.location.reload();
    }

    function wasSignedOut() {
      try { const was = sessionStorage.getItem(EXPIRED); sessionStorage.removeItem(EXPIRED); return !!was; } catch (e) { return false; }
    }

    async function authFetch(url, options) {
      const opts = options || {};
      if (new URL(String(url), window.location.href).origin !== window.location.origin) {
        throw new Error(`the session goes to this dashboard only, not to ${url}`);
      }
      const resp = await fetch(url, { ...opts, credentials: "same-origin", headers: headers(opts.headers) });
      if (resp.status === 401 && read()) signOut();
      return resp;
    }

    return { HEADER, id: read, set: write, clear, askOtherTabs, headers, fetch: authFetch, signOut, wasSignedOut,
      eventStream, openEarly };
  }

  // ---- Server-Sent Events over fetch (EventSource cannot send a header) -------------------------

  function parseBlock(block) {
    let event = "message", id = null;
    const data = [];
    for (const raw of block.split("\n")) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (!line || line.startsWith(":")) continue;  // a comment: hello, keepalive
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "event") event = value;
      else if (name === "data") data.push(value);
      else if (name === "id") id = value;
    }
    return { event, id, data: data.length ? data.join("\n") : null };
  }

  async function readEvents(body, onMessage) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const msg = parseBlock(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        onMessage(msg);
      }
    }
  }

  // A stream asked for before the page that reads it is shown (boot.js asks for the dashboard's
  // while it fetches the page): the server's first answer, the whole graph, is then already here
  // when the page's script connects, rather than asked for only once its scripts have run.
  let early = null;

  // Asked without the sign-out on a 401 the session's fetch does: the boot page, fetching the
  // page at the same time, is the one that tells an expired session (the page that takes a 401
  // here signs out then).
  function openEarly(url) {
    const ctl = new AbortController();
    const response = fetch(url, {
      headers: window.bridgescopeSession.headers({ Accept: "text/event-stream" }), credentials: "same-origin",
      signal: ctl.signal, cache: "no-store",
    });
    response.catch(() => { /* whoever takes it sees the failure */ });
    const timer = setTimeout(() => { if (early && early.ctl === ctl) { early = null; ctl.abort(); } }, EARLY_MS);
    early = { url, ctl, response, timer };
  }

  // The early answer for this url, once (then aborted with `signal`), or null.
  function takeEarly(url, signal) {
    if (!early || early.url !== url) return null;
    const { ctl, response, timer } = early;
    early = null;
    clearTimeout(timer);
    signal.addEventListener("abort", () => ctl.abort());
    return response;
  }

  // One live stream: calls on.open when it answers, on.event(name, data) per message, on.down
  // when it breaks, and reconnects with backoff (1 s doubling to 15 s), sending Last-Event-ID.
  // restart() drops it and connects at once; close() ends it for good.
  function eventStream(url, on) {
    let current = null, lastId = null, retryMs = 1000, timer = null;

    async function run(ctl) {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      try {
        const asked = lastId === null ? takeEarly(url, ctl.signal) : null;
        const resp = await (asked || window.bridgescopeSession.fetch(url, { headers: extra, signal: ctl.signal, cache: "no-store" }));
        if (resp.status === 401) {  // signed out: the page goes back to the boot page
          if (asked) window.bridgescopeSession.signOut();
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        retryMs = 1000;
        on.open();
        await readEvents(resp.body, (msg) => {
          if (msg.id !== null) lastId = msg.id;
          if (msg.data !== null) on.event(msg.event, msg.data);
        });
      } catch (err) {
        if (ctl.signal.aborted) return;
      }
      if (current !== ctl) return;
      on.down();
      timer = setTimeout(() => { if (current === ctl) start(); }, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }

    function start() {
      if (current) current.abort();
      clearTimeout(timer);
      current = new AbortController();
      run(current);
    }

    start();
    return {
      restart() { lastId = null; start(); },
      close() { clearTimeout(timer); if (current) current.abort(); current = null; },
    };
  }

  const session = window.bridgescopeSession || make();  // the boot page's, after document.write
  window.bridgescopeSession = session;

  document.addEventListener("htmx:config:request", (evt) => {
    Object.assign(evt.detail.ctx.request.headers, session.headers());
  });
  document.addEventListener("htmx:after:request", (evt) => {
    const resp = evt.detail && evt.detail.ctx && evt.detail.ctx.response;
    if (resp && resp.status === 401 && session.id()) session.signOut();
  });
})();
