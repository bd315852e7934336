// reelfleet console: live rows for the jobs page, and "select all" for dead letters.
// Served from the binary as a file of its own: the CSP allows no inline script.
(function () {
  "use strict";
  var rows = document.querySelector("tbody[data-refresh]");
  if (rows) {
    var every = 5000;
    var tick = function () {
      fetch(rows.getAttribute("data-refresh"), { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) {
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.text();
        })
        .then(function (html) { rows.innerHTML = html; })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { setTimeout(tick, every); });
    };
    setTimeout(tick, every);
  }
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=select]").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
