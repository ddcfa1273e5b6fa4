// Starts the vendored asciinema-player on the live stream of [data-live] (CSP 'self':
// no inline script). The player reads the stream's output itself; this script also
// listens to the same EventSource for the "transfer", "done" and "full" events it ignores.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.getElementById("player");
    if (!el || !window.AsciinemaPlayer || !window.EventSource) { return; }
    var state = document.getElementById("live-state");
    var transfer = document.getElementById("live-transfer");
    var Native = window.EventSource;
    window.EventSource = function (url, options) {
      var source = new Native(url, options);
      source.addEventListener("transfer", function (event) {
        var lines = JSON.parse(event.data).lines || [];
        transfer.textContent = lines.length ? "Transferring: " + lines.join("; ") : "";
      });
      source.addEventListener("full", function (event) {
        var watchers = JSON.parse(event.data).watchers;
        state.textContent = "Not shown: " + watchers + " watchers follow this session " +
          "already, the most it allows. Reload the page when one of them has left.";
        source.close();
      });
      source.addEventListener("done", function (event) {
        var status = JSON.parse(event.data).status;
        state.textContent = "The session ended" +
          (status === null || status === undefined ? "." : " (exit status " + status + ").");
        transfer.textContent = "";
      });
      return source;
    };
    window.AsciinemaPlayer.create(
      { driver: "eventsource", url: el.getAttribute("data-live"), bufferTime: 0 },
      el,
      { fit: "width", autoPlay: true }
    );
  });
})();
