"""The judge's own agreement with labelled answers (:mod:`emguard.calibration`), as a table and as the note
that stands above every judged EM table, with a plain warning when the judge is near chance.

The text is valid Markdown and valid reStructuredText (no headings, ``**bold**``), like the headline.
"""

from __future__ import annotations

import math

import pandas as pd

from emguard.calibration import NEAR_CHANCE_AUROC
from emguard.report.headline import _esc

#: summary columns the report reads (emguard.calibration.SUMMARY_COLUMNS)
CALIBRATION_REQUIRED = ("metric", "positive", "negative", "n_positive", "n_negative", "n_missing", "mean_positive",
                        "mean_negative", "auroc", "auroc_lo", "auroc_hi", "confidence", "verdict", "warn",
                        "judge_model", "n_items")

#: what a metric's AUROC tells apart, in words
_COMPARED = {"aligned": "misaligned from aligned answers", "coherent": "incoherent from coherent answers"}

NOT_JUDGED = "No answers were judged (eval.judged: false), so the judge was not measured either.\n"
NOT_MEASURED = ("**The judge was not measured**: judge.calibration.set is null, so nothing here says whether its "
                "scores tell misaligned from aligned answers.")


def _num(v, fmt: str = ".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(float(v), fmt)


def _auroc(r) -> str:
    return f"{_num(r['auroc'])} [{_num(r['auroc_lo'])}, {_num(r['auroc_hi'])}]"


def _warning(r) -> str:
    what = _COMPARED.get(str(r["metric"]), f"{r['negative']} from {r['positive']} answers")
    verdict = str(r["verdict"])
    if verdict == "not measurable":
        reason = f"no AUROC: no scored {r['positive']} or no scored {r['negative']} item"
    elif verdict == "inverted":
        reason = f"AUROC {_auroc(r)}: it ranks them the wrong way round"
    elif float(r["auroc_lo"]) <= 0.5 <= float(r["auroc_hi"]):
        reason = f"AUROC {_auroc(r)}: the interval includes chance, 0.5"
    else:
        reason = f"AUROC {_auroc(r)}: barely better than chance, below {NEAR_CHANCE_AUROC:g}"
    return f"**Warning: the judge cannot tell {what}** ({reason})."


def calibration_note(summary: pd.DataFrame | None) -> str:
    """One paragraph for above a judged EM table: the judge, its AUROCs, and a warning per metric near chance
    (what the table's misaligned and incoherent rates then do not measure)."""
    if summary is None:
        return NOT_MEASURED + "\n"
    if summary.empty:
        return "**The judge was not measured**: the calibration summary has no rows.\n"
    judge = _esc(", ".join(sorted(set(summary["judge_model"].astype(str)))))  # literal in Markdown and reST
    n = int(summary["n_items"].max())
    conf = float(summary["confidence"].iloc[0])
    parts = [f"{r['metric']} score AUROC {_auroc(r)}" for _, r in summary.iterrows()]
    text = (f"Judge agreement with {n} hand-labelled answers (judge {judge}; {round(100 * conf)}% bootstrap "
            f"intervals; 0.5 = chance, 1 = perfect): {'; '.join(parts)}.")
    warnings = [_warning(r) for _, r in summary.iterrows() if bool(r["warn"])]
    consequence = {"aligned": "misaligned rates", "coherent": "incoherent rates"}
    affected = [consequence.get(str(r["metric"]), f"{r['metric']}-based rates")
                for _, r in summary.iterrows() if bool(r["warn"])]
    if warnings:
        text += (" " + " ".join(warnings) + f" The judged {' and '.join(affected)} therefore say nothing reliable "
                 f"about these models.")
    return text + "\n"


def calibration_table(summary: pd.DataFrame | None) -> str:
    """Markdown: one row per metric (labels compared, scored items, missing scores, mean score per class, AUROC
    with its interval, verdict), the judge's name and the note's warnings."""
    if summary is None:
        return NOT_MEASURED + "\n"
    lines = [calibration_note(summary).rstrip("\n"), "",
             "| Score | Compared | n (pos / neg) | Missing | Mean score (pos / neg) | AUROC [interval] | Verdict |",
             "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['metric']} | {r['positive']} vs {r['negative']} | {int(r['n_positive'])} / "
                     f"{int(r['n_negative'])} | {int(r['n_missing'])} | {_num(r['mean_positive'], '.1f')} / "
                     f"{_num(r['mean_negative'], '.1f')} | {_auroc(r)} | {r['verdict']} |")
    lines += ["", "AUROC: the probability that a randomly chosen answer of the first kind gets a higher score than one "
              "of the second (ties count half), from the judge's 0-100 scores; answers the judge did not score are "
              "counted under Missing and left out. Verdict: near chance when the interval includes 0.5 or the "
              f"AUROC is below {NEAR_CHANCE_AUROC:g}; inverted when the whole interval is below 0.5."]
    return "\n".join(lines) + "\n"
