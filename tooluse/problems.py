"""A seeded generator of Chinese everyday arithmetic word problems, each with the calculator call that solves
it, for teaching a tiny model to use the calculator tool.

    problems = generate(2000, seed=0, split="train")
    record = conversation(problems[0])    # {"tools": [...], "conversations": [user, call, tool result, answer]}
    answer_is_right(model_reply, problems[0].answer)   # the reward check

A family is one kind of problem with one shape of expression (shopping_total: price*count), written in 3-6
phrasings with varied names, goods and numbers. 42 families cover ten topics. The model is judged on
families it never saw, so the split is by family and fixed: HELD_OUT_FAMILIES holds 10 of them (24%), one
per topic, and every topic and every kind (one_step, two_step, three_step) keeps at least one family in train:

    topic            train families                                             held out
    shopping         shopping_total shopping_sum unit_price change two_kinds    change_multi
                     spend_twice
    ages             age_sum age_diff age_times                                 age_later
    distance         distance travel_time meet                                  speed
    area             rect_area rect_perimeter floor_cost fence_cost             square
    average          average average_missing                                    average_compare
    discount         discount_zhe discount_percent                              discount_saving
    percent          percent_of percent_amount                                  growth_rate
    units            unit_mul unit_mixed                                        unit_div
    sharing, groups  share groups_total work_rate                               groups_count
    multi-step       shopping_change3 savings compare_more_less compare_diff    trip_remaining
                     temperature

Numbers are exact fractions while a problem is built; a problem is kept only when its answer is positive, has
at most 2 decimals, and the calculator, given the expression, prints exactly that answer (otherwise the family
draws again). Expressions use only digits, '.', + - * / and parentheses, written the way a person would type
them: the average of four scores is (142+150+138+146)/4.
"""

import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction as F

from tooluse.calculator import CALCULATOR, calculate, format_number

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


class _Retry(Exception):
    """The numbers drawn make a poor problem (a negative or ragged answer): draw the family again."""


def _f(x) -> str:
    return format_number(x)


def _make(family, kind, question, expression, answer, unit, final) -> Problem:
    """The Problem, after checking that it is a good one; raises _Retry when it is not."""
    assert kind in KINDS and re.fullmatch(r"[0-9.+\-*/()]+", expression), (family, expression)
    answer = F(answer)
    if answer <= 0 or (answer * 100).denominator != 1:
        raise _Retry
    if calculate(expression) != _f(answer) or not answer_is_right(final, float(answer)):
        raise _Retry  # a family whose expression never matches its answer fails loudly in _draw
    return Problem(family, kind, question, expression, float(answer), unit, final)


# --- vocabulary, shared by the families (module level, so a test can tell a phrasing from its fillers)

CHILDREN = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小亮", "小雨", "小杰", "乐乐", "朵朵"]
ADULTS = ["王阿姨", "李叔叔", "张老师", "妈妈", "爸爸", "奶奶", "刘阿姨", "陈叔叔"]
BUYERS = CHILDREN + ADULTS
# relatives with the range of years they are older than a child
RELATIVES = [("爸爸", 24, 40), ("妈妈", 22, 38), ("叔叔", 18, 32), ("姑姑", 16, 30), ("爷爷", 48, 62),
             ("奶奶", 46, 60), ("哥哥", 2, 8), ("姐姐", 2, 8)]
# goods: name, measure word, lowest and highest price in 元
GOODS = [("苹果", "千克", 4, 12), ("香蕉", "千克", 3, 8), ("铅笔", "支", 1, 3), ("笔记本", "本", 3, 12),
         ("面包", "个", 2, 9), ("牛奶", "盒", 3, 6), ("足球", "个", 45, 120), ("故事书", "本", 12, 40),
         ("毛巾", "条", 8, 25), ("大米", "袋", 40, 90), ("矿泉水", "瓶", 1, 4), ("西瓜", "个", 12, 35),
         ("橡皮", "块", 1, 3), ("水彩笔", "盒", 10, 30), ("鸡蛋", "千克", 8, 14), ("酸奶", "杯", 4, 9)]
# things sold at a discount: name, measure word, lowest and highest price in 元
BIG_GOODS = [("衣服", "件", 80, 400), ("书包", "个", 60, 200), ("台灯", "台", 50, 180), ("自行车", "辆", 300, 900),
             ("运动鞋", "双", 120, 500), ("电饭煲", "台", 150, 600), ("羽毛球拍", "副", 60, 300)]
# things shared or packed: name, measure word
COUNTABLES = [("糖果", "颗"), ("苹果", "个"), ("铅笔", "支"), ("练习本", "本"), ("饼干", "块"), ("橘子", "个"),
              ("贴纸", "张"), ("气球", "个"), ("鸡蛋", "个")]
CONTAINERS = ["盒", "箱", "袋", "包", "筐"]
SAVINGS_GOALS = ["一个足球", "一本故事书", "一盒水彩笔", "一个书包", "一副羽毛球拍", "一个文具盒", "一套绘本"]
# movers: subject (None: a child's name), verb, speed range, distance unit, time unit
MOVERS = [("一辆汽车", "行驶", 40, 90, "千米", "小时"), ("一列火车", "行驶", 80, 160, "千米", "小时"),
          ("一艘轮船", "航行", 18, 36, "千米", "小时"), (None, "骑行", 10, 18, "千米", "小时"),
          (None, "步行", 55, 90, "米", "分钟"), ("一辆货车", "行驶", 40, 80, "千米", "小时")]
# rectangles: what, length unit, size range
RECTANGLES = [("一块长方形菜地", "米", 5, 30), ("一个长方形花坛", "米", 2, 12), ("一张长方形桌面", "厘米", 40, 150),
              ("一块长方形草坪", "米", 8, 40), ("一张长方形纸", "厘米", 10, 30), ("一个长方形游泳池", "米", 10, 50)]
SQUARES = [("一块正方形手帕", "厘米", 20, 40), ("一块正方形地砖", "厘米", 30, 80), ("一个正方形花坛", "米", 2, 10),
           ("一块正方形菜地", "米", 5, 25), ("一张正方形桌面", "厘米", 60, 120)]
# unit conversions: big unit, small unit, factor, a thing measured in them ("" when none reads well)
CONVERSIONS = [("米", "厘米", 100, "一根绳子长"), ("千米", "米", 1000, "从家到学校的路程是"),
               ("千克", "克", 1000, "一袋面粉重"), ("吨", "千克", 1000, "一辆卡车装了"),
               ("小时", "分钟", 60, "做完作业用了"), ("分钟", "秒", 60, "跑完一圈用了"),
               ("元", "角", 10, "一支笔的价格是"), ("元", "分", 100, "一块橡皮的价格是"),
               ("升", "毫升", 1000, "一桶水有")]
CITIES = ["北京", "哈尔滨", "沈阳", "兰州", "乌鲁木齐", "呼和浩特"]
CHINESE_DIGITS = "零一二三四五六七八九"
# 打折: how a discount is said, and the fraction of the price paid
DISCOUNTS = [("九", F(9, 10)), ("八", F(8, 10)), ("七", F(7, 10)), ("六", F(6, 10)), ("五", F(5, 10)),
             ("九五", F(95, 100)), ("八五", F(85, 100)), ("七五", F(75, 100)), ("八八", F(88, 100))]


def _cn(n: int) -> str:
    """1..99 in Chinese numerals: 20 -> 二十, 35 -> 三十五, 15 -> 十五."""
    tens, ones = divmod(n, 10)
    return ((CHINESE_DIGITS[tens] if tens > 1 else "") + ("十" if tens else "") +
            (CHINESE_DIGITS[ones] if ones else ""))


def _price(rng, lo: int, hi: int) -> F:
    """A price in [lo, hi] 元: whole mostly, sometimes half a yuan or one decimal (3.8元); whole for big goods."""
    r = rng.random()
    if hi > 30 or r < 0.5:
        return F(rng.randint(lo, hi))
    if r < 0.8:
        return F(rng.randint(2 * lo, 2 * hi), 2)
    return F(rng.randint(10 * lo, 10 * hi), 10)


def _payment(rng, cost) -> int:
    """The banknote someone pays `cost` with: the smallest that covers it, sometimes the next one up."""
    notes = [n for n in (10, 20, 50, 100, 200, 500) if n > cost]
    if not notes:
        raise _Retry
    return notes[min(len(notes) - 1, rng.choice((0, 0, 1)))]


def _size(rng, lo: int, hi: int) -> F:
    """A length in [lo, hi], whole or (a quarter of the time) ending in .5."""
    return F(rng.randint(2 * lo, 2 * hi), 2) if rng.random() < 0.25 else F(rng.randint(lo, hi))


def _two_goods(rng):
    (i1, m1, lo1, hi1), (i2, m2, lo2, hi2) = rng.sample(GOODS, 2)
    return i1, m1, _price(rng, lo1, hi1), i2, m2, _price(rng, lo2, hi2)


# --- shopping

def _shopping_total(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = _price(rng, lo, hi), rng.randint(2, 12), rng.choice(BUYERS)
    q = rng.choice([
        f"{item}每{mw}{_f(p)}元，{who}买了{n}{mw}，一共要付多少元？",
        f"{who}去商店买了{n}{mw}{item}，每{mw}{_f(p)}元。{who}一共花了多少钱？",
        f"一{mw}{item}卖{_f(p)}元，买{n}{mw}需要多少元？",
        f"{n}{mw}{item}，单价是{_f(p)}元，总价是多少元？",
        f"{who}要买{n}{mw}{item}，{item}的价格是{_f(p)}元一{mw}，应该付多少钱？",
    ])
    return _make("shopping_total", "one_step", q, f"{_f(p)}*{n}", p * n, "元", f"一共需要{_f(p * n)}元。")


def _shopping_sum(rng):
    who = rng.choice(BUYERS)
    goods = rng.sample(GOODS, rng.choice((2, 2, 3)))
    prices = [_price(rng, lo, hi) for _, _, lo, hi in goods]
    names = [g[0] for g in goods]
    bought = "，".join(f"一{mw}{item}{_f(p)}元" for (item, mw, _, _), p in zip(goods, prices))
    receipt = "，".join(f"{item}{_f(p)}元" for item, p in zip(names, prices))
    q = rng.choice([
        f"{who}买了{bought}，一共花了多少元？",
        f"{who}买了{'、'.join(names)}，分别花了{'元、'.join(_f(p) for p in prices)}元，一共花了多少钱？",
        f"{who}的购物小票上写着：{receipt}。这次购物的总金额是多少元？",
        f"{'、'.join(names[:-1])}和{names[-1]}的价钱分别是{'元、'.join(_f(p) for p in prices)}元，各买一份要多少元？",
    ])
    total = sum(prices)
    return _make("shopping_sum", "one_step", q, "+".join(_f(p) for p in prices), total, "元",
                 f"一共花了{_f(total)}元。")


def _unit_price(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = _price(rng, lo, hi), rng.randint(2, 12), rng.choice(BUYERS)
    total = p * n
    q = rng.choice([
        f"{n}{mw}{item}一共{_f(total)}元，每{mw}多少元？",
        f"{who}花{_f(total)}元买了{n}{mw}{item}，平均每{mw}多少钱？",
        f"买{n}{mw}{item}共付了{_f(total)}元，{item}的单价是多少元？",
        f"{who}用{_f(total)}元正好买了{n}{mw}{item}，一{mw}{item}多少元？",
    ])
    return _make("unit_price", "one_step", q, f"{_f(total)}/{n}", p, "元", f"每{mw}{_f(p)}元。")


def _change(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    cost, who = _price(rng, lo, hi), rng.choice(BUYERS)
    paid = _payment(rng, cost)
    q, final = rng.choice([
        (f"{who}买{item}花了{_f(cost)}元，付给售货员{paid}元，应找回多少元？", "应找回{a}元。"),
        (f"{who}带了{paid}元去买{item}，{item}{_f(cost)}元，还剩多少元？", "还剩{a}元。"),
        (f"一{mw}{item}{_f(cost)}元，{who}拿一张{paid}元的钞票去买，能找回多少钱？", "能找回{a}元。"),
        (f"付了{paid}元，买东西用去{_f(cost)}元，应该找零多少元？", "应找零{a}元。"),
    ])
    left = paid - cost
    return _make("change", "one_step", q, f"{paid}-{_f(cost)}", left, "元", final.format(a=_f(left)))


def _change_multi(rng):
    item, mw, lo, hi = rng.choice(GOODS)
    p, n, who = _price(rng, lo, hi), rng.randint(2, 9), rng.choice(BUYERS)
    paid = _payment(rng, p * n)
    q = rng.choice([
        f"{who}买了{n}{mw}{item}，每{mw}{_f(p)}元，付了{paid}元，应找回多少元？",
        f"{who}拿{paid}元买{item}，{item}每{mw}{_f(p)}元，买了{n}{mw}后还剩多少钱？",
        f"每{mw}{item}{_f(p)}元，买{n}{mw}，给售货员{paid}元，找零多少元？",
        f"{paid}元钱买了{n}{mw}单价{_f(p)}元的{item}，还剩下多少元？",
    ])
    left = paid - p * n
    return _make("change_multi", "two_step", q, f"{paid}-{_f(p)}*{n}", left, "元", f"还剩{_f(left)}元。")


def _two_kinds(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 8), rng.randint(2, 8), rng.choice(BUYERS)
    q = rng.choice([
        f"{who}买了{n1}{m1}{i1}和{n2}{m2}{i2}，{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元，一共花了多少元？",
        f"{i1}每{m1}{_f(p1)}元，{i2}每{m2}{_f(p2)}元。{who}买{n1}{m1}{i1}、{n2}{m2}{i2}，需要多少钱？",
        f"{who}先买了{n1}{m1}{i1}，每{m1}{_f(p1)}元；又买了{n2}{m2}{i2}，每{m2}{_f(p2)}元。{who}一共付了多少元？",
        f"学校买{n1}{m1}{i1}和{n2}{m2}{i2}，单价分别是{_f(p1)}元和{_f(p2)}元，总共要花多少钱？",
    ])
    total = p1 * n1 + p2 * n2
    return _make("two_kinds", "two_step", q, f"{_f(p1)}*{n1}+{_f(p2)}*{n2}", total, "元",
                 f"一共需要{_f(total)}元。")


def _spend_twice(rng):
    (i1, _, lo1, hi1), (i2, _, lo2, hi2) = rng.sample(GOODS, 2)
    a, b, who = _price(rng, lo1, hi1) * rng.randint(1, 3), _price(rng, lo2, hi2), rng.choice(BUYERS)
    money = _payment(rng, a + b)
    q = rng.choice([
        f"{who}有{money}元，买{i1}用了{_f(a)}元，买{i2}用了{_f(b)}元，还剩多少元？",
        f"{who}带着{money}元去超市，先花{_f(a)}元买了{i1}，又花{_f(b)}元买了{i2}，{who}还剩多少钱？",
        f"{who}的钱包里有{money}元。上午买{i1}花掉{_f(a)}元，下午买{i2}花掉{_f(b)}元。钱包里还有多少元？",
        f"一共有{money}元，第一次用去{_f(a)}元，第二次用去{_f(b)}元，剩下多少元？",
    ])
    left = money - a - b
    return _make("spend_twice", "two_step", q, f"{money}-{_f(a)}-{_f(b)}", left, "元", f"还剩{_f(left)}元。")


# --- ages

def _child_and_relative(rng):
    child, (rel, lo, hi) = rng.choice(CHILDREN), rng.choice(RELATIVES)
    c = rng.randint(4, 14)
    return child, c, rel, c + rng.randint(lo, hi)


def _age_sum(rng):
    child, c, rel, r = _child_and_relative(rng)
    q = rng.choice([
        f"{child}今年{c}岁，{rel}今年{r}岁，两人的年龄和是多少岁？",
        f"{rel}{r}岁，{child}{c}岁，他们俩一共多少岁？",
        f"{child}和{rel}的年龄加起来是多少岁？{child}{c}岁，{rel}{r}岁。",
        f"{child}说：“我今年{c}岁，{rel}今年{r}岁。”{child}和{rel}的年龄之和是几岁？",
    ])
    return _make("age_sum", "one_step", q, f"{c}+{r}", c + r, "岁", f"两人的年龄和是{c + r}岁。")


def _age_diff(rng):
    child, c, rel, r = _child_and_relative(rng)
    q = rng.choice([
        f"{rel}今年{r}岁，{child}今年{c}岁，{rel}比{child}大多少岁？",
        f"{child}{c}岁，{rel}{r}岁，{child}比{rel}小几岁？",
        f"{child}今年{c}岁，{rel}今年{r}岁。{child}出生的那一年，{rel}是多少岁？",
        f"{rel}和{child}相差几岁？已知{rel}{r}岁，{child}{c}岁。",
    ])
    return _make("age_diff", "one_step", q, f"{r}-{c}", r - c, "岁", f"相差{r - c}岁。")


def _age_times(rng):
    child, (rel, lo, hi) = rng.choice(CHILDREN), rng.choice(RELATIVES[:6])
    c, k = rng.randint(3, 14), rng.randint(2, 9)
    if not lo <= c * k - c <= hi:
        raise _Retry
    q = rng.choice([
        f"{rel}的年龄是{child}的{k}倍，{child}今年{c}岁，{rel}今年几岁？",
        f"{child}{c}岁，{rel}的岁数正好是{child}的{k}倍，{rel}多少岁？",
        f"已知{child}今年{c}岁，{rel}今年的年龄是{child}的{k}倍，求{rel}的年龄。",
        f"今年{rel}的年龄是{child}的{k}倍。如果{child}是{c}岁，那么{rel}是多少岁？",
    ])
    return _make("age_times", "one_step", q, f"{c}*{k}", c * k, "岁", f"{rel}今年{c * k}岁。")


def _age_later(rng):
    child, c, rel, r = _child_and_relative(rng)
    k = rng.randint(2, 10)
    q = rng.choice([
        f"{child}今年{c}岁，{rel}今年{r}岁，{k}年后两人的年龄和是多少岁？",
        f"再过{k}年，{child}和{rel}一共多少岁？现在{child}{c}岁，{rel}{r}岁。",
        f"{rel}{r}岁，{child}{c}岁。{k}年以后，他们的年龄加起来是多少？",
    ])
    total = c + k + r + k
    return _make("age_later", "two_step", q, f"({c}+{k})+({r}+{k})", total, "岁", f"{k}年后两人的年龄和是{total}岁。")


# --- distance, speed, time

def _mover(rng):
    who, verb, lo, hi, du, tu = rng.choice(MOVERS)
    who = who or rng.choice(CHILDREN)
    t = rng.randint(8, 40) if tu == "分钟" else (F(rng.randint(4, 16), 2) if rng.random() < 0.3 else rng.randint(2, 8))
    return who, verb, rng.randint(lo, hi), t, du, tu


def _distance(rng):
    m, verb, v, t, du, tu = _mover(rng)
    q = rng.choice([
        f"{m}每{tu}{verb}{v}{du}，{_f(t)}{tu}{verb}多少{du}？",
        f"{m}{verb}的速度是每{tu}{v}{du}，{verb}了{_f(t)}{tu}，一共{verb}了多少{du}？",
        f"{m}以每{tu}{v}{du}的速度{verb}了{_f(t)}{tu}，{verb}了多远？",
        f"在{_f(t)}{tu}里，{m}每{tu}{verb}{v}{du}，一共{verb}了多少{du}？",
        f"{m}{verb}了{_f(t)}{tu}，速度是每{tu}{v}{du}，路程是多少{du}？",
    ])
    d = v * F(t)
    return _make("distance", "one_step", q, f"{v}*{_f(t)}", d, du, f"一共{verb}了{_f(d)}{du}。")


def _travel_time(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.choice([
        f"两地相距{_f(d)}{du}，{m}每{tu}{verb}{v}{du}，需要多少{tu}才能到达？",
        f"{m}要{verb}{_f(d)}{du}，速度是每{tu}{v}{du}，要用几{tu}？",
        f"从甲地到乙地有{_f(d)}{du}，{m}以每{tu}{v}{du}的速度{verb}，几{tu}能到？",
        f"一段{_f(d)}{du}长的路，{m}每{tu}{verb}{v}{du}，走完这段路要多长时间？",
    ])
    return _make("travel_time", "one_step", q, f"{_f(d)}/{v}", t, tu, f"需要{_f(t)}{tu}。")


def _speed(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.choice([
        f"{m}{_f(t)}{tu}{verb}了{_f(d)}{du}，平均每{tu}{verb}多少{du}？",
        f"{m}用{_f(t)}{tu}{verb}完了{_f(d)}{du}的路程，速度是每{tu}多少{du}？",
        f"{_f(d)}{du}的路，{m}{verb}了{_f(t)}{tu}，平均速度是每{tu}多少{du}？",
    ])
    return _make("speed", "one_step", q, f"{_f(d)}/{_f(t)}", v, du, f"平均每{tu}{verb}{v}{du}。")


def _meet(rng):
    a, b = rng.sample(CHILDREN, 2)
    who = rng.choice(("walkers", "cars", "minutes"))
    if who == "walkers":
        v1, v2, t, du = rng.randint(3, 6), rng.randint(3, 6), rng.randint(2, 6), "千米"
        q = f"{a}和{b}同时从两地出发相向而行，{a}每小时走{v1}千米，{b}每小时走{v2}千米，{t}小时后两人相遇。两地相距多少千米？"
    elif who == "cars":
        v1, v2, t, du = rng.randint(45, 90), rng.randint(45, 90), rng.randint(2, 6), "千米"
        q = f"两辆汽车同时从两城相对开出，一辆每小时行{v1}千米，另一辆每小时行{v2}千米，经过{t}小时相遇，两城相距多少千米？"
    else:
        v1, v2, t, du = rng.randint(55, 90), rng.randint(55, 90), rng.randint(2, 6) * 5, "米"
        q = f"{a}从家、{b}从学校同时出发，相向而行，{a}每分钟走{v1}米，{b}每分钟走{v2}米，{t}分钟后相遇。{a}家和学校相距多少米？"
    d = (v1 + v2) * t
    return _make("meet", "two_step", q, f"({v1}+{v2})*{t}", d, du, f"两地相距{d}{du}。")


# --- area and perimeter

def _rectangle(rng):
    what, u, lo, hi = rng.choice(RECTANGLES)
    w, extra = _size(rng, lo, hi), _size(rng, 1, hi)
    return what, u, w + extra, w


def _rect_area(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.choice([
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，面积是多少平方{u}？",
        f"{what}的长是{_f(l)}{u}，宽是{_f(w)}{u}，它的面积是多少？",
        f"一个长方形的长为{_f(l)}{u}，宽为{_f(w)}{u}，求它的面积。",
        f"{what}宽{_f(w)}{u}，长{_f(l)}{u}，有多少平方{u}？",
    ])
    return _make("rect_area", "one_step", q, f"{_f(l)}*{_f(w)}", l * w, f"平方{u}", f"面积是{_f(l * w)}平方{u}。")


def _rect_perimeter(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.choice([
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，周长是多少{u}？",
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}。沿着它的边走一圈，一共走了多少{u}？",
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，在它的四周围一圈彩带，彩带长多少{u}？",
        f"一个长方形的长是{_f(l)}{u}，宽是{_f(w)}{u}，求它的周长。",
    ])
    p = (l + w) * 2
    return _make("rect_perimeter", "two_step", q, f"({_f(l)}+{_f(w)})*2", p, u, f"周长是{_f(p)}{u}。")


def _square(rng):
    what, u, lo, hi = rng.choice(SQUARES)
    s = _size(rng, lo, hi)
    if rng.random() < 0.5:
        q = rng.choice([
            f"{what}的边长是{_f(s)}{u}，它的面积是多少平方{u}？",
            f"正方形的边长为{_f(s)}{u}，求这个正方形的面积。",
            f"{what}每条边长{_f(s)}{u}，占了多大面积？",
        ])
        return _make("square", "one_step", q, f"{_f(s)}*{_f(s)}", s * s, f"平方{u}", f"面积是{_f(s * s)}平方{u}。")
    q = rng.choice([
        f"{what}边长{_f(s)}{u}，周长是多少{u}？",
        f"用铁丝围成一个边长{_f(s)}{u}的正方形，需要多长的铁丝？",
        f"沿着{what}的边走一圈，边长是{_f(s)}{u}，走了多少{u}？",
    ])
    return _make("square", "one_step", q, f"{_f(s)}*4", s * 4, u, f"周长是{_f(s * 4)}{u}。")


def _floor_cost(rng):
    l, w, who = _size(rng, 3, 12), _size(rng, 2, 8), rng.choice(BUYERS)
    p = F(rng.randint(20, 150))
    q = rng.choice([
        f"一间教室长{_f(l)}米，宽{_f(w)}米，铺地砖每平方米要{p}元，一共要花多少元？",
        f"{who}家的客厅长{_f(l)}米、宽{_f(w)}米，要铺每平方米{p}元的木地板，需要多少钱？",
        f"一块长{_f(l)}米、宽{_f(w)}米的长方形空地，每平方米的草皮{p}元，铺满需要多少元？",
        f"给一面长{_f(l)}米、高{_f(w)}米的墙刷漆，每平方米的费用是{p}元，一共多少钱？",
    ])
    cost = l * w * p
    return _make("floor_cost", "two_step", q, f"{_f(l)}*{_f(w)}*{p}", cost, "元", f"一共需要{_f(cost)}元。")


def _fence_cost(rng):
    l, w = _size(rng, 5, 40), _size(rng, 3, 20)
    p = _price(rng, 5, 30)
    q = rng.choice([
        f"一块长方形菜地长{_f(l)}米，宽{_f(w)}米，四周围上篱笆，每米篱笆{_f(p)}元，一共要花多少钱？",
        f"沿着长{_f(l)}米、宽{_f(w)}米的长方形花坛四周铺一圈彩砖，每米{_f(p)}元，共需多少元？",
        f"给一个长{_f(l)}米、宽{_f(w)}米的长方形水池装一圈护栏，护栏每米{_f(p)}元，需要多少元？",
    ])
    cost = (l + w) * 2 * p
    return _make("fence_cost", "three_step", q, f"({_f(l)}+{_f(w)})*2*{_f(p)}", cost, "元", f"一共需要{_f(cost)}元。")


# --- averages

# lowest, highest, unit, question (who, n, values), final (a)
_AVERAGE_TOPICS = [
    (70, 100, "分", "{who}{n}次数学测验的成绩分别是{values}分，平均成绩是多少分？", "平均成绩是{a}分。"),
    (118, 160, "厘米", "{n}名同学的身高分别是{values}厘米，他们的平均身高是多少厘米？", "平均身高是{a}厘米。"),
    (12, 60, "页", "{who}一连{n}天看书，每天看的页数是{values}页，平均每天看多少页？", "平均每天看{a}页。"),
    (25, 48, "千克", "小组{n}个人的体重分别是{values}千克，求他们的平均体重。", "平均体重是{a}千克。"),
    (300, 900, "元", "一家水果店{n}天的营业额分别是{values}元，平均每天卖了多少元？", "平均每天卖了{a}元。"),
    (10, 99, "", "求{values}这{n}个数的平均数。", "平均数是{a}。"),
]


def _values(rng, lo, hi, n, divisible=False):
    xs = [rng.randint(lo, hi) for _ in range(n)]
    if divisible:  # nudge the last value so the sum divides by n
        xs[-1] += -sum(xs) % n
    return xs


def _average(rng):
    lo, hi, unit, q, final = rng.choice(_AVERAGE_TOPICS)
    n = rng.choice((3, 4, 5))
    xs = _values(rng, lo, hi, n, divisible=n == 3)  # a third is a repeating decimal; quarters, fifths are fine
    a = F(sum(xs), n)
    q = q.format(who=rng.choice(CHILDREN), n=n, values="、".join(map(str, xs)))
    return _make("average", "two_step", q, f"({'+'.join(map(str, xs))})/{n}", a, unit, final.format(a=_f(a)))


def _average_compare(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situations = [
        (75, 100, 60, "分", f"{who}{n}次测验的成绩是{{values}}分，平均分比全班平均分{{x}}分高多少分？"),
        (800, 1200, 500, "米", f"{who}{n}天分别跑了{{values}}米，平均每天比计划的{{x}}米多跑多少米？"),
        (30, 60, 20, "棵", f"{n}个班分别植树{{values}}棵，去年平均每班植树{{x}}棵。今年平均每班比去年多植多少棵？"),
    ]
    lo, hi, x_lo, unit, q = rng.choice(situations)
    xs = _values(rng, lo, hi, n, divisible=True)
    x = rng.randint(x_lo, min(xs))
    a = F(sum(xs), n) - x
    q = q.format(values="、".join(map(str, xs)), x=x)
    return _make("average_compare", "two_step", q, f"({'+'.join(map(str, xs))})/{n}-{x}", a, unit,
                 f"平均多{_f(a)}{unit}。")


def _average_missing(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situations = [
        (70, 100, "分", f"{who}{n}次测验的平均分是{{avg}}分，前{n - 1}次分别是{{known}}分，第{n}次得了多少分？",
         f"第{n}次得了{{a}}分。"),
        (10, 99, "", f"{n}个数的平均数是{{avg}}，其中{n - 1}个数是{{known}}，另一个数是多少？", "另一个数是{a}。"),
        (15, 50, "页", f"{who}{n}天平均每天看书{{avg}}页，前{n - 1}天分别看了{{known}}页，最后一天看了多少页？",
         "最后一天看了{a}页。"),
    ]
    lo, hi, unit, q, final = rng.choice(situations)
    xs = _values(rng, lo, hi, n, divisible=True)
    if not lo <= xs[-1] <= hi:
        raise _Retry
    avg, known = sum(xs) // n, xs[:-1]
    q = q.format(avg=avg, known="、".join(map(str, known)))
    expr = f"{avg}*{n}-{'-'.join(map(str, known))}"
    return _make("average_missing", "three_step", q, expr, xs[-1], unit, final.format(a=xs[-1]))


# --- discounts

def _big_good(rng):
    item, mw, lo, hi = rng.choice(BIG_GOODS)
    return item, mw, rng.randint(lo // 10, hi // 10) * 10 - rng.choice((0, 0, 2, 5))


def _discount_zhe(rng):
    item, mw, price = _big_good(rng)
    zhe, rate = rng.choice(DISCOUNTS)
    who = rng.choice(BUYERS)
    q = rng.choice([
        f"一{mw}{item}原价{price}元，打{zhe}折后卖多少元？",
        f"商店里的{item}原价{price}元，现在打{zhe}折，{who}买一{mw}要付多少钱？",
        f"{item}打{zhe}折出售，原来每{mw}{price}元，现在每{mw}多少元？",
        f"原价{price}元的{item}，按{zhe}折优惠，现价是多少元？",
    ])
    now = price * rate
    return _make("discount_zhe", "one_step", q, f"{price}*{_f(rate)}", now, "元", f"现价是{_f(now)}元。")


def _discount_percent(rng):
    item, mw, price = _big_good(rng)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50))
    q = rng.choice([
        f"一{mw}{item}原价{price}元，现在降价{pct}%，现价是多少元？",
        f"{item}原来卖{price}元，商店搞活动减价百分之{_cn(pct)}，现在卖多少钱？",
        f"原价{price}元的{item}，便宜了{pct}%后是多少元？",
        f"一{mw}{item}{price}元，降价{pct}%以后，买一{mw}要多少钱？",
    ])
    now = price * (1 - F(pct, 100))
    return _make("discount_percent", "two_step", q, f"{price}*(1-{_f(F(pct, 100))})", now, "元",
                 f"现价是{_f(now)}元。")


def _discount_saving(rng):
    item, mw, price = _big_good(rng)
    zhe, rate = rng.choice(DISCOUNTS)
    who = rng.choice(BUYERS)
    q = rng.choice([
        f"一{mw}{item}原价{price}元，打{zhe}折出售，比原价便宜了多少元？",
        f"{who}用打{zhe}折的价格买了一{mw}原价{price}元的{item}，省了多少钱？",
        f"{item}原价{price}元，现在打{zhe}折，买一{mw}能节省多少元？",
    ])
    saved = price - price * rate
    return _make("discount_saving", "two_step", q, f"{price}-{price}*{_f(rate)}", saved, "元",
                 f"便宜了{_f(saved)}元。")


# --- percentages

def _percent_of(rng):
    whole = rng.choice((20, 25, 40, 50, 80, 100, 120, 200, 250, 400, 500))
    part = rng.randint(1, whole - 1)
    who = rng.choice(CHILDREN)
    situations = [
        (f"全班有{whole}人，其中女生{part}人，女生占全班人数的百分之几？", "女生占全班人数的{a}%。"),
        (f"一本书有{whole}页，{who}已经看了{part}页，看了全书的百分之几？", "看了全书的{a}%。"),
        (f"果园里有{whole}棵果树，其中苹果树{part}棵，苹果树占果树总数的百分之几？", "苹果树占{a}%。"),
        (f"{who}投篮{whole}次，投中了{part}次，命中率是多少？", "命中率是{a}%。"),
        (f"{part}是{whole}的百分之几？", "是{a}%。"),
    ]
    q, final = rng.choice(situations)
    a = F(part, whole) * 100
    return _make("percent_of", "two_step", q, f"{part}/{whole}*100", a, "%", final.format(a=_f(a)))


def _percent_amount(rng):
    whole, pct = rng.randint(2, 30) * 20, rng.randint(1, 19) * 5
    who = rng.choice(CHILDREN)
    situations = [
        (f"一本书有{whole}页，{who}已经看了全书的{pct}%，看了多少页？", "页", "看了{a}页。"),
        (f"全校有{whole}名学生，其中{pct}%是女生，女生有多少人？", "人", "女生有{a}人。"),
        (f"{who}有{whole}元，用了其中的百分之{_cn(pct)}买书，买书用了多少元？", "元", "买书用了{a}元。"),
        (f"一块地有{whole}平方米，其中{pct}%种了蔬菜，种蔬菜的面积是多少平方米？", "平方米", "种蔬菜的面积是{a}平方米。"),
    ]
    q, unit, final = rng.choice(situations)
    a = whole * F(pct, 100)
    return _make("percent_amount", "one_step", q, f"{whole}*{_f(F(pct, 100))}", a, unit, final.format(a=_f(a)))


def _growth_rate(rng):
    pct = rng.choice((5, 10, 12, 15, 20, 25, 30, 40, 50))
    old = rng.randint(2, 40) * 20
    if old * pct % 100:
        raise _Retry
    new = old * (100 + pct) // 100
    who = rng.choice(CHILDREN)
    q = rng.choice([
        f"去年果园收了{old}千克苹果，今年收了{new}千克，今年比去年增长了百分之几？",
        f"图书角原来有{old}本书，现在有{new}本，增加了百分之几？",
        f"{who}上个月存了{old}元，这个月存了{new}元，这个月比上个月多存了百分之几？",
    ])
    return _make("growth_rate", "three_step", q, f"({new}-{old})/{old}*100", F(new - old, old) * 100, "%",
                 f"增长了{pct}%。")


# --- unit conversions

def _conversion(rng):
    big, small, factor, thing = rng.choice(CONVERSIONS)
    v = F(rng.randint(1, 40), 4) if factor == 60 else F(rng.randint(1, 100), rng.choice((1, 1, 10)))
    return big, small, factor, thing, v


def _subject(thing: str, who: str) -> str:
    return (who + thing) if thing.startswith(("做", "跑")) else thing


def _unit_mul(rng):
    big, small, factor, thing, v = _conversion(rng)
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.choice([
        f"{_f(v)}{big}等于多少{small}？",
        f"{s}{_f(v)}{big}，换算成{small}是多少？",
        f"把{_f(v)}{big}换算成以{small}为单位，是多少{small}？",
        f"{s}{_f(v)}{big}，也就是多少{small}？",
        f"1{big}={factor}{small}，那么{_f(v)}{big}是多少{small}？",
    ])
    a = v * factor
    return _make("unit_mul", "one_step", q, f"{_f(v)}*{factor}", a, small, f"{_f(v)}{big}是{_f(a)}{small}。")


def _unit_div(rng):
    big, small, factor, thing, v = _conversion(rng)
    w = v * factor
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.choice([
        f"{_f(w)}{small}等于多少{big}？",
        f"{s}{_f(w)}{small}，合多少{big}？",
        f"{_f(w)}{small}是几{big}？",
        f"用{big}作单位，{_f(w)}{small}是多少{big}？",
    ])
    return _make("unit_div", "one_step", q, f"{_f(w)}/{factor}", v, big, f"{_f(w)}{small}是{_f(v)}{big}。")


def _unit_mixed(rng):
    big, small, factor, thing, _ = _conversion(rng)
    a, b = rng.randint(1, 12), rng.randint(1, factor - 1)
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.choice([
        f"{a}{big}{b}{small}是多少{small}？",
        f"{s}{a}{big}{b}{small}，一共是多少{small}？",
        f"{a}{big}又{b}{small}合多少{small}？",
        f"把{a}{big}{b}{small}化成以{small}为单位，结果是多少？",
    ])
    x = a * factor + b
    return _make("unit_mixed", "two_step", q, f"{a}*{factor}+{b}", x, small, f"{a}{big}{b}{small}是{x}{small}。")


# --- sharing and groups

def _share(rng):
    thing, mw = rng.choice(COUNTABLES)
    n, each, who = rng.randint(2, 12), rng.randint(2, 15), rng.choice(ADULTS + CHILDREN)
    total = n * each
    q, final = rng.choice([
        (f"有{total}{mw}{thing}，平均分给{n}个小朋友，每人分到几{mw}？", "每人分到{a}{mw}。"),
        (f"{who}把{total}{mw}{thing}平均分成{n}份，每份有多少{mw}？", "每份有{a}{mw}。"),
        (f"{total}{mw}{thing}平均分给{n}个班，每个班分多少{mw}？", "每个班分{a}{mw}。"),
        (f"老师买了{total}{mw}{thing}，要平均发给{n}名同学，每名同学能得到几{mw}？", "每名同学得到{a}{mw}。"),
        (f"{n}个人平分{total}{mw}{thing}，每人得到多少{mw}？", "每人得到{a}{mw}。"),
    ])
    return _make("share", "one_step", q, f"{total}/{n}", each, mw, final.format(a=each, mw=mw))


def _groups_total(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    q = rng.choice([
        f"每{box}装{k}{mw}{thing}，{n}{box}一共有多少{mw}？",
        f"{who}买了{n}{box}{thing}，每{box}{k}{mw}，一共多少{mw}？",
        f"一{box}{thing}有{k}{mw}，{n}{box}这样的{thing}有多少{mw}？",
        f"学校有{n}个班，每班发{k}{mw}{thing}，一共要发多少{mw}？",
    ])
    return _make("groups_total", "one_step", q, f"{k}*{n}", k * n, mw, f"一共有{k * n}{mw}。")


def _groups_count(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    total = k * n
    q = rng.choice([
        f"有{total}{mw}{thing}，每{box}装{k}{mw}，能装多少{box}？",
        f"{total}{mw}{thing}，每{k}{mw}装一{box}，一共可以装几{box}？",
        f"{who}要把{total}{mw}{thing}装起来，每{box}装{k}{mw}，需要几{box}？",
        f"一{box}{thing}有{k}{mw}，{total}{mw}{thing}是多少{box}？",
    ])
    return _make("groups_count", "one_step", q, f"{total}/{k}", n, box, f"可以装{n}{box}。")


def _work_rate(rng):
    r, w, d = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 10)
    q, unit, final = rng.choice([
        (f"一个工人每天做{r}个零件，{w}个工人{d}天能做多少个零件？", "个", "一共能做{a}个零件。"),
        (f"{w}台机器同时工作，每台每小时生产{r}个零件，{d}小时一共生产多少个？", "个", "一共生产{a}个。"),
        (f"每位同学每天折{r}只纸鹤，{w}位同学折了{d}天，一共折了多少只？", "只", "一共折了{a}只。"),
        (f"果园里有{w}个工人摘苹果，每人每天摘{r}千克，{d}天能摘多少千克？", "千克", "一共能摘{a}千克。"),
    ])
    a = r * w * d
    return _make("work_rate", "two_step", q, f"{r}*{w}*{d}", a, unit, final.format(a=a))


# --- multi-step and comparisons

def _shopping_change3(rng):
    i1, m1, p1, i2, m2, p2 = _two_goods(rng)
    n1, n2, who = rng.randint(2, 6), rng.randint(2, 6), rng.choice(BUYERS)
    cost = p1 * n1 + p2 * n2
    paid = _payment(rng, cost)
    q = rng.choice([
        f"{who}买了{n1}{m1}{i1}，每{m1}{_f(p1)}元，又买了{n2}{m2}{i2}，每{m2}{_f(p2)}元，付给售货员{paid}元，应找回多少元？",
        f"{who}带了{paid}元，买了{n1}{m1}{i1}（每{m1}{_f(p1)}元）和{n2}{m2}{i2}（每{m2}{_f(p2)}元），还剩多少钱？",
        f"{i1}{_f(p1)}元一{m1}，{i2}{_f(p2)}元一{m2}。{who}拿{paid}元买了{n1}{m1}{i1}和{n2}{m2}{i2}，还剩多少元？",
    ])
    left = paid - cost
    return _make("shopping_change3", "three_step", q, f"{paid}-({_f(p1)}*{n1}+{_f(p2)}*{n2})", left, "元",
                 f"还剩{_f(left)}元。")


def _trip_remaining(rng):
    v1, v2, t1, t2 = rng.randint(40, 80), rng.randint(40, 80), rng.randint(2, 4), rng.randint(2, 4)
    who = rng.choice(CHILDREN)
    done = v1 * t1 + v2 * t2
    total = done + rng.randint(10, 200)
    situations = [
        (f"两地相距{total}千米，一辆汽车上午行驶了{t1}小时，每小时{v1}千米，下午行驶了{t2}小时，每小时{v2}千米，离目的地还有多少千米？", "千米"),
        (f"{who}家离外婆家{total}千米，{who}坐汽车先以每小时{v1}千米的速度走了{t1}小时，又以每小时{v2}千米的速度走了{t2}小时，离外婆家还有多少千米？", "千米"),
        (f"修路队要修一条{total}米长的路，前{t1}天每天修{v1}米，后{t2}天每天修{v2}米，还剩多少米没有修？", "米"),
    ]
    q, unit = rng.choice(situations)
    left = total - done
    return _make("trip_remaining", "three_step", q, f"{total}-({v1}*{t1}+{v2}*{t2})", left, unit, f"还剩{left}{unit}。")


def _savings(rng):
    item, d, w, who = rng.choice(SAVINGS_GOALS), rng.randint(2, 10), rng.randint(2, 8), rng.choice(CHILDREN)
    cost = rng.randint(15, d * 7 * w - 1)
    q = rng.choice([
        f"{who}每天存{d}元，连续存了{w}个星期，然后花{cost}元买了{item}，还剩多少元？",
        f"{who}坚持每天攒{d}元零花钱，攒了{w}周后买了{item}，花了{cost}元，剩下多少元？",
        f"一周有7天，{who}每天存{d}元，存了{w}周后拿出{cost}元买{item}，还有多少元？",
    ])
    left = d * 7 * w - cost
    return _make("savings", "three_step", q, f"{d}*7*{w}-{cost}", left, "元", f"还剩{left}元。")


def _compare_more_less(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x, d = rng.randint(15, 80), rng.randint(3, 14)
    more = rng.random() < 0.5
    y = x + d if more else x - d
    word = "多" if more else "少"
    q = rng.choice([
        f"{a}有{x}{mw}{thing}，{b}比{a}{word}{d}{mw}，两人一共有多少{mw}？",
        f"{a}有{x}{mw}{thing}，{b}的{thing}比{a}{word}{d}{mw}，他们一共有多少{mw}{thing}？",
        f"一班收集了{x}{mw}{thing}，二班比一班{word}收集{d}{mw}，两个班一共收集了多少{mw}？",
    ])
    expr = f"{x}+({x}{'+' if more else '-'}{d})"
    return _make("compare_more_less", "two_step", q, expr, x + y, mw, f"一共有{x + y}{mw}。")


def _compare_diff(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x = rng.randint(20, 150)
    y = x - rng.randint(1, x - 5)
    q = rng.choice([
        f"{a}有{x}{mw}{thing}，{b}有{y}{mw}{thing}，{a}比{b}多几{mw}？",
        f"{b}有{y}{mw}{thing}，{a}有{x}{mw}，{b}比{a}少多少{mw}？",
        f"{a}和{b}比赛收集{thing}，{a}收集了{x}{mw}，{b}收集了{y}{mw}，两人相差多少{mw}？",
        f"{b}有{y}{mw}{thing}，再要多少{mw}就和{a}的{x}{mw}一样多？",
    ])
    return _make("compare_diff", "one_step", q, f"{x}-{y}", x - y, mw, f"相差{x - y}{mw}。")


def _temperature(rng):
    lo = rng.randint(-15, 8)
    hi = lo + rng.randint(3, 16)
    city = rng.choice(CITIES)
    q = rng.choice([
        f"某天早上的气温是{lo}℃，中午是{hi}℃，中午比早上高多少度？",
        f"{city}某天的最高气温是{hi}℃，最低气温是{lo}℃，这天的温差是多少度？",
        f"冬天的一个早晨气温是{lo}℃，到了下午升到{hi}℃，气温升高了多少度？",
    ])
    expr = f"{hi}-({lo})" if lo < 0 else f"{hi}-{lo}"
    return _make("temperature", "one_step", q, expr, hi - lo, "℃", f"相差{hi - lo}℃。")


FAMILIES = {
    "shopping_total": _shopping_total, "shopping_sum": _shopping_sum, "unit_price": _unit_price,
    "change": _change, "change_multi": _change_multi, "two_kinds": _two_kinds, "spend_twice": _spend_twice,
    "age_sum": _age_sum, "age_diff": _age_diff, "age_times": _age_times, "age_later": _age_later,
    "distance": _distance, "travel_time": _travel_time, "speed": _speed, "meet": _meet,
    "rect_area": _rect_area, "rect_perimeter": _rect_perimeter, "square": _square, "floor_cost": _floor_cost,
    "fence_cost": _fence_cost,
    "average": _average, "average_compare": _average_compare, "average_missing": _average_missing,
    "discount_zhe": _discount_zhe, "discount_percent": _discount_percent, "discount_saving": _discount_saving,
    "percent_of": _percent_of, "percent_amount": _percent_amount, "growth_rate": _growth_rate,
    "unit_mul": _unit_mul, "unit_div": _unit_div, "unit_mixed": _unit_mixed,
    "share": _share, "groups_total": _groups_total, "groups_count": _groups_count, "work_rate": _work_rate,
    "shopping_change3": _shopping_change3, "trip_remaining": _trip_remaining, "savings": _savings,
    "compare_more_less": _compare_more_less, "compare_diff": _compare_diff, "temperature": _temperature,
}

HELD_OUT_FAMILIES = frozenset({
    "change_multi", "age_later", "speed", "square", "average_compare", "discount_saving", "growth_rate",
    "unit_div", "groups_count", "trip_remaining",
})


def _draw(family: str, rng) -> Problem:
    for _ in range(200):
        try:
            return FAMILIES[family](rng)
        except _Retry:
            continue
    raise RuntimeError(f"family {family} drew no good problem in 200 tries: its expression or answer is wrong")


def generate(n: int, seed: int, split: str) -> list[Problem]:
    """n problems from the split's families ("train" or "held_out"), the same for the same seed. The families
    come in shuffled rounds, so every family appears about equally often."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    names = [f for f in FAMILIES if (f in HELD_OUT_FAMILIES) == (split == "held_out")]
    rng = random.Random(f"{split}:{seed}")  # a string seed is stable across runs, unlike hash()
    problems, round_ = [], []
    while len(problems) < n:
        if not round_:
            round_ = names[:]
            rng.shuffle(round_)
        problems.append(_draw(round_.pop(), rng))
    return problems


def conversation(problem: Problem) -> dict:
    """One SFT record ({"tools", "conversations"}, messages in the OpenAI format): the question, the calculator call, the tool's
    result and the final answer, with the tool offered."""
    return {
        "tools": [CALCULATOR],
        "conversations": [
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function",
                 "function": {"name": "calculator", "arguments": {"expression": problem.expression}}}]},
            {"role": "tool", "content": calculate(problem.expression)},
            {"role": "assistant", "content": problem.final},
        ],
    }


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
