// Tether's pages: the few live bits that need a script (no inline code, CSP 'self').
// - every POST htmx sends carries the page's CSRF token (from <meta name="csrf-token">);
// - [data-until="ISO time"] elements count down ("3h 02m 10s") every second;
// - [data-copy="element id"] buttons copy that element's text to the clipboard.
(function () {
  "use strict";
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  function span(seconds) {
    if (seconds <= 0) { return "0s"; }
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    var m = Math.floor(seconds % 3600 / 60), s = Math.floor(seconds % 60);
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    if (d > 0) { return d + "d " + h + "h " + two(m) + "m"; }
    if (h > 0) { return h + "h " + two(m) + "m " + two(s) + "s"; }
    if (m > 0) { return m + "m " + two(s) + "s"; }
    return s + "s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-until]").forEach(function (el) {
      var until = Date.parse(el.getAttribute("data-until"));
      if (!isNaN(until)) { el.textContent = span(Math.round((until - now) / 1000)); }
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    var text = source.value !== undefined ? source.value : source.textContent;
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { source.select && source.select(); });
    } else if (source.select) {
      source.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* selected: Ctrl-C works */ }
    }
  });
})();
