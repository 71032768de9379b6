"""A seeded generator of Chinese everyday arithmetic word problems, each with the calculator call that solves
it, for teaching a tiny model to use the calculator tool.

    problems = generate(2000, seed=0, split="train")
    record = conversation(problems[0])    # {"tools": [...], "conversations": [user, call, tool result, answer]}
    answer_is_right(model_reply, problems[0].answer)   # the reward check

A family is one kind of problem with one shape of expression (shopping_total: price*count), written in 3-19
phrasings with varied names, goods and numbers. 42 families cover ten topics. The model is judged on wordings
it never saw, held out at two depths, each a split of generate():

- "held_out": the held-out phrasings (every 4th, tooluse/problem.Draw) of the 32 training families. The model
  has learned this kind of problem from other wordings and must read a new one: the target split.
- "held_out_families": the 10 families of HELD_OUT_FAMILIES (24%), all their phrasings. The model never saw
  this kind of problem at all (how a square's perimeter or a growth rate is computed), one per topic:

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

"train" is the training families in their training phrasings; every topic and every kind (one_step,
two_step, three_step) is in all three splits.

Numbers are exact fractions while a problem is built; a problem is kept only when its answer is positive, has
at most 2 decimals, and the calculator, given the expression, prints exactly that answer (otherwise the family
draws again). Expressions use only digits, '.', + - * / and parentheses, written the way a person would type
them: the average of four scores is (142+150+138+146)/4.

The parts: tooluse/phrasings.json (the wording: every family's phrasings, str.format templates such as
"{item}每{mw}{price}元，..." in a fixed order, which decides the held-out ones), tooluse/problem.py (the Problem
type, the Draw that picks and fills a phrasing, the builder every family returns through, the reward check),
tooluse/vocabulary.py (the names, goods and units the phrasings are filled with), tooluse/money_families.py,
tooluse/quantity_families.py and tooluse/geometry_families.py (the families: each draws its numbers and fills a
phrasing with them); this module registers the families and draws from them.
"""
from tooluse import geometry_families as geo
from tooluse import money_families as money
from tooluse import quantity_families as quantity
from tooluse.calculator import CALCULATOR, calculate
# KINDS, Problem, answer_is_right and numbers_in are imported from here by the rest of the project
from tooluse.problem import KINDS, Draw, Problem, Retry, answer_is_right, numbers_in  # noqa: F401

# The order matters: generate() shuffles a split's families starting from this order, so it fixes every seeded draw.
FAMILIES = {
    "shopping_total": money.shopping_total, "shopping_sum": money.shopping_sum, "unit_price": money.unit_price,
    "change": money.change, "change_multi": money.change_multi, "two_kinds": money.two_kinds,
    "spend_twice": money.spend_twice,
    "age_sum": quantity.age_sum, "age_diff": quantity.age_diff, "age_times": quantity.age_times,
    "age_later": quantity.age_later,
    "distance": geo.distance, "travel_time": geo.travel_time, "speed": geo.speed,
    "meet": geo.meet,
    "rect_area": geo.rect_area, "rect_perimeter": geo.rect_perimeter, "square": geo.square,
    "floor_cost": geo.floor_cost, "fence_cost": geo.fence_cost,
    "average": quantity.average, "average_compare": quantity.average_compare,
    "average_missing": quantity.average_missing,
    "discount_zhe": money.discount_zhe, "discount_percent": money.discount_percent,
    "discount_saving": money.discount_saving,
    "percent_of": money.percent_of, "percent_amount": money.percent_amount, "growth_rate": money.growth_rate,
    "unit_mul": quantity.unit_mul, "unit_div": quantity.unit_div, "unit_mixed": quantity.unit_mixed,
    "share": quantity.share, "groups_total": quantity.groups_total, "groups_count": quantity.groups_count,
    "work_rate": quantity.work_rate,
    "shopping_change3": money.shopping_change3, "trip_remaining": quantity.trip_remaining,
    "savings": money.savings,
    "compare_more_less": quantity.compare_more_less, "compare_diff": quantity.compare_diff,
    "temperature": quantity.temperature,
}

HELD_OUT_FAMILIES = frozenset({
    "change_multi", "age_later", "speed", "square", "average_compare", "discount_saving", "growth_rate",
    "unit_div", "groups_count", "trip_remaining",
})


def _draw(family: str, rng) -> Problem:
    for _ in range(200):
        try:
            return FAMILIES[family](rng)
        except Retry:
            continue
    raise RuntimeError(f"family {family} drew no good problem in 200 tries: its expression or answer is wrong")


SPLITS = ("train", "held_out", "held_out_families")


def check_kinds(kinds) -> None:
    """Raises ValueError unless `kinds` names one or more of KINDS."""
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {kinds!r}")


def generate(n: int, seed: int, split: str, kinds=KINDS) -> list[Problem]:
    """n problems of one split (SPLITS, described above), the same for the same seed. The families come in
    shuffled rounds, so every family appears about equally often. `kinds` keeps only problems of those kinds
    (GRPO on the multi-step ones): the draws are the same, the others are passed over, so the result is the
    all-kinds list of this seed with them left out."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    check_kinds(kinds)
    names = [f for f in FAMILIES if (f in HELD_OUT_FAMILIES) == (split == "held_out_families")]
    # a string seed is stable across runs, unlike hash()
    rng = Draw(f"{split}:{seed}", held_out_phrasings=split == "held_out")
    problems, round_ = [], []
    while len(problems) < n:
        if not round_:
            round_ = names[:]
            rng.shuffle(round_)
        problem = _draw(round_.pop(), rng)
        if problem.kind in kinds:
            problems.append(problem)
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
