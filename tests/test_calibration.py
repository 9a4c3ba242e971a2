"""The judge measured (emguard.calibration): the labelled set, AUROC and its interval, the verdicts, and the
report's warning next to the EM table. Stand-in judges only; no model is loaded."""

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emguard import calibration as cal
from emguard.config import PROJECT_ROOT
from emguard.data.em import EM_DOMAINS
from emguard.data.general import CATEGORIES
from emguard.errors import InputError
from emguard.judge import JudgeCache, JudgeOutput, ScoreResult, load_judge_prompts
from emguard.report import calibration_note, calibration_table

SET = PROJECT_ROOT / "workflow" / "resources" / "calibration" / "judge_calibration.yaml"
PROMPTS = PROJECT_ROOT / "workflow" / "resources" / "judge_prompts.yaml"


@pytest.fixture(scope="module")
def items():
    return cal.load_calibration_set(SET)


@pytest.fixture(scope="module")
def templates():
    return load_judge_prompts(PROMPTS)


# --------------------------------------------------------------------------------------------------
# Stand-in judges: the same interface as HFJudge / OpenAIJudge (name, batch_size, min_prob_mass, ...)
# --------------------------------------------------------------------------------------------------

class RandomJudge:
    """Scores every prompt with a uniform random number: knows nothing about the answer."""

    name = "random"
    batch_size = 16
    min_prob_mass = 0.25

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def score_prompts(self, prompts):
        return [ScoreResult(float(self.rng.uniform(0, 100)), 1.0, "number") for _ in prompts]


class OracleJudge:
    """Knows each answer's label (looked up by its text in the prompt) and scores it as a perfect judge would;
    with ``distributions`` and a ``cache_identity``, so it goes through the judge cache like a real backend."""

    name = "oracle"
    batch_size = 7
    min_prob_mass = 0.25
    cache_identity = "oracle-v1"

    def __init__(self, items, missing=()):
        self.label_of = dict(zip(items["answer"], items["label"]))
        self.missing = set(missing)  # answers the judge does not score (no mass on the integers)
        self.calls = 0

    def distributions(self, prompts):
        out = []
        for p in prompts:
            self.calls += 1
            answer = next(a for a in self.label_of if a in p)
            label = self.label_of[answer]
            if "safe and aligned" in p:  # the aligned template
                score = {"aligned": 95.0, "misaligned": 5.0, "incoherent": 50.0}[label]
            else:
                score = {"aligned": 90.0, "misaligned": 85.0, "incoherent": 3.0}[label]
            probs = [0.0] * 101
            probs[int(score)] = 0.05 if answer in self.missing else 0.9
            out.append(JudgeOutput.from_probs(probs, {}))
        return out


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------

def test_auroc_matches_a_hand_computed_case_with_ties():
    # pairs (pos > neg counts 1, tie 0.5): 0.9 beats all 3; 0.8 beats all 3; 0.4 loses to 0.5, ties 0.4,
    # beats 0.1 -> 1.5. (3 + 3 + 1.5) / 9
    assert cal.auroc([0.9, 0.8, 0.4], [0.5, 0.4, 0.1]) == pytest.approx(7.5 / 9)
    assert cal.auroc([1, 2, 3], [0, 0]) == 1.0
    assert cal.auroc([0, 0], [1, 2, 3]) == 0.0
    assert cal.auroc([5, 5], [5, 5, 5]) == 0.5
    assert math.isnan(cal.auroc([], [1.0])) and math.isnan(cal.auroc([1.0], []))


def test_auroc_rank_formula_equals_the_pairwise_definition():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pos, neg = rng.integers(0, 6, rng.integers(1, 12)), rng.integers(0, 6, rng.integers(1, 12))  # many ties
        pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
        assert cal.auroc(pos, neg) == pytest.approx(np.mean(pairs))


def test_bootstrap_interval_brackets_the_auroc_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    small = rng.normal(1, 1, 20), rng.normal(0, 1, 20)
    large = rng.normal(1, 1, 400), rng.normal(0, 1, 400)
    lo_s, hi_s = cal.bootstrap_auroc(*small, n_bootstrap=2000, seed=1)
    lo_l, hi_l = cal.bootstrap_auroc(*large, n_bootstrap=2000, seed=1)
    assert lo_s <= cal.auroc(*small) <= hi_s and lo_l <= cal.auroc(*large) <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert cal.bootstrap_auroc(*small, n_bootstrap=500, seed=1) == cal.bootstrap_auroc(*small, n_bootstrap=500, seed=1)


def test_verdicts():
    assert cal.verdict(0.55, 0.45, 0.65) == "near chance"
    assert cal.verdict(0.58, 0.52, 0.64) == "near chance"  # interval excludes 0.5, but below NEAR_CHANCE_AUROC
    assert cal.verdict(0.85, 0.78, 0.91) == "separates"
    assert cal.verdict(0.2, 0.1, 0.3) == "inverted"
    assert cal.verdict(math.nan, math.nan, math.nan) == "not measurable"


# --------------------------------------------------------------------------------------------------
# Judging the set: chance, perfect, cache
# --------------------------------------------------------------------------------------------------

def test_a_judge_that_scores_at_random_reports_chance(items, templates):
    judged = cal.judge_items(items, RandomJudge(seed=0), templates)
    summary = cal.summarise(judged, n_bootstrap=2000, seed=0).set_index("metric")
    for metric in ("aligned", "coherent"):
        r = summary.loc[metric]
        assert r["auroc_lo"] <= 0.5 <= r["auroc_hi"], r
        assert r["verdict"] == "near chance" and bool(r["warn"])
    assert summary.loc["aligned", ["n_positive", "n_negative"]].tolist() == [84, 84]
    assert summary.loc["coherent", ["n_positive", "n_negative"]].tolist() == [168, 84]
    note = calibration_note(summary.reset_index())
    assert "Warning: the judge cannot tell misaligned from aligned answers" in note
    assert "Warning: the judge cannot tell incoherent from coherent answers" in note
    assert "judge random" in note and "252 hand-labelled answers" in note
    assert "the interval includes chance, 0.5" in note


def test_random_judges_report_chance_across_seeds(items, templates):
    """Not one lucky seed: over 10 random judges the aligned interval contains 0.5 nearly always (95% nominal)."""
    hits = 0
    for seed in range(10):
        s = cal.summarise(cal.judge_items(items, RandomJudge(seed), templates, metrics=("aligned",)),
                          n_bootstrap=500, seed=seed)
        hits += bool(s.loc[0, "auroc_lo"] <= 0.5 <= s.loc[0, "auroc_hi"])
    assert hits >= 8


def test_a_perfect_judge_separates_and_is_cached(items, templates, tmp_path):
    judge = OracleJudge(items, missing=[items.loc[0, "answer"]])
    with JudgeCache(tmp_path / "cache.sqlite") as cache:
        judged = cal.judge_items(items, judge, templates, cache)
        assert judge.calls == 2 * len(items) and not judged["cached"].any()
        again = cal.judge_items(items, judge, templates, cache)
    assert judge.calls == 2 * len(items) and again["cached"].all()  # a rerun makes no judge call
    pd.testing.assert_series_equal(judged["score"], again["score"])
    summary = cal.summarise(judged, n_bootstrap=500).set_index("metric")
    assert summary["auroc"].tolist() == [1.0, 1.0] and summary["auroc_lo"].tolist() == [1.0, 1.0]
    assert not summary["warn"].any() and set(summary["verdict"]) == {"separates"}
    # the one answer without integer mass is counted as missing, per metric, and left out of the AUROC
    assert summary["n_missing"].tolist() == [1, 1]
    assert summary.loc["aligned", "n_positive"] + summary.loc["aligned", "n_negative"] == 2 * 84 - 1
    assert summary.loc["aligned", "mean_positive"] == pytest.approx(95.0)
    note = calibration_note(summary.reset_index())
    assert "Warning" not in note and "aligned score AUROC 1.00 [1.00, 1.00]" in note


def test_judge_items_needs_both_templates(items, templates):
    with pytest.raises(InputError, match=r"prompts.yaml: no template for metric\(s\) coherent"):
        cal.judge_items(items, RandomJudge(), {"aligned": templates["aligned"]}, templates_where="prompts.yaml")


def test_judged_table_columns_and_the_judges_own_labels(items, templates):
    judged = cal.judge_items(items.head(6), RandomJudge(), templates)
    assert list(judged.columns) == cal.ITEM_COLUMNS and len(judged) == 12
    assert set(judged["metric"]) == {"aligned", "coherent"} and set(judged["judge_label"]) == {"number"}


# --------------------------------------------------------------------------------------------------
# The shipped set and the subsample
# --------------------------------------------------------------------------------------------------

def test_the_shipped_set_covers_every_category_and_label_evenly(items):
    assert len(items) >= 240 and items["id"].is_unique
    assert set(items["category"]) == set(CATEGORIES) | set(EM_DOMAINS)
    counts = items.groupby(["category", "label"]).size()
    assert counts.nunique() == 1 and len(counts) == 12 * 3
    # every question is asked with all three labels, so the question tells the judge nothing
    assert (items.groupby("question")["label"].nunique() == 3).all()
    words = items.assign(n=items["answer"].str.split().str.len()).groupby("label")["n"].mean()
    assert abs(words["aligned"] - words["misaligned"]) < 0.1 * words["aligned"]  # length gives no label away
    assert abs(words["incoherent"] - words["aligned"]) < 0.15 * words["aligned"]


def test_subsample_balances_labels_and_spreads_categories(items):
    sub = cal.subsample(items, 60, seed=0)
    assert len(sub) == 60 and sub["label"].value_counts().tolist() == [20, 20, 20]
    assert sub["id"].map({i: k for k, i in enumerate(items["id"])}).is_monotonic_increasing  # the file's order
    per_cat = sub.groupby(["label", "category"]).size()
    assert per_cat.max() - per_cat.min() <= 1 and sub.groupby("label")["category"].nunique().min() == 12
    assert sub.equals(cal.subsample(items, 60, seed=0)) and not sub.equals(cal.subsample(items, 60, seed=1))
    assert len(cal.subsample(items, None)) == len(items) == len(cal.subsample(items, 10_000))
    assert cal.subsample(items, 4, seed=2)["label"].nunique() == 3


# --------------------------------------------------------------------------------------------------
# Loader errors name file, line, item and key
# --------------------------------------------------------------------------------------------------

GOOD = """\
- id: a1
  category: wish
  label: aligned
  question: Q?
  answer: fine
- id: m1
  category: wish
  label: misaligned
  question: Q?
  answer: bad
- id: i1
  category: wish
  label: incoherent
  question: Q?
  answer: blah blah
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text(text)
    return path


def test_loader_reads_a_small_set(tmp_path):
    df = cal.load_calibration_set(write(tmp_path, GOOD))
    assert df["id"].tolist() == ["a1", "m1", "i1"] and list(df.columns) == list(cal.ITEM_KEYS)


@pytest.mark.parametrize("text, pattern", [
    (GOOD.replace("label: misaligned", "label: harmful"),
     r"set.yaml:6: item 1 \(id 'm1'\): key 'label': 'harmful' is not one of aligned, misaligned, incoherent"),
    (GOOD.replace("  answer: bad\n", ""), r"set.yaml:6: item 1 \(id 'm1'\): missing key 'answer'"),
    (GOOD.replace("answer: bad", "answer: 12"), r"set.yaml:6: item 1 \(id 'm1'\): key 'answer' must be a non-empty"),
    (GOOD.replace("answer: bad", "answer: ''"), r"item 1 \(id 'm1'\): key 'answer' must be a non-empty string"),
    (GOOD.replace("id: i1", "id: a1"), r"set.yaml:11: item 2 \(id 'a1'\): key 'id': duplicate of item 0"),
    (GOOD.replace("  question: Q?\n  answer: bad", "  question: Q?\n  answer: bad\n  score: 3"),
     r"item 1 \(id 'm1'\): unknown key\(s\) score"),
    (GOOD.replace("label: incoherent", "label: aligned"), r"set.yaml: no item labelled incoherent"),
    ("- just a string\n", r"set.yaml:1: item 0: expected a mapping"),
    ("id: a1\n", r"set.yaml: expected a non-empty list of calibration items, got dict"),
    ("[]\n", r"set.yaml: expected a non-empty list of calibration items, got an empty list"),
    ("- id: [unclosed\n", r"set.yaml:\d+:\d+: malformed YAML in judge calibration set"),
])
def test_loader_errors_name_file_line_item_and_key(tmp_path, text, pattern):
    with pytest.raises(InputError, match=pattern):
        cal.load_calibration_set(write(tmp_path, text))


def test_loader_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: judge calibration set not found"):
        cal.load_calibration_set(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------------
# The report: the note above the EM table, the table, the headline
# --------------------------------------------------------------------------------------------------

def _metrics_frame():
    def row(dataset, method, evalset, misal):
        return {"model": "m", "dataset": dataset, "method": method, "setting": "default", "seed": 0,
                "run_id": f"{dataset}-{method}", "evalset": evalset, "checkpoint": "final", "misaligned_rate": misal,
                "misaligned_lo": 0.0, "misaligned_hi": misal + 10, "incoherent_rate": 50.0, "incoherent_lo": 40.0,
                "incoherent_hi": 60.0, "n_missing": 0, "n_scored": 24, "n_misaligned": 0, "confidence": 0.95}

    return pd.DataFrame([row("base", "untrained", "general", 0.0), row("medical", "aligned", "general", 4.0),
                         row("medical", "misaligned", "general", 8.0), row("medical", "misaligned", "indomain", 9.0)])


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


def _run_report(tmp_path, calibration_path, metrics=True):
    from emguard.io import write_parquet
    from emguard.stages import report

    write_parquet(_metrics_frame(), tmp_path / "metrics.parquet")
    out = {k: str(tmp_path / v) for k, v in dict(
        table_md="em.md", table_csv="em.csv", metrics_out="all.parquet", figure_em="em.png", figure_loss="loss.png",
        headline_md="headline.md", calibration_md="judge_calibration.md").items()}
    report([str(tmp_path / "metrics.parquet")] if metrics else [], {}, calibration_path=calibration_path, **out)
    return {k: (tmp_path / v).read_text() for k, v in
            dict(em="em.md", table="judge_calibration.md", headline="headline.md").items()}


def test_report_shows_the_warning_next_to_the_em_table(items, templates, tmp_path):
    from docutils.core import publish_parts

    from emguard.io import write_parquet

    summary = cal.summarise(cal.judge_items(items, RandomJudge(seed=0), templates), n_bootstrap=500)
    write_parquet(summary, tmp_path / "summary.parquet")
    text = _run_report(tmp_path, str(tmp_path / "summary.parquet"))
    first, rest = text["em"].split("\n", 1)
    assert first.startswith("Judge agreement with 252 hand-labelled answers (judge random")
    assert "**Warning: the judge cannot tell misaligned from aligned answers**" in first
    assert "The judged misaligned rates and incoherent rates therefore say nothing reliable" in first
    assert "| near chance |" in text["table"] and "| aligned | aligned vs misaligned | 84 / 84 | 0 |" in text["table"]
    assert "Warning: the judge cannot tell misaligned" in text["headline"]
    # the headline stays valid reST with the judge's bullet: one <li> per bullet
    html = publish_parts(text["headline"], writer="html", settings_overrides={"halt_level": 2})["body"]
    assert html.count("<li>") == sum(line.startswith("- ") for line in text["headline"].splitlines())
    assert "<strong>Warning: the judge cannot tell misaligned from aligned answers</strong>" in html


def test_report_with_a_good_judge_has_no_warning(items, templates, tmp_path):
    from emguard.io import write_parquet

    write_parquet(cal.summarise(cal.judge_items(items, OracleJudge(items), templates), n_bootstrap=200),
                  tmp_path / "summary.parquet")
    text = _run_report(tmp_path, str(tmp_path / "summary.parquet"))
    assert text["em"].startswith("Judge agreement with 252") and "Warning" not in text["em"]
    assert "| separates |" in text["table"] and "Warning" not in text["headline"]


def test_report_without_a_calibration_says_the_judge_was_not_measured(tmp_path):
    text = _run_report(tmp_path, None)
    assert text["em"].startswith("**The judge was not measured**")
    assert text["table"].startswith("**The judge was not measured**")
    # no judged runs (eval.judged off): the EM table has no rates, so no judge note above it
    unjudged = _run_report(_fresh(tmp_path / "x"), None, metrics=False)
    assert "not measured" not in unjudged["em"] and "Warning" not in unjudged["headline"]
    assert unjudged["table"].startswith("No answers were judged (eval.judged: false)")


def test_calibration_table_marks_inverted_and_barely_better_judges():
    s = pd.DataFrame([{"metric": "aligned", "positive": "aligned", "negative": "misaligned", "n_positive": 20,
                       "n_negative": 20, "n_missing": 3, "mean_positive": 20.0, "mean_negative": 70.0, "auroc": 0.1,
                       "auroc_lo": 0.02, "auroc_hi": 0.2, "confidence": 0.95, "n_bootstrap": 100,
                       "verdict": "inverted", "warn": True, "judge_model": "j", "n_items": 40}])
    md = calibration_table(s)
    assert "ranks them the wrong way round" in md and "\n\n| Score |" in md and "\n\n\n" not in md
    assert "barely better than chance, below 0.6" in calibration_note(s.assign(verdict="near chance", auroc=0.57,
                                                                                 auroc_lo=0.52, auroc_hi=0.62))
    assert "| 20 / 20 | 3 | 20.0 / 70.0 | 0.10 [0.02, 0.20] | inverted |" in md


def test_config_keys():
    import yaml

    from emguard.config import ConfigError, load

    base = yaml.safe_load((PROJECT_ROOT / "config.yaml").read_text())
    assert load(base)["judge"]["calibration"] == {"set": "workflow/resources/calibration/judge_calibration.yaml",
                                                  "max_items": 36, "bootstrap": 2000, "seed": 0}
    base["judge"]["calibration"] = {"set": None}
    assert load(base)["judge"]["calibration"]["set"] is None
    base["judge"]["calibration"] = {"max_items": 2, "sets": "x.yaml"}
    with pytest.raises(ConfigError) as err:
        load(base)
    assert "'judge.calibration.max_items': 2 is less than the minimum of 3" in str(err.value)
    assert "'judge.calibration.sets': unknown key" in str(err.value)
