// The documents tab: upload a PDF (or a page image) to /v1/documents with the vision model
// picked above, follow its pages, then read the result as Markdown or JSON.

import { ApiError, call, getJSON } from "./api.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ENDED = new Set(["completed", "failed", "canceled"]);
let current = null;

export function initDocuments(app) {
  $("doc-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submit(app);
  });
  $("doc-cancel").addEventListener("click", async () => {
    if (current) await call(`/v1/documents/${current}`, { method: "DELETE" }).catch((e) => app.showError(e.message));
  });
  $("doc-show-md").addEventListener("click", () => show(true));
  $("doc-show-json").addEventListener("click", () => show(false));
}

function show(markdown) {
  $("doc-markdown").hidden = !markdown;
  $("doc-json").hidden = markdown;
  $("doc-show-md").classList.toggle("active", markdown);
  $("doc-show-json").classList.toggle("active", !markdown);
}

async function submit(app) {
  const model = app.model();
  if (!model || model.kind !== "vision") return app.showError("Pick a vision model above to read documents.");
  app.clearError();
  const form = new FormData();
  form.append("file", $("doc-file").files[0]);
  form.append("model", model.id);
  form.append("prompt", $("doc-prompt").value);
  form.append("max_tokens", $("doc-max-tokens").value);
  if ($("doc-pages").value.trim()) form.append("pages", $("doc-pages").value.trim());
  $("doc-result").hidden = true;
  try {
    const doc = await (await call("/v1/documents", { method: "POST", body: form })).json();
    current = doc.id;
    $("doc-progress").hidden = false;
    follow(app, doc.id);
  } catch (e) {
    app.showError(e instanceof ApiError ? e.message : String(e));
  }
}

async function follow(app, id) {
  while (current === id) {
    let doc;
    try {
      doc = await getJSON(`/v1/documents/${id}`);
    } catch (e) {
      return app.showError(e.message);
    }
    progress(doc);
    if (ENDED.has(doc.status)) return result(app, id);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function progress(doc) {
  $("doc-id").textContent = doc.id;
  $("doc-status").textContent = doc.status;
  $("doc-count").textContent = `${doc.pages_done}/${doc.pages_total} pages`;
  $("doc-bar").max = doc.pages_total || 1;
  $("doc-bar").value = doc.pages_done;
  $("doc-cancel").disabled = ENDED.has(doc.status);
  $("doc-pages-list").replaceChildren(
    ...doc.pages.map((page) => {
      const li = document.createElement("li");
      li.className = `page ${page.status}`;
      li.textContent = `page ${page.page}: ${page.status}${page.error ? ` (${page.error.message || page.error})` : ""}`;
      return li;
    }),
  );
}

async function result(app, id) {
  try {
    const [json, markdown] = await Promise.all([
      getJSON(`/v1/documents/${id}/result`),
      call(`/v1/documents/${id}/result?format=markdown`).then((r) => r.text()),
    ]);
    $("doc-json").textContent = JSON.stringify(json, null, 2);
    $("doc-markdown").replaceChildren(render(markdown));
    $("doc-result").hidden = false;
    show(true);
  } catch (e) {
    app.showError(e.message);
  }
}
