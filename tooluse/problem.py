"""One word problem of the generator (tooluse/problems.py): the Problem type, make_problem, through which every
family returns its problem once it has checked it is a good one, and the reward check, answer_is_right."""
import math
import re
from dataclasses import dataclass
from fractions import Fraction as F

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
