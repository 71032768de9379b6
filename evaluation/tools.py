"""The scoreboard of being right: word problems whose answer is checked, not judged.

    board = tool_board(model, tokenizer, generate(200, seed=1, split="held_out"), ordinary_questions)
    board["held_out_families"] = accuracy(solve(model, tokenizer, generate(200, 1, "held_out_families")))

Four figures, all greedy:
- with tools: the problem asked with the calculator offered, run through the real tool loop
  (tooluse/agent.py: the model's call is computed and the result handed back); right when the last
  number of the final answer is the problem's answer (tooluse/problems.answer_is_right);
  the numbers of the call and of the answer after the result are copied from the conversation
  (tooluse/constrain.py), as the server and the RL rollouts copy them;
- free numbers: the same, with no constraint on the numbers the model writes (what the model reads alone);
- without tools: the same problems asked with no tool offered, judged by the same rule;
- false calls: ordinary held-out questions asked with the calculator offered; a false call is a reply
  that calls it.
The problems of the "held_out" split are worded in phrasings held out of training (tooluse/problems.py), so
the score measures reading problems worded in ways the model never saw, not memory of templates; those of
"held_out_families" are kinds of problem it never saw at all, scored with the calculator only.
"""
import math

from evaluation.scoreboard import answer_all
from model.chat import build_prompt, prompt_budget
from model.generate import context_length
from model.toolcall import parse_reply
from tooluse.agent import offered_calls, run_with_tools
from tooluse.calculator import CALCULATOR
from tooluse.problems import KINDS, answer_is_right


def share(right: list[bool]) -> dict:
    return {"right": sum(right), "of": len(right), "share": sum(right) / len(right) if right else 0.0}


def solve(model, tokenizer, problems: list, max_new_tokens: int = 64, batch_size: int = 32,
          copy_numbers: bool = True) -> list[dict]:
    """Each problem asked with the calculator offered, through the tool loop: its call, final answer and
    verdict. copy_numbers: the numbers constrained to the conversation's, as the tool loop does by default
    (tooluse/constrain.py); False: the model writes any."""
    questions = [[{"role": "user", "content": p.question}] for p in problems]
    rollouts = []
    for start in range(0, len(questions), batch_size):
        rollouts += run_with_tools(model, tokenizer, questions[start:start + batch_size], [CALCULATOR],
                                   max_new_tokens, copy_numbers=copy_numbers)
    records = []
    for p, rollout in zip(problems, rollouts):
        call = next((m["tool_calls"][0]["function"]["arguments"].get("expression")
                     for m in rollout.messages if m.get("tool_calls")), None)
        records.append({"family": p.family, "kind": p.kind, "question": p.question, "expression": p.expression,
                        "answer": p.answer, "call": call, "final": rollout.final,
                        "right": answer_is_right(rollout.final, p.answer)})
    return records


def accuracy(records: list[dict]) -> dict:
    """{"with_tools", "called", "by_kind"} of solve()'s records."""
    return {
        "with_tools": share([r["right"] for r in records]),
        "called": share([r["call"] is not None for r in records]),
        "by_kind": {kind: share([r["right"] for r in records if r["kind"] == kind])
                    for kind in KINDS if any(r["kind"] == kind for r in records)},
    }


def tool_board(model, tokenizer, problems: list, ordinary_questions: list[str], max_new_tokens: int = 64,
               batch_size: int = 32) -> dict:
    """{"with_tools", "free_numbers", "without_tools", "called", "false_calls", "by_kind", "problems"}: the figures
    and each problem's call, answers and verdicts, in order (for a question-by-question comparison of two models)."""
    records = solve(model, tokenizer, problems, max_new_tokens, batch_size)
    free = solve(model, tokenizer, problems, max_new_tokens, batch_size, copy_numbers=False)
    for record, unconstrained in zip(records, free):
        record.update(free_call=unconstrained["call"], free_final=unconstrained["final"],
                      right_free=unconstrained["right"])
    budget = prompt_budget(context_length(model.config), max_new_tokens)
    bare = [build_prompt(tokenizer, [{"role": "user", "content": p.question}], budget, cut=True)[0]
            for p in problems]
    plain = answer_all(model, tokenizer, [p.question for p in problems], bare, max_new_tokens, batch_size=batch_size)
    for record, no_tool in zip(records, plain):
        record.update(no_tool_answer=no_tool["answer"],
                      right_without_tools=answer_is_right(no_tool["answer"], record["answer"]))

    offered = [build_prompt(tokenizer, [{"role": "user", "content": q}], budget, cut=True, tools=[CALCULATOR])[0]
               for q in ordinary_questions]
    replies = answer_all(model, tokenizer, ordinary_questions, offered, max_new_tokens, batch_size=batch_size)
    called = [bool(offered_calls(parse_reply(r["answer"])[1], [CALCULATOR])) for r in replies]
    return {
        **accuracy(records),
        "free_numbers": share([r["right_free"] for r in records]),
        "without_tools": share([r["right_without_tools"] for r in records]),
        "false_calls": share(called),
        "problems": records,
        "false_call_questions": [r["question"] for r, c in zip(replies, called) if c],
    }


def sign_test(a: list[bool], b: list[bool]) -> dict:
    """Question by question, how often only `a` is right and how often only `b` is, and the two-sided
    exact sign test's p-value on those discordant pairs (ties carry no information about which is better)."""
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": p}
