// Loaded in <head> so the saved palette applies before the first paint (no inline script: CSP).
(function () {
  var saved = null;
  try { saved = localStorage.getItem("bridgescope-theme"); } catch (e) { /* private mode */ }
  if (saved === "dark" || saved === "light") document.documentElement.dataset.theme = saved;
  document.addEventListener("DOMContentLoaded", function () {
    var btn = document.getElementById("theme-toggle");
    if (!btn) return;
    btn.addEventListener("click", function () {
      var dark = document.documentElement.dataset.theme
        ? document.documentElement.dataset.theme === "dark"
        : window.matchMedia("(prefers-color-scheme: dark)").matches;
      var next = dark ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      try { localStorage.setItem("bridgescope-theme", next); } catch (e) { /* ignore */ }
      document.dispatchEvent(new CustomEvent("bridgescope:theme", { detail: next }));
    });
  });
})();
