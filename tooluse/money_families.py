"""The money families of the word-problem generator (tooluse/problems.py): shopping, discounts, percentages,
and money over several steps. A family draws its numbers from the Draw it is given, fills one of its
phrasings (tooluse/phrasings.json) with them through rng.phrase and returns the problem through make_problem
(tooluse/problem.py), or raises Retry when its numbers make a poor problem."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing's numbers are written with it
from tooluse.problem import Retry, make_problem
from tooluse.vocabulary import BIG_GOODS, BUYERS, CHILDREN, CHINESE_DIGITS, DISCOUNTS, GOODS, SAVINGS_GOALS, draw_price


def _cn(n: int) -> str:
    """1..99 in Chinese numerals: 20 -> 二十, 35 -> 三十五, 15 -> 十五."""
    tens, ones = divmod(n, 10)
    return ((CHINESE_DIGITS[tens] if tens > 1 else "") + ("十" if tens else "") +
            (CHINESE_DIGITS[ones] if ones else ""))


def _payment(rng, cost) -> int:
    """The banknote someone pays `cost` with: the smallest that covers it, sometimes the next one up."""
    notes = [n for n in (10, 20, 50, 100, 200, 500) if n > cost]
    if not notes:
        raise Retry
    return notes[min(len(notes) - 1, rng.choice((0, 0, 1)))]


def _two_goods(rng):
    (i1, m1, lo1, hi1), (i2, m2, lo2, hi2) = rng.sample(GOODS, 2)
    return i1, m1, draw_price(rng, lo1, hi1), i2, m2, draw_price(rng, lo2, hi2)


# --- shopping

def shopping_total(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = draw_price(rng, lo, hi), rng.randint(2, 12), rng.choice(BUYERS)
    q = rng.phrase("shopping_total", item=item, mw=mw, price=_f(p), n=n, who=who)
    return make_problem("shopping_total", "one_step", q, f"{_f(p)}*{n}", p * n, "元", f"一共需要{_f(p * n)}元。")


def shopping_sum(rng):
    who = rng.choice(BUYERS)
    goods = rng.sample(GOODS, rng.choice((2, 2, 3)))
    prices = [draw_price(rng, lo, hi) for _, _, lo, hi in goods]
    names = [g[0] for g in goods]
    bought = "，".join(f"一{mw}{item}{_f(p)}元" for (item, mw, _, _), p in zip(goods, prices))
    receipt = "，".join(f"{item}{_f(p)}元" for item, p in zip(names, prices))
    q = rng.phrase("shopping_sum", who=who, bought=bought, receipt=receipt, names="、".join(names),
                   first_names="、".join(names[:-1]), last_name=names[-1],
                   prices="元、".join(_f(p) for p in prices))
    total = sum(prices)
    return make_problem("shopping_sum", "one_step", q, "+".join(_f(p) for p in prices), total, "元",
                        f"一共花了{_f(total)}元。")


def unit_price(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = draw_price(rng, lo, hi), rng.randint(2, 12), rng.choice(BUYERS)
    total = p * n
    q = rng.phrase("unit_price", item=item, mw=mw, total=_f(total), n=n, who=who)
    return make_problem("unit_price", "one_step", q, f"{_f(total)}/{n}", p, "元", f"每{mw}{_f(p)}元。")


def change(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    cost, who = draw_price(rng, lo, hi), rng.choice(BUYERS)
    paid = _payment(rng, cost)
    left = paid - cost
    s = rng.phrase("change", "situations", item=item, mw=mw, cost=_f(cost), who=who, paid=paid, answer=_f(left))
    return make_problem("change", "one_step", s["question"], f"{paid}-{_f(cost)}", left, "元", s["final"])


def change_multi(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = draw_price(rng, lo, hi), rng.randint(2, 9), rng.choice(BUYERS)
    paid = _payment(rng, p * n)
    q = rng.phrase("change_multi", item=item, mw=mw, price=_f(p), n=n, who=who, paid=paid)
    left = paid - p * n
    return make_problem("change_multi", "two_step", q, f"{paid}-{_f(p)}*{n}", left, "元", f"还剩{_f(left)}元。")


def two_kinds(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 8), rng.randint(2, 8), rng.choice(BUYERS)
    q = rng.phrase("two_kinds", item1=i1, mw1=m1, price1=_f(p1), n1=n1, item2=i2, mw2=m2, price2=_f(p2), n2=n2,
                   who=who)
    total = p1 * n1 + p2 * n2
    return make_problem("two_kinds", "two_step", q, f"{_f(p1)}*{n1}+{_f(p2)}*{n2}", total, "元",
                        f"一共需要{_f(total)}元。")


def spend_twice(rng):
    (i1, _, lo1, hi1), (i2, _, lo2, hi2) = rng.sample(GOODS, 2)
    a, b, who = draw_price(rng, lo1, hi1) * rng.randint(1, 3), draw_price(rng, lo2, hi2), rng.choice(BUYERS)
    money = _payment(rng, a + b)
    q = rng.phrase("spend_twice", item1=i1, cost1=_f(a), item2=i2, cost2=_f(b), who=who, money=money)
    left = money - a - b
    return make_problem("spend_twice", "two_step", q, f"{money}-{_f(a)}-{_f(b)}", left, "元", f"还剩{_f(left)}元。")


# --- discounts

def _big_good(rng):
    item, mw, lo, hi = rng.choice(BIG_GOODS)
    return item, mw, rng.randint(lo // 10, hi // 10) * 10 - rng.choice((0, 0, 2, 5))


def discount_zhe(rng):
    item, mw, price = _big_good(rng)
    zhe, rate = rng.choice(DISCOUNTS)
    who = rng.choice(BUYERS)
    q = rng.phrase("discount_zhe", item=item, mw=mw, price=price, zhe=zhe, who=who)
    now = price * rate
    return make_problem("discount_zhe", "one_step", q, f"{price}*{_f(rate)}", now, "元", f"现价是{_f(now)}元。")


def discount_percent(rng):
    item, mw, price = _big_good(rng)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50))
    q = rng.phrase("discount_percent", item=item, mw=mw, price=price, pct=pct, pct_cn=_cn(pct))
    now = price * (1 - F(pct, 100))
    return make_problem("discount_percent", "two_step", q, f"{price}*(1-{_f(F(pct, 100))})", now, "元",
                        f"现价是{_f(now)}元。")


def discount_saving(rng):
    item, mw, price = _big_good(rng)
    zhe, rate = rng.choice(DISCOUNTS)
    who = rng.choice(BUYERS)
    q = rng.phrase("discount_saving", item=item, mw=mw, price=price, zhe=zhe, who=who)
    saved = price - price * rate
    return make_problem("discount_saving", "two_step", q, f"{price}-{price}*{_f(rate)}", saved, "元",
                        f"便宜了{_f(saved)}元。")


# --- percentages

def percent_of(rng):
    whole = rng.choice((20, 25, 40, 50, 80, 100, 120, 200, 250, 400, 500))
    part = rng.randint(1, whole - 1)
    who = rng.choice(CHILDREN)
    a = F(part, whole) * 100
    s = rng.phrase("percent_of", "situations", whole=whole, part=part, who=who, answer=_f(a))
    return make_problem("percent_of", "two_step", s["question"], f"{part}/{whole}*100", a, "%", s["final"])


def percent_amount(rng):
    whole, pct = rng.randint(2, 30) * 20, rng.randint(1, 19) * 5
    who = rng.choice(CHILDREN)
    a = whole * F(pct, 100)
    s = rng.phrase("percent_amount", "situations", whole=whole, pct=pct, pct_cn=_cn(pct), who=who, answer=_f(a))
    return make_problem("percent_amount", "one_step", s["question"], f"{whole}*{_f(F(pct, 100))}", a, s["unit"],
                        s["final"])


def growth_rate(rng):
    pct = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 50))
    old = rng.randint(2, 40) * 20
    if old * pct % 100:
        raise Retry
    new = old * (100 + pct) // 100
    who = rng.choice(CHILDREN)
    q = rng.phrase("growth_rate", old=old, new=new, who=who)
    return make_problem("growth_rate", "three_step", q, f"({new}-{old})/{old}*100", F(new - old, old) * 100, "%",
                        f"增长了{pct}%。")


# --- money over several steps

def shopping_change3(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 6), rng.randint(2, 6), rng.choice(BUYERS)
    cost = p1 * n1 + p2 * n2
    paid = _payment(rng, cost)
    q = rng.phrase("shopping_change3", item1=i1, mw1=m1, price1=_f(p1), n1=n1, item2=i2, mw2=m2, price2=_f(p2),
                   n2=n2, who=who, paid=paid)
    left = paid - cost
    return make_problem("shopping_change3", "three_step", q, f"{paid}-({_f(p1)}*{n1}+{_f(p2)}*{n2})", left, "元",
                        f"还剩{_f(left)}元。")


def savings(rng):
    item, d, w, who = rng.choice(SAVINGS_GOALS), rng.randint(2, 10), rng.randint(2, 8), rng.choice(CHILDREN)
    cost = rng.randint(15, d * 7 * w - 1)
    q = rng.phrase("savings", item=item, daily=d, weeks=w, who=who, cost=cost)
    left = d * 7 * w - cost
    return make_problem("savings", "three_step", q, f"{d}*7*{w}-{cost}", left, "元", f"还剩{left}元。")
