// The batches and admin tabs: the kept batches (GET /v1/batches, output files fetched with the
// key and saved), and the workers, queues and model loading of /admin (ADMIN_TOKEN).

import { auth, call, getJSON } from "./api.js";

const $ = (id) => document.getElementById(id);

function row(...cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.append(cell ?? "");
    tr.append(td);
  }
  return tr;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

export function initBatches(app) {
  $("batches-refresh").addEventListener("click", () => loadBatches(app));
  app.onTab("batches", () => loadBatches(app));
}

async function loadBatches(app) {
  try {
    const list = await getJSON("/v1/batches?limit=100");
    const rows = list.data.map((b) =>
      row(
        b.id,
        b.status,
        b.endpoint,
        `${b.request_counts.completed}/${b.request_counts.total}`,
        String(b.request_counts.failed),
        new Date(b.created_at * 1000).toLocaleString(),
        b.output_file_id ? button("download", () => download(app, b.output_file_id, `${b.id}.jsonl`)) : "",
      ),
    );
    $("batches-table").tBodies[0].replaceChildren(...rows);
    $("batches-empty").hidden = rows.length > 0;
  } catch (e) {
    app.showError(e.message);
  }
}

async function download(app, fileId, name) {
  try {
    const blob = await (await call(`/v1/files/${fileId}/content`)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    app.showError(e.message);
  }
}

export function initAdmin(app) {
  $("admin-token").value = auth.admin;
  $("admin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.admin = $("admin-token").value.trim();
    loadStatus(app);
  });
  $("load-form").addEventListener("submit", (e) => {
    e.preventDefault();
    load(app);
  });
  app.onTab("admin", () => loadStatus(app));
}

async function loadStatus(app) {
  try {
    const status = await getJSON("/admin/status", { admin: true });
    app.clearError();
    $("workers-table").tBodies[0].replaceChildren(
      ...status.workers.map((w) =>
        row(w.name, w.model, w.kind, w.error ? `${w.state}: ${w.error}` : w.state, `${w.active_jobs}/${w.capacity}`,
          String(w.tokens_per_s), button("unload", () => unload(app, w.model))),
      ),
    );
    $("queues-table").tBodies[0].replaceChildren(...status.queues.map((q) => row(q.name, String(q.queued), String(q.running))));
  } catch (e) {
    app.showError(`${e.message}${e.status === 401 || e.status === 403 ? " — give the admin token above" : ""}`);
  }
}

async function load(app) {
  const params = new URLSearchParams({ model_path: $("load-path").value.trim(), wait: "0" });
  if ($("load-kind").value) params.set("kind", $("load-kind").value);
  $("load-status").textContent = "loading…";
  try {
    const answer = await (await call(`/admin/load?${params}`, { method: "POST", admin: true })).json();
    $("load-status").textContent = answer.status || "asked";
    setTimeout(() => { loadStatus(app); app.refreshModels(); }, 1000);
  } catch (e) {
    $("load-status").textContent = "";
    app.showError(e.message);
  }
}

async function unload(app, model) {
  try {
    await call(`/admin/unload?${new URLSearchParams({ model_path: model, wait: "0" })}`, { method: "POST", admin: true });
    setTimeout(() => { loadStatus(app); app.refreshModels(); }, 1000);
  } catch (e) {
    app.showError(e.message);
  }
}
