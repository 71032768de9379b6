// The MiniMind chat page: keeps the conversation in the browser and streams each reply from
// POST /v1/chat/completions (server-sent events, OpenAI format). With the 计算器 toggle on, the request
// offers the server's calculator (GET /v1/tools); a reply that calls it is shown, run through
// POST /v1/tools/run, answered with a tool message, and the model is asked again. Plain DOM code.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["temperature", "top_p", "max_tokens", "api_key", "system"];

// Explicit page state: the turns sent so far, the running request (null when idle), and which
// conversation is shown (a reply that finishes after "New chat" must not land in the new one).
const state = { history: [], controller: null, chatId: 0, tools: [] };

// ---------------------------------------------------------------- settings, kept in localStorage only

function loadSettings() {
  for (const name of SETTINGS) {
    const saved = localStorage.getItem("minimind." + name);
    if (saved !== null) $(name).value = saved;
    $(name).addEventListener("change", () => localStorage.setItem("minimind." + name, $(name).value));
  }
  $("calculator").checked = localStorage.getItem("minimind.calculator") === "on";
  $("calculator").addEventListener("change", () =>
    localStorage.setItem("minimind.calculator", $("calculator").checked ? "on" : "off"));
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
  if ($("calculator").checked && state.tools.length) body.tools = state.tools;  // the server's own schemas
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

const MAX_TOOL_ROUNDS = 3;  // tool calls the model may make for one message before it must answer

async function send() {
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  addBubble("msg user", text);
  const before = state.history.length;
  state.history.push({ role: "user", content: text });
  const chatId = state.chatId;
  state.controller = new AbortController();
  setBusy(true);
  try {
    for (let round = 0; ; round += 1) {
      const result = await streamReply();
      if (chatId !== state.chatId) return;
      if (result.finish === "error") {  // forget the unanswered turn and give the text back for a retry
        state.history.length = before;
        $("input").value = text;
        break;
      }
      if (result.reply || result.calls.length) state.history.push(assistantMessage(result));
      addMeta(result);
      if (!result.calls.length || round >= MAX_TOOL_ROUNDS) break;
      for (const call of result.calls) {
        const content = await runTool(call);
        if (chatId !== state.chatId) return;
        state.history.push({ role: "tool", tool_call_id: call.id, content });
      }
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
  $("input").focus();
}

// One streamed reply into a new bubble: {reply, calls, finish, usage, dropped, seconds}. finish is the
// server's finish_reason, "stopped" when the user stopped it, or "error" (shown in the page).
async function streamReply() {
  const bubble = addBubble("msg assistant streaming", "");
  const result = { reply: "", calls: [], finish: null, usage: null, dropped: 0, seconds: 0 };
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    result.dropped = Number(response.headers.get("X-Dropped-Messages") || 0);  // oldest turns cut to fit
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) result.usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      if (choice.delta?.content) {
        result.reply += choice.delta.content;
        followReply(() => { bubble.textContent = result.reply; });
      }
      for (const call of choice.delta?.tool_calls ?? []) addCallDelta(result.calls, call);
      if (choice.finish_reason) result.finish = choice.finish_reason;
    }
  } catch (err) {
    if (err.name === "AbortError") {
      result.finish = "stopped";
    } else {
      result.finish = "error";
      addBubble("msg error", "Error: " + err.message);
    }
  } finally {
    bubble.classList.remove("streaming");
  }
  if (!result.reply) bubble.remove();
  result.calls = result.calls.filter(Boolean);
  result.seconds = (performance.now() - started) / 1000;
  return result;
}

// A stream sends each tool call as deltas keyed by index: the id, the name and pieces of the arguments.
function addCallDelta(calls, delta) {
  const call = (calls[delta.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } });
  if (delta.id) call.id = delta.id;
  call.function.name += delta.function?.name ?? "";
  call.function.arguments += delta.function?.arguments ?? "";
}

function assistantMessage(result) {
  const message = { role: "assistant", content: result.reply || (result.calls.length ? null : "") };
  if (result.calls.length) message.tool_calls = result.calls;
  return message;
}

function addMeta(result) {
  const n = result.usage?.completion_tokens;
  const speed = result.usage ? `${n} tokens, ${(n / result.seconds).toFixed(1)} tokens/s, ` : "";
  const how = { stop: "done", length: "stopped at max tokens", stopped: "stopped", tool_calls: "called a tool" };
  const cut = result.dropped ? ` · ${result.dropped} oldest messages left out to fit the context` : "";
  addBubble("meta", speed + (how[result.finish] ?? "the stream ended without a finish reason") + cut);
}

// Run one call through the server (POST /v1/tools/run) and show it; returns the text the model is given.
async function runTool(call) {
  let args = null;
  try { args = JSON.parse(call.function.arguments); } catch { /* shown as it came, answered with an error */ }
  const shown = call.function.name === "calculator" && typeof args?.expression === "string"
    ? "计算器：" + args.expression : `${call.function.name}(${call.function.arguments})`;
  const bubble = addBubble("tool", shown + " …");
  let content;
  try {
    const response = await fetch("/v1/tools/run", {
      method: "POST", headers: headers(), signal: state.controller?.signal,
      body: JSON.stringify({ name: call.function.name, arguments: args ?? {} }),
    });
    content = response.ok ? (await response.json()).content : "错误：" + await errorText(response);
  } catch (err) {
    content = "错误：" + err.message;
  }
  bubble.textContent = `${shown} = ${content}`;
  scrollToEnd();
  return content;
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
    // Unless the user chose one, a reply gets a quarter of the context, so that the question (and the tools'
    // system turn, about 90 tokens) keeps the rest: 512 new tokens would leave a 256-token model no prompt.
    if (!localStorage.getItem("minimind.max_tokens") && model.context_length) {
      $("max_tokens").value = Math.max(16, Math.floor(model.context_length / 4));
    }
    const tools = await fetch("/v1/tools", { headers: headers() });
    state.tools = tools.ok ? (await tools.json()).data.filter((t) => t.function.name === "calculator") : [];
    $("calculator").disabled = !state.tools.length;
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
