"""The distance and area families of the word-problem generator (tooluse/problems.py): distance, speed, time,
meeting, rectangles, squares, floors and fences. Split from tooluse/quantity_families.py to keep each module short."""
from fractions import Fraction as F

from tooluse.calculator import format_number as _f  # short: every phrasing writes numbers with it
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
    q = rng.phrasing([
        f"{m}每{tu}{verb}{v}{du}，{_f(t)}{tu}{verb}多少{du}？",
        f"{m}{verb}的速度是每{tu}{v}{du}，{verb}了{_f(t)}{tu}，一共{verb}了多少{du}？",
        f"{m}以每{tu}{v}{du}的速度{verb}了{_f(t)}{tu}，{verb}了多远？",
        f"在{_f(t)}{tu}里，{m}每{tu}{verb}{v}{du}，一共{verb}了多少{du}？",
        f"{m}{verb}了{_f(t)}{tu}，速度是每{tu}{v}{du}，路程是多少{du}？",
        f"请问{m}一共{verb}了多少{du}？它每{tu}{verb}{v}{du}，连续{verb}了{_f(t)}{tu}。",
        f"已知{m}的速度是每{tu}{v}{du}，{verb}了{_f(t)}{tu}，求{verb}过的路程。",
        f"如果{m}每{tu}{verb}{v}{du}，那么{_f(t)}{tu}能{verb}多少{du}？",
    ])
    d = v * F(t)
    return make_problem("distance", "one_step", q, f"{v}*{_f(t)}", d, du, f"一共{verb}了{_f(d)}{du}。")


def travel_time(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.phrasing([
        f"两地相距{_f(d)}{du}，{m}每{tu}{verb}{v}{du}，需要多少{tu}才能到达？",
        f"{m}要{verb}{_f(d)}{du}，速度是每{tu}{v}{du}，要用几{tu}？",
        f"从甲地到乙地有{_f(d)}{du}，{m}以每{tu}{v}{du}的速度{verb}，几{tu}能到？",
        f"一段{_f(d)}{du}长的路，{m}每{tu}{verb}{v}{du}，走完这段路要多长时间？",
        f"请问{m}要{verb}几{tu}？全程{_f(d)}{du}，每{tu}{verb}{v}{du}。",
        f"已知{m}每{tu}{verb}{v}{du}，路程是{_f(d)}{du}，求需要的时间。",
        f"如果{m}以每{tu}{v}{du}的速度{verb}完{_f(d)}{du}，那么要用多少{tu}？",
        f"{m}每{tu}{verb}{v}{du}，从公园到博物馆有{_f(d)}{du}，{verb}过去要几{tu}？",
    ])
    return make_problem("travel_time", "one_step", q, f"{_f(d)}/{v}", t, tu, f"需要{_f(t)}{tu}。")


def speed(rng):
    m, verb, v, t, du, tu = _mover(rng)
    d = v * F(t)
    q = rng.phrasing([
        f"{m}{_f(t)}{tu}{verb}了{_f(d)}{du}，平均每{tu}{verb}多少{du}？",
        f"{m}用{_f(t)}{tu}{verb}完了{_f(d)}{du}的路程，速度是每{tu}多少{du}？",
        f"{_f(d)}{du}的路，{m}{verb}了{_f(t)}{tu}，平均速度是每{tu}多少{du}？",
    ])
    return make_problem("speed", "one_step", q, f"{_f(d)}/{_f(t)}", v, du, f"平均每{tu}{verb}{v}{du}。")


def meet(rng):
    a, b = rng.sample(CHILDREN, 2)
    who = rng.choice(("walkers", "cars", "minutes"))
    if who == "walkers":
        v1, v2, t, du = rng.randint(3, 6), rng.randint(3, 6), rng.randint(2, 6), "千米"
        q = rng.phrasing([
            f"{a}和{b}同时从两地出发相向而行，{a}每小时走{v1}千米，{b}每小时走{v2}千米，{t}小时后两人相遇。两地相距多少千米？",
            f"请问两村相距多少千米？{a}和{b}分别从两个村子同时出发，面对面走，{t}小时后碰面，{a}每小时走{v1}千米，{b}每小时走{v2}千米。",
            f"已知{a}每小时走{v1}千米，{b}每小时走{v2}千米，两人从两地同时相对出发，经过{t}小时相遇，求两地的距离。",
        ])
    elif who == "cars":
        v1, v2, t, du = rng.randint(45, 90), rng.randint(45, 90), rng.randint(2, 6), "千米"
        q = rng.phrasing([
            f"两辆汽车同时从两城相对开出，一辆每小时行{v1}千米，另一辆每小时行{v2}千米，经过{t}小时相遇，两城相距多少千米？",
            f"甲、乙两车从两城同时出发，相向而行，{t}小时后相遇。甲车每小时行{v1}千米，乙车每小时行{v2}千米，两城之间的路有多长？",
            f"如果一辆客车每小时行{v1}千米，一辆货车每小时行{v2}千米，它们从两地同时相对开出，{t}小时后相遇，那么两地相距多少千米？",
        ])
    else:
        v1, v2, t, du = rng.randint(55, 90), rng.randint(55, 90), rng.randint(2, 6) * 5, "米"
        q = rng.phrasing([
            f"{a}从家、{b}从学校同时出发，相向而行，{a}每分钟走{v1}米，{b}每分钟走{v2}米，{t}分钟后相遇。{a}家和学校相距多少米？",
            f"{a}家和学校之间的路有多少米？{a}从家出发，每分钟走{v1}米，{b}同时从学校出发迎面走来，每分钟走{v2}米，{t}分钟后两人见面。",
        ])
    d = (v1 + v2) * t
    return make_problem("meet", "two_step", q, f"({v1}+{v2})*{t}", d, du, f"两地相距{d}{du}。")


# --- area and perimeter

def _rectangle(rng):
    what, u, lo, hi = rng.choice(RECTANGLES)
    w, extra = _size(rng, lo, hi), _size(rng, 1, hi)
    return what, u, w + extra, w


def rect_area(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.phrasing([
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，面积是多少平方{u}？",
        f"{what}的长是{_f(l)}{u}，宽是{_f(w)}{u}，它的面积是多少？",
        f"一个长方形的长为{_f(l)}{u}，宽为{_f(w)}{u}，求它的面积。",
        f"{what}宽{_f(w)}{u}，长{_f(l)}{u}，有多少平方{u}？",
        f"请问{what}的面积是多少平方{u}？它长{_f(l)}{u}，宽{_f(w)}{u}。",
        f"已知{what}宽{_f(w)}{u}，长{_f(l)}{u}，求它的面积。",
        f"如果{what}的长是{_f(l)}{u}，宽是{_f(w)}{u}，那么它占地多少平方{u}？",
        f"要给{what}铺满，它长{_f(l)}{u}、宽{_f(w)}{u}，需要铺多少平方{u}？",
    ])
    return make_problem("rect_area", "one_step", q, f"{_f(l)}*{_f(w)}", l * w, f"平方{u}", f"面积是{_f(l * w)}平方{u}。")


def rect_perimeter(rng):
    what, u, l, w = _rectangle(rng)
    q = rng.phrasing([
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，周长是多少{u}？",
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}。沿着它的边走一圈，一共走了多少{u}？",
        f"{what}长{_f(l)}{u}，宽{_f(w)}{u}，在它的四周围一圈彩带，彩带长多少{u}？",
        f"一个长方形的长是{_f(l)}{u}，宽是{_f(w)}{u}，求它的周长。",
        f"请问{what}的周长是多少{u}？已知它的宽是{_f(w)}{u}，长是{_f(l)}{u}。",
        f"已知{what}宽{_f(w)}{u}，长{_f(l)}{u}，求它一周的长度。",
        f"如果{what}长{_f(l)}{u}、宽{_f(w)}{u}，那么沿四条边量一圈是多少{u}？",
        f"{what}的四边要镶上花边，它长{_f(l)}{u}，宽{_f(w)}{u}，花边一共长多少{u}？",
    ])
    p = (l + w) * 2
    return make_problem("rect_perimeter", "two_step", q, f"({_f(l)}+{_f(w)})*2", p, u, f"周长是{_f(p)}{u}。")


def square(rng):
    what, u, lo, hi = rng.choice(SQUARES)
    s = _size(rng, lo, hi)
    if rng.random() < 0.5:
        q = rng.phrasing([
            f"{what}的边长是{_f(s)}{u}，它的面积是多少平方{u}？",
            f"正方形的边长为{_f(s)}{u}，求这个正方形的面积。",
            f"{what}每条边长{_f(s)}{u}，占了多大面积？",
        ])
        return make_problem("square", "one_step", q, f"{_f(s)}*{_f(s)}", s * s, f"平方{u}", f"面积是{_f(s * s)}平方{u}。")
    q = rng.phrasing([
        f"{what}边长{_f(s)}{u}，周长是多少{u}？",
        f"用铁丝围成一个边长{_f(s)}{u}的正方形，需要多长的铁丝？",
        f"沿着{what}的边走一圈，边长是{_f(s)}{u}，走了多少{u}？",
    ])
    return make_problem("square", "one_step", q, f"{_f(s)}*4", s * 4, u, f"周长是{_f(s * 4)}{u}。")


def floor_cost(rng):
    l, w, who = _size(rng, 3, 12), _size(rng, 2, 8), rng.choice(BUYERS)
    p = F(rng.randint(20, 150))
    q = rng.phrasing([
        f"一间教室长{_f(l)}米，宽{_f(w)}米，铺地砖每平方米要{p}元，一共要花多少元？",
        f"{who}家的客厅长{_f(l)}米、宽{_f(w)}米，要铺每平方米{p}元的木地板，需要多少钱？",
        f"一块长{_f(l)}米、宽{_f(w)}米的长方形空地，每平方米的草皮{p}元，铺满需要多少元？",
        f"给一面长{_f(l)}米、高{_f(w)}米的墙刷漆，每平方米的费用是{p}元，一共多少钱？",
        f"铺地砖每平方米{p}元，一间长{_f(l)}米、宽{_f(w)}米的房间铺满要多少元？",
        f"请问{who}家铺卧室要花多少钱？卧室长{_f(l)}米，宽{_f(w)}米，地板每平方米{p}元。",
        f"已知会议室长{_f(l)}米，宽{_f(w)}米，铺地毯每平方米{p}元，求总费用。",
        f"如果一块长方形场地长{_f(l)}米，宽{_f(w)}米，每平方米铺塑胶要{p}元，那么总共需要多少元？",
    ])
    cost = l * w * p
    return make_problem("floor_cost", "two_step", q, f"{_f(l)}*{_f(w)}*{p}", cost, "元", f"一共需要{_f(cost)}元。")


def fence_cost(rng):
    l, w = _size(rng, 5, 40), _size(rng, 3, 20)
    p = draw_price(rng, 5, 30)
    q = rng.phrasing([
        f"一块长方形菜地长{_f(l)}米，宽{_f(w)}米，四周围上篱笆，每米篱笆{_f(p)}元，一共要花多少钱？",
        f"沿着长{_f(l)}米、宽{_f(w)}米的长方形花坛四周铺一圈彩砖，每米{_f(p)}元，共需多少元？",
        f"给一个长{_f(l)}米、宽{_f(w)}米的长方形水池装一圈护栏，护栏每米{_f(p)}元，需要多少元？",
        f"篱笆每米{_f(p)}元，要把一块长{_f(l)}米、宽{_f(w)}米的长方形果园围起来，需要多少钱？",
        f"请问围一圈栅栏要花多少元？操场是长方形，长{_f(l)}米，宽{_f(w)}米，栅栏每米{_f(p)}元。",
        f"已知长方形鱼塘长{_f(l)}米，宽{_f(w)}米，沿四周装护网每米{_f(p)}元，求总费用。",
        f"如果一个长方形养鸡场长{_f(l)}米、宽{_f(w)}米，四周围铁丝网每米{_f(p)}元，那么一共要花多少元？",
        f"一个长方形院子宽{_f(w)}米，长{_f(l)}米，四周砌围墙每米造价{_f(p)}元，合计多少元？",
    ])
    cost = (l + w) * 2 * p
    return make_problem("fence_cost", "three_step", q, f"({_f(l)}+{_f(w)})*2*{_f(p)}", cost, "元", f"一共需要{_f(cost)}元。")
