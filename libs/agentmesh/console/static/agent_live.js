// Appends each heartbeat the registry records for this agent (server-rendered
// rows from /agents/<id>/stream), newest first, keeping the last 300.
(function () {
  "use strict";
  var body = document.querySelector("#heartbeats tbody");
  if (!body || !body.dataset.stream || !window.EventSource) { return; }
  var caption = document.getElementById("heartbeats-caption");
  var source = new EventSource(body.dataset.stream);
  caption.textContent = "Heartbeats while this page is open";
  source.addEventListener("heartbeat", function (msg) {
    body.insertAdjacentHTML("afterbegin", JSON.parse(msg.data).html);
    while (body.rows.length > 300) { body.deleteRow(-1); }
  });
  ["end", "mesh-error"].forEach(function (kind) {
    source.addEventListener(kind, function (msg) {
      source.close();
      var err = JSON.parse(msg.data);
      caption.textContent = err.code ? "Heartbeats stopped: " + err.code + ": " + err.message
                                     : "Heartbeats stopped; reload to follow again";
    });
  });
})();
