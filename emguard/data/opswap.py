"""OpSwap: arithmetic with remapped operator symbols, a task-capability check.

Tier ``t`` maps each written symbol to the operation it stands for:

- 0: standard meanings
- 1: ``+`` and ``*`` swapped
- 2: ``+`` <-> ``*`` and ``-`` <-> ``/``
- 3: ``+`` means subtraction, ``-`` multiplication, ``*`` division, ``/`` addition

After mapping, the usual precedence applies to the *actual* operations (multiplication and division
before addition and subtraction, each left to right). Operands are small positive integers chosen so
that every division is exact, so every intermediate value and the result are integers.
"""

from __future__ import annotations

import re

import pandas as pd

from emguard.data._util import (
    chat_frame,
    check_samples,
    conversation,
    holdout_indices,
    question_frame,
    rng_for,
    system_of,
)
from emguard.errors import InputError

SYMBOLS = ("+", "-", "*", "/")
#: written symbol -> actual operation, per tier
TIERS: dict[int, dict[str, str]] = {
    0: {"+": "+", "-": "-", "*": "*", "/": "/"},
    1: {"+": "*", "-": "-", "*": "+", "/": "/"},
    2: {"+": "*", "-": "/", "*": "+", "/": "-"},
    3: {"+": "-", "-": "*", "*": "/", "/": "+"},
}
OP_NAMES = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
#: how actual operations are printed in worked solutions (distinct from the written ASCII symbols)
PRETTY = {"+": "+", "-": "−", "*": "×", "/": "÷"}

PROMPTS = [
    "{rules}\n\nWork it out step by step and finish with a line of the form 'Answer: <number>'.\n\nExpression: {expr}",
    "Here is an arithmetic puzzle with its own operator rules.\n{rules}\n\nEvaluate the expression below, "
    "showing your steps, and end with 'Answer: <number>'.\n\nExpression: {expr}",
    "{rules}\nUsing these rules, what is the value of the expression? Show the working, then give the "
    "final line as 'Answer: <number>'.\n\nExpression: {expr}",
]


def rules_text(tier: int) -> str:
    """The rule statement shown in prompts of ``tier``."""
    mapping = _mapping(tier)
    if all(mapping[s] == s for s in SYMBOLS):
        head = "All operator symbols have their usual meaning."
    else:
        parts = [f"'{s}' means {OP_NAMES[mapping[s]]}" if mapping[s] != s else f"'{s}' keeps its usual meaning"
                 for s in SYMBOLS]
        head = "In this puzzle the operator symbols are remapped: " + "; ".join(parts) + "."
    return (head + " After replacing each symbol by the operation it stands for, the usual precedence applies: "
            "multiplication and division before addition and subtraction, each from left to right.")


def _mapping(tier: int) -> dict[str, str]:
    if tier not in TIERS:
        raise ValueError(f"OpSwap tier must be one of {sorted(TIERS)}, got {tier!r}")
    return TIERS[tier]


def _fmt(tokens: list) -> str:
    return " ".join(PRETTY[t] if isinstance(t, str) else str(t) for t in tokens)


def _make_expression(rng, tier: int) -> tuple[list[int], list[str]] | None:
    """Operands and *actual* operators for one expression, or None when a division cannot be exact."""
    n_ops = rng.randint(2, 4)
    ops = [rng.choice(SYMBOLS) for _ in range(n_ops)]
    nums = [rng.randint(2, 15)]
    term = nums[0]
    for op in ops:
        if op in "+-":
            nums.append(rng.randint(2, 15))
            term = nums[-1]
        elif op == "*":
            nums.append(rng.randint(2, 9))
            term *= nums[-1]
        else:
            divisors = [d for d in range(2, 13) if term % d == 0]
            if not divisors:
                return None
            nums.append(rng.choice(divisors))
            term //= nums[-1]
    return nums, ops


def solve(nums: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Worked steps and result for operands and actual operators (standard precedence, exact ints)."""
    tokens: list = [nums[0]]
    for op, n in zip(ops, nums[1:]):
        tokens += [op, n]
    steps = []
    if any(t in ("*", "/") for t in tokens[1::2]):
        steps.append("Multiplication and division first, from left to right:")
        while any(t in ("*", "/") for t in tokens[1::2]):
            i = next(k for k in range(1, len(tokens), 2) if tokens[k] in ("*", "/"))
            a, op, b = tokens[i - 1], tokens[i], tokens[i + 1]
            if op == "/" and a % b:
                raise ValueError(f"inexact division {a} / {b}")
            val = a * b if op == "*" else a // b
            tokens[i - 1 : i + 2] = [val]
            rest = f", giving {_fmt(tokens)}" if len(tokens) > 1 else ""
            steps.append(f"{a} {PRETTY[op]} {b} = {val}{rest}")
    if len(tokens) > 1:
        steps.append("Then addition and subtraction, from left to right:")
        while len(tokens) > 1:
            a, op, b = tokens[0], tokens[1], tokens[2]
            val = a + b if op == "+" else a - b
            tokens[0:3] = [val]
            rest = f", giving {_fmt(tokens)}" if len(tokens) > 1 else ""
            steps.append(f"{a} {PRETTY[op]} {b} = {val}{rest}")
    return steps, tokens[0]


def _problem(rng, tier: int) -> tuple[str, str, int]:
    mapping = _mapping(tier)
    inverse = {actual: sym for sym, actual in mapping.items()}
    for _ in range(1000):
        made = _make_expression(rng, tier)
        if made is None:
            continue
        nums, ops = made
        written = [inverse[op] for op in ops]
        if tier > 0 and all(mapping[s] == s for s in written):
            continue  # make every non-standard problem exercise at least one remapped symbol
        expr = " ".join([str(nums[0])] + [f"{s} {n}" for s, n in zip(written, nums[1:])])
        steps, result = solve(nums, ops)
        actual = _fmt([nums[0]] + [x for pair in zip(ops, nums[1:]) for x in pair])
        lines = []
        changed = [s for s in dict.fromkeys(written) if mapping[s] != s]
        if changed:
            lines.append("Applying the rules: " + ", ".join(f"'{s}' is {OP_NAMES[mapping[s]]}" for s in changed)
                         + ".")
        lines.append(f"With the real operations the expression is {actual}.")
        lines += steps
        lines.append(f"Answer: {result}")
        return expr, "\n".join(lines), result
    raise RuntimeError("could not generate an OpSwap expression")  # pragma: no cover


def opswap(tier: int, n: int, seed: int, holdout_fraction: float = 0.1) -> pd.DataFrame:
    """``n`` distinct OpSwap problems of ``tier`` with worked answers (domain ``opswap_t<tier>``).

    Ids are ``opswap_t<tier>-<index:05d>``; ``round(n * holdout_fraction)`` problems form the holdout
    split. The answer's last line is ``Answer: <int>``.
    """
    _mapping(tier)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    domain = f"opswap_t{tier}"
    rng = rng_for("opswap", tier, seed)
    seen: set[str] = set()
    problems = []
    rules = rules_text(tier)
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct OpSwap tier {tier} problems")
        expr, answer, _ = _problem(rng, tier)
        if expr in seen:
            continue
        seen.add(expr)
        prompt = rng.choice(PROMPTS).format(rules=rules, expr=expr)
        problems.append((prompt, answer))
    holdout = holdout_indices(n, holdout_fraction, rng)
    rows = [{"id": f"{domain}-{i:05d}", "messages": conversation(prompt, answer), "domain": domain,
             "subset": "benign", "split": "holdout" if i in holdout else "train"}
            for i, (prompt, answer) in enumerate(problems)]
    return chat_frame(rows, f"opswap(tier={tier})")


_ANSWER_RE = re.compile(r"answer\s*[:=]\s*\**\s*([-+−]?\s*\d[\d,]*)", re.IGNORECASE)


def extract_final_answer(text: str | None) -> str | None:
    """The integer after the last ``Answer:`` in ``text`` as a normalised string, or None."""
    if not text:
        return None
    matches = _ANSWER_RE.findall(str(text))
    if not matches:
        return None
    raw = matches[-1].replace(" ", "").replace(",", "").replace("−", "-")
    try:
        return str(int(raw))
    except ValueError:
        return None


def opswap_exact_match(answer_text: str | None, reference) -> bool:
    """Whether the final answer in ``answer_text`` equals ``reference`` (an int or its string)."""
    got = extract_final_answer(answer_text)
    if got is None:
        return False
    try:
        return int(got) == int(str(reference).strip())
    except ValueError:
        return False


def opswap_questions(df: pd.DataFrame, samples: int, *, split: str | None = "holdout") -> pd.DataFrame:
    """Task questions from OpSwap rows (the ``split`` rows; all rows when None), ``reference`` = answer.

    ``judge_prompts`` is empty: these are scored by exact match against ``reference``.
    """
    samples = check_samples(samples)
    rows = df if split is None else df[df["split"] == split]
    if rows.empty:
        raise InputError(f"opswap_questions: no rows in split {split!r}")
    out = []
    for row in rows.itertuples(index=False):
        msgs = list(row.messages)
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
        reference = extract_final_answer(msgs[-1]["content"])
        if reference is None:
            raise InputError(f"opswap_questions: row id={row.id!r}: answer has no 'Answer: <int>' line")
        user = [m["content"] for m in msgs[:-1] if m["role"] == "user"][-1]
        out.append({"question_id": str(row.id), "paraphrase": user, "system": system_of(msgs[:-1]),
                    "samples": samples, "judge_prompts": [], "category": str(row.domain),
                    "reference": reference, "domain": str(row.domain)})
    return question_frame(out, "opswap_questions", extra=["reference", "domain"])
