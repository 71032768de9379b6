"""Reading small JSON files safely: the one parser every reader of the project uses, for model configs,
checkpoint sidecars, adapter configs and every line of the chat data.

    value, reason, detail = parse_json(text)      # never raises; reason says why the text is unusable
    config = read_json_object("out/x.json")       # a dict, or MiniMindError naming the file
"""
import json
import re
from pathlib import Path

from model.errors import MiniMindError, first_line

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into valid UTF-8 JSON


def find_lone_surrogate(value, where: str = "") -> str | None:
    """Where (e.g. `conversations[0].content`) a string or key inside a parsed JSON value holds a lone UTF-16
    surrogate (JSON's `"\\ud800"`), or None. Python keeps such a string, but encoding it (the tokenizer, a
    UTF-8 file) fails, so readers refuse it up front. Walks without recursion: any depth is safe."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return at or "the value"
        elif isinstance(item, dict):
            for key, child in item.items():
                if _SURROGATE.search(key):
                    return f"{at}.{key!a}" if at else f"key {key!a}"
                stack.append((child, f"{at}.{key}" if at else key))
        elif isinstance(item, list):
            stack.extend((child, f"{at}[{i}]") for i, child in enumerate(item))
    return None


def parse_json(text: str, surrogates: bool = True) -> tuple[object, str, str]:
    """(value, '', '') for JSON text, or (None, reason, detail) when it cannot be used: a syntax error,
    nesting deeper than Python's recursion limit, an integer longer than Python reads (4300 digits), or
    (with surrogates=True) a lone surrogate in a string. Never raises for any text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        at = f"line {error.lineno} column {error.colno}" if error.lineno > 1 else f"column {error.colno}"
        return None, "not valid JSON", f"{error.msg} at {at}"
    except RecursionError:
        return None, "JSON nested too deeply", ""
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        return None, "unreadable JSON value", first_line(error, 160).split(";")[0]
    if surrogates and _SURROGATE_ESCAPE.search(text):
        at = find_lone_surrogate(value)
        if at:
            return None, "lone UTF-16 surrogate in a string", f"at {at}"
    return value, "", ""


def read_json_object(path, what: str = "a JSON object", fix: str = "") -> dict:
    """A small JSON file that must hold one object (a model config, meta.json, adapter_config.json), as a
    dict; otherwise a MiniMindError naming the file and what is wrong with it, ending with `fix`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MiniMindError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or first_line(error)})")
    value, reason, detail = parse_json(text)
    if reason:
        raise MiniMindError(f"{path}: {reason}{f' ({detail})' if detail else ''}{fix}")
    if not isinstance(value, dict):
        raise MiniMindError(f"{path}: expected {what}, found {type(value).__name__}")
    return value
