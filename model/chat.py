"""Fitting a conversation into the model's context: the one policy the terminal chat (2-eval.py), the
server (my_openai_api.py) and C-Eval (eval_ceval.py) use.

    budget = prompt_budget(context_length(model.config), max_new_tokens)
    ids, dropped = build_prompt(tokenizer, messages, budget)              # server: too long is an error
    ids, dropped = build_prompt(tokenizer, messages, budget, cut=True)    # chat, C-Eval: keep the end

The policy: system messages and the last message always stay; the other messages are grouped into turns
(a user message and the replies after it) and dropped whole, oldest first, so the kept history never
starts with an orphan assistant reply. When the system messages and the last message alone do not fit,
build_prompt raises ContextTooLong, or with cut=True keeps the last `budget` ids (the end of the last
message and the reply header survive).

Text typed in a message that looks like a turn marker (<s>, </s>) is encoded as plain text, so a
message cannot forge a turn of another role.
"""

from model.errors import MiniMindError
from model.tokenizer import BOS_ID, EOS_ID
from model.toolcall import plain_messages


class ContextTooLong(MiniMindError):
    """The system messages and the last message need more tokens than the budget, even with every older
    turn dropped."""


def prompt_budget(context: int, max_new_tokens: int) -> int:
    """Tokens the prompt may use: the context minus the room kept for the reply (max_new_tokens, but at
    most half the context). A longer reply slides the model's window (model/generate.py)."""
    return context - min(max_new_tokens, context // 2)


def encode_message(tokenizer, message: dict) -> list:
    """One message as the chat template renders it, turn markers typed in it encoded as text. The template
    renders a conversation as the concatenation of its messages, each starting at <s> and ending at
    </s>\\n, so encoding messages one by one gives the same ids as encoding the whole conversation."""
    return encode_messages(tokenizer, [message])[0]


def turn_header(tokenizer, role: str) -> list:
    """The ids that open a turn of `role`: <s>{role}\\n."""
    return [BOS_ID] + tokenizer.encode(role + "\n", add_special_tokens=False)


def encode_messages(tokenizer, messages: list) -> list:
    """encode_message for each of `messages` (plain {role, content}; see model/toolcall.plain_messages), in
    one call. A "<s>" or "</s>" typed in a content is text (split_special_tokens); the two tool-call tokens
    are not special, so a call block in an assistant turn keeps them, as the template does."""
    contents = tokenizer([m["content"] for m in messages], add_special_tokens=False,
                         split_special_tokens=True)["input_ids"]
    newline = tokenizer.encode("\n", add_special_tokens=False)
    headers = {role: turn_header(tokenizer, role) for role in {m["role"] for m in messages}}  # once per role
    return [headers[m["role"]] + ids + [EOS_ID] + newline for m, ids in zip(messages, contents)]


def generation_header(tokenizer) -> list:
    """The ids the template adds for add_generation_prompt (<s>assistant\\n)."""
    return turn_header(tokenizer, "assistant")


def build_prompt(tokenizer, messages: list, max_prompt_tokens: int, cut: bool = False,
                 tools: list | None = None) -> tuple[list, int]:
    """Token ids of the conversation plus the assistant header, dropping the oldest turns to fit in
    `max_prompt_tokens`. Returns (ids, number of messages dropped). `tools` (OpenAI function schemas) are
    offered in the system turn, which is never dropped; assistant tool calls and tool results are part of
    the turn of the user message before them.

    Each message is encoded at most once, and the history is encoded newest first only until the budget
    is spent: the cost follows the context size, not the length of the conversation."""
    messages = plain_messages(messages, tools)
    last = len(messages) - 1
    systems = [i for i in range(last) if messages[i]["role"] == "system"]
    fixed = systems + [last]
    encoded = dict(zip(fixed, encode_messages(tokenizer, [messages[i] for i in fixed])))
    header = generation_header(tokenizer)
    needed = len(header) + sum(len(ids) for ids in encoded.values())
    if needed > max_prompt_tokens:
        if cut:
            ids = [t for i in fixed for t in encoded[i]] + header
            return ids[-max_prompt_tokens:], len(messages) - len(fixed)
        raise ContextTooLong(f"the prompt needs {needed} tokens even after dropping all older turns, but this "
                             f"model leaves {max_prompt_tokens} for it; shorten the system or last message "
                             "(or ask for fewer max_tokens)")

    history = [i for i in range(last) if messages[i]["role"] != "system"]
    budget = max_prompt_tokens - needed
    kept_from = len(history)  # history[kept_from:] is kept
    while kept_from > 0:
        start = kept_from - 1
        while start > 0 and messages[history[start]]["role"] != "user":
            start -= 1  # back to the user message that opened this turn (or the oldest message)
        cost = 0
        for k in range(kept_from - 1, start - 1, -1):  # newest first, so an over-long turn stops early
            ids = encode_message(tokenizer, messages[history[k]])
            encoded[history[k]] = ids
            cost += len(ids)
            if cost > budget:
                break
        if cost > budget:
            break
        budget -= cost
        kept_from = start
    kept = sorted(fixed + history[kept_from:])
    ids = [t for i in kept for t in encoded[i]] + header
    return ids, len(messages) - len(kept)


def continuation_prompt(tokenizer, text: str, max_prompt_tokens: int) -> list:
    """A bare text for a pretrained model to continue, after a </s> (every pretraining document follows
    one: that is how a document starts); the last `max_prompt_tokens` ids."""
    return ([EOS_ID] + tokenizer.encode(text, add_special_tokens=False))[-max_prompt_tokens:]
