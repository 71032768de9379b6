"""Constrained decoding: model/generate.py's `allowed` hook masks what a rule forbids, and the copy rule of
calculator calls (tooluse/constrain.py) lets a call hold only numbers of the conversation, whole."""
import re

import torch

from conftest import tiny_config
from model.generate import generate
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from tooluse.constrain import CopiedNumbers, NumberTokens, allowed_numbers
from tooluse import problems

CALL_START = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "'


def test_generation_takes_only_allowed_tokens_and_the_rule_sees_what_was_taken():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config()).eval()
    prompts = [[5, 6, 7], [8, 9]]
    free = generate(model, prompts, 6)
    seen = []

    def rule(new_tokens):  # row 0 may only write 11, then 12, ...; row 1 is not constrained
        seen.append([list(t) for t in new_tokens])
        keep = torch.ones(2, model.config.vocab_size, dtype=torch.bool)
        keep[0] = False
        keep[0, 11 + len(new_tokens[0])] = True
        return keep

    forced = generate(model, prompts, 6, allowed=rule)
    assert forced[0] == [11, 12, 13, 14, 15, 16] != free[0]
    assert forced[1] == free[1]  # an unconstrained row generates what it would have
    assert seen[3][0] == [11, 12, 13]  # before step 4 the rule saw the three tokens taken
    assert generate(model, prompts, 6, allowed=lambda new: None) == free


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_a_call_copies_the_questions_numbers_whole(tokenizer):
    question = [{"role": "user", "content": "小丽花164元买了8盒水彩笔，平均每盒多少钱？"}]
    rule = CopiedNumbers(NumberTokens(tokenizer), [question])
    digit = {c: tokenizer.convert_tokens_to_ids(c) for c in "0123456789/*"}

    def mask_after(expression):
        (row,) = rule([ids(tokenizer, CALL_START + expression)])
        return row

    start = mask_after("")
    assert start[digit["1"]] and start[digit["8"]] and not start[digit["3"]]
    after_16 = mask_after("16")
    assert after_16[digit["4"]] and not after_16[digit["5"]]
    assert not after_16[digit["/"]] and not after_16[ids(tokenizer, '"}}')[0]]  # 16 is a truncated 164
    after_164 = mask_after("164")
    assert after_164[digit["/"]] and after_164[digit["*"]] and not after_164[digit["1"]]
    assert mask_after("164/")[digit["8"]]


def test_outside_a_calls_expression_nothing_is_constrained(tokenizer):
    question = [{"role": "user", "content": "3个苹果每个2元"}]
    rule = CopiedNumbers(NumberTokens(tokenizer), [question, question])
    assert rule([ids(tokenizer, "一共要付999元。"), ids(tokenizer, "<tool_call>\n{\"name\": \"calc")]) is None
    closed = ids(tokenizer, CALL_START + '3*2"}}\n</tool_call>') + [EOS_ID]
    assert rule([closed, []]) is None


def test_allowed_numbers_are_the_conversations_and_unit_factors():
    numbers = allowed_numbers([{"role": "user", "content": "原价1,250.50元，打八五折"},
                               {"role": "tool", "content": "1063.93"}])
    assert {"1250.50", "1250.5", "1063.93", "0.85", "100", "1000"} <= numbers
    assert "125" not in numbers and "1063.9" not in numbers


def test_a_rate_is_allowed_only_where_the_words_state_it():
    numbers = allowed_numbers([{"role": "user", "content": "一条水渠长380米，已经挖好了百分之五，再挖25%，打8折，三成"}])
    assert {"0.05", "0.25", "0.8", "0.3", "380"} <= numbers
    assert not {"0.5", "0.35", "0.2", "0.03"} & numbers  # rates the question does not state
    assert "0.85" in allowed_numbers([{"role": "user", "content": "打八五折"}])
    assert "0.85" in allowed_numbers([{"role": "user", "content": "打85折"}])


def test_every_generated_problems_call_keeps_to_the_rule():
    # the rule may only ever rule out wrong calls: every number of every problem's own expression is allowed
    for split in problems.SPLITS:
        for problem in problems.generate(400, seed=3, split=split):
            allowed = allowed_numbers([{"role": "user", "content": problem.question}])
            assert set(re.findall(r"[0-9.]+", problem.expression)) <= allowed, (problem.question, problem.expression)


def test_after_a_tool_result_the_answer_copies_it_whole(tokenizer):
    conversation = [{"role": "user", "content": "每小时69千米，行驶了8小时，一共多少千米？"},
                    {"role": "assistant", "content": "", "tool_calls": []},
                    {"role": "tool", "content": "552"}]
    rule = CopiedNumbers(NumberTokens(tokenizer), [conversation])
    five, two = tokenizer.convert_tokens_to_ids("5"), tokenizer.convert_tokens_to_ids("2")
    (after_5,) = rule([ids(tokenizer, "一共行驶了5")])
    assert after_5[five] and not after_5[two]  # 55 can still become 552; 52 is no number of the conversation
    (after_552,) = rule([ids(tokenizer, "一共行驶了552")])
    assert after_552[ids(tokenizer, "千米")[0]] and not after_552[two]
