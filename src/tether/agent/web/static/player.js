// Starts the vendored asciinema-player on [data-cast] (no inline script: CSP 'self').
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.getElementById("player");
    if (!el || !window.AsciinemaPlayer) { return; }
    window.AsciinemaPlayer.create(el.getAttribute("data-cast"), el, {
      fit: "width", idleTimeLimit: 2, autoPlay: true, preload: true
    });
  });
})();
