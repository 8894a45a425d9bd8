// The chat tab: a conversation streamed from /v1/chat/completions, with Stop (the job is
// cancelled on the server, not just left unread), a system prompt, temperature, max_tokens,
// an image for vision models and an optional JSON schema (response_format json_schema).

import { ApiError, call, events } from "./api.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let history = [];
let running = null; // { controller, id, stopping } while an answer streams
let image = null; // a data: URL

export function initChat(app) {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send(app);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      send(app);
    }
  });
  $("stop").addEventListener("click", stop);
  $("clear").addEventListener("click", () => {
    history = [];
    $("messages").replaceChildren();
    $("chat-status").textContent = "";
  });
  $("attach").addEventListener("change", () => {
    const file = $("attach").files[0];
    if (!file) return clearImage();
    const reader = new FileReader();
    reader.onload = () => {
      image = reader.result;
      $("attach-preview").src = image;
      $("attach-preview").hidden = false;
    };
    reader.readAsDataURL(file);
  });
  app.onModelChange((model) => {
    $("attach-label").hidden = model?.kind !== "vision";
    if (model?.kind !== "vision") clearImage();
    const chatty = !model || model.kind !== "embedding";
    $("send").disabled = !chatty || running !== null;
    $("chat-status").textContent = chatty ? "" : "an embedding model: it answers /v1/embeddings, not chat";
  });
}

function clearImage() {
  image = null;
  $("attach").value = "";
  $("attach-preview").hidden = true;
  $("attach-preview").removeAttribute("src");
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "answer";
  if (role === "assistant") body.append(render(text));
  else body.textContent = text;
  div.append(body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function request(app, content) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history, { role: "user", content });
  const body = {
    model: app.model().id,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 256,
    temperature: Number($("temperature").value),
  };
  const schema = $("schema").value.trim();
  if (schema) {
    body.response_format = { type: "json_schema", json_schema: { name: "playground", schema: JSON.parse(schema), strict: true } };
  }
  return body;
}

async function send(app) {
  const text = $("prompt").value.trim();
  if (!text || running || !app.model()) return;
  app.clearError();
  const content = image ? [{ type: "text", text }, { type: "image_url", image_url: { url: image } }] : text;
  let body;
  try {
    body = request(app, content);
  } catch (e) {
    return app.showError(`The JSON schema is not valid JSON: ${e.message}`);
  }
  $("prompt").value = "";
  const shown = bubble("user", text);
  if (image) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "attached image";
    shown.append(img);
    clearImage();
  }
  const answer = bubble("assistant", "");
  answer.classList.add("streaming");
  const target = answer.querySelector(".answer");
  running = { controller: new AbortController(), id: null, stopping: false };
  $("send").disabled = true;
  $("stop").disabled = false;
  $("chat-status").textContent = "queued…";
  let reply = "";
  let thinking = "";
  let usage = null;
  let finish = null;
  const started = performance.now();
  try {
    const response = await call("/v1/chat/completions", { method: "POST", json: body, signal: running.controller.signal });
    running.id = response.headers.get("X-Request-Id");
    for await (const chunk of events(response)) {
      running.id = chunk.id || running.id;
      answer.dataset.completionId = running.id;
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      finish = choice.finish_reason || finish;
      reply += choice.delta?.content || "";
      thinking += choice.delta?.reasoning_content || "";
      target.replaceChildren(render(reply));
      if (thinking) showThinking(answer, thinking);
      $("chat-status").textContent = `streaming… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }
    const seconds = (performance.now() - started) / 1000;
    const tokens = usage ? `${usage.completion_tokens} tokens · ${(usage.completion_tokens / seconds).toFixed(1)} tok/s · ` : "";
    $("chat-status").textContent = `done (${finish || "stop"}) · ${tokens}${seconds.toFixed(1)} s`;
    answer.dataset.state = "done";
  } catch (e) {
    // Stopped: the fetch aborted, or the cancel reached the job first and its stream said so.
    if (e.name === "AbortError" || running.stopping) {
      $("chat-status").textContent = "stopped: the job was cancelled";
      answer.dataset.state = "stopped";
    } else {
      app.showError(e instanceof ApiError ? e.message : String(e));
      $("chat-status").textContent = "failed";
      answer.dataset.state = "failed";
    }
  } finally {
    answer.classList.remove("streaming");
    history.push({ role: "user", content }, { role: "assistant", content: reply });
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

function showThinking(answer, thinking) {
  let details = answer.querySelector("details.thinking");
  if (!details) {
    details = document.createElement("details");
    details.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = "thinking";
    details.append(summary, document.createElement("div"));
    answer.prepend(details);
  }
  details.lastChild.textContent = thinking;
}

// Stop: drop the stream and cancel the job on the server (it stops within one engine step;
// leaving the stream alone would cancel it too, the explicit cancel says so at once).
function stop() {
  if (!running) return;
  const { controller, id } = running;
  running.stopping = true;
  $("stop").disabled = true;
  controller.abort();
  if (id) {
    call(`/v1/chat/completions/${encodeURIComponent(id)}/cancel`, { method: "POST" }).catch(() => {
      /* ended already, or gone */
    });
  }
}
