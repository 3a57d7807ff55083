"""A built-in, seeded generator of arithmetic word problems with worked solutions.

Why: a small model needs a clean, learnable arithmetic task to show the effect of tuning in minutes
on a CPU, without downloading anything. The problems are written from our own templates (not taken
from any benchmark) and have exact integer answers.

Difficulty levels:

* 1: one addition or subtraction with small numbers (short question, two-line solution).
* 2: two steps, one of them a multiplication ("each", "times as many", prices).
* 3: three steps including an exact division ("half as many", "shares equally", "bags of k").

Every solution writes each step as an equation on its own line and ends with ``The answer is N.``,
so a last-number extractor reads N. Each `Example` keeps its operation trace in
``metadata["steps"]`` as ``(op, operands, result)`` tuples, so answers can be checked by recomputation.

Train/test disjointness is by construction: each problem has a *skeleton* (its template and its
numbers, ignoring names and objects), and a fixed hash of the skeleton assigns it to either the train
or the test split. A split only keeps problems of its own half, whatever the seed, so the two splits
never share a skeleton, hence never an identical question, and a test problem never reuses the
numbers of a train problem with the same wording. Within a split, question texts are unique.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modetune.data.loaders import Example, write_examples
from modetune.errors import DataError

__all__ = ["DIFFICULTIES", "SPLITS", "generate_problems", "write_problems"]

DIFFICULTIES = (1, 2, 3)
SPLITS = ("train", "test")

# (name, subject pronoun, object pronoun, possessive)
_NAMES = [
    (n, "she", "her", "her")
    for n in ("Mia", "Ava", "Emma", "Zoe", "Lily", "Nina", "Sara", "Ella", "Ruby", "Maya", "Grace", "Hana")
] + [
    (n, "he", "him", "his")
    for n in ("Leo", "Noah", "Liam", "Omar", "Ben", "Tom", "Max", "Jack", "Alex", "Ravi", "Luis", "Owen")
]
_OBJECTS = (
    "apples", "pencils", "stickers", "marbles", "books", "cookies", "cards", "balloons", "shells",
    "coins", "flowers", "eggs", "stamps", "beads", "crayons", "oranges", "candies", "buttons", "rocks",
    "toy cars", "muffins", "lemons", "ribbons", "erasers",
)  # fmt: skip
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"), ("pack", "packs"))
_PURCHASES = ("lunch", "a book", "a toy", "a ticket", "snacks", "a gift", "paint", "a game")
_DAYS = (("Monday", "Tuesday"), ("Saturday", "Sunday"), ("Friday", "Saturday"))


@dataclass(frozen=True)
class _Person:
    name: str
    he: str  # subject pronoun
    him: str
    his: str

    @property
    def He(self) -> str:  # capitalized pronoun, for the start of a sentence
        return self.he.capitalize()


_PERSONS = [_Person(*p) for p in _NAMES]


class _Trace:
    """Records the operations of a solution and formats them as equations."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, tuple[int, ...], int]] = []

    def __call__(self, op: str, *xs: int) -> tuple[str, int]:
        if op == "+":
            r = sum(xs)
        elif op == "-":
            r = xs[0] - sum(xs[1:])
        elif op == "*":
            r = 1
            for x in xs:
                r *= x
        elif op == "/":
            a, b = xs
            if a % b:
                raise AssertionError(f"inexact division {a} / {b}")  # a template bug, never user input
            r = a // b
        else:
            raise AssertionError(op)
        if r < 0:
            raise AssertionError(f"negative intermediate {op} {xs}")
        self.steps.append((op, tuple(xs), r))
        return f" {op} ".join(str(x) for x in xs) + f" = {r}", r


@dataclass(frozen=True)
class _Problem:
    template: str
    numbers: tuple[int, ...]
    question: str
    lines: tuple[str, ...]
    answer: int
    steps: tuple[tuple[str, tuple[int, ...], int], ...]


class _Reject(Exception):
    """A drawn skeleton belongs to the other split: dropped before any text is built."""


class _Draw:
    """The random choices of one problem.

    People and objects are drawn lazily, after `keep` accepted the numbers, so a rejected skeleton
    costs almost nothing.
    """

    def __init__(self, rng: random.Random, split: str):
        self.rng = rng
        self.split = split
        self.template = ""
        self.numbers: tuple[int, ...] = ()
        self._people: list[_Person] | None = None
        self._things: tuple[str, str, str] | None = None

    def n(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def keep(self, template: str, *numbers: int) -> None:
        """Record the skeleton; raise `_Reject` if it belongs to the other split."""
        if _split_of(template, numbers) != self.split:
            raise _Reject
        self.template, self.numbers = template, numbers

    def _person(self, i: int) -> _Person:
        if self._people is None:
            self._people = self.rng.sample(_PERSONS, 3)
        return self._people[i]

    def _thing(self, i: int) -> str:
        if self._things is None:
            box, boxes = self.rng.choice(_CONTAINERS)
            self._things = (self.rng.choice(_OBJECTS), box, boxes)
        return self._things[i]

    a = property(lambda self: self._person(0))
    b = property(lambda self: self._person(1))
    c = property(lambda self: self._person(2))
    obj = property(lambda self: self._thing(0))
    box = property(lambda self: self._thing(1))
    boxes = property(lambda self: self._thing(2))


def _split_of(template: str, numbers: tuple[int, ...]) -> str:
    """The split a skeleton (template + numbers) belongs to; fixed for all seeds."""
    key = f"{template}|{','.join(map(str, numbers))}".encode()
    return "test" if zlib.crc32(key) & 1 else "train"


def _done(d: _Draw, question: str, lines: list[str], t: _Trace) -> _Problem:
    answer = t.steps[-1][2]
    lines = [*lines, f"The answer is {answer}."]
    return _Problem(d.template, d.numbers, question, tuple(lines), answer, tuple(t.steps))


# ---------------------------------------------------------------------------------------------------
# level 1: one addition or subtraction, small numbers


def _l1_add_buy(d: _Draw) -> _Problem:
    x, y = d.n(2, 20), d.n(2, 20)
    d.keep("l1_add_buy", x, y)
    t = _Trace()
    eq, _ = t("+", x, y)
    p, o = d.a, d.obj
    q = f"{p.name} has {x} {o}. {p.He} buys {y} more. How many {o} does {p.name} have now?"
    return _done(d, q, [f"{p.name} has {eq} {o} now."], t)


def _l1_add_container(d: _Draw) -> _Problem:
    x, y = d.n(2, 20), d.n(2, 20)
    d.keep("l1_add_container", x, y)
    t = _Trace()
    eq, _ = t("+", x, y)
    p, o, b = d.a, d.obj, d.box
    q = f"A {b} has {x} {o}. {p.name} puts in {y} more. How many {o} are in the {b} now?"
    return _done(d, q, [f"There are {eq} {o} in the {b}."], t)


def _l1_add_days(d: _Draw) -> _Problem:
    x, y = d.n(2, 20), d.n(2, 20)
    d.keep("l1_add_days", x, y)
    t = _Trace()
    eq, _ = t("+", x, y)
    p, o = d.a, d.obj
    day1, day2 = d.rng.choice(_DAYS)
    q = f"{p.name} found {x} {o} on {day1} and {y} on {day2}. How many {o} did {p.he} find in all?"
    return _done(d, q, [f"{p.name} found {eq} {o}."], t)


def _l1_add_together(d: _Draw) -> _Problem:
    x, y = d.n(2, 20), d.n(2, 20)
    d.keep("l1_add_together", x, y)
    t = _Trace()
    eq, _ = t("+", x, y)
    p, r, o = d.a, d.b, d.obj
    q = f"{p.name} has {x} {o} and {r.name} has {y} {o}. How many {o} do they have together?"
    return _done(d, q, [f"Together they have {eq} {o}."], t)


def _l1_add_gift(d: _Draw) -> _Problem:
    x, y = d.n(2, 20), d.n(2, 20)
    d.keep("l1_add_gift", x, y)
    t = _Trace()
    eq, _ = t("+", x, y)
    p, r, o = d.a, d.b, d.obj
    q = f"{p.name} had {x} {o}. {r.name} gave {p.him} {y} more. How many {o} does {p.name} have now?"
    return _done(d, q, [f"{p.name} has {eq} {o} now."], t)


def _l1_sub_give(d: _Draw) -> _Problem:
    x = d.n(5, 25)
    y = d.n(1, x - 1)
    d.keep("l1_sub_give", x, y)
    t = _Trace()
    eq, _ = t("-", x, y)
    p, r, o = d.a, d.b, d.obj
    q = f"{p.name} has {x} {o}. {p.He} gives {y} to {r.name}. How many {o} does {p.name} have left?"
    return _done(d, q, [f"{p.name} has {eq} {o} left."], t)


def _l1_sub_container(d: _Draw) -> _Problem:
    x = d.n(5, 25)
    y = d.n(1, x - 1)
    d.keep("l1_sub_container", x, y)
    t = _Trace()
    eq, _ = t("-", x, y)
    p, o, b = d.a, d.obj, d.box
    q = f"There are {x} {o} in a {b}. {p.name} takes out {y}. How many {o} are left in the {b}?"
    return _done(d, q, [f"There are {eq} {o} left."], t)


def _l1_sub_lost(d: _Draw) -> _Problem:
    x = d.n(5, 25)
    y = d.n(1, x - 1)
    d.keep("l1_sub_lost", x, y)
    t = _Trace()
    eq, _ = t("-", x, y)
    p, o = d.a, d.obj
    q = f"{p.name} had {x} {o} and lost {y} of them. How many {o} does {p.name} have now?"
    return _done(d, q, [f"{p.name} has {eq} {o} now."], t)


def _l1_sub_compare(d: _Draw) -> _Problem:
    x = d.n(5, 25)
    y = d.n(1, x - 1)
    d.keep("l1_sub_compare", x, y)
    t = _Trace()
    eq, _ = t("-", x, y)
    p, r, o = d.a, d.b, d.obj
    q = f"{p.name} has {x} {o}. {r.name} has {y}. How many more {o} does {p.name} have?"
    return _done(d, q, [f"{p.name} has {eq} more {o}."], t)


def _l1_sub_need(d: _Draw) -> _Problem:
    x = d.n(5, 25)
    y = d.n(1, x - 1)
    d.keep("l1_sub_need", x, y)
    t = _Trace()
    eq, _ = t("-", x, y)
    p, o = d.a, d.obj
    q = f"{p.name} needs {x} {o}. {p.He} already has {y}. How many more {o} does {p.name} need?"
    return _done(d, q, [f"{p.name} needs {eq} more {o}."], t)


# ---------------------------------------------------------------------------------------------------
# level 2: two steps, one a multiplication


def _l2_packs_give(d: _Draw) -> _Problem:
    k, m = d.n(2, 9), d.n(2, 12)
    g = d.n(1, k * m - 1)
    d.keep("l2_packs_give", k, m, g)
    t = _Trace()
    eq1, tot = t("*", k, m)
    eq2, _ = t("-", tot, g)
    p, o, b, bs = d.a, d.obj, d.box, d.boxes
    q = (
        f"{p.name} buys {k} {bs} of {o}. Each {b} has {m} {o}. {p.He} gives away {g} {o}. "
        f"How many {o} does {p.name} have left?"
    )
    lines = [f"{p.name} buys {eq1} {o}.", f"{p.He} has {eq2} {o} left."]
    return _done(d, q, lines, t)


def _l2_times_as_many(d: _Draw) -> _Problem:
    x, k = d.n(2, 15), d.n(2, 6)
    d.keep("l2_times_as_many", x, k)
    t = _Trace()
    eq1, y = t("*", x, k)
    eq2, _ = t("+", x, y)
    p, r, o = d.a, d.b, d.obj
    q = f"{p.name} has {x} {o}. {r.name} has {k} times as many {o} as {p.name}. How many {o} do they have together?"
    lines = [f"{r.name} has {eq1} {o}.", f"Together they have {eq2} {o}."]
    return _done(d, q, lines, t)


def _l2_daily_extra(d: _Draw) -> _Problem:
    x, k, e = d.n(2, 12), d.n(2, 7), d.n(1, 20)
    d.keep("l2_daily_extra", x, k, e)
    t = _Trace()
    eq1, s = t("*", x, k)
    eq2, _ = t("+", s, e)
    p, o = d.a, d.obj
    q = (
        f"{p.name} collects {x} {o} every day for {k} days. Then {p.he} collects {e} more. "
        f"How many {o} does {p.name} have?"
    )
    lines = [f"In {k} days {p.he} collects {eq1} {o}.", f"{p.He} has {eq2} {o}."]
    return _done(d, q, lines, t)


def _l2_fill_leftover(d: _Draw) -> _Problem:
    k, m = d.n(2, 9), d.n(2, 12)
    e = d.n(1, m - 1)
    d.keep("l2_fill_leftover", k, m, e)
    t = _Trace()
    eq1, s = t("*", k, m)
    eq2, _ = t("+", s, e)
    p, o, b, bs = d.a, d.obj, d.box, d.boxes
    q = f"A {b} holds {m} {o}. {p.name} fills {k} {bs} and has {e} {o} left over. How many {o} does {p.name} have?"
    lines = [f"The {bs} hold {eq1} {o}.", f"{p.name} has {eq2} {o}."]
    return _done(d, q, lines, t)


def _l2_sell_spend(d: _Draw) -> _Problem:
    price, k = d.n(2, 9), d.n(2, 12)
    c = d.n(1, price * k - 1)
    d.keep("l2_sell_spend", price, k, c)
    thing = d.rng.choice(_PURCHASES)
    t = _Trace()
    eq1, s = t("*", k, price)
    eq2, _ = t("-", s, c)
    p, o = d.a, d.obj
    q = (
        f"{p.name} sells {k} {o} for ${price} each. Then {p.he} spends ${c} on {thing}. "
        f"How many dollars does {p.name} have left?"
    )
    lines = [f"{p.name} earns {eq1} dollars.", f"{p.He} has {eq2} dollars left."]
    return _done(d, q, lines, t)


def _l2_shelves_take(d: _Draw) -> _Problem:
    k, m = d.n(2, 8), d.n(3, 12)
    g = d.n(1, k * m - 1)
    d.keep("l2_shelves_take", k, m, g)
    t = _Trace()
    eq1, s = t("*", k, m)
    eq2, _ = t("-", s, g)
    p, o = d.a, d.obj
    q = (
        f"There are {k} shelves with {m} {o} on each shelf. {p.name} takes {g} {o}. "
        f"How many {o} are on the shelves now?"
    )
    lines = [f"The shelves hold {eq1} {o}.", f"Now there are {eq2} {o} on the shelves."]
    return _done(d, q, lines, t)


# ---------------------------------------------------------------------------------------------------
# level 3: three steps including an exact division


def _l3_half_more_total(d: _Draw) -> _Problem:
    x, e = 2 * d.n(3, 25), d.n(1, 15)
    d.keep("l3_half_more_total", x, e)
    t = _Trace()
    eq1, h = t("/", x, 2)
    eq2, k = t("+", h, e)
    eq3, _ = t("+", x, h, k)
    p, r, s, o = d.a, d.b, d.c, d.obj
    q = (
        f"{p.name} has {x} {o}. {r.name} has half as many {o} as {p.name}. "
        f"{s.name} has {e} more {o} than {r.name}. How many {o} do the three of them have in total?"
    )
    lines = [f"{r.name} has {eq1} {o}.", f"{s.name} has {eq2} {o}.", f"In total they have {eq3} {o}."]
    return _done(d, q, lines, t)


def _l3_share_equally(d: _Draw) -> _Problem:
    friends, per = d.n(2, 6), d.n(2, 12)
    total = friends * per
    factors = [f for f in range(2, 10) if total % f == 0 and 2 <= total // f <= 15]
    k = d.rng.choice(factors) if factors else 1
    if k == 1:
        return _l3_share_equally(d)  # e.g. total prime-ish: redraw
    m, extra = total // k, d.n(1, 9)
    d.keep("l3_share_equally", k, m, friends, extra)
    t = _Trace()
    eq1, s = t("*", k, m)
    eq2, each = t("/", s, friends)
    eq3, _ = t("+", each, extra)
    p, r, o, b, bs = d.a, d.b, d.obj, d.box, d.boxes
    q = (
        f"{p.name} buys {k} {bs} of {o} with {m} {o} in each {b}. {p.He} shares them equally among "
        f"{friends} friends. Then {r.name} gives each friend {extra} more. How many {o} does each friend have?"
    )
    lines = [f"{p.name} buys {eq1} {o}.", f"Each friend gets {eq2} {o}.", f"Each friend has {eq3} {o}."]
    return _done(d, q, lines, t)


def _l3_earn_half_spend(d: _Draw) -> _Problem:
    rate, days = d.n(3, 15), d.n(2, 8)
    if rate * days % 2:
        days += 1
    total = rate * days
    c = d.n(1, total // 2 - 1)
    d.keep("l3_earn_half_spend", rate, days, c)
    thing1, thing2 = d.rng.sample(_PURCHASES, 2)
    t = _Trace()
    eq1, s = t("*", rate, days)
    eq2, h = t("/", s, 2)
    eq3, _ = t("-", s, h, c)
    p = d.a
    q = (
        f"{p.name} earns ${rate} each day for {days} days. {p.He} spends half of the money on {thing1} "
        f"and ${c} on {thing2}. How many dollars does {p.name} have left?"
    )
    lines = [
        f"{p.name} earns {eq1} dollars.",
        f"{p.He} spends {eq2} dollars on {thing1}.",
        f"{p.He} has {eq3} dollars left.",
    ]
    return _done(d, q, lines, t)


def _l3_bag_and_sell(d: _Draw) -> _Problem:
    size, bags = d.n(2, 8), d.n(2, 10)
    total = size * bags
    x = d.n(1, total - 1)
    price = d.n(2, 9)
    d.keep("l3_bag_and_sell", x, total - x, size, price)
    day1, day2 = d.rng.choice(_DAYS)
    t = _Trace()
    eq1, s = t("+", x, total - x)
    eq2, nb = t("/", s, size)
    eq3, _ = t("*", nb, price)
    p, o, bs = d.a, d.obj, d.boxes
    q = (
        f"{p.name} collects {x} {o} on {day1} and {total - x} on {day2}. {p.He} puts them into {bs} of "
        f"{size} and sells each {d.box} for ${price}. How many dollars does {p.name} make?"
    )
    lines = [f"{p.name} has {eq1} {o}.", f"That fills {eq2} {bs}.", f"{p.He} makes {eq3} dollars."]
    return _done(d, q, lines, t)


def _l3_half_give_each(d: _Draw) -> _Problem:
    friends, each = d.n(2, 6), d.n(2, 8)
    given = friends * each
    x = 2 * (given + d.n(1, 20))
    d.keep("l3_half_give_each", x, each, friends)
    t = _Trace()
    eq1, kept = t("/", x, 2)
    eq2, _ = t("*", each, friends)
    eq3, _ = t("-", kept, given)
    p, r, o = d.a, d.b, d.obj
    q = (
        f"{p.name} has {x} {o}. {p.He} gives half of them to {r.name}. Then {p.he} gives {each} {o} to each "
        f"of {friends} friends. How many {o} does {p.name} have left?"
    )
    lines = [f"{p.He} keeps {eq1} {o}.", f"{p.He} gives away {eq2} {o}.", f"{p.He} has {eq3} {o} left."]
    return _done(d, q, lines, t)


def _l3_pool_split_take(d: _Draw) -> _Problem:
    k, per = d.n(2, 6), d.n(3, 15)
    total = k * per
    x = d.n(1, total - 1)
    take = d.n(1, per - 1)
    d.keep("l3_pool_split_take", x, total - x, k, take)
    t = _Trace()
    eq1, s = t("+", x, total - x)
    eq2, each = t("/", s, k)
    eq3, _ = t("-", each, take)
    p, r, o, b, bs = d.a, d.b, d.obj, d.box, d.boxes
    q = (
        f"{p.name} has {x} {o} and {r.name} has {total - x}. They put all of them equally into {k} {bs}. "
        f"Then {p.name} takes {take} {o} out of one {b}. How many {o} are left in that {b}?"
    )
    lines = [f"Together they have {eq1} {o}.", f"Each {b} gets {eq2} {o}.", f"That {b} has {eq3} {o} left."]
    return _done(d, q, lines, t)


_LEVELS: dict[int, tuple[Callable[[_Draw], _Problem], ...]] = {
    1: (
        _l1_add_buy, _l1_add_container, _l1_add_days, _l1_add_together, _l1_add_gift,
        _l1_sub_give, _l1_sub_container, _l1_sub_lost, _l1_sub_compare, _l1_sub_need,
    ),
    2: (_l2_packs_give, _l2_times_as_many, _l2_daily_extra, _l2_fill_leftover, _l2_sell_spend, _l2_shelves_take),
    3: (
        _l3_half_more_total, _l3_share_equally, _l3_earn_half_spend, _l3_bag_and_sell, _l3_half_give_each,
        _l3_pool_split_take,
    ),
}  # fmt: skip


def _parse_difficulty(difficulty: int | str) -> tuple[int, ...]:
    if difficulty == "mixed":
        return DIFFICULTIES
    if isinstance(difficulty, int) and not isinstance(difficulty, bool) and difficulty in DIFFICULTIES:
        return (difficulty,)
    if isinstance(difficulty, str) and difficulty.strip() in {str(d) for d in DIFFICULTIES}:
        return (int(difficulty),)  # e.g. from a command line
    raise DataError(f"difficulty must be 1, 2, 3 or 'mixed', got {difficulty!r}")


def generate_problems(
    n: int,
    seed: int = 0,
    difficulty: int | str = 1,
    split: str = "train",
) -> list[Example]:
    """Generate ``n`` distinct arithmetic word problems, deterministically for (seed, difficulty, split).

    ``difficulty`` is 1, 2, 3 or "mixed" (each problem's level drawn uniformly). ``split`` is "train"
    or "test"; the two splits are disjoint for any seeds (see module docstring). Each `Example` has
    the question as ``instruction``, the worked solution as ``response`` (last line
    ``The answer is N.``), ``answer=str(N)``, ``source="synthetic/<split>"`` and ``metadata`` with
    ``difficulty``, ``template``, ``steps`` (``(op, operands, result)`` tuples), ``split`` and ``seed``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"number of problems must be a positive integer, got {n!r}")
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    levels = _parse_difficulty(difficulty)
    # distinct streams per split; str seeds are hashed with SHA-512, stable across runs and platforms
    rng = random.Random(f"modetune-synthetic:{seed}:{split}:{','.join(map(str, levels))}")
    seen: set[str] = set()
    out: list[Example] = []
    attempts, max_attempts = 0, 50 * n + 1000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise DataError(
                f"could only generate {len(out)} distinct problems of difficulty {difficulty!r} out of "
                f"{n} requested; ask for fewer or use difficulty='mixed'"
            )
        level = levels[0] if len(levels) == 1 else rng.choice(levels)
        try:
            problem = rng.choice(_LEVELS[level])(_Draw(rng, split))
        except _Reject:
            continue
        if problem.question in seen:
            continue
        seen.add(problem.question)
        out.append(
            Example(
                instruction=problem.question,
                response="\n".join(problem.lines),
                answer=str(problem.answer),
                source=f"synthetic/{split}",
                index=len(out),
                metadata={
                    "difficulty": level,
                    "template": problem.template,
                    "steps": problem.steps,
                    "split": split,
                    "seed": seed,
                },
            )
        )
    return out


def write_problems(
    path: str | Path,
    n: int,
    seed: int = 0,
    difficulty: int | str = 1,
    split: str = "train",
    *,
    include_metadata: bool = True,
) -> Path:
    """Generate problems and write them for inspection/reuse (``.jsonl`` or LLM-Adapters ``.json``).

    The file loads back with `modetune.data.load_dataset_file` (the ``meta`` field is ignored).
    """
    return write_examples(
        generate_problems(n, seed=seed, difficulty=difficulty, split=split), path, include_metadata=include_metadata
    )
