// The playground's shell: tabs, the model picker (from /v1/models, with kind badges), the API
// key prompt when the server asks for one, and the error line. Each tab is its own module.

import { auth, getJSON, onUnauthorized } from "./api.js";
import { initAdmin, initBatches } from "./admin.js";
import { initChat } from "./chat.js";
import { initDocuments } from "./documents.js";

const $ = (id) => document.getElementById(id);
let models = [];
let shown = ""; // "id kind" of the model the tabs were last told about
const modelListeners = [];
const tabListeners = {};

const app = {
  model: () => models.find((m) => m.id === $("model").value) || null,
  onModelChange: (callback) => modelListeners.push(callback),
  onTab: (name, callback) => (tabListeners[name] ||= []).push(callback),
  refreshModels,
  showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  },
  clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  },
};

async function refreshModels() {
  try {
    const list = await getJSON("/v1/models");
    models = list.data;
    const picked = $("model").value;
    $("model").replaceChildren(
      ...models.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = `${m.id} (${m.kind})`;
        return option;
      }),
    );
    const chatty = models.find((m) => m.kind === "text") || models[0];
    $("model").value = models.some((m) => m.id === picked) ? picked : chatty?.id || "";
    if (!models.length) app.showError("No model is being served yet: workers may still be loading.");
    if (`${app.model()?.id} ${app.model()?.kind}` !== shown) modelChanged();
  } catch (e) {
    app.showError(e.message);
  }
}

function modelChanged() {
  const model = app.model();
  shown = `${model?.id} ${model?.kind}`;
  $("model-kind").hidden = !model;
  $("model-kind").textContent = model?.kind || "";
  $("model-kind").className = `badge ${model?.kind || ""}`;
  modelListeners.forEach((f) => f(model));
}

function showTab(name) {
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const tab of document.querySelectorAll("section.tab")) tab.hidden = tab.id !== `tab-${name}`;
  (tabListeners[name] || []).forEach((f) => f());
}

onUnauthorized(() => {
  $("key-banner").hidden = false;
  $("key-input").focus();
});

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", modelChanged);
  $("refresh-models").addEventListener("click", refreshModels);
  for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.key = $("key-input").value.trim();
    $("key-banner").hidden = true;
    app.clearError();
    refreshModels();
  });
  initChat(app);
  initDocuments(app);
  initBatches(app);
  initAdmin(app);
  refreshModels();
  // Models load and unload while the page is open: keep the list current (not while a key is asked for).
  setInterval(() => { if (!document.hidden && $("key-banner").hidden) refreshModels(); }, 15000);
});
