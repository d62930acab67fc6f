// protlm serve: submit the form through the JSON API (messages shown on the page) and follow a
// job's progress. Plain script, no library; served by the package (no CDN).
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }
  function showError(text) {
    var el = $("error");
    el.textContent = text;
    el.hidden = false;
  }

  var form = $("submit");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var file = $("file").files[0];
      var limit = parseInt(form.dataset.maxBytes, 10);
      if (file && file.size > limit) {
        showError(file.name + ": " + (file.size / 1048576).toFixed(1) + " MB; this server takes at most " +
                  form.dataset.maxMb + " MB per submission (split the file)");
        return;
      }
      var data = new FormData(form);
      if (!file) { data.delete("file"); }
      $("run").disabled = true;
      $("error").hidden = true;
      fetch("/api/jobs", {method: "POST", body: data}).then(function (r) {
        return r.json().then(function (body) { return {ok: r.ok, status: r.status, body: body}; },
                             function () { return {ok: false, status: r.status, body: {detail: r.statusText}}; });
      }).then(function (res) {
        if (res.ok) {
          window.location.href = res.body.links.page;
        } else {
          showError(res.body.detail || ("the server answered " + res.status));
          $("run").disabled = false;
        }
      }, function () {
        showError("the server could not be reached (or it closed the connection)");
        $("run").disabled = false;
      });
    });
  }

  var job = $("job");
  if (job) {
    var id = job.dataset.job;
    var poll = function () {
      fetch("/api/jobs/" + encodeURIComponent(id)).then(function (r) { return r.json(); }).then(function (j) {
        if (j.state === "done" || j.state === "failed" || j.state === "cancelled") {
          window.location.reload();
          return;
        }
        $("progress").max = Math.max(j.progress.total, 1);
        $("progress").value = j.progress.done;
        $("status").textContent = j.state + ": " + j.progress.done.toLocaleString() + " of " +
          j.progress.total.toLocaleString() + " residues" +
          (j.cancel_requested ? " (cancelling: it stops after the part it is on)" : "");
        setTimeout(poll, 1000);
      }, function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 500);
  }
})();
