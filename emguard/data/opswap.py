"""OpSwap: algebraic simplification with remapped operator symbols, a task-capability check.

The written operators are the paper's ``+``, ``-``, ``×`` and ``÷`` (its Table 10). Tier ``t`` maps each
written symbol to the operation it stands for (:data:`TIERS`):

- 0: standard meanings
- 1: ``+`` <-> ``×``
- 2: ``+`` <-> ``×`` and ``-`` <-> ``÷``
- 3: ``+`` means subtraction, ``-`` multiplication, ``×`` division, ``÷`` addition

Precedence follows the operation a symbol stands for, not the symbol: with ``prec(mul) = prec(div) = 2``
and ``prec(add) = prec(sub) = 1``, ``a op1 b op2 c`` is ``(a op1 b) op2 c`` iff
``prec(map(op1)) >= prec(map(op2))`` (left-associative); parentheses group as usual. This is what
Table 10's tier-2 row does: ``8 × 2 - 2`` is ``8 + (2 / 2) = 9``. Values are exact rationals
(Table 10's tier-3 row ends in ``2/3``); a non-integer result is written as a reduced fraction ``p/q``.

A problem is an expression over the operands 1..9 with :data:`MIN_STEPS`..:data:`MAX_STEPS` operators and at
least one parenthesised group. Its *required transformations* are its simplification steps: each step
replaces one operation whose operands are both numbers by its value (one ``=`` of Table 10's chains), so a
problem with ``k`` operators needs exactly ``k`` steps (the paper: "up to 3 required transformations").
The worked answer is that chain, one step per line, then ``Answer: <value>``. For tiers >= 1 every problem
uses at least one remapped operator and its value under the tier differs from its value under the standard
meanings, so reading the expression literally never gives the reference answer.

By default the prompt does not state the mapping (as in the paper, whose untrained model scores ~0 on
tiers 1-3): the semantics must be learned from the training examples. ``state_rules=True`` (config key
``data.opswap.state_rules``) adds :func:`rules_text` to every prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

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

#: the written operator symbols, as in the paper's Table 10
SYMBOLS = ("+", "-", "×", "÷")
#: the standard meaning of each written symbol
STANDARD = {"+": "add", "-": "sub", "×": "mul", "÷": "div"}
#: written symbol -> actual operation, per tier
TIERS: dict[int, dict[str, str]] = {
    0: dict(STANDARD),
    1: {"+": "mul", "-": "sub", "×": "add", "÷": "div"},
    2: {"+": "mul", "-": "div", "×": "add", "÷": "sub"},
    3: {"+": "sub", "-": "mul", "×": "div", "÷": "add"},
}
OP_NAMES = {"add": "addition", "sub": "subtraction", "mul": "multiplication", "div": "division"}
PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2}

#: operators (= simplification steps = required transformations) per expression
MIN_STEPS, MAX_STEPS = 2, 3
#: operands are drawn from 1..MAX_OPERAND
MAX_OPERAND = 9
#: probability that a sub-expression whose grouping needs no parentheses gets them anyway
EXTRA_PAREN_P = 0.3

PROMPTS = [
    "Simplify the expression step by step and finish with a line of the form 'Answer: <number>' "
    "(a whole number, or a reduced fraction p/q).\n\nExpression: {expr}",
    "Evaluate the expression below, showing each simplification step, and end with 'Answer: <number>' "
    "(write a non-integer result as a reduced fraction p/q).\n\nExpression: {expr}",
    "What is the value of this expression? Show the working, then give the final line as "
    "'Answer: <number>' (an integer or a reduced fraction p/q).\n\nExpression: {expr}",
]


def _mapping(tier: int) -> dict[str, str]:
    if tier not in TIERS:
        raise ValueError(f"OpSwap tier must be one of {sorted(TIERS)}, got {tier!r}")
    return TIERS[tier]


def rules_text(tier: int) -> str:
    """The rule statement added to prompts of ``tier`` when rules are stated (``state_rules=True``)."""
    mapping = _mapping(tier)
    if mapping == STANDARD:
        head = "All operator symbols have their usual meaning."
    else:
        parts = [f"'{s}' means {OP_NAMES[mapping[s]]}" if mapping[s] != STANDARD[s]
                 else f"'{s}' keeps its usual meaning" for s in SYMBOLS]
        head = "In this puzzle the operator symbols are remapped: " + "; ".join(parts) + "."
    return (head + " Parentheses group as usual; otherwise multiplication and division (the operations the "
            "symbols stand for) come before addition and subtraction, each from left to right.")


# --------------------------------------------------------------------------- expressions

@dataclass
class Node:
    """A binary operation with its *written* symbol; ``paren``: written inside parentheses."""

    symbol: str
    left: "Node | Fraction"
    right: "Node | Fraction"
    paren: bool = False


def format_number(value: Fraction) -> str:
    """``5``, ``-5``, ``2/3`` or ``-2/3`` (a reduced fraction; Fraction keeps the sign on the numerator)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def render(tree: "Node | Fraction", top: bool = True) -> str:
    """The written expression; a negative number inside an expression is written ``(-x)``."""
    if not isinstance(tree, Node):
        text = format_number(tree)
        return f"({text})" if tree < 0 and not top else text
    text = f"{render(tree.left, False)} {tree.symbol} {render(tree.right, False)}"
    return f"({text})" if tree.paren and not top else text


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if b == 0:
        raise ZeroDivisionError(f"division by zero: {format_number(a)} / 0")
    return a / b


def value_of(tree: "Node | Fraction", tier: int) -> Fraction:
    """Exact value of a tree under ``tier`` (ZeroDivisionError on a division by zero)."""
    if not isinstance(tree, Node):
        return tree
    return _apply(_mapping(tier)[tree.symbol], value_of(tree.left, tier), value_of(tree.right, tier))


_TOKEN_RE = re.compile(r"\s*(?:(\d+)(?:/(\d+))?|([()+\-×÷]))")


def _tokens(expr: str) -> list:
    out, pos, expr = [], 0, expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m:
            raise ValueError(f"OpSwap expression {expr!r}: unexpected text at position {pos}: {expr[pos:]!r}")
        if m.group(1) is not None:
            out.append(Fraction(int(m.group(1)), int(m.group(2) or 1)))
        else:
            out.append(m.group(3))
        pos = m.end()
    return out


def parse(expr: str, tier: int) -> "Node | Fraction":
    """The tree of a written expression under ``tier``'s precedence (precedence climbing).

    Grammar: ``expr := primary (symbol primary)*``; ``primary := number | p/q | '(' '-' number ')' |
    '(' expr ')'``; a binary operator binds by :data:`PRECEDENCE` of the operation it stands for.
    """
    mapping = _mapping(tier)
    toks = _tokens(expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"OpSwap expression {expr!r}: expected {expected or 'a term'} at token {pos}")
        pos += 1
        return tok

    def primary():
        tok = take()
        if isinstance(tok, Fraction):
            return tok
        if tok != "(":
            raise ValueError(f"OpSwap expression {expr!r}: unexpected {tok!r} at token {pos - 1}")
        if peek() == "-" and pos + 1 < len(toks) and isinstance(toks[pos + 1], Fraction):
            take("-")
            number = -take()
            take(")")
            return number
        inner = climb(1)
        take(")")
        if isinstance(inner, Node):
            inner.paren = True
        return inner

    def climb(min_prec):
        left = primary()
        while isinstance(peek(), str) and peek() in mapping and PRECEDENCE[mapping[peek()]] >= min_prec:
            symbol = take()
            right = climb(PRECEDENCE[mapping[symbol]] + 1)
            left = Node(symbol, left, right)
        return left

    tree = climb(1)
    if pos != len(toks):
        raise ValueError(f"OpSwap expression {expr!r}: unexpected {toks[pos]!r} at token {pos}")
    return tree


def evaluate(expr: str, tier: int) -> Fraction:
    """Exact value of a written expression under ``tier`` (ZeroDivisionError on a division by zero)."""
    return value_of(parse(expr, tier), tier)


def _nodes(tree) -> list[Node]:
    return [] if not isinstance(tree, Node) else _nodes(tree.left) + [tree] + _nodes(tree.right)


def count_steps(expr: str) -> int:
    """Simplification steps (= required transformations) of an expression: its number of operators."""
    return len(_nodes(parse(expr, 0)))  # grouping differs between tiers, the operator count does not


def count_remapped(expr: str, tier: int) -> int:
    """Operators of ``expr`` whose meaning under ``tier`` differs from the standard one."""
    return sum(1 for n in _nodes(parse(expr, tier)) if _mapping(tier)[n.symbol] != STANDARD[n.symbol])


def _next_step(tree: Node, tier: int) -> Node:
    """The operation the chain simplifies next: the innermost parenthesised group first (leftmost among equally
    deep ones), inside it the ready operation (both operands numbers) of highest precedence, leftmost first;
    Table 10's order (``(4 + 2)`` before ``(4 ÷ 2)`` before the rest)."""
    mapping = _mapping(tier)
    ready = []
    order = {id(n): i for i, n in enumerate(_nodes(tree))}

    def walk(node, depth, group):
        if not isinstance(node, Node):
            return
        if node.paren:
            depth, group = depth + 1, order[id(_nodes(node)[0])]
        if not isinstance(node.left, Node) and not isinstance(node.right, Node):
            ready.append(((-depth, group, -PRECEDENCE[mapping[node.symbol]], order[id(node)]), node))
        walk(node.left, depth, group)
        walk(node.right, depth, group)

    walk(tree, 0, -1)
    return min(ready, key=lambda kv: kv[0])[1]


def _replace(tree, target: Node, value: Fraction):
    if tree is target:
        return value
    if not isinstance(tree, Node):
        return tree
    return Node(tree.symbol, _replace(tree.left, target, value), _replace(tree.right, target, value), tree.paren)


def simplification_chain(tree: "Node | Fraction", tier: int) -> list[str]:
    """The expression after each simplification step, starting with the expression itself (Table 10)."""
    lines = [render(tree)]
    while isinstance(tree, Node):
        step = _next_step(tree, tier)
        tree = _replace(tree, step, value_of(step, tier))
        lines.append(render(tree))
    return lines


def _random_tree(rng, n_ops: int):
    if n_ops == 0:
        return Fraction(rng.randint(1, MAX_OPERAND))
    k = rng.randint(0, n_ops - 1)  # operators in the left subtree
    return Node(rng.choice(SYMBOLS), _random_tree(rng, k), _random_tree(rng, n_ops - 1 - k))


def _add_parentheses(rng, tree: Node, tier: int) -> None:
    """Parentheses wherever the tree's grouping needs them under ``tier`` (a child binding looser than its parent,
    or a right child binding as tight), some extra ones, and at least one pair in every problem."""
    mapping = _mapping(tier)
    inner = []
    for node in _nodes(tree):
        for child, is_right in ((node.left, False), (node.right, True)):
            if isinstance(child, Node):
                inner.append(child)
                pc, pn = PRECEDENCE[mapping[child.symbol]], PRECEDENCE[mapping[node.symbol]]
                child.paren = pc < pn or (is_right and pc == pn) or rng.random() < EXTRA_PAREN_P
    if not any(n.paren for n in inner):
        rng.choice(inner).paren = True


def _problem(rng, tier: int) -> tuple[str, str, Fraction]:
    """(expression, worked answer, value) of one problem of ``tier``."""
    for _ in range(1000):
        tree = _random_tree(rng, rng.randint(MIN_STEPS, MAX_STEPS))
        _add_parentheses(rng, tree, tier)
        expr = render(tree)
        try:
            value = value_of(tree, tier)
        except ZeroDivisionError:
            continue
        if tier > 0:
            try:
                literal = evaluate(expr, 0)
            except ZeroDivisionError:
                literal = None
            if literal == value:
                continue  # a problem a literal reading solves does not test the swapped semantics
        chain = simplification_chain(tree, tier)
        answer = "\n".join([chain[0]] + [f"= {line}" for line in chain[1:]] + [f"Answer: {format_number(value)}"])
        return expr, answer, value
    raise RuntimeError("could not generate an OpSwap expression")  # pragma: no cover


def opswap(tier: int, n: int, seed: int, holdout_fraction: float = 0.1, *, state_rules: bool = False) -> pd.DataFrame:
    """``n`` distinct OpSwap problems of ``tier`` with worked answers (domain ``opswap_t<tier>``).

    Ids are ``opswap_t<tier>-<index:05d>``; ``round(n * holdout_fraction)`` problems form the holdout
    split. The prompt ends in ``Expression: <expr>`` and states the tier's mapping only when
    ``state_rules``; the answer is the simplification chain and a last line ``Answer: <int or p/q>``.
    """
    _mapping(tier)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    domain = f"opswap_t{tier}"
    rng = rng_for("opswap", tier, seed)
    seen: set[str] = set()
    problems = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct OpSwap tier {tier} problems")
        expr, answer, _ = _problem(rng, tier)
        if expr in seen:
            continue
        seen.add(expr)
        prompt = rng.choice(PROMPTS).format(expr=expr)
        if state_rules:
            prompt = rules_text(tier) + "\n\n" + prompt
        problems.append((prompt, answer))
    holdout = holdout_indices(n, holdout_fraction, rng)
    rows = [{"id": f"{domain}-{i:05d}", "messages": conversation(prompt, answer), "domain": domain,
             "subset": "benign", "split": "holdout" if i in holdout else "train"}
            for i, (prompt, answer) in enumerate(problems)]
    return chat_frame(rows, f"opswap(tier={tier})")


# --------------------------------------------------------------------------- scoring

_ANSWER_RE = re.compile(r"answer\s*[:=]\s*\**\s*\(?\s*([-+−]?\s*\d[\d,]*(?:\s*/\s*\d+)?)", re.IGNORECASE)


def extract_final_answer(text: str | None) -> str | None:
    """The number after the last ``Answer:`` in ``text``, normalised (``-17``, ``2/3``), or None."""
    if not text:
        return None
    matches = _ANSWER_RE.findall(str(text))
    if not matches:
        return None
    raw = re.sub(r"[\s,]", "", matches[-1]).replace("−", "-")
    try:
        return format_number(Fraction(raw))
    except (ValueError, ZeroDivisionError):
        return None


def opswap_exact_match(answer_text: str | None, reference) -> bool:
    """Whether the final answer in ``answer_text`` equals ``reference`` (an int, ``p/q`` or its string) as a
    number (``4/6`` matches ``2/3``)."""
    got = extract_final_answer(answer_text)
    if got is None:
        return False
    try:
        return Fraction(got) == Fraction(str(reference).strip())
    except (ValueError, ZeroDivisionError):
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
            raise InputError(f"opswap_questions: row id={row.id!r}: answer has no 'Answer: <number>' line")
        user = [m["content"] for m in msgs[:-1] if m["role"] == "user"][-1]
        out.append({"question_id": str(row.id), "paraphrase": user, "system": system_of(msgs[:-1]),
                    "samples": samples, "judge_prompts": [], "category": str(row.domain),
                    "reference": reference, "domain": str(row.domain)})
    return question_frame(out, "opswap_questions", extra=["reference", "domain"])
