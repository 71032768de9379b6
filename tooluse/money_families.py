"""The money families of the word-problem generator (tooluse/problems.py): shopping, discounts, percentages,
and money over several steps. A family draws one problem from the random.Random it is given and returns it
through make_problem (tooluse/problem.py), or raises Retry when its numbers make a poor problem."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing writes numbers with it
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
    q = rng.phrasing([
        f"{item}每{mw}{_f(p)}元，{who}买了{n}{mw}，一共要付多少元？",
        f"{who}去商店买了{n}{mw}{item}，每{mw}{_f(p)}元。{who}一共花了多少钱？",
        f"一{mw}{item}卖{_f(p)}元，买{n}{mw}需要多少元？",
        f"{n}{mw}{item}，单价是{_f(p)}元，总价是多少元？",
        f"{who}要买{n}{mw}{item}，{item}的价格是{_f(p)}元一{mw}，应该付多少钱？",
        f"{who}一共要付多少钱？{who}买了{n}{mw}{item}，每{mw}{_f(p)}元。",
        f"已知{item}的单价是{_f(p)}元，{who}买了{n}{mw}，求总价。",
        f"如果{item}每{mw}{_f(p)}元，那么{n}{mw}{item}合计多少元？",
        f"{who}在超市称了{n}{mw}{item}，单价{_f(p)}元，请问总共应付多少元？",
        f"买{n}{mw}{item}，每{mw}要{_f(p)}元，总共花多少钱？",
    ])
    return make_problem("shopping_total", "one_step", q, f"{_f(p)}*{n}", p * n, "元", f"一共需要{_f(p * n)}元。")


def shopping_sum(rng):
    who = rng.choice(BUYERS)
    goods = rng.sample(GOODS, rng.choice((2, 2, 3)))
    prices = [draw_price(rng, lo, hi) for _, _, lo, hi in goods]
    names = [g[0] for g in goods]
    bought = "，".join(f"一{mw}{item}{_f(p)}元" for (item, mw, _, _), p in zip(goods, prices))
    receipt = "，".join(f"{item}{_f(p)}元" for item, p in zip(names, prices))
    q = rng.phrasing([
        f"{who}买了{bought}，一共花了多少元？",
        f"{who}买了{'、'.join(names)}，分别花了{'元、'.join(_f(p) for p in prices)}元，一共花了多少钱？",
        f"{who}的购物小票上写着：{receipt}。这次购物的总金额是多少元？",
        f"{'、'.join(names[:-1])}和{names[-1]}的价钱分别是{'元、'.join(_f(p) for p in prices)}元，各买一份要多少元？",
        f"请问{who}一共花了多少元？{who}买了{'、'.join(names)}，价格依次是{'元、'.join(_f(p) for p in prices)}元。",
        f"已知{receipt}，{who}每样各买了一份，求合计金额。",
        f"{who}在文具店和超市买东西：{bought}。如果全部一起结账，总共要付多少钱？",
        f"{who}买{'、'.join(names)}各一份，{receipt}，合计多少元？",
        f"{receipt}。{who}把这些东西都买下来，一共需要多少钱？",
    ])
    total = sum(prices)
    return make_problem("shopping_sum", "one_step", q, "+".join(_f(p) for p in prices), total, "元",
                        f"一共花了{_f(total)}元。")


def unit_price(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = draw_price(rng, lo, hi), rng.randint(2, 12), rng.choice(BUYERS)
    total = p * n
    q = rng.phrasing([
        f"{n}{mw}{item}一共{_f(total)}元，每{mw}多少元？",
        f"{who}花{_f(total)}元买了{n}{mw}{item}，平均每{mw}多少钱？",
        f"买{n}{mw}{item}共付了{_f(total)}元，{item}的单价是多少元？",
        f"{who}用{_f(total)}元正好买了{n}{mw}{item}，一{mw}{item}多少元？",
        f"已知{n}{mw}{item}的总价是{_f(total)}元，求每{mw}的价格。",
        f"{who}付了{_f(total)}元，买回{n}{mw}{item}。请问一{mw}{item}要多少钱？",
        f"每{mw}{item}多少元？{who}买{n}{mw}{item}合计花了{_f(total)}元。",
        f"如果{_f(total)}元能买{n}{mw}{item}，那么一{mw}{item}是多少元？",
        f"{who}在市场上买了{item}，总共{_f(total)}元，称了{n}{mw}，平均每{mw}几元？",
    ])
    return make_problem("unit_price", "one_step", q, f"{_f(total)}/{n}", p, "元", f"每{mw}{_f(p)}元。")


def change(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    cost, who = draw_price(rng, lo, hi), rng.choice(BUYERS)
    paid = _payment(rng, cost)
    q, final = rng.phrasing([
        (f"{who}买{item}花了{_f(cost)}元，付给售货员{paid}元，应找回多少元？", "应找回{a}元。"),
        (f"{who}带了{paid}元去买{item}，{item}{_f(cost)}元，还剩多少元？", "还剩{a}元。"),
        (f"一{mw}{item}{_f(cost)}元，{who}拿一张{paid}元的钞票去买，能找回多少钱？", "能找回{a}元。"),
        (f"付了{paid}元，买东西用去{_f(cost)}元，应该找零多少元？", "应找零{a}元。"),
        (f"{who}给了售货员{paid}元，买的{item}只要{_f(cost)}元，请问该找回多少钱？", "应找回{a}元。"),
        (f"应该找回多少元？{who}买{item}用了{_f(cost)}元，交了{paid}元。", "应找回{a}元。"),
        (f"已知{item}的价格是{_f(cost)}元，{who}付了{paid}元，求找回的钱数。", "应找回{a}元。"),
        (f"{who}口袋里有{paid}元，买了一{mw}{_f(cost)}元的{item}，剩下多少钱？", "还剩{a}元。"),
        (f"如果{who}用{paid}元买{_f(cost)}元的{item}，那么余下多少元？", "还剩{a}元。"),
    ])
    left = paid - cost
    return make_problem("change", "one_step", q, f"{paid}-{_f(cost)}", left, "元", final.format(a=_f(left)))


def change_multi(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = draw_price(rng, lo, hi), rng.randint(2, 9), rng.choice(BUYERS)
    paid = _payment(rng, p * n)
    q = rng.phrasing([
        f"{who}买了{n}{mw}{item}，每{mw}{_f(p)}元，付了{paid}元，应找回多少元？",
        f"{who}拿{paid}元买{item}，{item}每{mw}{_f(p)}元，买了{n}{mw}后还剩多少钱？",
        f"每{mw}{item}{_f(p)}元，买{n}{mw}，给售货员{paid}元，找零多少元？",
        f"{paid}元钱买了{n}{mw}单价{_f(p)}元的{item}，还剩下多少元？",
    ])
    left = paid - p * n
    return make_problem("change_multi", "two_step", q, f"{paid}-{_f(p)}*{n}", left, "元", f"还剩{_f(left)}元。")


def two_kinds(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 8), rng.randint(2, 8), rng.choice(BUYERS)
    q = rng.phrasing([
        f"{who}买了{n1}{m1}{i1}和{n2}{m2}{i2}，{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元，一共花了多少元？",
        f"{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元。{who}买{n1}{m1}{i1}、{n2}{m2}{i2}，需要多少钱？",
        f"{who}先买了{n1}{m1}{i1}，每{m1}{_f(p1)}元；又买了{n2}{m2}{i2}，每{m2}{_f(p2)}元。{who}一共付了多少元？",
        f"学校买{n1}{m1}{i1}和{n2}{m2}{i2}，单价分别是{_f(p1)}元和{_f(p2)}元，总共要花多少钱？",
        f"{i2}每{m2}{_f(p2)}元，{who}买了{n2}{m2}；{i1}每{m1}{_f(p1)}元，{who}买了{n1}{m1}。合计多少元？",
        f"已知{i1}的单价是{_f(p1)}元，{i2}的单价是{_f(p2)}元，{who}买了{i1}{n1}{m1}、{i2}{n2}{m2}，求一共付的钱。",
        f"请问{who}总共花了多少钱？{who}买了{n1}{m1}{_f(p1)}元一{m1}的{i1}，还有{n2}{m2}{_f(p2)}元一{m2}的{i2}。",
        f"如果{who}要买{n1}{m1}{i1}和{n2}{m2}{i2}，{i1}{_f(p1)}元一{m1}，{i2}{_f(p2)}元一{m2}，那么一共要准备多少元？",
        f"{who}在超市买了两样东西：{i1}{n1}{m1}，每{m1}{_f(p1)}元；{i2}{n2}{m2}，每{m2}{_f(p2)}元。结账时要付多少钱？",
    ])
    total = p1 * n1 + p2 * n2
    return make_problem("two_kinds", "two_step", q, f"{_f(p1)}*{n1}+{_f(p2)}*{n2}", total, "元",
                        f"一共需要{_f(total)}元。")


def spend_twice(rng):
    (i1, _, lo1, hi1), (i2, _, lo2, hi2) = rng.sample(GOODS, 2)
    a, b, who = draw_price(rng, lo1, hi1) * rng.randint(1, 3), draw_price(rng, lo2, hi2), rng.choice(BUYERS)
    money = _payment(rng, a + b)
    q = rng.phrasing([
        f"{who}有{money}元，买{i1}用了{_f(a)}元，买{i2}用了{_f(b)}元，还剩多少元？",
        f"{who}带着{money}元去超市，先花{_f(a)}元买了{i1}，又花{_f(b)}元买了{i2}，{who}还剩多少钱？",
        f"{who}的钱包里有{money}元。上午买{i1}花掉{_f(a)}元，下午买{i2}花掉{_f(b)}元。钱包里还有多少元？",
        f"一共有{money}元，第一次用去{_f(a)}元，第二次用去{_f(b)}元，剩下多少元？",
        f"{who}买{i1}花了{_f(a)}元，买{i2}花了{_f(b)}元，出门时带了{money}元，现在还剩多少元？",
        f"请问{who}余下多少钱？{who}原有{money}元，先后买了{i1}和{i2}，分别用去{_f(a)}元、{_f(b)}元。",
        f"已知{who}有{money}元，买{i2}用了{_f(b)}元，买{i1}用了{_f(a)}元，求剩下的钱。",
        f"如果{who}带{money}元出门，买{i1}要{_f(a)}元，买{i2}要{_f(b)}元，那么两样都买完还剩多少元？",
        f"{who}在书店附近先后花了{_f(a)}元和{_f(b)}元，分别买了{i1}和{i2}，他原来有{money}元，还剩几元？",
    ])
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
    q = rng.phrasing([
        f"一{mw}{item}原价{price}元，打{zhe}折后卖多少元？",
        f"商店里的{item}原价{price}元，现在打{zhe}折，{who}买一{mw}要付多少钱？",
        f"{item}打{zhe}折出售，原来每{mw}{price}元，现在每{mw}多少元？",
        f"原价{price}元的{item}，按{zhe}折优惠，现价是多少元？",
        f"{who}买了一{mw}{item}，商场打{zhe}折，原价是{price}元，请问{who}实际付了多少元？",
        f"打{zhe}折以后，一{mw}原价{price}元的{item}要多少钱？",
        f"已知{item}原价{price}元，现按{zhe}折销售，求现价。",
        f"如果{item}原价{price}元，店里全场打{zhe}折，那么{who}买一{mw}要花多少元？",
        f"现价是多少元？一{mw}{item}打{zhe}折，它的原价是{price}元。",
    ])
    now = price * rate
    return make_problem("discount_zhe", "one_step", q, f"{price}*{_f(rate)}", now, "元", f"现价是{_f(now)}元。")


def discount_percent(rng):
    item, mw, price = _big_good(rng)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50))
    q = rng.phrasing([
        f"一{mw}{item}原价{price}元，现在降价{pct}%，现价是多少元？",
        f"{item}原来卖{price}元，商店搞活动减价百分之{_cn(pct)}，现在卖多少钱？",
        f"原价{price}元的{item}，便宜了{pct}%后是多少元？",
        f"一{mw}{item}{price}元，降价{pct}%以后，买一{mw}要多少钱？",
        f"降价{pct}%后，原价{price}元的{item}卖多少元？",
        f"已知一{mw}{item}原价{price}元，现在降低了百分之{_cn(pct)}，求现价。",
        f"如果{item}原价{price}元，打折时便宜{pct}%，那么现在一{mw}要多少元？",
        f"请问现在买一{mw}{item}要付多少钱？{item}原价{price}元，商场让利{pct}%。",
        f"商场里{item}每{mw}原价{price}元，周末降价{pct}%，周末的价格是多少元？",
    ])
    now = price * (1 - F(pct, 100))
    return make_problem("discount_percent", "two_step", q, f"{price}*(1-{_f(F(pct, 100))})", now, "元",
                        f"现价是{_f(now)}元。")


def discount_saving(rng):
    item, mw, price = _big_good(rng)
    zhe, rate = rng.choice(DISCOUNTS)
    who = rng.choice(BUYERS)
    q = rng.phrasing([
        f"一{mw}{item}原价{price}元，打{zhe}折出售，比原价便宜了多少元？",
        f"{who}用打{zhe}折的价格买了一{mw}原价{price}元的{item}，省了多少钱？",
        f"{item}原价{price}元，现在打{zhe}折，买一{mw}能节省多少元？",
    ])
    saved = price - price * rate
    return make_problem("discount_saving", "two_step", q, f"{price}-{price}*{_f(rate)}", saved, "元",
                        f"便宜了{_f(saved)}元。")


# --- percentages

def percent_of(rng):
    whole = rng.choice((20, 25, 40, 50, 80, 100, 120, 200, 250, 400, 500))
    part = rng.randint(1, whole - 1)
    who = rng.choice(CHILDREN)
    situations = [
        (f"全班有{whole}人，其中女生{part}人，女生占全班人数的百分之几？", "女生占全班人数的{a}%。"),
        (f"一本书有{whole}页，{who}已经看了{part}页，看了全书的百分之几？", "看了全书的{a}%。"),
        (f"果园里有{whole}棵果树，其中苹果树{part}棵，苹果树占果树总数的百分之几？", "苹果树占{a}%。"),
        (f"{who}投篮{whole}次，投中了{part}次，命中率是多少？", "命中率是{a}%。"),
        (f"{part}是{whole}的百分之几？", "是{a}%。"),
        (f"已知全班{whole}人中有{part}人戴眼镜，求戴眼镜的人数占全班的百分之几。", "戴眼镜的人占{a}%。"),
        (f"{who}一共做了{whole}道题，做对{part}道，正确率是多少？", "正确率是{a}%。"),
        (f"百分之几的种子发芽了？一共种下{whole}粒种子，发芽的有{part}粒。", "发芽率是{a}%。"),
        (f"如果一袋{whole}克的饼干里有{part}克糖，那么糖占饼干重量的百分之几？", "糖占{a}%。"),
    ]
    q, final = rng.phrasing(situations)
    a = F(part, whole) * 100
    return make_problem("percent_of", "two_step", q, f"{part}/{whole}*100", a, "%", final.format(a=_f(a)))


def percent_amount(rng):
    whole, pct = rng.randint(2, 30) * 20, rng.randint(1, 19) * 5
    who = rng.choice(CHILDREN)
    situations = [
        (f"一本书有{whole}页，{who}已经看了全书的{pct}%，看了多少页？", "页", "看了{a}页。"),
        (f"全校有{whole}名学生，其中{pct}%是女生，女生有多少人？", "人", "女生有{a}人。"),
        (f"{who}有{whole}元，用了其中的百分之{_cn(pct)}买书，买书用了多少元？", "元", "买书用了{a}元。"),
        (f"一块地有{whole}平方米，其中{pct}%种了蔬菜，种蔬菜的面积是多少平方米？", "平方米", "种蔬菜的面积是{a}平方米。"),
        (f"{pct}%的同学参加了合唱队，全年级有{whole}名同学，参加合唱队的有多少人？", "人", "参加合唱队的有{a}人。"),
        (f"已知一桶油重{whole}千克，用去了{pct}%，求用去多少千克。", "千克", "用去了{a}千克。"),
        (f"请问{who}存了多少元？{who}的压岁钱有{whole}元，存起来的占百分之{_cn(pct)}。", "元", "存了{a}元。"),
        (f"如果一条路长{whole}米，已经修好了{pct}%，那么修好了多少米？", "米", "修好了{a}米。"),
    ]
    q, unit, final = rng.phrasing(situations)
    a = whole * F(pct, 100)
    return make_problem("percent_amount", "one_step", q, f"{whole}*{_f(F(pct, 100))}", a, unit, final.format(a=_f(a)))


def growth_rate(rng):
    pct = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 50))
    old = rng.randint(2, 40) * 20
    if old * pct % 100:
        raise Retry
    new = old * (100 + pct) // 100
    who = rng.choice(CHILDREN)
    q = rng.phrasing([
        f"去年果园收了{old}千克苹果，今年收了{new}千克，今年比去年增长了百分之几？",
        f"图书角原来有{old}本书，现在有{new}本，增加了百分之几？",
        f"{who}上个月存了{old}元，这个月存了{new}元，这个月比上个月多存了百分之几？",
    ])
    return make_problem("growth_rate", "three_step", q, f"({new}-{old})/{old}*100", F(new - old, old) * 100, "%",
                        f"增长了{pct}%。")


# --- money over several steps

def shopping_change3(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 6), rng.randint(2, 6), rng.choice(BUYERS)
    cost = p1 * n1 + p2 * n2
    paid = _payment(rng, cost)
    q = rng.phrasing([
        f"{who}买了{n1}{m1}{i1}，每{m1}{_f(p1)}元，又买了{n2}{m2}{i2}，每{m2}{_f(p2)}元，付给售货员{paid}元，应找回多少元？",
        f"{who}带了{paid}元，买了{n1}{m1}{i1}（每{m1}{_f(p1)}元）和{n2}{m2}{i2}（每{m2}{_f(p2)}元），还剩多少钱？",
        f"{i1}{_f(p1)}元一{m1}，{i2}{_f(p2)}元一{m2}。{who}拿{paid}元买了{n1}{m1}{i1}和{n2}{m2}{i2}，还剩多少元？",
        f"{who}付给收银员{paid}元，买了{n2}{m2}{i2}和{n1}{m1}{i1}，{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元，找回多少元？",
        f"已知{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元。{who}用{paid}元买{i1}{n1}{m1}、{i2}{n2}{m2}，求剩下的钱。",
        f"请问{who}余下多少钱？{who}原有{paid}元，买了{n1}{m1}{i1}（单价{_f(p1)}元）和{n2}{m2}{i2}（单价{_f(p2)}元）。",
        f"如果{who}拿一张{paid}元的钞票，买{n1}{m1}{_f(p1)}元一{m1}的{i1}和{n2}{m2}{_f(p2)}元一{m2}的{i2}，那么能找回多少元？",
        f"{who}在超市买东西，{i1}{n1}{m1}，{i2}{n2}{m2}，单价分别是{_f(p1)}元和{_f(p2)}元，付了{paid}元，找零是多少元？",
    ])
    left = paid - cost
    return make_problem("shopping_change3", "three_step", q, f"{paid}-({_f(p1)}*{n1}+{_f(p2)}*{n2})", left, "元",
                        f"还剩{_f(left)}元。")


def savings(rng):
    item, d, w, who = rng.choice(SAVINGS_GOALS), rng.randint(2, 10), rng.randint(2, 8), rng.choice(CHILDREN)
    cost = rng.randint(15, d * 7 * w - 1)
    q = rng.phrasing([
        f"{who}每天存{d}元，连续存了{w}个星期，然后花{cost}元买了{item}，还剩多少元？",
        f"{who}坚持每天攒{d}元零花钱，攒了{w}周后买了{item}，花了{cost}元，剩下多少元？",
        f"一周有7天，{who}每天存{d}元，存了{w}周后拿出{cost}元买{item}，还有多少元？",
        f"{who}花{cost}元买了{item}，这些钱是他每天存{d}元、存了{w}个星期攒下来的，买完还剩多少元？",
        f"已知{who}每天存{d}元，存了{w}周，又用去{cost}元买{item}，求剩下的钱。",
        f"请问{who}还剩多少元？{who}连续{w}周每天往存钱罐里放{d}元，后来取出{cost}元买了{item}。",
        f"如果{who}每天攒{d}元，攒满{w}个星期后用{cost}元买{item}，那么余下多少元？",
        f"{who}想买{item}，每天存{d}元，一共存了{w}周（每周7天）。买{item}用了{cost}元，剩下多少钱？",
    ])
    left = d * 7 * w - cost
    return make_problem("savings", "three_step", q, f"{d}*7*{w}-{cost}", left, "元", f"还剩{left}元。")
