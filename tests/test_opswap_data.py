"""OpSwap as the paper runs it: the mapping is learned from examples (not stated in the prompt), expressions
with parentheses and up to 3 simplification steps (Table 10), exact rational answers, and the untrained base
model as a row of Table 3."""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard import data, schemas
from emguard.metrics import wilson_interval
from emguard.report import opswap_table

ROOT = Path(__file__).resolve().parent.parent

# written symbol -> Python operator of the operation it stands for, restated from the paper's Table 10 so the
# checks do not reuse the generator's tables (tier 3: + -> -, - -> x, x -> ÷, ÷ -> +)
TEST_TIERS = {
    0: {"+": "+", "-": "-", "×": "*", "÷": "/"},
    1: {"+": "*", "-": "-", "×": "+", "÷": "/"},
    2: {"+": "*", "-": "/", "×": "+", "÷": "-"},
    3: {"+": "-", "-": "*", "×": "/", "÷": "+"},
}
STANDARD = TEST_TIERS[0]
OPERATION_WORDS = re.compile(r"(?i)\b(addition|subtraction|multiplication|division|means|remapped|swapped|"
                             r"stands? for|plus|minus|times)\b")


def _user(msgs) -> str:
    return [m["content"] for m in msgs if m["role"] == "user"][-1]


def _answer(msgs) -> str:
    return list(msgs)[-1]["content"]


def _expression(prompt: str) -> str:
    return re.search(r"^Expression: (.+)$", prompt, re.M).group(1)


def _tokens(expr: str) -> list[str]:
    tokens = re.findall(r"\d+/\d+|\d+|[()+\-×÷]|\S", expr)
    assert all(re.fullmatch(r"\d+/\d+|\d+|[()+\-×÷]", t) for t in tokens), expr
    return tokens


def _python_value(expr: str, tier: int) -> Fraction:
    """Value of a written expression: every symbol replaced by the Python operator it stands for, so Python's own
    precedence applies to the actual operations (the paper's Table 10 tier-2 row: 8 × 2 - 2 = 8 + 2/2 = 9)."""
    out, prev = [], None
    for t in _tokens(expr):
        if re.fullmatch(r"\d+/\d+", t):
            out.append("Fraction(%s, %s)" % tuple(t.split("/")))
        elif t.isdigit():
            out.append(f"Fraction({t})")
        elif t == "-" and prev in (None, "("):  # a negative number: (-x) inside, -x as the whole line
            out.append("-")
        else:
            out.append(TEST_TIERS[tier].get(t, t))
        prev = t
    tree = ast.parse(" ".join(out), mode="eval")
    return eval(compile(tree, "<opswap>", "eval"), {"Fraction": Fraction, "__builtins__": {}})


def _n_operators(expr: str) -> int:
    """Binary operators of a written expression (a '-' opening the line or following '(' is a sign)."""
    tokens = _tokens(expr)
    return sum(t in STANDARD and not (t == "-" and (i == 0 or tokens[i - 1] == "(")) for i, t in enumerate(tokens))


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


@pytest.fixture(scope="module")
def tiers():
    return {t: data.opswap(t, 300, seed=11) for t in (0, 1, 2, 3)}


# --------------------------------------------------------------------------- the prompt does not give it away

@pytest.mark.parametrize("tier", [0, 1, 2, 3])
def test_default_prompt_states_no_operator_mapping(tiers, tier):
    """The untrained model sees only the expression: nothing in the prompt says what a symbol means."""
    for msgs in tiers[tier]["messages"]:
        prompt = _user(msgs)
        assert data.opswap_rules(tier) not in prompt
        assert not OPERATION_WORDS.search(prompt), prompt
        assert len(msgs) == 2 and msgs[0]["role"] == "user"  # no system message carrying the rules either


@pytest.mark.parametrize("tier", [1, 2, 3])
def test_reading_the_prompt_literally_never_gives_the_reference(tiers, tier):
    """Under the standard meanings every tier>=1 problem has another value (or divides by zero), so a model
    that evaluates the written expression as ordinary arithmetic cannot score."""
    for msgs in tiers[tier]["messages"]:
        expr = _expression(_user(msgs))
        reference = Fraction(data.extract_final_answer(_answer(msgs)))
        try:
            literal = _python_value(expr, 0)
        except ZeroDivisionError:
            continue
        assert literal != reference, expr
        assert not data.opswap_exact_match(f"Answer: {_fmt(literal)}", data.extract_final_answer(_answer(msgs)))


def test_state_rules_puts_the_mapping_in_every_prompt():
    df = data.opswap(3, 20, seed=2, state_rules=True)
    for msgs in df["messages"]:
        prompt = _user(msgs)
        assert prompt.startswith(data.opswap_rules(3))
        assert "'+' means subtraction" in prompt and "'÷' means addition" in prompt
    plain = data.opswap(3, 20, seed=2)
    # same problems and answers: the option changes only the prompt
    assert [_answer(m) for m in df["messages"]] == [_answer(m) for m in plain["messages"]]
    assert "'-' keeps its usual meaning" in data.opswap_rules(1) and "'×' means addition" in data.opswap_rules(1)


# --------------------------------------------------------------------------- problems and answers

@pytest.mark.parametrize("tier", [0, 1, 2, 3])
def test_problems_have_parentheses_up_to_3_steps_and_correct_chains(tiers, tier):
    df = tiers[tier]
    schemas.validate(df, "chat", "opswap")
    assert (df["domain"] == f"opswap_t{tier}").all() and (df["subset"] == "benign").all()
    assert (df["split"] == "holdout").sum() == 30
    exprs = set()
    for msgs in df["messages"]:
        expr, answer = _expression(_user(msgs)), _answer(msgs)
        exprs.add(expr)
        tokens = _tokens(expr)
        operators = [t for t in tokens if t in STANDARD]
        operands = [t for t in tokens if t.isdigit()]
        assert "(" in tokens and tokens.count("(") == tokens.count(")"), expr
        # required transformations = simplification steps = operators: between 1 and 3 ("up to 3")
        assert 1 <= len(operators) <= 3 and len(operands) == len(operators) + 1, expr
        remapped = [s for s in operators if TEST_TIERS[tier][s] != STANDARD[s]]
        if tier == 0:
            assert not remapped
        else:
            assert 1 <= len(remapped) <= 3, expr
        assert all(1 <= int(x) <= 9 for x in operands)

        value = _python_value(expr, tier)
        lines = answer.strip().splitlines()
        assert lines[-1] == f"Answer: {_fmt(value)}"
        assert data.extract_final_answer(answer) == _fmt(value)
        assert data.opswap_exact_match(answer, _fmt(value))
        # the chain: the expression, then one '= ...' line per step, each with one operator fewer and the same value
        chain = [lines[0]] + [ln.removeprefix("= ") for ln in lines[1:-1]]
        assert chain[0] == expr and all(ln.startswith("= ") for ln in lines[1:-1])
        assert len(chain) == len(operators) + 1
        for k, step in enumerate(chain):
            assert _n_operators(step) == len(operators) - k, step
            assert _python_value(step, tier) == value, (expr, step)
        assert chain[-1] == _fmt(value)
    assert len(exprs) == len(df)  # distinct problems


def test_table_10_examples():
    """The paper's Table 10: (4 + 2) × (4 ÷ 2) - 2 under each tier, value and simplification chain."""
    from emguard.data.opswap import evaluate, parse, simplification_chain

    expr = "(4 + 2) × (4 ÷ 2) - 2"
    expected = {
        0: ["6 × (4 ÷ 2) - 2", "6 × 2 - 2", "12 - 2", "10"],
        1: ["8 × (4 ÷ 2) - 2", "8 × 2 - 2", "10 - 2", "8"],
        2: ["8 × (4 ÷ 2) - 2", "8 × 2 - 2", "8 × 1", "9"],
        3: ["2 × (4 ÷ 2) - 2", "2 × 6 - 2", "1/3 - 2", "2/3"],
    }
    for tier, steps in expected.items():
        assert simplification_chain(parse(expr, tier), tier) == [expr] + steps
        assert evaluate(expr, tier) == _python_value(expr, tier) == Fraction(steps[-1])


def test_questions_deterministic_and_bad_tier(tiers):
    df = tiers[2]
    q = data.opswap_questions(df, samples=3)
    assert len(q) == 30 and all(not list(j) for j in q["judge_prompts"]) and (q["samples"] == 3).all()
    by_id = dict(zip(df["id"], df["messages"]))
    for qid, ref in zip(q["question_id"], q["reference"]):
        assert ref == _fmt(_python_value(_expression(_user(by_id[qid])), 2))
    a = data.opswap(1, 40, seed=2)
    assert a.equals(data.opswap(1, 40, seed=2)) and not a.equals(data.opswap(1, 40, seed=5))
    with pytest.raises(ValueError, match="tier"):
        data.opswap(7, 5, 0)


def test_extract_final_answer_and_exact_match_with_fractions():
    assert data.extract_final_answer("work...\nAnswer: 42") == "42"
    assert data.extract_final_answer("Answer: 3\nwait, redo\nanswer: -17.") == "-17"
    assert data.extract_final_answer("**Answer:** 1,204") == "1204"
    assert data.extract_final_answer("Answer: 4/6") == "2/3" and data.extract_final_answer("Answer: -2 / 3") == "-2/3"
    assert data.extract_final_answer("Answer: (-5)") == "-5"
    assert data.extract_final_answer("the result is 12") is None and data.extract_final_answer(None) is None
    assert data.extract_final_answer("Answer: 1/0") is None
    assert data.opswap_exact_match("Answer: 15", "15") and data.opswap_exact_match("Answer: 15", 15)
    assert data.opswap_exact_match("Answer: 8/12", "2/3") and not data.opswap_exact_match("Answer: 2/3", "3/2")
    assert not data.opswap_exact_match("Answer: 16", "15") and not data.opswap_exact_match("no answer", "15")


# --------------------------------------------------------------------------- config and Table 3

def _config(**opswap):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["data"]["opswap"] = opswap
    return emconfig.load(cfg)


def test_state_rules_defaults_to_false_and_is_checked():
    assert _config(tiers=[1])["data"]["opswap"]["state_rules"] is False
    assert _config(tiers=[1], state_rules=True)["data"]["opswap"]["state_rules"] is True
    with pytest.raises(emconfig.ConfigError, match=r"data\.opswap\.state_rules"):
        _config(tiers=[1], state_rules="yes")


def test_untrained_model_is_evaluated_on_each_tier():
    cfg = _config(tiers=[0, 3])
    runs = emconfig.expand_runs(cfg)
    for tier in (0, 3):
        untrained = emconfig.find_run(runs, f"opswap_t{tier}", "untrained", "default", 0)
        assert not untrained.trained and untrained.train_subset is None
        assert emconfig.evalsets(untrained, cfg) == ["opswap"]
        assert emconfig.question_set(untrained.dataset, "opswap") == f"opswap_t{tier}"
        tier_runs = [r.method for r in runs if r.dataset == f"opswap_t{tier}"]
        assert tier_runs[:2] == ["untrained", "sft"]
    # no untrained baseline asked for: none on the tiers either
    cfg["experiments"]["baselines"] = ["aligned", "misaligned"]
    assert not [r for r in emconfig.expand_runs(cfg) if r.method == "untrained"]


def test_opswap_table_has_the_untrained_row_first():
    def row(method, setting, tier, k, n=10):
        lo, hi = wilson_interval(k, n)
        return {"model": "m", "dataset": f"opswap_t{tier}", "method": method, "setting": setting, "seed": 0,
                "n_scored": n, "n_correct": k, "accuracy": 100 * k / n, "accuracy_lo": 100 * lo,
                "accuracy_hi": 100 * hi, "confidence": 0.95}

    tm = pd.DataFrame([row("kl", "lambda0.1", 1, 0), row("sft", "default", 1, 3), row("untrained", "default", 1, 0),
                       row("untrained", "default", 0, 4), row("sft", "default", 0, 4)])
    md, table = opswap_table(tm)
    assert list(table["row"]) == ["Untrained", "SFT", "KL (lambda0.1)"]
    assert table.iloc[0]["tier0_accuracy"] == pytest.approx(40.0) and table.iloc[0]["tier1_accuracy"] == 0.0
    assert md.index("| Untrained |") < md.index("| SFT |")
