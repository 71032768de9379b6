// The MiniMind chat page: keeps the conversation in the browser and streams each reply from
// POST /v1/chat/completions (server-sent events, OpenAI format). Plain DOM code, no framework.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["temperature", "top_p", "max_tokens", "api_key", "system"];

// Explicit page state: the turns sent so far, the running request (null when idle), and which
// conversation is shown (a reply that finishes after "New chat" must not land in the new one).
const state = { history: [], controller: null, chatId: 0 };

// ---------------------------------------------------------------- settings, kept in localStorage only

function loadSettings() {
  for (const name of SETTINGS) {
    const saved = localStorage.getItem("minimind." + name);
    if (saved !== null) $(name).value = saved;
    $(name).addEventListener("change", () => localStorage.setItem("minimind." + name, $(name).value));
  }
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  // Empty fields fall back to the server's defaults; numbers are sent as numbers so the server can check them.
  for (const name of ["temperature", "top_p", "max_tokens"]) {
    const text = $(name).value.trim();
    if (text !== "") body[name] = Number(text);
  }
  return body;
}

// ---------------------------------------------------------------- the conversation view

function addBubble(className, text) {
  $("empty")?.remove();
  const div = document.createElement("div");
  div.className = className;
  div.textContent = text;  // never innerHTML: model output is text, not markup
  $("messages").appendChild(div);
  scrollToEnd();
  return div;
}

function scrollToEnd() {
  const view = $("messages");
  view.scrollTop = view.scrollHeight;
}

// Keep a growing reply in view, unless the reader has scrolled up to read something earlier.
function followReply(update) {
  const view = $("messages");
  const atEnd = view.scrollHeight - view.scrollTop - view.clientHeight < 40;
  update();
  if (atEnd) scrollToEnd();
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// An OpenAI-style error body {"error": {"message": ...}} becomes "401 Incorrect API key provided".
async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error?.message ?? JSON.stringify(body)}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// ---------------------------------------------------------------- sending and streaming

async function send() {
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  addBubble("msg user", text);
  state.history.push({ role: "user", content: text });
  const chatId = state.chatId;
  state.controller = new AbortController();
  setBusy(true);

  const bubble = addBubble("msg assistant streaming", "");
  let reply = "", finish = null, usage = null, dropped = 0;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    dropped = Number(response.headers.get("X-Dropped-Messages") || 0);  // oldest turns cut to fit the context
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        reply += choice.delta.content;
        followReply(() => { bubble.textContent = reply; });
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (err) {
    if (err.name === "AbortError") {
      finish = "stopped";
    } else {
      finish = "error";
      addBubble("msg error", "Error: " + err.message);
    }
  } finally {
    bubble.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
  if (chatId !== state.chatId) return;

  if (reply) {
    state.history.push({ role: "assistant", content: reply });
  } else {
    bubble.remove();
    if (finish === "error") {  // forget the unanswered turn and give the text back for a retry
      state.history.pop();
      $("input").value = text;
    }
  }
  if (finish !== "error") {
    const seconds = (performance.now() - started) / 1000;
    const n = usage?.completion_tokens;
    const speed = usage ? `${n} tokens, ${(n / seconds).toFixed(1)} tokens/s, ` : "";
    const how = { stop: "done", length: "stopped at max tokens", stopped: "stopped" }[finish];
    const cut = dropped ? ` · ${dropped} oldest messages left out to fit the context` : "";
    addBubble("meta", speed + (how ?? "the stream ended without a finish reason") + cut);
  }
  $("input").focus();
}

// Yield each JSON chunk of a server-sent event stream until `data: [DONE]`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();  // stream mode keeps a character split across reads intact
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function stop() {
  state.controller?.abort();  // closing the connection also stops generation on the server
}

function newChat() {
  stop();
  state.chatId += 1;
  state.history = [];
  $("messages").replaceChildren();
  $("input").focus();
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.status === 401) $("settings").hidden = false;  // show where the key goes
    if (!response.ok) throw new Error(await errorText(response));
    const model = (await response.json()).data[0];
    $("status").textContent = `${model.id} · context ${model.context_length} tokens`;
  } catch (err) {
    $("status").textContent = "server: " + err.message;
  }
}

// ---------------------------------------------------------------- wiring

loadSettings();
$("send").addEventListener("click", send);
$("stop").addEventListener("click", stop);
$("new-chat").addEventListener("click", newChat);
$("toggle-settings").addEventListener("click", () => { $("settings").hidden = !$("settings").hidden; });
$("api_key").addEventListener("change", showModel);
$("input").addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter while an IME is composing Chinese only confirms the characters.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
showModel();
