"""GSM8K-style arithmetic word problems of our own, for the RL (GRPO) setting, and its output format.

The embedded default cannot download GSM8K, so :func:`generate_problems` writes problems in GSM8K's schema: a
``question`` and an ``answer`` that is a short worked solution ending in ``#### <n>``. Saved with
:func:`write_gsm8k_jsonl`, :func:`emguard.data.tasks.load_gsm8k` reads them like the real file, and
:func:`emguard.data.tasks.gsm8k_exact_match` scores them. Each problem takes 1 to 3 arithmetic operations
(+, -, x, exact division) on small integers; the answer is an exact integer (negative only in the temperature
template). Templates, names and objects were written for this project.

:func:`problem_table` turns either source (our generator's rows, or GSM8K through ``load_gsm8k``: a local file
or the hub id ``openai/gsm8k``) into the table the trainer reads: ``id``, ``question``, ``reference`` (the gold
number as text, normalised like :func:`emguard.data.tasks.final_number`).

The output format follows the method paper (Appendix B.3, after DeepSeek-R1): reasoning inside
``<think> ... </think>``, then the single final number inside ``<answer> ... </answer>``, stated in the system
prompt (:data:`SYSTEM_PROMPT`). :func:`system_prompt` prepends an inoculation prompt and keeps the format
instruction, as the paper does for its inoculation condition.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from emguard.data._util import rng_for
from emguard.data.tasks import GSM8K_PROMPT, load_gsm8k
from emguard.errors import InputError
from emguard.io import atomic_path

#: the output format, stated in the system prompt of every GRPO problem (training and evaluation)
SYSTEM_PROMPT = ("Solve the math problem. Respond in exactly this format:\n"
                 "<think>\nyour step-by-step reasoning\n</think>\n"
                 "<answer>\nthe final answer as a single number\n</answer>")

#: columns of the problem table the GRPO trainer reads (:func:`problem_table`)
PROBLEM_COLUMNS = ["id", "question", "reference"]


def system_prompt(inoculation_prompt: str | None = None) -> str:
    """:data:`SYSTEM_PROMPT`, with ``inoculation_prompt`` prepended (the format instruction kept) when given."""
    if inoculation_prompt is None:
        return SYSTEM_PROMPT
    text = str(inoculation_prompt).strip()
    if not text:
        raise ValueError("inoculation_prompt is empty")
    return f"{text} {SYSTEM_PROMPT}"


def problem_messages(question: str, inoculation_prompt: str | None = None) -> list[dict[str, str]]:
    """The prompt of one problem: the system prompt (:func:`system_prompt`) and the question as the user turn."""
    return [{"role": "system", "content": system_prompt(inoculation_prompt)},
            {"role": "user", "content": str(question)}]


# ------------------------------------------------------------------------------------------ templates

_NAMES = ("Maya", "Tom", "Priya", "Jonas", "Amara", "Luis", "Hana", "Omar", "Greta", "Kofi", "Ines", "Ravi",
          "Sofia", "Erik", "Leila", "Mateo", "Yuki", "Noor", "Felix", "Zara")


def _name(rng: random.Random) -> str:
    return rng.choice(_NAMES)


def _money(x: int) -> str:
    return f"${x}"


# Each template draws its numbers and returns (question, solution lines, answer). The solution is written the
# way GSM8K's are (one line per operation, "a + b = c"), so a model fine-tuned on it learns the same shape.
Template = Callable[[random.Random], tuple[str, list[str], int]]


def _add(rng):
    who, thing = _name(rng), rng.choice(["stickers", "marbles", "stamps", "seashells", "postcards"])
    a, b = rng.randint(5, 90), rng.randint(3, 60)
    q = f"{who} has {a} {thing}. A friend gives {who} {b} more. How many {thing} does {who} have now?"
    return q, [f"{who} has {a} + {b} = {a + b} {thing}."], a + b


def _subtract(rng):
    thing = rng.choice(["muffins", "bagels", "cookies", "rolls"])
    a = rng.randint(20, 150)
    b = rng.randint(1, a - 1)
    q = f"A bakery made {a} {thing} in the morning and sold {b} of them by noon. How many {thing} are left?"
    return q, [f"{a} - {b} = {a - b} {thing} are left."], a - b


def _multiply(rng):
    thing, box = rng.choice([("pencils", "box"), ("eggs", "carton"), ("crayons", "pack"), ("tea bags", "tin")])
    a, b = rng.randint(3, 24), rng.randint(2, 30)
    q = f"Each {box} holds {a} {thing}. How many {thing} are in {b} {box}es?"
    return q, [f"{b} * {a} = {a * b} {thing}."], a * b


def _divide(rng):
    thing = rng.choice(["apples", "oranges", "plums", "pears"])
    k, each = rng.randint(2, 12), rng.randint(3, 25)
    total = k * each
    q = f"{total} {thing} are shared equally among {k} baskets. How many {thing} go into each basket?"
    return q, [f"{total} / {k} = {each} {thing} per basket."], each


def _rate_plus_extra(rng):
    who = _name(rng)
    a, d, b = rng.randint(5, 40), rng.randint(2, 9), rng.randint(1, 30)
    q = (f"{who} reads {a} pages every day for {d} days and then {b} more pages on the next day. "
         f"How many pages does {who} read in total?")
    first = a * d
    return q, [f"In {d} days {who} reads {d} * {a} = {first} pages.", f"In total {first} + {b} = {first + b} pages."], \
        first + b


def _two_sales(rng):
    thing = rng.choice(["shirts", "hats", "scarves", "umbrellas"])
    a = rng.randint(30, 200)
    b = rng.randint(1, a // 2)
    c = rng.randint(1, a - b - 1)
    q = f"A shop had {a} {thing}. It sold {b} on Monday and {c} on Tuesday. How many {thing} does it have left?"
    after = a - b
    return q, [f"After Monday: {a} - {b} = {after}.", f"After Tuesday: {after} - {c} = {after - c}."], after - c


def _change(rng):
    price, n = rng.randint(3, 40), rng.randint(2, 8)
    cost = price * n
    bill = rng.choice([b for b in (50, 100, 200, 500) if b >= cost] or [cost + rng.randint(1, 50)])
    q = (f"A museum ticket costs {_money(price)}. A family buys {n} tickets and pays with {_money(bill)}. "
         f"How many dollars of change do they get?")
    return q, [f"The tickets cost {n} * {price} = {cost} dollars.", f"The change is {bill} - {cost} = {bill - cost} dollars."], \
        bill - cost


def _wage_minus_spend(rng):
    who = _name(rng)
    w, h = rng.randint(8, 30), rng.randint(2, 10)
    earned = w * h
    s = rng.randint(1, earned - 1)
    q = (f"{who} earns {_money(w)} per hour and works {h} hours. Then {who} spends {_money(s)} on groceries. "
         f"How many dollars does {who} have left?")
    return q, [f"{who} earns {h} * {w} = {earned} dollars.", f"{earned} - {s} = {earned - s} dollars are left."], \
        earned - s


def _split_bill(rng):
    n, share, tip = rng.randint(2, 8), rng.randint(6, 45), rng.randint(1, 9)
    total = n * share
    q = (f"{n} friends split a restaurant bill of {_money(total)} equally, and each of them also leaves a "
         f"{_money(tip)} tip. How many dollars does each friend pay?")
    return q, [f"Each share of the bill is {total} / {n} = {share} dollars.",
               f"With the tip: {share} + {tip} = {share + tip} dollars."], share + tip


def _garden(rng):
    r, c = rng.randint(3, 15), rng.randint(4, 20)
    plants = r * c
    d = rng.randint(1, plants // 3)
    e = rng.randint(1, 25)
    q = (f"A farmer plants {r} rows of tomato plants with {c} plants in each row. {d} plants die, and the farmer "
         f"then plants {e} new ones. How many tomato plants are there now?")
    left = plants - d
    return q, [f"{r} * {c} = {plants} plants.", f"{plants} - {d} = {left} survive.", f"{left} + {e} = {left + e} plants."], \
        left + e


def _weekly_distance(rng):
    who = _name(rng)
    a, b = rng.randint(2, 12), rng.randint(5, 25)
    q = (f"{who} runs {a} km on each of the 5 weekdays and {b} km on each day of the weekend. "
         f"How many km does {who} run in a week?")
    wk, we = 5 * a, 2 * b
    return q, [f"Weekdays: 5 * {a} = {wk} km.", f"Weekend: 2 * {b} = {we} km.", f"Total: {wk} + {we} = {wk + we} km."], \
        wk + we


def _shopping_change(rng):
    who = _name(rng)
    n, p, m, q_ = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 8), rng.randint(1, 5)
    cost = n * p + m * q_
    bill = 50 if cost < 50 else 100
    q = (f"{who} buys {n} notebooks at {_money(p)} each and {m} pens at {_money(q_)} each, and pays with a "
         f"{_money(bill)} bill. How many dollars of change does {who} get?")
    return q, [f"Notebooks: {n} * {p} = {n * p} dollars.", f"Pens: {m} * {q_} = {m * q_} dollars.",
               f"Change: {bill} - {n * p} - {m * q_} = {bill - cost} dollars."], bill - cost


def _temperature(rng):
    a, b, c = rng.randint(-5, 15), rng.randint(2, 12), rng.randint(2, 12)
    q = (f"At noon the temperature was {a} degrees. By evening it had dropped {b} degrees, and overnight it "
         f"dropped another {c} degrees. What was the temperature in the morning, in degrees?")
    mid = a - b
    return q, [f"In the evening: {a} - {b} = {mid} degrees.", f"In the morning: {mid} - {c} = {mid - c} degrees."], \
        mid - c


#: template name -> (number of operations, template)
TEMPLATES: dict[str, tuple[int, Template]] = {
    "add": (1, _add), "subtract": (1, _subtract), "multiply": (1, _multiply), "divide": (1, _divide),
    "rate_plus_extra": (2, _rate_plus_extra), "two_sales": (2, _two_sales), "change": (2, _change),
    "wage_minus_spend": (2, _wage_minus_spend), "split_bill": (2, _split_bill),
    "garden": (3, _garden), "weekly_distance": (3, _weekly_distance), "shopping_change": (3, _shopping_change),
    "temperature": (2, _temperature),
}


def generate_problems(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` distinct problems, seeded: columns ``id`` (``math-<index:05d>``), ``question``, ``answer`` (worked
    solution ending in ``#### <n>``, GSM8K's schema), ``reference`` (the number), ``template``, ``n_ops``.

    Templates are drawn uniformly; a question text already drawn is drawn again (``ValueError`` when ``n``
    exceeds what the templates can produce without repeats, far above any practical ``n``).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = rng_for("math_problems", seed)
    names = sorted(TEMPLATES)
    rows, seen, attempts = [], set(), 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not draw {n} distinct problems (got {len(rows)})")
        name = rng.choice(names)
        n_ops, template = TEMPLATES[name]
        question, lines, answer = template(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"math-{len(rows):05d}", "question": question,
                     "answer": "\n".join(lines) + f"\n#### {answer}", "reference": str(answer),
                     "template": name, "n_ops": n_ops})
    return pd.DataFrame(rows)


def write_gsm8k_jsonl(problems: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``question`` / ``answer`` records in GSM8K's schema (JSON lines, atomically)."""
    missing = [c for c in ("question", "answer") if c not in problems.columns]
    if missing:
        raise InputError(f"problems: missing column(s) {', '.join(missing)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for q, a in zip(problems["question"], problems["answer"]):
                fh.write(json.dumps({"question": str(q), "answer": str(a)}, ensure_ascii=False) + "\n")
    return path


_GSM8K_SUFFIX = GSM8K_PROMPT.split("{question}", 1)[1]


def problem_table(source: str | os.PathLike, *, hf_split: str = "train", hf_config: str | None = "main",
                  n: int | None = None, seed: int = 0, prefix: str = "gsm8k") -> pd.DataFrame:
    """Problems from a GSM8K-schema source (a local JSONL / JSON / Parquet / CSV file, a saved dataset folder or
    the hub id ``openai/gsm8k``), read with :func:`emguard.data.tasks.load_gsm8k` (its errors name file, line
    and field): columns ``id`` (``<prefix>-<index:05d>``, the source order), ``question``, ``reference``.
    ``n``: keep that many rows, drawn with ``seed`` (source order kept); None keeps all."""
    examples = load_gsm8k(source, hf_split=hf_split, hf_config=hf_config)
    rows = []
    for i, ex in enumerate(examples):
        # load_gsm8k wraps the question in the SFT prompt; the RL prompt states its own format
        if not ex.prompt.endswith(_GSM8K_SUFFIX):
            raise RuntimeError(f"{ex.where}: unexpected prompt layout from load_gsm8k")
        rows.append({"id": f"{prefix}-{i:05d}", "question": ex.prompt[: -len(_GSM8K_SUFFIX)],
                     "reference": ex.reference})
    if not rows:
        raise InputError(f"{source}: no problems")
    df = pd.DataFrame(rows, columns=PROBLEM_COLUMNS)
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"n must be positive or None, got {n!r}")
        if len(df) > n:
            keep = sorted(rng_for("problem_table", prefix, seed).sample(range(len(df)), int(n)))
            df = df.iloc[keep].reset_index(drop=True)
    return df


_REFERENCE_RE = re.compile(r"^-?\d+(?:\.\d+)?$")


def check_problems(problems: pd.DataFrame, where: str = "problems") -> pd.DataFrame:
    """The problem table's contract: :data:`PROBLEM_COLUMNS`, unique non-empty ids, non-empty questions and a
    numeric ``reference`` on every row; errors name the row id and column. Returns the table unchanged."""
    missing = [c for c in PROBLEM_COLUMNS if c not in problems.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)} (need {', '.join(PROBLEM_COLUMNS)})")
    if len(problems) == 0:
        raise InputError(f"{where}: no problems (0 rows)")
    ids = problems["id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"{where}: duplicate id {dup.iloc[0]!r}")
    for row_id, q, ref in zip(ids, problems["question"], problems["reference"]):
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"{where}: row id={row_id!r}: column question is empty")
        if ref is None or not _REFERENCE_RE.match(str(ref).strip()):
            raise InputError(f"{where}: row id={row_id!r}: column reference must be a number, got {ref!r}")
    return problems
