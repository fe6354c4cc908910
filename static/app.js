// Show every <time datetime="..."> in the reader's local time; the UTC value stays in the title.
(function () {
  function localise(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.localised) return;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.title = el.title || when.toISOString().replace("T", " ").slice(0, 16) + " UTC";
      el.textContent = when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
      el.dataset.localised = "1";
    });
  }
  document.addEventListener("DOMContentLoaded", function () { localise(document); });
  document.addEventListener("htmx:afterSettle", function (event) { localise(event.target); });
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
  // Reject and Cancel ask first. The question sits on the button (data-confirm), since a form
  // may hold Approve beside Reject: htmx forms ask in htmx:confirm, plain forms on submit.
  function question(event) {
    var button = event && event.submitter;
    return button && button.dataset.confirm;
  }
  document.addEventListener("htmx:confirm", function (event) {
    var text = question(event.detail.triggeringEvent);
    if (!text) return;
    event.preventDefault();
    if (window.confirm(text)) event.detail.issueRequest(true);
  });
  document.addEventListener("submit", function (event) {
    if (event.target.hasAttribute("hx-post")) return;
    var text = question(event);
    if (text && !window.confirm(text)) event.preventDefault();
  });
  // Select-all checkbox for bulk decisions in the queue.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches("[data-select-all]")) return;
    document.querySelectorAll("input[name=request_ids]").forEach(function (el) { el.checked = box.checked; });
  });
})();
