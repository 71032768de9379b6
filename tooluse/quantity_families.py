"""The families of the word-problem generator (tooluse/problems.py) that count and measure: ages, averages, unit
conversions, sharing and groups, comparisons, temperature (distance and area: tooluse/geometry_families.py).
A family draws one problem from the random.Random it is given and returns it through make_problem
(tooluse/problem.py), or raises Retry when its numbers make a poor problem."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing writes numbers with it
from tooluse.problem import Retry, make_problem
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
    q = rng.phrasing([
        f"{child}今年{c}岁，{rel}今年{r}岁，两人的年龄和是多少岁？",
        f"{rel}{r}岁，{child}{c}岁，他们俩一共多少岁？",
        f"{child}和{rel}的年龄加起来是多少岁？{child}{c}岁，{rel}{r}岁。",
        f"{child}说：“我今年{c}岁，{rel}今年{r}岁。”{child}和{rel}的年龄之和是几岁？",
        f"已知{rel}今年{r}岁，{child}今年{c}岁，求两人年龄的总和。",
        f"请问{child}和{rel}合计多少岁？{child}{c}岁，{rel}比较大，是{r}岁。",
        f"如果{child}今年{c}岁，{rel}今年{r}岁，那么他们今年的年龄加在一起是多少岁？",
        f"过生日时，{child}{c}岁，{rel}{r}岁，两个人总共多少岁？",
    ])
    return make_problem("age_sum", "one_step", q, f"{c}+{r}", c + r, "岁", f"两人的年龄和是{c + r}岁。")


def age_diff(rng):
    child, c, rel, r = _child_and_relative(rng)
    q = rng.phrasing([
        f"{rel}今年{r}岁，{child}今年{c}岁，{rel}比{child}大多少岁？",
        f"{child}{c}岁，{rel}{r}岁，{child}比{rel}小几岁？",
        f"{child}今年{c}岁，{rel}今年{r}岁。{child}出生的那一年，{rel}是多少岁？",
        f"{rel}和{child}相差几岁？已知{rel}{r}岁，{child}{c}岁。",
        f"已知{child}今年{c}岁，{rel}今年{r}岁，求{rel}比{child}大几岁。",
        f"如果{rel}今年{r}岁，{child}今年{c}岁，那么两人的年龄差是多少岁？",
        f"请问{child}比{rel}年轻多少岁？{rel}今年{r}岁，{child}今年{c}岁。",
        f"在{child}家里，{child}{c}岁，{rel}{r}岁，{rel}比{child}年长几岁？",
    ])
    return make_problem("age_diff", "one_step", q, f"{r}-{c}", r - c, "岁", f"相差{r - c}岁。")


def age_times(rng):
    child, (rel, lo, hi) = rng.choice(CHILDREN), rng.choice(RELATIVES[:6])
    c, k = rng.randint(3, 14), rng.randint(2, 9)
    if not lo <= c * k - c <= hi:
        raise Retry
    q = rng.phrasing([
        f"{rel}的年龄是{child}的{k}倍，{child}今年{c}岁，{rel}今年几岁？",
        f"{child}{c}岁，{rel}的岁数正好是{child}的{k}倍，{rel}多少岁？",
        f"已知{child}今年{c}岁，{rel}今年的年龄是{child}的{k}倍，求{rel}的年龄。",
        f"今年{rel}的年龄是{child}的{k}倍。如果{child}是{c}岁，那么{rel}是多少岁？",
        f"请问{rel}今年多大？{rel}的年龄正好是{child}的{k}倍，而{child}今年{c}岁。",
        f"{child}今年{c}岁，{rel}的年龄是他的{k}倍，{rel}今年多少岁？",
        f"{k}倍于{child}的年龄就是{rel}的年龄，{child}{c}岁，{rel}几岁？",
        f"{rel}比{child}大得多，年龄是{child}的{k}倍。{child}{c}岁时，{rel}多少岁？",
    ])
    return make_problem("age_times", "one_step", q, f"{c}*{k}", c * k, "岁", f"{rel}今年{c * k}岁。")


def age_later(rng):
    child, c, rel, r = _child_and_relative(rng)
    k = rng.randint(2, 10)
    q = rng.phrasing([
        f"{child}今年{c}岁，{rel}今年{r}岁，{k}年后两人的年龄和是多少岁？",
        f"再过{k}年，{child}和{rel}一共多少岁？现在{child}{c}岁，{rel}{r}岁。",
        f"{rel}{r}岁，{child}{c}岁。{k}年以后，他们的年龄加起来是多少？",
    ])
    total = c + k + r + k
    return make_problem("age_later", "two_step", q, f"({c}+{k})+({r}+{k})", total, "岁", f"{k}年后两人的年龄和是{total}岁。")


# --- averages

# lowest, highest, unit, question (who, n, values), final (a)
_AVERAGE_TOPICS = [
    (70, 100, "分", "{who}{n}次数学测验的成绩分别是{values}分，平均成绩是多少分？", "平均成绩是{a}分。"),
    (118, 160, "厘米", "{n}名同学的身高分别是{values}厘米，他们的平均身高是多少厘米？", "平均身高是{a}厘米。"),
    (12, 60, "页", "{who}一连{n}天看书，每天看的页数是{values}页，平均每天看多少页？", "平均每天看{a}页。"),
    (25, 48, "千克", "小组{n}个人的体重分别是{values}千克，求他们的平均体重。", "平均体重是{a}千克。"),
    (300, 900, "元", "一家水果店{n}天的营业额分别是{values}元，平均每天卖了多少元？", "平均每天卖了{a}元。"),
    (10, 99, "", "求{values}这{n}个数的平均数。", "平均数是{a}。"),
    (70, 100, "分", "请问{who}平均每次考了多少分？{who}最近{n}次考试依次得了{values}分。", "平均每次{a}分。"),
    (20, 80, "个", "已知{n}个小组分别做了{values}个灯笼，求平均每组做了多少个。", "平均每组做了{a}个。"),
    (30, 95, "个", "如果{who}{n}天跳绳的个数是{values}个，那么平均每天跳多少个？", "平均每天跳{a}个。"),
    (150, 400, "千克", "果园{n}个工人摘的苹果分别有{values}千克，平均每人摘了多少千克？", "平均每人摘了{a}千克。"),
    (10, 60, "棵", "{n}个班参加植树，分别种了{values}棵，每班平均种多少棵？", "每班平均种{a}棵。"),
]


def _values(rng, lo, hi, n, divisible=False):
    xs = [rng.randint(lo, hi) for _ in range(n)]
    if divisible:  # nudge the last value so the sum divides by n
        xs[-1] += -sum(xs) % n
    return xs


def average(rng):
    lo, hi, unit, q, final = rng.phrasing(_AVERAGE_TOPICS)
    n = rng.choice((3, 4, 5))
    xs = _values(rng, lo, hi, n, divisible=n == 3)  # a third is a repeating decimal; quarters, fifths are fine
    a = F(sum(xs), n)
    q = q.format(who=rng.choice(CHILDREN), n=n, values="、".join(map(str, xs)))
    return make_problem("average", "two_step", q, f"({'+'.join(map(str, xs))})/{n}", a, unit, final.format(a=_f(a)))


def average_compare(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situations = [
        (75, 100, 60, "分", f"{who}{n}次测验的成绩是{{values}}分，平均分比全班平均分{{x}}分高多少分？"),
        (800, 1200, 500, "米", f"{who}{n}天分别跑了{{values}}米，平均每天比计划的{{x}}米多跑多少米？"),
        (30, 60, 20, "棵", f"{n}个班分别植树{{values}}棵，去年平均每班植树{{x}}棵。今年平均每班比去年多植多少棵？"),
    ]
    lo, hi, x_lo, unit, q = rng.phrasing(situations)
    xs = _values(rng, lo, hi, n, divisible=True)
    x = rng.randint(x_lo, min(xs))
    a = F(sum(xs), n) - x
    q = q.format(values="、".join(map(str, xs)), x=x)
    return make_problem("average_compare", "two_step", q, f"({'+'.join(map(str, xs))})/{n}-{x}", a, unit,
                        f"平均多{_f(a)}{unit}。")


def average_missing(rng):
    n, who = rng.choice((3, 4, 5)), rng.choice(CHILDREN)
    situations = [
        (70, 100, "分", f"{who}{n}次测验的平均分是{{avg}}分，前{n - 1}次分别是{{known}}分，第{n}次得了多少分？",
         f"第{n}次得了{{a}}分。"),
        (10, 99, "", f"{n}个数的平均数是{{avg}}，其中{n - 1}个数是{{known}}，另一个数是多少？", "另一个数是{a}。"),
        (15, 50, "页", f"{who}{n}天平均每天看书{{avg}}页，前{n - 1}天分别看了{{known}}页，最后一天看了多少页？",
         "最后一天看了{a}页。"),
        (20, 60, "个", f"请问第{n}组做了多少个？{n}个组平均每组做了{{avg}}个灯笼，前{n - 1}组分别做了{{known}}个。",
         f"第{n}组做了{{a}}个。"),
        (30, 90, "元", f"已知{who}{n}天平均每天花{{avg}}元，前{n - 1}天分别花了{{known}}元，求最后一天花了多少元。",
         "最后一天花了{a}元。"),
        (70, 100, "分", f"如果{who}想让{n}门功课平均{{avg}}分，已经考了{{known}}分，那么最后一门要考多少分？",
         "最后一门要考{a}分。"),
    ]
    lo, hi, unit, q, final = rng.phrasing(situations)
    xs = _values(rng, lo, hi, n, divisible=True)
    if not lo <= xs[-1] <= hi:
        raise Retry
    avg, known = sum(xs) // n, xs[:-1]
    q = q.format(avg=avg, known="、".join(map(str, known)))
    expr = f"{avg}*{n}-{'-'.join(map(str, known))}"
    return make_problem("average_missing", "three_step", q, expr, xs[-1], unit, final.format(a=xs[-1]))


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
    q = rng.phrasing([
        f"{_f(v)}{big}等于多少{small}？",
        f"{s}{_f(v)}{big}，换算成{small}是多少？",
        f"把{_f(v)}{big}换算成以{small}为单位，是多少{small}？",
        f"{s}{_f(v)}{big}，也就是多少{small}？",
        f"1{big}={factor}{small}，那么{_f(v)}{big}是多少{small}？",
        f"请问{_f(v)}{big}换成{small}是多少？",
        f"已知1{big}是{factor}{small}，求{_f(v)}{big}是多少{small}。",
        f"如果{s}{_f(v)}{big}，那么以{small}作单位是多少{small}？",
        f"{_f(v)}{big}里面一共有多少{small}？",
    ])
    a = v * factor
    return make_problem("unit_mul", "one_step", q, f"{_f(v)}*{factor}", a, small, f"{_f(v)}{big}是{_f(a)}{small}。")


def unit_div(rng):
    big, small, factor, thing, v = _conversion(rng)
    w = v * factor
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.phrasing([
        f"{_f(w)}{small}等于多少{big}？",
        f"{s}{_f(w)}{small}，合多少{big}？",
        f"{_f(w)}{small}是几{big}？",
        f"用{big}作单位，{_f(w)}{small}是多少{big}？",
    ])
    return make_problem("unit_div", "one_step", q, f"{_f(w)}/{factor}", v, big, f"{_f(w)}{small}是{_f(v)}{big}。")


def unit_mixed(rng):
    big, small, factor, thing, _ = _conversion(rng)
    a, b = rng.randint(1, 12), rng.randint(1, factor - 1)
    s = _subject(thing, rng.choice(CHILDREN))
    q = rng.phrasing([
        f"{a}{big}{b}{small}是多少{small}？",
        f"{s}{a}{big}{b}{small}，一共是多少{small}？",
        f"{a}{big}又{b}{small}合多少{small}？",
        f"把{a}{big}{b}{small}化成以{small}为单位，结果是多少？",
        f"已知{s}{a}{big}{b}{small}，求一共是多少{small}。",
        f"请问{a}{big}加上{b}{small}，总共是多少{small}？",
        f"如果{s}{a}{big}零{b}{small}，那么换算成{small}是多少？",
        f"{b}{small}再加{a}{big}，一共多少{small}？",
    ])
    x = a * factor + b
    return make_problem("unit_mixed", "two_step", q, f"{a}*{factor}+{b}", x, small, f"{a}{big}{b}{small}是{x}{small}。")


# --- sharing and groups

def share(rng):
    thing, mw = rng.choice(COUNTABLES)
    n, each, who = rng.randint(2, 12), rng.randint(2, 15), rng.choice(ADULTS + CHILDREN)
    total = n * each
    q, final = rng.phrasing([
        (f"有{total}{mw}{thing}，平均分给{n}个小朋友，每人分到几{mw}？", "每人分到{a}{mw}。"),
        (f"{who}把{total}{mw}{thing}平均分成{n}份，每份有多少{mw}？", "每份有{a}{mw}。"),
        (f"{total}{mw}{thing}平均分给{n}个班，每个班分多少{mw}？", "每个班分{a}{mw}。"),
        (f"老师买了{total}{mw}{thing}，要平均发给{n}名同学，每名同学能得到几{mw}？", "每名同学得到{a}{mw}。"),
        (f"{n}个人平分{total}{mw}{thing}，每人得到多少{mw}？", "每人得到{a}{mw}。"),
        (f"请问每个小组分到多少{mw}？{who}把{total}{mw}{thing}平均分给{n}个小组。", "每个小组分到{a}{mw}。"),
        (f"已知{total}{mw}{thing}要平均放进{n}个盘子里，求每个盘子放几{mw}。", "每个盘子放{a}{mw}。"),
        (f"如果把{total}{mw}{thing}平均分给{n}位小朋友，那么每位小朋友分得几{mw}？", "每位分得{a}{mw}。"),
        (f"{who}有{thing}{total}{mw}，分给{n}个人，每人分得同样多，每人分到多少{mw}？", "每人分到{a}{mw}。"),
    ])
    return make_problem("share", "one_step", q, f"{total}/{n}", each, mw, final.format(a=each, mw=mw))


def groups_total(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    q = rng.phrasing([
        f"每{box}装{k}{mw}{thing}，{n}{box}一共有多少{mw}？",
        f"{who}买了{n}{box}{thing}，每{box}{k}{mw}，一共多少{mw}？",
        f"一{box}{thing}有{k}{mw}，{n}{box}这样的{thing}有多少{mw}？",
        f"学校有{n}个班，每班发{k}{mw}{thing}，一共要发多少{mw}？",
        f"已知每{box}{thing}有{k}{mw}，求{n}{box}{thing}合计多少{mw}。",
        f"请问{n}{box}{thing}总共有多少{mw}？每{box}里都装着{k}{mw}。",
        f"如果{who}搬来{n}{box}{thing}，每{box}{k}{mw}，那么一共搬来多少{mw}？",
        f"{k}{mw}{thing}装一{box}，{who}装了{n}{box}，一共装了多少{mw}{thing}？",
    ])
    return make_problem("groups_total", "one_step", q, f"{k}*{n}", k * n, mw, f"一共有{k * n}{mw}。")


def groups_count(rng):
    thing, mw = rng.choice(COUNTABLES)
    box, k, n, who = rng.choice(CONTAINERS), rng.randint(4, 24), rng.randint(2, 15), rng.choice(BUYERS)
    total = k * n
    q = rng.phrasing([
        f"有{total}{mw}{thing}，每{box}装{k}{mw}，能装多少{box}？",
        f"{total}{mw}{thing}，每{k}{mw}装一{box}，一共可以装几{box}？",
        f"{who}要把{total}{mw}{thing}装起来，每{box}装{k}{mw}，需要几{box}？",
        f"一{box}{thing}有{k}{mw}，{total}{mw}{thing}是多少{box}？",
    ])
    return make_problem("groups_count", "one_step", q, f"{total}/{k}", n, box, f"可以装{n}{box}。")


def work_rate(rng):
    r, w, d = rng.randint(5, 60), rng.randint(2, 9), rng.randint(2, 10)
    q, unit, final = rng.phrasing([
        (f"一个工人每天做{r}个零件，{w}个工人{d}天能做多少个零件？", "个", "一共能做{a}个零件。"),
        (f"{w}台机器同时工作，每台每小时生产{r}个零件，{d}小时一共生产多少个？", "个", "一共生产{a}个。"),
        (f"每位同学每天折{r}只纸鹤，{w}位同学折了{d}天，一共折了多少只？", "只", "一共折了{a}只。"),
        (f"果园里有{w}个工人摘苹果，每人每天摘{r}千克，{d}天能摘多少千克？", "千克", "一共能摘{a}千克。"),
        (f"{d}天里，{w}个工人每人每天做{r}个零件，一共做了多少个？", "个", "一共做了{a}个。"),
        (f"已知每台机器每小时生产{r}个零件，有{w}台机器，工作了{d}小时，求一共生产多少个零件。", "个", "一共生产{a}个。"),
        (f"请问{w}个小组{d}天一共种了多少棵树？每组每天种{r}棵。", "棵", "一共种了{a}棵。"),
        (f"如果每人每天抄写{r}个生字，那么{w}人{d}天总共抄写多少个？", "个", "总共抄写{a}个。"),
    ])
    a = r * w * d
    return make_problem("work_rate", "two_step", q, f"{r}*{w}*{d}", a, unit, final.format(a=a))


# --- several steps and comparisons

def trip_remaining(rng):
    v1, v2, t1, t2 = rng.randint(40, 80), rng.randint(40, 80), rng.randint(2, 4), rng.randint(2, 4)
    who = rng.choice(CHILDREN)
    done = v1 * t1 + v2 * t2
    total = done + rng.randint(10, 200)
    situations = [
        (f"两地相距{total}千米，一辆汽车上午行驶了{t1}小时，每小时{v1}千米，下午行驶了{t2}小时，每小时{v2}千米，离目的地还有多少千米？", "千米"),
        (f"{who}家离外婆家{total}千米，{who}坐汽车先以每小时{v1}千米的速度走了{t1}小时，又以每小时{v2}千米的速度走了{t2}小时，离外婆家还有多少千米？", "千米"),
        (f"修路队要修一条{total}米长的路，前{t1}天每天修{v1}米，后{t2}天每天修{v2}米，还剩多少米没有修？", "米"),
    ]
    q, unit = rng.phrasing(situations)
    left = total - done
    return make_problem("trip_remaining", "three_step", q, f"{total}-({v1}*{t1}+{v2}*{t2})", left, unit,
                        f"还剩{left}{unit}。")


def compare_more_less(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x, d = rng.randint(15, 80), rng.randint(3, 14)
    more = rng.random() < 0.5
    y = x + d if more else x - d
    word = "多" if more else "少"
    q = rng.phrasing([
        f"{a}有{x}{mw}{thing}，{b}比{a}{word}{d}{mw}，两人一共有多少{mw}？",
        f"{a}有{x}{mw}{thing}，{b}的{thing}比{a}{word}{d}{mw}，他们一共有多少{mw}{thing}？",
        f"一班收集了{x}{mw}{thing}，二班比一班{word}收集{d}{mw}，两个班一共收集了多少{mw}？",
        f"{b}的{thing}比{a}{word}{d}{mw}，{a}有{x}{mw}，两人合计多少{mw}？",
        f"已知{a}有{thing}{x}{mw}，{b}比{a}{word}{d}{mw}，求两人总共有多少{mw}。",
        f"请问{a}和{b}一共有多少{mw}{thing}？{a}有{x}{mw}，{b}比{a}{word}{d}{mw}。",
        f"如果{a}折了{x}{mw}{thing}，{b}折的比{a}{word}{d}{mw}，那么两人共折了多少{mw}？",
        f"{a}和{b}一起收集{thing}，{a}收集了{x}{mw}，{b}比{a}{word}{d}{mw}，他们总共收集了多少{mw}？",
    ])
    expr = f"{x}+({x}{'+' if more else '-'}{d})"
    return make_problem("compare_more_less", "two_step", q, expr, x + y, mw, f"一共有{x + y}{mw}。")


def compare_diff(rng):
    (a, b), (thing, mw) = rng.sample(CHILDREN, 2), rng.choice(COUNTABLES + [("邮票", "张")])
    x = rng.randint(20, 150)
    y = x - rng.randint(1, x - 5)
    q = rng.phrasing([
        f"{a}有{x}{mw}{thing}，{b}有{y}{mw}{thing}，{a}比{b}多几{mw}？",
        f"{b}有{y}{mw}{thing}，{a}有{x}{mw}，{b}比{a}少多少{mw}？",
        f"{a}和{b}比赛收集{thing}，{a}收集了{x}{mw}，{b}收集了{y}{mw}，两人相差多少{mw}？",
        f"{b}有{y}{mw}{thing}，再要多少{mw}就和{a}的{x}{mw}一样多？",
        f"已知{a}有{x}{mw}{thing}，{b}有{y}{mw}，求{a}比{b}多多少{mw}。",
        f"请问{b}比{a}少几{mw}？{a}有{thing}{x}{mw}，{b}有{thing}{y}{mw}。",
        f"如果{a}给出{x}{mw}{thing}，{b}给出{y}{mw}，那么{a}比{b}多给了多少{mw}？",
        f"{a}的{thing}有{x}{mw}，比{b}的{y}{mw}多多少{mw}？",
    ])
    return make_problem("compare_diff", "one_step", q, f"{x}-{y}", x - y, mw, f"相差{x - y}{mw}。")


def temperature(rng):
    lo = rng.randint(-15, 8)
    hi = lo + rng.randint(3, 16)
    city = rng.choice(CITIES)
    q = rng.phrasing([
        f"某天早上的气温是{lo}℃，中午是{hi}℃，中午比早上高多少度？",
        f"{city}某天的最高气温是{hi}℃，最低气温是{lo}℃，这天的温差是多少度？",
        f"冬天的一个早晨气温是{lo}℃，到了下午升到{hi}℃，气温升高了多少度？",
        f"已知{city}某天最低气温{lo}℃，最高气温{hi}℃，求这天的温差。",
        f"请问{city}这天的最高气温比最低气温高几度？最高{hi}℃，最低{lo}℃。",
        f"如果{city}夜里的气温是{lo}℃，白天升到了{hi}℃，那么白天比夜里高了多少度？",
        f"{city}中午{hi}℃，凌晨只有{lo}℃，中午和凌晨相差多少度？",
        f"天气预报说，{city}明天{lo}℃到{hi}℃，明天的温差是几度？",
    ])
    expr = f"{hi}-({lo})" if lo < 0 else f"{hi}-{lo}"
    return make_problem("temperature", "one_step", q, expr, hi - lo, "℃", f"相差{hi - lo}℃。")
