// atrest console: the only script. Copy buttons and live progress of jobs.
// Everything works without it; it adds no content of its own.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.copy[data-copy]")) {
    b.addEventListener("click", async () => {
      const el = document.getElementById(b.dataset.copy);
      if (!el) return;
      try {
        await navigator.clipboard.writeText(el.value ?? el.textContent);
        b.textContent = "Copied";
      } catch (_) {
        el.select();
        b.textContent = "Press Ctrl+C";
      }
    });
  }
  // <input type=file data-base64-into=ID>: the chosen file, in base64,
  // into the textarea ID (the form sends the textarea, never the file).
  for (const f of document.querySelectorAll("input[type=file][data-base64-into]")) {
    f.addEventListener("change", async () => {
      const into = document.getElementById(f.dataset.base64Into);
      if (!into || !f.files.length) return;
      const bytes = new Uint8Array(await f.files[0].arrayBuffer());
      let bin = "";
      for (let i = 0; i < bytes.length; i += 0x8000) {
        bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      }
      into.value = btoa(bin);
    });
  }
  // <progress data-job="ID">: polls the job until it ends, then reloads.
  for (const p of document.querySelectorAll("progress[data-job]")) {
    const label = document.getElementById(p.id + "-text");
    const poll = async () => {
      try {
        const r = await fetch("/console/jobs/" + encodeURIComponent(p.dataset.job) + "/progress", { credentials: "same-origin" });
        if (!r.ok) return;
        const j = await r.json();
        if (j.total > 0) { p.max = j.total; p.value = j.done; }
        if (label) label.textContent = j.text;
        if (j.finished) { setTimeout(() => location.reload(), 500); return; }
      } catch (_) { /* try again */ }
      setTimeout(poll, 1000);
    };
    poll();
  }
});
