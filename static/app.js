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
  // Select-all checkbox for bulk decisions in the queue.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches("[data-select-all]")) return;
    document.querySelectorAll("input[name=request_ids]").forEach(function (el) { el.checked = box.checked; });
  });
})();
