"""The families of the word-problem generator (tooluse/problems.py) that count and measure: ages, averages, unit
conversions, sharing and groups, comparisons, temperature (distance and area: tooluse/geometry_families.py).
A family draws its numbers from the Draw it is given, fills one of its phrasings (tooluse/phrasings.json) with
them through rng.phrase and returns the problem through make_problem (tooluse/problem.py), or raises Retry when
its numbers make a poor problem."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing's numbers are written with it
from tooluse.problem import PHRASINGS, Retry, make_problem
from tooluse.vocabulary import ADULTS, BUYERS, CHILDREN, CITIES, CONTAINERS, CONVERSIONS, COUNTABLES, RELATIVES


def _size(rng, lo: int, hi: int) -> F:
    """A length in [lo, hi], whole or (a quarter of the time) ending in .5."""
    return F(rng.randint(2 * lo, 2 * hi), 2) if rng.random() < 0.25 else F(rng.randint(lo, hi))


# --- ages

def _child_and_relative(rng):
    child, (rel, lo, hi) = rng.choice(CHILDREN), rng.choice(RELATIVES)
    c = rng.randint(4, 14)
    return child, c, rel, c + rng.randint(lo, hi)


def age_sum(rng):
    child, c, rel, r = _child_and_relative(rng)
    q = rng.phrase("age_sum", child=child, c=c, rel=rel, r=r)
    return make_problem("age_sum", "one_step", q, f"{c}+{r}", c + r, "岁", f"两人的年龄和是{c + r}岁。")


def age_diff(rng):
    child, c, rel, r = _child_and_relative(rng)
    q = rng.phrase("age_diff", child=child, c=c, rel=rel, r=r)
    return make_problem("age_diff", "one_step", q, f"{r}-{c}", r - c, "岁", f"相差{r - c}岁。")


def age_times(rng):
    child, (rel, lo, hi) = rng.choice(CHILDREN), rng.choice(RELATIVES[:6])
    c, k = rng.randint(3, 14), rng.randint(2, 9)
    if not lo <= c * k - c <= hi:
        raise Retry
    q = rng.phrase("age_times", child=child, c=c, rel=rel, k=k)
    return make_problem("age_times", "one_step", q, f"{c}*{k}", c * k, "岁", f"{rel}今年{c * k}岁。")


def age_later(rng):
    child, c, rel, r = _child_and_relative(rng)
    k = rng.randint(2, 10)
    q = rng.phrase("age_later", child=child, c=c, rel=rel, r=r, k=k)
    total = c + k + r + k
    return make_problem("age_later", "two_step", q, f"({c}+{k})+({r}+{k})", total, "岁", f"{k}年后两人的年龄和是{total}岁。")


# --- averages

def _values(rng, lo, hi, n, divisible=False):
    xs = [rng.randint(lo, hi) for _ in range(n)]
    if divisible:  # nudge the last value so the sum divides by n
        xs[-1] += -sum(xs) % n
    return xs


def average(rng):
    situation = rng.phrasing(PHRASINGS["average"]["situations"])  # the wording, with the range of its values
    n = rng.choice((3, 4, 5))
    # a third is a repeating decimal; quarters, fifths are fine
    xs = _values(rng, situation["lowest"], situation["highest"], n, divisible=n == 3)
    a = F(sum(xs), n)
    s = rng.fill(situation, who=rng.choice(CHILDREN), n=n, values="、".join(map(str, xs)), answer=_f(a))
    return make_problem("average", "two_step", s["question"], f"({'+'.join(map(str, xs))})/{n}", a, s["unit"],
                        s["final"])


def average_compare(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situation = rng.phrasing(PHRASINGS["average_compare"]["situations"])
    xs = _values(rng, situation["lowest"], situation["highest"], n, divisible=True)
    x = rng.randint(situation["x_lowest"], min(xs))
    a = F(sum(xs), n) - x
    s = rng.fill(situation, who=who, n=n, values="、".join(map(str, xs)), x=x)
    return make_problem("average_compare", "two_step", s["question"], f"({'+'.join(map(str, xs))})/{n}-{x}", a,
                        s["unit"], f"平均多{_f(a)}{s['unit']}。")


def average_missing(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situation = rng.phrasing(PHRASINGS["average_missing"]["situations"])
    lo, hi = situation["lowest"], situation["highest"]
    xs = _values(rng, lo, hi, n, divisible=True)
    if not lo <= xs[-1] <= hi:
        raise Retry
    avg, known = sum(xs) // n, xs[:-1]
    s = rng.fill(situation, who=who, n=n, before=n - 1, avg=avg, known="、".join(map(str, known)), answer=xs[-1])
    expr = f"{avg}*{n}-{'-'.join(map(str, known))}"
    return make_problem("average_missing", "three_step", s["question"], expr, xs[-1], s["unit"], s["final"])


# --- unit conversions

def _conversion(rng):
    big, small, factor, thing = rng.choice(CONVERSIONS)
    v = F(rng.randint(1, 40), 4) if factor == 60 else F(rng.randint(1, 100), rng.choice((1, 1, 10)))
    return big, small, factor, thing, v


def _subject(thing: str, who: str) -> str:
    return (who + thing) if thing.startswith(("做", "跑")) else thing


def unit_mul(rng):
    big, small, factor, thing, v = _conversion(rng)
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.phrase("unit_mul", big=big, small=small, factor=factor, subject=s, v=_f(v))
    a = v * factor
    return make_problem("unit_mul", "one_step", q, f"{_f(v)}*{factor}", a, small, f"{_f(v)}{big}是{_f(a)}{small}。")


def unit_div(rng):
    big, small, factor, thing, v = _conversion(rng)
    w = v * factor
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.phrase("unit_div", big=big, small=small, subject=s, w=_f(w))
    return make_problem("unit_div", "one_step", q, f"{_f(w)}/{factor}", v, big, f"{_f(w)}{small}是{_f(v)}{big}。")


def unit_mixed(rng):
    big, small, factor, thing, _ = _conversion(rng)
    a, b = rng.randint(1, 12), rng.randint(1, factor - 1)
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.phrase("unit_mixed", big=big, small=small, subject=s, a=a, b=b)
    x = a * factor + b
    return make_problem("unit_mixed", "two_step", q, f"{a}*{factor}+{b}", x, small, f"{a}{big}{b}{small}是{x}{small}。")


# --- sharing and groups

def share(rng):
    thing, mw = rng.choice(COUNTABLES)
    n, each, who = rng.randint(2, 12), rng.randint(2, 15), rng.choice(ADULTS + CHILDREN)
    total = n * each
    s = rng.phrase("share", "situations", thing=thing, mw=mw, total=total, n=n, who=who, answer=each)
    return make_problem("share", "one_step", s["question"], f"{total}/{n}", each, mw, s["final"])


def groups_total(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    q = rng.phrase("groups_total", thing=thing, mw=mw, box=box, k=k, n=n, who=who)
    return make_problem("groups_total", "one_step", q, f"{k}*{n}", k * n, mw, f"一共有{k * n}{mw}。")


def groups_count(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    total = k * n
    q = rng.phrase("groups_count", thing=thing, mw=mw, box=box, k=k, total=total, who=who)
    return make_problem("groups_count", "one_step", q, f"{total}/{k}", n, box, f"可以装{n}{box}。")


def work_rate(rng):
    r, w, d = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 10)
    a = r * w * d
    s = rng.phrase("work_rate", "situations", r=r, w=w, d=d, answer=a)
    return make_problem("work_rate", "two_step", s["question"], f"{r}*{w}*{d}", a, s["unit"], s["final"])


# --- several steps and comparisons

def trip_remaining(rng):
    v1, v2, t1, t2 = rng.randint(40, 80), rng.randint(40, 80), rng.randint(2, 4), rng.randint(2, 4)
    who = rng.choice(CHILDREN)
    done = v1 * t1 + v2 * t2
    total = done + rng.randint(10, 200)
    s = rng.phrase("trip_remaining", "situations", total=total, v1=v1, t1=t1, v2=v2, t2=t2, who=who)
    left = total - done
    return make_problem("trip_remaining", "three_step", s["question"], f"{total}-({v1}*{t1}+{v2}*{t2})", left,
                        s["unit"], f"还剩{left}{s['unit']}。")


def compare_more_less(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x, d = rng.randint(15, 80), rng.randint(3, 14)
    more = rng.random() < 0.5
    y = x + d if more else x - d
    word = "多" if more else "少"
    q = rng.phrase("compare_more_less", a=a, b=b, thing=thing, mw=mw, x=x, d=d, word=word)
    expr = f"{x}+({x}{'+' if more else '-'}{d})"
    return make_problem("compare_more_less", "two_step", q, expr, x + y, mw, f"一共有{x + y}{mw}。")


def compare_diff(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x = rng.randint(20, 150)
    y = x - rng.randint(1, x - 5)
    q = rng.phrase("compare_diff", a=a, b=b, thing=thing, mw=mw, x=x, y=y)
    return make_problem("compare_diff", "one_step", q, f"{x}-{y}", x - y, mw, f"相差{x - y}{mw}。")


def temperature(rng):
    lo = rng.randint(-15, 8)
    hi = lo + rng.randint(3, 16)
    city = rng.choice(CITIES)
    q = rng.phrase("temperature", lo=lo, hi=hi, city=city)
    expr = f"{hi}-({lo})" if lo < 0 else f"{hi}-{lo}"
    return make_problem("temperature", "one_step", q, expr, hi - lo, "℃", f"相差{hi - lo}℃。")
