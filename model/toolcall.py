"""The text a model writes a tool call in, and the system text that offers it tools: the Hermes / Qwen
convention, so a model trained here speaks what other tools already parse.

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "(3+4)*2"}}
    </tool_call>

render_call writes one such block; parse_reply splits a model's reply into its plain text and its calls.
A reply is model output, so parse_reply takes anything: a block that is not a well-formed call (bad JSON,
no closing tag, wrong types) is not a call, and its text stays in the content as written.

render_tools_system writes the system turn that lists the tools, kept short for a 512-token context. The
chat template reproduces it byte for byte, so its format is deliberately plain:

    <system text>\\n\\n# 工具\\n<tools>\\n<one tool's JSON per line>\\n</tools>
"""

import json

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def render_call(name: str, arguments) -> str:
    """One call block. `arguments` is a dict, or a JSON string holding an object (OpenAI sends them so);
    anything else raises ValueError."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"tool call arguments are not valid JSON: {e}") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call arguments must be a JSON object, got {type(arguments).__name__}")
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _call(inner: str):
    """The call {"name", "arguments"} a block's inner text holds, or None when it is not a well-formed one."""
    try:
        obj = json.loads(inner)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        arguments = obj.get("arguments", {})
        if isinstance(arguments, str):  # arguments as a JSON string, the OpenAI way
            arguments = json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: json on "[[[[..." nested thousands deep
        return None
    if not isinstance(arguments, dict):
        return None
    return {"name": obj["name"], "arguments": arguments}


def parse_reply(text: str) -> tuple[str, list[dict]]:
    """(content, calls): the reply's text outside its well-formed call blocks, stripped, and the calls in
    order, each {"name": str, "arguments": dict}. Never raises."""
    if not isinstance(text, str):
        return "", []
    content, calls = [], []
    kept = 0      # text[kept:] has not been copied into content yet
    start = 0     # where to look for the next open tag
    close = -1    # the next close tag at or after the current block, found once and reused
    while True:
        open_at = text.find(TOOL_CALL_OPEN, start)
        if open_at < 0:
            break
        inner_at = open_at + len(TOOL_CALL_OPEN)
        if close < inner_at:
            close = text.find(TOOL_CALL_CLOSE, inner_at)
            if close < 0:  # no close tag anywhere after: the rest is plain text
                break
        next_open = text.find(TOOL_CALL_OPEN, inner_at)
        if 0 <= next_open < close:  # another open tag before the close: this one is stray text
            start = next_open
            continue
        call = _call(text[inner_at:close])
        if call is None:  # malformed: leave it in the content, look on after its open tag
            start = inner_at
            continue
        content.append(text[kept:open_at])
        calls.append(call)
        kept = start = close + len(TOOL_CALL_CLOSE)
    content.append(text[kept:])
    return "".join(content).strip(), calls


def render_tools_system(tools: list[dict], system: str = "") -> str:
    """The text of a system turn offering `tools` (each an OpenAI-style tool schema), after `system`."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (f"{system}\n\n" if system else "") + f"# 工具\n<tools>\n{lines}\n</tools>"


def plain_messages(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """The conversation as plain {"role", "content"} messages, laid out as the chat template lays it out:
    the tools folded into the system turn (one is added when there is none), each assistant `tool_calls`
    entry (OpenAI's {"function": {...}} or transformers' bare {"name", "arguments"}) written as a call
    block after the message's text (whose null content is read as empty). Other messages pass as they are. Training (data/datasets.py) and
    prompting (model/chat.py) both go through it, so a conversation tokenizes the same way in both.
    Raises ValueError for a call without a name or with arguments that are not a JSON object."""
    plain = []
    for i, message in enumerate(messages):
        content = message.get("content")
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls:
            content = content if isinstance(content, str) else ""
            if not isinstance(calls, list):
                raise ValueError(f"messages[{i}].tool_calls must be a list")
            blocks = []
            for k, call in enumerate(calls):
                function = call.get("function", call) if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise ValueError(f"messages[{i}].tool_calls[{k}] has no function name")
                try:
                    blocks.append(render_call(function["name"], function.get("arguments", {})))
                except ValueError as error:
                    raise ValueError(f"messages[{i}].tool_calls[{k}]: {error}") from None
            content = "\n".join(([content] if content else []) + blocks)
        plain.append({**message, "content": content} if calls else message)
    if tools:
        if plain and plain[0]["role"] == "system":
            plain[0] = {**plain[0], "content": render_tools_system(tools, plain[0]["content"] or "")}
        else:
            plain.insert(0, {"role": "system", "content": render_tools_system(tools)})
    return plain
