"""The tool loop: a model answers, any tool it calls is run, the result goes back in a `tool` turn, and the
model goes on, until it answers without a call (or has made `max_calls` rounds of calls).

    rollouts = run_with_tools(model, tokenizer, [[{"role": "user", "content": "3个苹果每个2元，一共多少钱？"}]],
                              tools=[CALCULATOR], max_new_tokens=64)
    rollouts[0].final                 # "一共6元。"
    rollouts[0].messages              # the assistant call, the tool result, the assistant answer

Every conversation of a batch goes through the batched KV-cache generator together; a round generates one
assistant turn for each conversation still going. A rollout keeps the exact ids the model sampled, so
reinforcement learning (engine/grpo.py) scores the very tokens that were generated, and `learn` says
which of them are the model's (True) and which the loop wrote (the tool turns and turn headers: False).
"""
from dataclasses import dataclass, field

from model.chat import build_prompt, encode_messages, generation_header, prompt_budget
from model.generate import context_length, generate
from model.tokenizer import EOS_ID
from model.toolcall import parse_reply
from tooluse.calculator import run_tool
from tooluse.constrain import CopiedNumbers, NumberTokens


@dataclass
class Rollout:
    """One conversation's continuation: prompt_ids, then ids (learn[i] says whether ids[i] was sampled)."""

    prompt_ids: list
    ids: list = field(default_factory=list)
    learn: list = field(default_factory=list)
    messages: list = field(default_factory=list)  # the assistant and tool messages it added
    calls: int = 0      # tool calls made (well-formed calls of an offered tool)
    ended: bool = True  # every assistant turn ended with </s> (none ran out of max_new_tokens)

    @property
    def final(self) -> str:
        """The text of the last assistant turn (empty when the model only called tools)."""
        replies = [m for m in self.messages if m["role"] == "assistant"]
        return replies[-1]["content"] if replies else ""


def offered_calls(calls: list, tools: list) -> list:
    """The calls of tools that were offered; a call of anything else is not a call."""
    names = {tool["function"]["name"] for tool in tools or []}
    return [call for call in calls if call["name"] in names]


def run_with_tools(model, tokenizer, conversations: list, tools: list | None, max_new_tokens: int,
                   max_calls: int = 2, temperature: float = 0.0, top_p: float = 1.0, generator=None,
                   copy_numbers: bool = True) -> list:
    """A Rollout for each conversation (a list of messages ending with the user's). Greedy by default.
    copy_numbers: the numbers of calculator expressions, and of the answer after a tool's result, are
    constrained to those of the conversation (tooluse/constrain.py); False lets the model write any."""
    newline = tokenizer.encode("\n", add_special_tokens=False)
    budget = prompt_budget(context_length(model.config), max_new_tokens)
    rollouts = [Rollout(build_prompt(tokenizer, messages, budget, cut=True, tools=tools)[0])
                for messages in conversations]
    going = list(range(len(rollouts)))
    tokens = NumberTokens(tokenizer) if copy_numbers else None
    for round_ in range(max_calls + 1):
        if not going:
            break
        prompts = [(rollouts[i].prompt_ids + rollouts[i].ids)[-budget:] for i in going]
        rule = CopiedNumbers(tokens, [conversations[i] + rollouts[i].messages for i in going]) \
            if copy_numbers else None
        replies = generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                           generator=generator, allowed=rule)
        still = []
        for i, reply in zip(going, replies):
            r = rollouts[i]
            ended = len(reply) < max_new_tokens
            r.ids += reply + ([EOS_ID] if ended else [])
            r.learn += [True] * (len(reply) + ended)
            r.ended &= ended
            text = tokenizer.decode(reply)
            content, calls = parse_reply(text)
            calls = offered_calls(calls, tools)
            if not (ended and calls and round_ < max_calls):
                r.messages.append({"role": "assistant", "content": text})
                continue
            r.messages.append({"role": "assistant", "content": content, "tool_calls": [
                {"type": "function", "function": call} for call in calls]})
            results = [{"role": "tool", "content": run_tool(call["name"], call["arguments"])} for call in calls]
            r.messages += results
            r.calls += len(calls)
            written = newline + [t for turn in encode_messages(tokenizer, results) for t in turn]
            written += generation_header(tokenizer)
            r.ids += written
            r.learn += [False] * len(written)
            still.append(i)
        going = still
    return rollouts
