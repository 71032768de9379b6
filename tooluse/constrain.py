"""Constrained decoding of calculator calls: every number the model writes into an expression, and into
its answer once a tool has replied, is one the conversation wrote, or a factor that problems state in words.

    tokens = NumberTokens(tokenizer)                      # once per tokenizer: every token's text
    rule = CopiedNumbers(tokens, conversations)           # one list of messages per row of the batch
    generate(model, prompts, 64, allowed=rule)            # model/generate.py masks what the rule forbids

A tiny model reads a problem's numbers well enough to pick them, and then copies them badly: most wrong
calls of the tool-trained models hold a number that is not in the question at all, a truncated copy
(`164/8` -> `16*8`, `883` -> `88`). A grammar can rule that out, as llama.cpp's grammars and JSON modes rule
out malformed output: while a row is inside the `"expression": "..."` string of a call, a digit token is
allowed only when the number it extends is still the beginning of an allowed number, and a number may end
(an operator, a parenthesis, the closing quote) only where it is a whole allowed number. Outside that
string nothing is constrained, so the rule changes which numbers a call holds, never whether the model
calls or which operations it writes. The answer after a tool's result is held to the same rule over its
whole text, since the models copy the result as badly (`69*8` -> 552 -> "一共行驶了52千米").

The allowed numbers of a row: each number written in its messages (the question, earlier tool results), as
written and in the calculator's own format (`1,250.50` -> 1250.50 and 1250.5); the factors of units and
shapes a problem leaves unsaid (FACTORS: two sides of a rectangle, a week, a metre in centimetres, ...);
and the rates its words state, as the fraction each stands for (rates_in: `15%` and `百分之十五` -> 0.15,
`八五折` -> 0.85, `三成` -> 0.3, `一半` -> 0.5), so that a call cannot take 25% as 0.5.
"""
import re
from fractions import Fraction as F

import torch

from model.toolcall import TOOL_CALL_OPEN
from tooluse.calculator import format_number
from tooluse.problem import numbers_in
from tooluse.vocabulary import CHINESE_DIGITS

# Factors a word problem states in words or not at all: 2 and 4 sides, 7 days a week, 12 months, 24 hours,
# 60 minutes, 10 / 100 / 1000 between units, 100 for a percentage, 1 for "the whole".
FACTORS = ("1", "2", "4", "7", "10", "12", "24", "60", "100", "1000")

# How a problem states a rate: a percentage in digits or in words, a discount (八五折 pays 85%, 8折 80%),
# tenths (三成), a half.
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*[%％]")
_PERCENT_WORDS = re.compile(r"百分之([零一二三四五六七八九十百]+)")
_DISCOUNT = re.compile(r"([一二三四五六七八九]{1,2}|[0-9]\.[0-9]|[0-9]{1,2})折")
_TENTHS = re.compile(r"([一二三四五六七八九])成")

_EXPRESSION = re.compile(r'"expression"\s*:\s*"([^"\\]*)$')  # inside the expression string, unclosed
_NUMBER_TAIL = re.compile(r"[0-9.]*$")
_NUMBERS = re.compile(r"[0-9.]+")


def chinese_number(text: str) -> int | None:
    """0..100 written in Chinese numerals ("二十五" -> 25, "十五" -> 15, "一百" -> 100); None for anything else."""
    if text in ("百", "一百"):
        return 100
    if len(text) == 1 and text in CHINESE_DIGITS:
        return CHINESE_DIGITS.index(text)
    tens, ten, ones = text.partition("十")
    if not ten or len(tens) > 1 or len(ones) > 1 or not set(tens + ones) <= set(CHINESE_DIGITS[1:]):
        return None
    return (CHINESE_DIGITS.index(tens) if tens else 1) * 10 + (CHINESE_DIGITS.index(ones) if ones else 0)


def rates_in(text: str) -> set[str]:
    """The rates `text` states, as the calculator writes the fraction each stands for: "打八五折，再减15%"
    -> {"0.85", "0.15"}."""
    rates = {F(m.group(1)) / 100 for m in _PERCENT.finditer(text)}
    rates |= {F(n, 100) for n in map(chinese_number, _PERCENT_WORDS.findall(text)) if n is not None}
    for paid in _DISCOUNT.findall(text):
        if paid[0] in CHINESE_DIGITS:  # 八 -> 0.8, 八五 -> 0.85
            paid = "".join(str(CHINESE_DIGITS.index(c)) for c in paid)
            rates.add(F(int(paid), 10 ** len(paid)))
        else:  # 8 -> 0.8, 8.5 and 85 -> 0.85
            rates.add(F(paid) / (100 if len(paid) == 2 else 10))
    rates |= {F(CHINESE_DIGITS.index(d), 10) for d in _TENTHS.findall(text)}
    if "一半" in text:
        rates.add(F(1, 2))
    return {format_number(r) for r in rates}


def allowed_numbers(messages: list) -> set[str]:
    """The numbers a call in this conversation may hold, as strings: see the module's docstring."""
    numbers = set(FACTORS)
    for message in messages:
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            continue
        numbers.update(re.findall(r"[0-9]+(?:\.[0-9]+)?", text.replace(",", "")))
        numbers.update(format_number(x) for x in numbers_in(text) if x >= 0)
        numbers.update(rates_in(text))
    return numbers


class NumberTokens:
    """What the rule reads of a vocabulary, read once per tokenizer: every token's text, which tokens write a
    digit or a point (the only ones whose text the rule has to check), and the id of `<tool_call>`."""

    def __init__(self, tokenizer):
        self.vocab_size = len(tokenizer)
        self.texts = [tokenizer.decode([i]) for i in range(self.vocab_size)]
        self.open_id = tokenizer.convert_tokens_to_ids(TOOL_CALL_OPEN)
        self.numeric = [i for i, t in enumerate(self.texts) if re.search(r"[0-9.]", t)]
        plain = torch.ones(self.vocab_size, dtype=torch.bool)
        plain[self.numeric] = False
        self.plain = plain  # every other token: it ends a number, or writes none


class CopiedNumbers:
    """The `allowed` rule of model/generate.generate for one batch: row i may write into a calculator
    expression only numbers of allowed_numbers(conversations[i])."""

    def __init__(self, tokens: NumberTokens, conversations: list, written: list | None = None):
        """`written`: per row, the ids the reply already holds before generation starts (a server's
        `<tool_call>` prefill), read as if generated."""
        self.tokens = tokens
        self.written = written or [[] for _ in conversations]
        self.whole = [allowed_numbers(messages) for messages in conversations]
        # a row answering a tool's result: its whole reply is held to the rule
        self.answering = [bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
                          for messages in conversations]
        self.starts = [{n[:k] for n in whole for k in range(1, len(n) + 1)} for whole in self.whole]
        self.masks = {}  # (row, tail) -> row_mask

    def expression_so_far(self, new_tokens: list) -> str | None:
        """The expression a row is writing (the text after `"expression": "`), or None when it is not
        inside one. Only the text after the row's last `<tool_call>` is read."""
        start = max((k for k, t in enumerate(new_tokens) if t == self.tokens.open_id), default=None)
        if start is None:
            return None
        found = _EXPRESSION.search(self.texts_of(new_tokens[start + 1:]))
        return found.group(1) if found else None

    def texts_of(self, ids: list) -> str:
        return "".join(self.tokens.texts[i] for i in ids)

    def fits(self, row: int, text: str) -> bool:
        """Whether `text`, the expression so far plus one token, keeps to the rule: every finished number
        whole, the last one (when the expression goes on) the beginning of an allowed number."""
        closed = '"' in text
        text = text.split('"', 1)[0]
        numbers = list(_NUMBERS.finditer(text))
        for k, number in enumerate(numbers):
            going_on = k == len(numbers) - 1 and number.end() == len(text) and not closed
            if number.group() not in (self.starts[row] if going_on else self.whole[row]):
                return False
        return True

    def row_mask(self, row: int, tail: str) -> torch.Tensor:
        """The tokens row may take next when the number it is writing so far is `tail` ("" between numbers);
        kept, since a reply asks again for the same few tails."""
        key = (row, tail)
        if key not in self.masks:
            mask = torch.ones(self.tokens.vocab_size, dtype=torch.bool)
            if tail and tail not in self.whole[row]:
                mask &= ~self.tokens.plain  # the number is unfinished: only digits may follow
            for i in self.tokens.numeric:
                text = tail + self.tokens.texts[i]
                # a token of digits only extends the number: the common case, checked directly
                if not (text in self.starts[row] if self.tokens.texts[i].isdigit() else self.fits(row, text)):
                    mask[i] = False
            if not mask.any():  # nothing fits (the model wrote itself into a corner): let it go on
                mask.fill_(True)
            self.masks[key] = mask
        return self.masks[key]

    def __call__(self, new_tokens: list):
        masks = None
        for row, tokens in enumerate(new_tokens):
            tokens = self.written[row] + tokens
            expression = self.texts_of(tokens) if self.answering[row] else self.expression_so_far(tokens)
            if expression is None:
                continue
            if masks is None:
                masks = torch.ones(len(new_tokens), self.tokens.vocab_size, dtype=torch.bool)
            tail = _NUMBER_TAIL.search(expression).group()
            masks[row] = self.row_mask(row, tail)
        return masks
