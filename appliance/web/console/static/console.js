// mdm-appliance console: progressive enhancement only; every page works without this file.
// 1. Elements with data-poll="URL" are refreshed from URL's JSON {pending, html} until nothing is pending.
// 2. A checkbox with data-select-all="NAME" ticks every checkbox named NAME.
// 3. A select with data-autosubmit submits its form when changed (the form has a button for no-JS use).
(function () {
  "use strict";
  var POLL_MS = 1500, POLL_FOR_MS = 10 * 60 * 1000;

  function poll(element) {
    var url = element.getAttribute("data-poll"), started = Date.now();
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (state) {
          if (state === null) { return; }
          element.innerHTML = state.html;  // server-rendered, escaped by the template engine
          if (state.pending > 0 && Date.now() - started < POLL_FOR_MS) { setTimeout(tick, POLL_MS); }
          else { element.setAttribute("data-poll-done", "1"); }
        })
        .catch(function () { setTimeout(tick, POLL_MS * 4); });
    }
    setTimeout(tick, POLL_MS);
  }

  function selectAll(box) {
    var name = box.getAttribute("data-select-all");
    box.addEventListener("change", function () {
      document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (other) {
        other.checked = box.checked;
      });
    });
  }

  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { if (select.value) { select.form.submit(); } });
  });
  document.querySelectorAll("[data-poll]").forEach(poll);
  document.querySelectorAll("[data-select-all]").forEach(selectAll);
  document.querySelectorAll(".js-only").forEach(function (element) { element.hidden = false; });
})();
