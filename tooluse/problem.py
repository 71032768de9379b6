"""One word problem of the generator (tooluse/problems.py): the Problem type, the wording of every family
(PHRASINGS, read from tooluse/phrasings.json) and the Draw that picks and fills one phrasing, make_problem,
through which every family returns its problem once it has checked it is a good one, and the reward check,
answer_is_right."""
import json
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction as F
from pathlib import Path

from tooluse.calculator import calculate, format_number

KINDS = ("one_step", "two_step", "three_step")


@dataclass
class Problem:
    family: str
    kind: str          # one_step, two_step or three_step
    question: str
    expression: str    # what a correct calculator call holds
    answer: float
    unit: str          # "元", "岁", "千米", "%", ... or ""
    final: str         # the answer sentence, e.g. "一共需要292元。"


# The wording of every family: {family: {list name: [phrasing, ...]}}. A list named "question" holds question
# templates; a list named "situations" holds objects, each a question template with what goes with that
# wording (the final answer sentence, the unit, the range its numbers are drawn from); a family worded in
# several ways (meet, square) names a list for each. Templates are str.format strings with named fields,
# "{item}每{mw}{price}元", filled by the family through Draw.phrase or Draw.fill. A list's order decides which
# of its phrasings are held out (below): add a phrasing at the end, and reorder none.
PHRASINGS = json.loads(Path(__file__).with_name("phrasings.json").read_text(encoding="utf-8"))

# Every 4th phrasing of a question, counting from the second (indices 1, 5, 9, ...), is held out of training,
# so a family's held-out problems are worded in ways the model never saw, for a kind of problem it did see.
HELD_OUT_PHRASING_EVERY = 4


class Draw(random.Random):
    """The random source a family draws one problem from: numbers as random.Random draws them, and the
    question's wording from one share of the family's phrasings, the training share or the held-out one."""

    def __init__(self, seed: str, held_out_phrasings: bool):
        super().__init__(seed)
        self.held_out_phrasings = held_out_phrasings

    def phrasing(self, options: list):
        """One of `options` (the phrasings of a question, in the family's order) from this draw's share."""
        share = [o for i, o in enumerate(options)
                 if (i % HELD_OUT_PHRASING_EVERY == 1) == self.held_out_phrasings]
        if not share:
            raise ValueError(f"a question with {len(options)} phrasings has none in this share: write at least 2")
        return self.choice(share)

    def phrase(self, family: str, key: str = "question", **fields):
        """One of `family`'s phrasings (its list `key` in PHRASINGS) from this draw's share, filled with `fields`:
        rng.phrase("shopping_total", item="苹果", mw="千克", price="4.5", n=3, who="小明")."""
        return self.fill(self.phrasing(PHRASINGS[family][key]), **fields)

    def fill(self, phrasing, **fields):
        """A phrasing with its fields filled in: a template's text, or a situation's copy with every template
        in it filled (its numbers as they are)."""
        if isinstance(phrasing, str):
            return phrasing.format(**fields)
        return {k: v.format(**fields) if isinstance(v, str) else v for k, v in phrasing.items()}


class Retry(Exception):
    """The numbers drawn make a poor problem (a negative or ragged answer): draw the family again."""


def make_problem(family, kind, question, expression, answer, unit, final) -> Problem:
    """The Problem, after checking that it is a good one; raises Retry when it is not."""
    assert kind in KINDS and re.fullmatch(r"[0-9.+\-*/()]+", expression), (family, expression)
    answer = F(answer)
    if answer <= 0 or (answer * 100).denominator != 1:
        raise Retry
    if calculate(expression) != format_number(answer) or not answer_is_right(final, float(answer)):
        raise Retry  # a family whose expression never matches its answer fails loudly in problems._draw
    return Problem(family, kind, question, expression, float(answer), unit, final)


# a number: an optional minus (not after a digit: "8-3" is 8 and 3), thousands commas, decimals
_NUMBER = re.compile(r"(?<![0-9.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")


def numbers_in(text: str) -> list[float]:
    """Every number written in `text`, in order: "共1,250.50元，少-3" -> [1250.5, -3.0]."""
    if not isinstance(text, str):
        return []
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def answer_is_right(reply: str, answer: float) -> bool:
    """The reward check: the last number in the reply equals the answer, within 1e-6 relative or 0.01
    absolute (an answer rounded to 2 decimals still counts). False when the reply holds no number."""
    numbers = numbers_in(reply)
    if not numbers or not math.isfinite(answer):
        return False
    return abs(numbers[-1] - answer) <= max(1e-6 * abs(answer), 0.01)
