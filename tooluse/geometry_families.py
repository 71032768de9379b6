"""The distance and area families of the word-problem generator (tooluse/problems.py): distance, speed, time,
meeting, rectangles, squares, floors and fences. Split from tooluse/quantity_families.py to keep each module short.
A family draws its numbers from the Draw it is given, fills one of its phrasings (tooluse/phrasings.json) with
them through rng.phrase and returns the problem through make_problem (tooluse/problem.py)."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing's numbers are written with it
from tooluse.problem import make_problem
from tooluse.quantity_families import _size
from tooluse.vocabulary import BUYERS, CHILDREN, MOVERS, RECTANGLES, SQUARES, draw_price


# --- distance, speed, time

def _mover(rng):
    who, verb, lo, hi, du, tu = rng.choice(MOVERS)
    who = who or rng.choice(CHILDREN)
    t = rng.randint(8, 40) if tu == "分钟" else (F(rng.randint(4, 16), 2) if rng.random() < 0.3 else rng.randint(2, 8))
    return who, verb, rng.randint(lo, hi), t, du, tu


def distance(rng):
    m, verb, v, t, du, tu = _mover(rng)
    q = rng.phrase("distance", mover=m, verb=verb, v=v, t=_f(t), du=du, tu=tu)
    d = v * F(t)
    return make_problem("distance", "one_step", q, f"{v}*{_f(t)}", d, du, f"一共{verb}了{_f(d)}{du}。")


def travel_time(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.phrase("travel_time", mover=m, verb=verb, v=v, d=_f(d), du=du, tu=tu)
    return make_problem("travel_time", "one_step", q, f"{_f(d)}/{v}", t, tu, f"需要{_f(t)}{tu}。")


def speed(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.phrase("speed", mover=m, verb=verb, d=_f(d), t=_f(t), du=du, tu=tu)
    return make_problem("speed", "one_step", q, f"{_f(d)}/{_f(t)}", v, du, f"平均每{tu}{verb}{v}{du}。")


def meet(rng):
    a, b = rng.sample(CHILDREN, 2)
    who = rng.choice(("walkers", "cars", "minutes"))
    if who == "walkers":
        v1, v2, t, du = rng.randint(3, 6), rng.randint(3, 6), rng.randint(2, 6), "千米"
        q = rng.phrase("meet", "walkers", a=a, b=b, v1=v1, v2=v2, t=t)
    elif who == "cars":
        v1, v2, t, du = rng.randint(45, 90), rng.randint(45, 90), rng.randint(2, 6), "千米"
        q = rng.phrase("meet", "cars", v1=v1, v2=v2, t=t)
    else:
        v1, v2, t, du = rng.randint(55, 90), rng.randint(55, 90), rng.randint(2, 6) * 5, "米"
        q = rng.phrase("meet", "minutes", a=a, b=b, v1=v1, v2=v2, t=t)
    d = (v1 + v2) * t
    return make_problem("meet", "two_step", q, f"({v1}+{v2})*{t}", d, du, f"两地相距{d}{du}。")


# --- area and perimeter

def _rectangle(rng):
    what, u, lo, hi = rng.choice(RECTANGLES)
    w, extra = _size(rng, lo, hi), _size(rng, 1, hi)
    return what, u, w + extra, w


def rect_area(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.phrase("rect_area", what=what, u=u, l=_f(l), w=_f(w))
    return make_problem("rect_area", "one_step", q, f"{_f(l)}*{_f(w)}", l * w, f"平方{u}", f"面积是{_f(l * w)}平方{u}。")


def rect_perimeter(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.phrase("rect_perimeter", what=what, u=u, l=_f(l), w=_f(w))
    p = (l + w) * 2
    return make_problem("rect_perimeter", "two_step", q, f"({_f(l)}+{_f(w)})*2", p, u, f"周长是{_f(p)}{u}。")


def square(rng):
    what, u, lo, hi = rng.choice(SQUARES)
    s = _size(rng, lo, hi)
    if rng.random() < 0.5:
        q = rng.phrase("square", "area", what=what, u=u, s=_f(s))
        return make_problem("square", "one_step", q, f"{_f(s)}*{_f(s)}", s * s, f"平方{u}", f"面积是{_f(s * s)}平方{u}。")
    q = rng.phrase("square", "perimeter", what=what, u=u, s=_f(s))
    return make_problem("square", "one_step", q, f"{_f(s)}*4", s * 4, u, f"周长是{_f(s * 4)}{u}。")


def floor_cost(rng):
    l, w, who = _size(rng, 3, 12), _size(rng, 2, 8), rng.choice(BUYERS)
    p = F(rng.randint(20, 150))
    q = rng.phrase("floor_cost", l=_f(l), w=_f(w), p=p, who=who)
    cost = l * w * p
    return make_problem("floor_cost", "two_step", q, f"{_f(l)}*{_f(w)}*{p}", cost, "元", f"一共需要{_f(cost)}元。")


def fence_cost(rng):
    l, w = _size(rng, 5, 40), _size(rng, 3, 20)
    p = draw_price(rng, 5, 30)
    q = rng.phrase("fence_cost", l=_f(l), w=_f(w), p=_f(p))
    cost = (l + w) * 2 * p
    return make_problem("fence_cost", "three_step", q, f"({_f(l)}+{_f(w)})*2*{_f(p)}", cost, "元", f"一共需要{_f(cost)}元。")
