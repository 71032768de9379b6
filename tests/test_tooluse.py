"""tooluse/: the calculator (right answers, hostile input answered quickly with an 错误： string), the
<tool_call> format (round trips, malformed blocks kept as text), and the word-problem generator (seeded,
every problem's expression gives its answer, held-out phrasings and families stay out of train, phrasings vary,
every phrasing of tooluse/phrasings.json is drawn and filled with exactly its fields)."""
import json
import re
import string
import time
from fractions import Fraction

import pytest

from tooluse import geometry_families, money_families, problems, quantity_families, vocabulary
from tooluse.calculator import CALCULATOR, calculate, format_number, run_tool
from model.toolcall import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_reply, render_call,
                           render_tools_system)
from tooluse.problem import PHRASINGS, Draw
from tooluse.problems import (FAMILIES, HELD_OUT_FAMILIES, KINDS, answer_is_right, conversation,
                              generate, numbers_in)


# --- calculator

@pytest.mark.parametrize("expression, expected", [
    ("1+2*3", "7"), ("(1+2)*3", "9"), ("10-4-3", "3"), ("100/10/5", "2"), ("2*3+4*5", "26"),
    ("-3+5", "2"), ("-(2+3)*2", "-10"), ("2*-3", "-6"), ("3--2", "5"), ("+4", "4"), ("-0", "0"),
    ("142+150+138+146", "576"), ("(142+150+138+146)/4", "144"), ("7/2", "3.5"), ("1/3", "0.333333"),
    ("2/3", "0.666667"), ("0.1+0.2", "0.3"), ("1/3*3", "1"), ("3.5*4", "14"), ("12.5*0.8", "10"),
    (".5+3.", "3.5"), ("240*(1-0.2)", "192"), ("8-(-3)", "11"), ("((((1))))+((2))", "3"),
    (" 3 + 4 ", "7"), ("3+4=", "7"), ("３＋４×２", "11"), ("（１２－２）÷４", "2.5"), ("6×7", "42"),
    ("9÷3", "3"), ("8＊2／4", "4"), ("１２．５×２", "25"), ("0.1*3", "0.3"), ("999999999999999", "999999999999999"),
])
def test_calculate(expression, expected):
    assert calculate(expression) == expected


HOSTILE = [
    "9**9**9", "2**100", "(" * 10_000 + "1" + ")" * 10_000, "(" * 25 + "1" + ")" * 25, "x" * 10_000_000,
    "__import__('os')", "__import__('os').system('ls')", "1/0", "5/(3-3)", "1e309", "1e5", "nan", "inf",
    "", "   ", "=", None, 12, 1.5, ["1+1"], b"1+1", "1" * 200, "99999999*99999999", "1000000000000000+1",
    "1+", "*3", "(1+2", "1+2)", "()", "3 4", "2(3)", "1,000", "3，4", "1..2", ".", "abs(-1)", "0x10",
    "1_000", "1j", "True", "lambda: 1", "(1)(2)", "\x00", "1+1\n+1;import os", "１＋",
]


def test_hostile_input_gives_errors_quickly():
    start = time.perf_counter()
    results = [calculate(e) for e in HOSTILE]
    assert time.perf_counter() - start < 1.0
    for expression, result in zip(HOSTILE, results):
        assert isinstance(result, str) and result.startswith("错误："), (str(expression)[:40], result)


def test_error_reasons():
    assert calculate("1/0") == "错误：除数为零"
    assert calculate("x" * 201).startswith("错误：表达式过长")
    assert calculate("2x") == "错误：不支持的符号 'x'"
    assert calculate("") == "错误：表达式为空"
    assert calculate("(" * 21 + "1" + ")" * 21).startswith("错误：括号嵌套过深")
    assert calculate("(" * 20 + "1" + ")" * 20) == "1"  # 20 deep is still fine
    assert calculate("99999999*99999999").startswith("错误：数值过大")


@pytest.mark.parametrize("x, expected", [
    (292, "292"), (292.0, "292"), (12.5, "12.5"), (1 / 3, "0.333333"), (2 / 3, "0.666667"), (-0.0, "0"),
    (-1e-9, "0"), (0, "0"), (1e14, "100000000000000"), (123456.7, "123456.7"), (0.1 + 0.2, "0.3"),
    (-2.5, "-2.5"), (3.0000000001, "3"), (12.50, "12.5"), (Fraction(7, 2), "3.5"), (Fraction(-1, 3), "-0.333333"),
    (999999999999999.0, "999999999999999"), (0.000001, "0.000001"), (0.0000004, "0"), (2.0000015, "2.000002"),
])
def test_format_number(x, expected):
    assert format_number(x) == expected


def test_run_tool():
    assert run_tool("calculator", {"expression": "(3+4)*2"}) == "14"
    assert run_tool("calculator", {"expression": "7/3", "extra": 1}) == "2.333333"  # extra keys ignored
    assert run_tool("weather", {"city": "北京"}).startswith("错误：")
    for arguments in ({}, {"expr": "1+1"}, {"expression": 3}, {"expression": True}, {"expression": None},
                      "1+1", None, ["1+1"]):
        assert run_tool("calculator", arguments).startswith("错误："), arguments
    assert run_tool(["calculator"], {"expression": "1"}).startswith("错误：")  # unhashable name
    assert run_tool("calculator", {"expression": "1/0"}) == "错误：除数为零"


def test_schema_is_exactly_what_clients_send():
    assert CALCULATOR == {"type": "function", "function": {
        "name": "calculator", "description": "计算一个算术表达式的值，支持 + - * / 和括号",
        "parameters": {"type": "object", "properties": {
            "expression": {"type": "string", "description": "算术表达式，例如 (3+4)*2"}}, "required": ["expression"]}}}


# --- the <tool_call> format

def test_render_call():
    expected = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "(3+4)*2"}}\n</tool_call>'
    assert render_call("calculator", {"expression": "(3+4)*2"}) == expected
    assert render_call("calculator", '{"expression": "(3+4)*2"}') == expected  # OpenAI's JSON string
    assert "算术" in render_call("calculator", {"expression": "算术"})  # no \\u escapes
    for bad in ("{not json", "[1, 2]", '"a string"', 3):
        with pytest.raises(ValueError):
            render_call("calculator", bad)


def test_parse_reply_round_trip_and_two_calls():
    one = render_call("calculator", {"expression": "1+1"})
    two = render_call("calculator", {"expression": "2*3"})
    assert parse_reply(one) == ("", [{"name": "calculator", "arguments": {"expression": "1+1"}}])
    content, calls = parse_reply(f"我来算一下。\n{one}\n{two}\n")
    assert content == "我来算一下。"
    assert [c["arguments"]["expression"] for c in calls] == ["1+1", "2*3"]
    assert parse_reply("没有调用工具，答案是5。") == ("没有调用工具，答案是5。", [])


def test_parse_reply_keeps_malformed_blocks_as_content():
    cases = [
        "<tool_call>\n{not json}\n</tool_call>",                                  # bad JSON
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1"}}',  # no close tag
        '<tool_call>{"name": 3, "arguments": {}}</tool_call>',                   # name not a string
        '<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>',       # arguments not an object
        '<tool_call>{"name": "calculator", "arguments": "[1]"}</tool_call>',     # string, but not an object
        '<tool_call>["calculator"]</tool_call>',                                  # not an object
        "</tool_call> <tool_call>",
    ]
    for text in cases:
        assert parse_reply(text) == (text.strip(), []), text
    good = render_call("calculator", {"expression": "2+2"})
    content, calls = parse_reply(f"前面 <tool_call>{{oops</tool_call> 中间 {good} 后面")
    assert content == "前面 <tool_call>{oops</tool_call> 中间  后面"
    assert calls == [{"name": "calculator", "arguments": {"expression": "2+2"}}]


def test_parse_reply_lenient_forms():
    # arguments as a JSON string holding an object, and missing arguments
    text = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"5*5\\"}"}</tool_call>'
    assert parse_reply(text)[1] == [{"name": "calculator", "arguments": {"expression": "5*5"}}]
    assert parse_reply('<tool_call>{"name": "now"}</tool_call>')[1] == [{"name": "now", "arguments": {}}]
    # a stray open tag before a real call: the stray one stays text, the call is found
    content, calls = parse_reply('<tool_call> 嗯 <tool_call>{"name": "a", "arguments": {}}</tool_call>')
    assert content == "<tool_call> 嗯" and calls == [{"name": "a", "arguments": {}}]


def test_parse_reply_never_raises_and_is_fast():
    start = time.perf_counter()
    for text in ["", TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN * 100_000 + TOOL_CALL_CLOSE,
                 (TOOL_CALL_OPEN + "{" + TOOL_CALL_CLOSE) * 20_000, TOOL_CALL_OPEN + "[" * 100_000 + TOOL_CALL_CLOSE,
                 TOOL_CALL_OPEN + '{"name": "a", "arguments": "' + "[" * 100_000 + '"}' + TOOL_CALL_CLOSE,
                 TOOL_CALL_OPEN + "1" * 10_000 + TOOL_CALL_CLOSE, "\x00\ud800"]:
        content, calls = parse_reply(text)
        assert calls == [] and content == text.strip()
    # a guard against backtracking that grows with the input (minutes on these sizes), loose enough for a
    # machine that is busy with other work
    assert time.perf_counter() - start < 10.0
    assert parse_reply(None) == ("", [])


def test_render_tools_system():
    line = json.dumps(CALCULATOR, ensure_ascii=False)
    assert render_tools_system([CALCULATOR]) == f"# 工具\n<tools>\n{line}\n</tools>"
    assert render_tools_system([CALCULATOR, CALCULATOR], "你是助手。") == \
        f"你是助手。\n\n# 工具\n<tools>\n{line}\n{line}\n</tools>"


# --- the word problems

@pytest.fixture(scope="module")
def generated():
    return generate(2000, 0, "train"), generate(2000, 0, "held_out"), generate(1000, 0, "held_out_families")


def test_generate_is_seeded():
    a, b, c = generate(50, 1, "train"), generate(50, 1, "train"), generate(50, 2, "train")
    assert a == b and a != c
    assert generate(50, 1, "held_out") != generate(50, 2, "held_out")
    with pytest.raises(ValueError):
        generate(5, 0, "test")


def test_kinds_pass_over_the_others_and_change_no_draw():
    # GRPO on the multi-step problems: the same draws as the all-kinds list, the one-step problems left out
    multi = ("two_step", "three_step")
    every = problems.generate(300, seed=5, split="train")
    only = problems.generate(40, seed=5, split="train", kinds=multi)
    assert [p.question for p in only] == [p.question for p in every if p.kind in multi][:40]
    with pytest.raises(ValueError, match="kinds"):
        problems.generate(3, seed=5, split="train", kinds=("four_step",))


def test_every_problem_is_right(generated):
    for p in generated[0] + generated[1] + generated[2]:
        assert p.kind in KINDS
        assert re.fullmatch(r"[0-9.+\-*/()]+", p.expression), p
        assert calculate(p.expression) == format_number(p.answer), p
        assert p.answer > 0 and abs(p.answer * 100 - round(p.answer * 100)) < 1e-6, p
        assert answer_is_right(p.final, p.answer), p
        assert p.final.endswith("。") and p.question.endswith(("？", "。")), p


def _vocabulary() -> list[str]:
    """The fillers the generator draws (names, goods, units...): every string in its modules' module-level tables."""
    words = set()
    tables = [value for module in (vocabulary, money_families, quantity_families, geometry_families)
              for value in vars(module).values()]
    for value in tables:
        if isinstance(value, list):
            for entry in value:
                for w in (entry if isinstance(entry, tuple) else (entry,)):
                    if isinstance(w, str) and w and "{" not in w:
                        words.add(w)
    return sorted(words, key=len, reverse=True)


@pytest.fixture(scope="module")
def skeleton():
    """A question with its numbers and fillers blanked: what is left is the phrasing."""
    words = _vocabulary()

    def blank(question):
        s = re.sub(r"-?[0-9.]+", "#", question)
        s = re.sub(r"(百分之|打)[零一二三四五六七八九十]+", r"\1#", s)
        for w in words:
            s = s.replace(w, "_")
        return s
    return blank


def test_splits(generated, skeleton):
    train, held_out, new_families = generated
    assert {p.family for p in train} == {p.family for p in held_out} == set(FAMILIES) - HELD_OUT_FAMILIES
    assert {p.family for p in new_families} == set(HELD_OUT_FAMILIES)
    assert HELD_OUT_FAMILIES < set(FAMILIES) and 0.2 <= len(HELD_OUT_FAMILIES) / len(FAMILIES) <= 0.3
    # every kind is taught and tested
    assert {p.kind for p in train} == {p.kind for p in held_out} == {p.kind for p in new_families} == set(KINDS)
    # no held-out wording is ever drawn for training: per family, the phrasings of the two splits are disjoint
    for family in set(FAMILIES) - HELD_OUT_FAMILIES:
        seen = {skeleton(p.question) for p in train if p.family == family}
        unseen = {skeleton(p.question) for p in held_out if p.family == family}
        assert unseen and not seen & unseen, (family, seen & unseen)


def test_draw_takes_phrasings_from_its_share():
    options = list(range(10))
    train, held_out = Draw("s", held_out_phrasings=False), Draw("s", held_out_phrasings=True)
    assert {train.phrasing(options) for _ in range(300)} == {0, 2, 3, 4, 6, 7, 8}
    assert {held_out.phrasing(options) for _ in range(300)} == {1, 5, 9}
    with pytest.raises(ValueError):
        held_out.phrasing(["only one"])


def test_every_family_has_several_phrasings(skeleton):
    shares = Draw("0", held_out_phrasings=False), Draw("0", held_out_phrasings=True)
    for family in FAMILIES:
        skeletons = {skeleton(problems._draw(family, rng).question) for rng in shares for _ in range(200)}
        assert len(skeletons) >= 3, (family, skeletons)


class _RecordingDraw(Draw):
    """A Draw that notes every phrasing it fills, with the names of the fields it was given."""

    def __init__(self, seed, held_out_phrasings):
        super().__init__(seed, held_out_phrasings)
        self.filled = []

    def fill(self, phrasing, **fields):
        self.filled.append((phrasing, set(fields)))
        return super().fill(phrasing, **fields)


def _field_names(phrasing) -> set:
    """The {fields} a phrasing's templates name: one template, or every template of a situation."""
    templates = [phrasing] if isinstance(phrasing, str) else [v for v in phrasing.values() if isinstance(v, str)]
    return {name for t in templates for _, name, _, _ in string.Formatter().parse(t) if name is not None}


def test_every_phrasing_is_drawn_and_filled_with_exactly_its_fields():
    """tooluse/phrasings.json against the families: drawn in both shares, a family uses every phrasing of
    every list it has, and fills a list with the same fields each time, exactly those its templates name
    (none missing, which would be a KeyError, and none given that no template uses)."""
    assert list(PHRASINGS) == list(FAMILIES)
    for family in FAMILIES:
        shares = _RecordingDraw(family, held_out_phrasings=False), _RecordingDraw(family, held_out_phrasings=True)
        for rng in shares:
            for _ in range(200):
                problems._draw(family, rng)
        filled = [entry for rng in shares for entry in rng.filled]
        for key, phrasings in PHRASINGS[family].items():
            drawn = [(p, given) for p, given in filled if any(p is q for q in phrasings)]
            unused = [q for q in phrasings if not any(p is q for p, _ in drawn)]
            assert not unused, (family, key, unused)
            given = {frozenset(g) for _, g in drawn}
            assert given == {frozenset(set().union(*map(_field_names, phrasings)))}, (family, key, given)


def test_conversation(generated):
    p = generated[0][0]
    record = conversation(p)
    assert record["tools"] == [CALCULATOR]
    user, call, tool, final = record["conversations"]
    assert user == {"role": "user", "content": p.question}
    assert call["role"] == "assistant" and call["content"] == ""
    assert call["tool_calls"] == [{"type": "function", "function": {
        "name": "calculator", "arguments": {"expression": p.expression}}}]
    assert tool == {"role": "tool", "content": format_number(p.answer)}
    assert final == {"role": "assistant", "content": p.final}
    json.dumps(record, ensure_ascii=False)  # plain JSON, ready for a .jsonl line


def test_answer_is_right():
    assert answer_is_right("一共需要292元。", 292)
    assert answer_is_right("先算3+4=7，再乘2，答案是14", 14)  # the last number wins
    assert not answer_is_right("答案是14，不对，是15", 14)
    assert answer_is_right("每千克12.50元", 12.5)
    assert answer_is_right("约0.33", 1 / 3)  # rounded to 2 decimals
    assert not answer_is_right("约0.3", 1 / 3)
    assert answer_is_right("总共1,250元", 1250)
    assert answer_is_right("温差是-3度", -3)
    assert not answer_is_right("8-3", -3)  # a minus after a digit is subtraction: the last number is 3
    assert not answer_is_right("我不知道", 5)
    assert not answer_is_right("", 0)
    assert not answer_is_right("5", float("nan"))
    assert numbers_in("共1,250.50元，少了-3个，第2.5") == [1250.5, -3.0, 2.5]
