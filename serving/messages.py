"""The chat request: its messages (tool calls and tool results included), the tools it offers and how the
model may use them (tool_choice, parallel_tool_calls), checked field by field into a ChatRequest.

What a request's tools become:
  * tools are rendered into the system turn (model/toolcall.py's format) unless tool_choice is "none";
  * `allowed` names the tools whose calls the reply may hold: the offered ones, or only the named one;
    any other <tool_call> block the model writes stays in the reply's content;
  * `prefill` is text put after the assistant header for the model to continue: `<tool_call>\\n` for
    "required", and `<tool_call>\\n{"name": "NAME", "arguments":` for a named function, so a model that
    knows the format writes the arguments of that call. It is steering, not a guarantee: a reply that does
    not close into a valid call is returned as content, with finish_reason "stop" or "length".
"""
import json
import re
from dataclasses import dataclass, field

from model.toolcall import TOOL_CALL_OPEN
from serving.protocol import (COMMON_FIELDS, APIError, Defaults, Sampling, check_fields, choice, flag, number,
                              parse_json, sampling, show)

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 1000
MAX_TOOLS = 64
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
CHAT_FIELDS = COMMON_FIELDS | {
    "messages", "max_completion_tokens", "logprobs", "top_logprobs", "response_format", "parallel_tool_calls",
    "tool_choice", "tools",
}
MESSAGE_FIELDS = {
    "system": {"role", "content", "name"}, "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"}, "assistant": {"role", "content", "name", "tool_calls"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
TOOL_FIELDS = {"name", "description", "parameters", "strict"}


@dataclass
class ToolOffer:
    """What the model is offered and which of its calls count (see the module docstring)."""
    tools: list | None = None  # rendered into the prompt; None: nothing offered
    allowed: frozenset = frozenset()  # names whose well-formed calls become tool_calls
    prefill: str = ""  # text the reply starts with, after the assistant header
    parallel: bool = True  # False: only the first call counts, later blocks stay content


@dataclass
class ChatRequest:
    messages: list
    sampling: Sampling
    offer: ToolOffer = field(default_factory=ToolOffer)


# ----------------------------------------------------------------------------- tools and tool_choice

def _tool(tool, i: int) -> str:
    """Check tools[i]; return its function's name."""
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise APIError(400, f'{where} must be an object {{"type": "function", "function": {{...}}}}', where)
    extra = sorted(set(tool) - {"type", "function"})
    if extra:
        raise APIError(400, f"{where} has unsupported field(s): {', '.join(extra)}", where)
    if tool.get("type") != "function":
        raise APIError(400, f'{where}.type must be "function" (the only kind of tool), got {show(tool.get("type"))}',
                       f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise APIError(400, f"{where}.function must be an object with a 'name'", f"{where}.function")
    extra = sorted(set(function) - TOOL_FIELDS)
    if extra:
        raise APIError(400, f"{where}.function has unsupported field(s): {', '.join(extra)}", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise APIError(400, f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', got {show(name)}",
                       f"{where}.function.name")
    if function.get("description") is not None and not isinstance(function["description"], str):
        raise APIError(400, f"{where}.function.description must be a string", f"{where}.function.description")
    parameters = function.get("parameters")
    if parameters is not None and not (isinstance(parameters, dict) and parameters.get("type", "object") == "object"):
        raise APIError(400, f"{where}.function.parameters must be a JSON Schema object "
                       f'({{"type": "object", "properties": ...}}), got {show(parameters)}',
                       f"{where}.function.parameters")
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise APIError(400, f"{where}.function.strict must be true or false", f"{where}.function.strict")
    return name


def parse_tools(body: dict) -> list | None:
    """The request's tools as given (their JSON is what the model reads), or None when there are none."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise APIError(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects",
                       "tools")
    if not tools:
        raise APIError(400, "'tools' must hold at least one tool (leave the field out for none)", "tools")
    if len(tools) > MAX_TOOLS:
        raise APIError(400, f"'tools' holds {len(tools)} tools; at most {MAX_TOOLS} are accepted", "tools")
    names = []
    for i, tool in enumerate(tools):
        name = _tool(tool, i)
        if name in names:
            raise APIError(400, f"tools[{i}].function.name {show(name)} is given twice", f"tools[{i}].function.name")
        names.append(name)
    return tools


def _named_choice(value: dict, names: list) -> str:
    """The function a {"type": "function", "function": {"name": ...}} tool_choice names."""
    function = value.get("function")
    if not (set(value) == {"type", "function"} and value["type"] == "function" and isinstance(function, dict)
            and set(function) == {"name"} and isinstance(function["name"], str)):
        raise APIError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                       f'{{"type": "function", "function": {{"name": ...}}}}, got {show(value)}', "tool_choice")
    if function["name"] not in names:
        raise APIError(400, f"'tool_choice' names the function {show(function['name'])}, which is not in "
                       "'tools'", "tool_choice")
    return function["name"]


def parse_offer(body: dict) -> ToolOffer:
    """tools, tool_choice and parallel_tool_calls, read together into what the model is offered."""
    tools = parse_tools(body)
    parallel = flag(body, "parallel_tool_calls", True)
    value = body.get("tool_choice")
    if value is None or (value == "none" and type(value) is str):
        mode = "auto" if value is None else "none"
    elif tools is None:
        raise APIError(400, "'tool_choice' is only allowed when 'tools' are given", "tool_choice")
    elif value in ("auto", "required") and type(value) is str:
        mode = value
    elif isinstance(value, dict):
        mode = _named_choice(value, [t["function"]["name"] for t in tools])
    else:
        raise APIError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                       f'{{"type": "function", "function": {{"name": ...}}}}, got {show(value)}', "tool_choice")
    if tools is None or mode == "none":
        return ToolOffer()
    names = frozenset(t["function"]["name"] for t in tools)
    if mode == "auto":
        return ToolOffer(tools, names, "", parallel)
    if mode == "required":
        return ToolOffer(tools, names, f"{TOOL_CALL_OPEN}\n", parallel)
    prefill = f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(mode)}, "arguments":'
    return ToolOffer(tools, frozenset([mode]), prefill, parallel)


# ----------------------------------------------------------------------------- messages

def _content(message: dict, i: int, optional: bool = False):
    """A message's text: a string or a list of text parts. With `optional` (an assistant turn that calls
    tools) null or a missing content is None."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and optional:
        return None
    if isinstance(content, list):  # [{"type": "text", "text": "..."}], the newer OpenAI form
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise APIError(400, f"messages[{i}].content[{j}] must be a text part "
                               '{"type": "text", "text": ...}; this model reads text only', f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _arguments(value, where: str) -> dict:
    """A call's arguments: a JSON string holding an object (OpenAI's form) or the object itself. The string
    is read with the body's own limits (depth, NaN, lone surrogates written as escapes inside it)."""
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except APIError as err:
            raise APIError(400, f"{where} must be a JSON object written as a string: "
                           f"{err.message.replace('the request body', 'it')}", where) from None
    if not isinstance(value, dict):
        raise APIError(400, f"{where} must be a JSON object (as a string), got {show(value)}", where)
    return value


def _tool_calls(calls, i: int) -> list:
    """An assistant message's tool_calls, checked, with each call's arguments as an object."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise APIError(400, f"{where} must be a list of calls", where)
    if not calls:  # OpenAI refuses it too; a turn without calls leaves the field out
        raise APIError(400, f"messages[{i}] has an empty tool_calls list: leave the field out for no calls",
                       f"messages[{i}]")
    checked = []
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict) or set(call) - {"id", "type", "function"}:
            raise APIError(400, f'{at} must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                           at)
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise APIError(400, f"{at}.id must be a non-empty string (the tool message answers it)", f"{at}.id")
        if call.get("type", "function") != "function":
            raise APIError(400, f'{at}.type must be "function", got {show(call.get("type"))}', f"{at}.type")
        function = call.get("function")
        if not isinstance(function, dict) or set(function) - {"name", "arguments"}:
            raise APIError(400, f"{at}.function must be an object with 'name' and 'arguments'", f"{at}.function")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise APIError(400, f"{at}.function.name must be a non-empty string", f"{at}.function.name")
        arguments = _arguments(function.get("arguments", "{}"), f"{at}.function.arguments")
        checked.append({"id": call["id"], "type": "function",
                        "function": {"name": function["name"], "arguments": arguments}})
    return checked


def _message(message, i: int, open_calls: set) -> dict:
    """messages[i], checked and in the form model/chat.build_prompt reads. `open_calls` holds the ids of the
    calls the latest assistant turn made, while only tool messages have followed it."""
    if not isinstance(message, dict):
        raise APIError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {show(role)}",
                       f"messages[{i}].role")
    extra = sorted(set(message) - MESSAGE_FIELDS[role])
    if extra:
        raise APIError(400, f"messages[{i}] has unsupported field(s) for role {role}: {', '.join(extra)}",
                       f"messages[{i}]")
    if "name" in message and not isinstance(message["name"], str):
        raise APIError(400, f"messages[{i}].name must be a string", f"messages[{i}].name")
    if role == "tool":
        if not open_calls:
            raise APIError(400, f"messages[{i}] has role tool but answers no call: a tool message must follow "
                           "an assistant message with 'tool_calls'", f"messages[{i}].role")
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or call_id not in open_calls:
            raise APIError(400, f"messages[{i}].tool_call_id must be the id of a call in the assistant message "
                           f"before it, got {show(call_id)}", f"messages[{i}].tool_call_id")
        return {"role": "tool", "content": _content(message, i), "tool_call_id": call_id}
    if role == "assistant" and message.get("tool_calls") is not None:
        calls = _tool_calls(message["tool_calls"], i)
        return {"role": "assistant", "content": _content(message, i, optional=True), "tool_calls": calls}
    return {"role": "system" if role == "developer" else role, "content": _content(message, i)}


def parse_messages(body: dict) -> list:
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "'messages' is required", "messages")
    if not isinstance(messages, list):
        raise APIError(400, "'messages' must be a list of {role, content} objects", "messages")
    if not messages:
        raise APIError(400, "'messages' must not be empty", "messages")
    if len(messages) > MAX_MESSAGES:
        raise APIError(400, f"'messages' holds {len(messages)} messages; at most {MAX_MESSAGES} are accepted "
                       "(older turns would not fit the context anyway)", "messages", "too_many_messages")
    checked, open_calls = [], set()
    for i, message in enumerate(messages):
        checked.append(_message(message, i, open_calls))
        if checked[-1].get("tool_calls"):
            open_calls = {call["id"] for call in checked[-1]["tool_calls"]}
        elif checked[-1]["role"] != "tool":
            open_calls = set()
    return checked


def parse_request(body, model_name: str, defaults: Defaults) -> ChatRequest:
    """Check a chat completions body field by field; raise APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    check_fields(body, CHAT_FIELDS, model_name)
    offer = parse_offer(body)
    choice(body, "logprobs", (None, False), "can only be false: this server does not return log probabilities")
    choice(body, "top_logprobs", (None,), "can only be null: this server does not return log probabilities")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(400, 'only \'response_format\' {"type": "text"} is supported, got '
                       f"{show(response_format)}", "response_format")
    messages = parse_messages(body)
    max_tokens = number(body, "max_tokens", None, 1, float("inf"), integer=True)
    max_tokens = number(body, "max_completion_tokens", max_tokens, 1, float("inf"), integer=True)
    return ChatRequest(messages=messages, sampling=sampling(body, defaults, defaults.chat_max_tokens or defaults.max_tokens,
                                                            max_tokens),
                       offer=offer)
