// Show every <time datetime="..."> in the reader's local time; the UTC value stays in the title.
(function () {
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.localised || el.hasAttribute("data-countdown")) return;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.title = el.title || when.toISOString().replace("T", " ").slice(0, 16) + " UTC";
      el.textContent = when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
      el.dataset.localised = "1";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSettle", function (event) { localise(event.target); });

  // "next try in about 8 s": counted down from the seconds the server computed when it rendered
  // the panel (not from the datetime, so a skewed client clock cannot mislead), until "now".
  function countDown() {
    document.querySelectorAll("time[data-countdown]").forEach(function (el) {
      if (!el.dataset.deadline) el.dataset.deadline = Date.now() + 1000 * Number(el.dataset.countdown);
      var left = Math.round((Number(el.dataset.deadline) - Date.now()) / 1000);
      el.textContent = left > 0 ? "in about " + left + " s" : "now";
    });
  }
  setInterval(countDown, 1000);
  // A refusal (4xx) is swapped in by htmx (base.html's responseHandling); a failure of the
  // server or the network is not, so say it in the message area instead of doing nothing.
  function tell(text) {
    var area = document.getElementById("messages");
    if (!area) return;
    var line = document.createElement("p");
    line.className = "flash flash--error";
    line.setAttribute("role", "alert");
    line.textContent = text;
    area.replaceChildren(line);
  }
  document.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr && event.detail.xhr.status >= 500) {
      tell("The server could not finish that (" + event.detail.xhr.status + "). Nothing was half-done; try again.");
    }
  });
  document.addEventListener("htmx:sendError", function () {
    tell("The server did not answer. Check your connection and try again.");
  });
  // The request panel polls for changes; a poll never swaps away a comment being written or
  // a button in focus: it waits, and the next poll after the reviewer is done brings the news.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var panel = event.detail.elt;
    if (!panel.hasAttribute || !panel.hasAttribute("data-live-panel")) return;
    var typed = Array.prototype.some.call(panel.querySelectorAll("textarea, input[type=password]"), function (el) {
      return el.value.trim() !== "";
    });
    if (typed || panel.contains(document.activeElement) && document.activeElement.matches("textarea, input, button")) {
      event.preventDefault();
    }
  });
  // Select-all checkbox for bulk decisions in the queue.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches("[data-select-all]")) return;
    document.querySelectorAll("input[name=request_ids]").forEach(function (el) { el.checked = box.checked; });
  });
  // The bulk decision box shows once a request is selected (or when it carries an error);
  // without JavaScript it is always there.
  function bulkBox() {
    var boxEl = document.querySelector("[data-bulk-box]");
    if (!boxEl) return;
    var any = document.querySelector("input[name=request_ids]:checked");
    boxEl.hidden = !any && !boxEl.querySelector("#bulk-errors");
  }
  document.addEventListener("DOMContentLoaded", bulkBox);
  document.addEventListener("change", function (event) {
    if (event.target.matches("input[name=request_ids], [data-select-all]")) bulkBox();
  });
  // A button with data-confirm asks before it submits (CSP allows no inline handlers).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
  });
  // After a swap, focus lands on the part that changed, so keyboard and screen-reader users follow.
  document.addEventListener("htmx:afterSwap", function (event) {
    var region = event.detail.target;
    // Only the queue's regions: a polling status fragment must not pull focus every few seconds.
    if (!region || ["queue-rows", "queue-form"].indexOf(region.id) < 0) return;
    var errors = region.querySelector("#bulk-errors");
    var focusable = errors || region;
    if (!focusable.hasAttribute("tabindex")) focusable.setAttribute("tabindex", "-1");
    bulkBox();
    focusable.focus();
  });
})();
