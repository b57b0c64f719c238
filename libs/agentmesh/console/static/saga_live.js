// Follows a running saga: appends each event WatchSaga sends (as server-rendered
// <li> rows) to the timeline and updates the state badge. The page works without
// this script; it only saves the reloads.
(function () {
  "use strict";
  var list = document.getElementById("timeline");
  if (!list || !list.dataset.stream || !window.EventSource) { return; }
  var badge = document.getElementById("saga-state");
  var note = document.getElementById("live-status");
  var cancel = document.getElementById("cancel-form");
  var last = Number(list.dataset.after || "0");
  var source = new EventSource(list.dataset.stream + "?after=" + last);
  note.textContent = "Following the saga live.";
  source.addEventListener("saga-event", function (msg) {
    var ev = JSON.parse(msg.data);
    if (ev.sequence <= last) { return; }   // already on the page
    last = ev.sequence;
    list.insertAdjacentHTML("beforeend", ev.html);
    badge.textContent = ev.state;
    badge.className = "state state-" + ev.state;
  });
  source.addEventListener("end", function (msg) {
    source.close();
    var state = JSON.parse(msg.data).state;
    // The badge too: the page may have been rendered with the saga's state
    // read just before its last events, which then are not sent again.
    badge.textContent = state;
    badge.className = "state state-" + state;
    note.textContent = "The saga has ended: " + state + ".";
    if (cancel) { cancel.remove(); }
    // The steps table and the facts were rendered with the page: take the
    // final ones from a fresh render of it.
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        ["steps", "facts"].forEach(function (id) {
          var now = document.getElementById(id), next = fresh.getElementById(id);
          if (now && next) { now.replaceWith(next); }
        });
      })
      .catch(function () { /* the timeline is already final; the table waits for a reload */ });
  });
  source.addEventListener("mesh-error", function (msg) {
    source.close();
    var err = JSON.parse(msg.data);
    note.textContent = "Live updates stopped: " + err.code + ": " + err.message;
  });
})();
