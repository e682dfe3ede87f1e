// The boot page: a navigation carries no session header, so the server answered with this
// page (no data, no secret). Find this tab's session, then fetch the real page with it and
// show it in place. The first visit trades the access token in the URL for a session, and
// the token leaves the address bar at once: it is never sent again.
(function () {
  const session = window.bridgescopeSession;
  const box = document.getElementById("boot");
  const message = document.getElementById("boot-message");
  const EXPIRED = "This tab's session has expired or the dashboard was restarted. ";
  const SIGN_IN = ["Open the URL that ", ["code", "bridgescope serve"], " printed (it ends in ",
    ["code", "?token=…"], ") in this tab."];

  function say(state, parts) {
    box.dataset.state = state;
    message.replaceChildren(...parts.map((p) => {
      if (typeof p === "string") return p;
      const node = document.createElement(p[0]);
      node.textContent = p[1];
      return node;
    }));
  }

  async function exchange(token) {
    const resp = await fetch("/auth/session", {
      method: "POST", credentials: "omit", headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    });
    return resp.ok ? (await resp.json()).session : null;
  }

  function show(resp, text) {
    const type = resp.headers.get("Content-Type") || "";
    if (type.startsWith("text/html")) {
      document.open();
      document.write(text);
      document.close();
      return;
    }
    const pre = document.createElement("pre");
    pre.textContent = text;
    document.body.replaceChildren(pre);
  }

  async function main() {
    const url = new URL(window.location.href);
    const token = url.searchParams.get("token");
    let sid;
    if (token !== null) {
      url.searchParams.delete("token");
      window.history.replaceState(null, "", url);
      sid = await exchange(token);
      if (!sid) { say("signed-out", ["This access token is not the dashboard's. ", ...SIGN_IN]); return; }
      session.set(sid);
    } else {
      const expired = session.wasSignedOut();
      sid = session.id() || (expired ? null : await session.askOtherTabs());
      if (expired && !sid) { say("signed-out", [EXPIRED, ...SIGN_IN]); return; }
      if (!sid) {
        say("signed-out", ["This tab has no session. ", ...SIGN_IN,
          " A link opened from a tab of the dashboard works as long as that tab stays open."]);
        return;
      }
      session.set(sid);
    }
    if (box.dataset.stream) session.openEarly(box.dataset.stream);
    const resp = await fetch(url, { credentials: "same-origin", headers: session.headers({ Accept: "text/html" }) });
    if (resp.status === 401) {
      session.clear();
      say("signed-out", [EXPIRED, ...SIGN_IN]);
      return;
    }
    show(resp, await resp.text());
  }

  main().catch((err) => say("signed-out", [`The dashboard did not answer (${err.message}). Reload to try again.`]));
})();
