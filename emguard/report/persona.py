"""The persona-vector steering check (trait score per steering coefficient)."""

from __future__ import annotations

import math

import pandas as pd

from emguard.metrics import welch_interval
from emguard.report._common import _is_null


def _effect_sentence(subject: str, scores_0, scores_a, expected: str, confidence: float) -> str:
    """One sentence on ``mean(scores_a) - mean(scores_0)`` that claims an effect only when the Welch
    interval (:func:`emguard.metrics.welch_interval`) excludes zero, in the direction it shows."""
    w = welch_interval(scores_0, scores_a, confidence)
    sizes = f"n = {w['n_y']} steered vs {w['n_x']} unsteered scored answers"
    if math.isnan(w["lo"]):
        return (f"Too few scored answers to test {subject} ({sizes}; an interval needs at least 2 each), "
                "so no effect on the judged trait score is claimed.")
    ci = f"{100 * confidence:g}% CI [{w['lo']:+.1f}, {w['hi']:+.1f}], Welch, {sizes}"
    if w["lo"] > 0 or w["hi"] < 0:
        verb = "raises" if w["lo"] > 0 else "lowers"
        note = "" if verb == expected else ", the opposite of what a working persona vector does"
        return (f"{subject[0].upper()}{subject[1:]} {verb} the judged trait score by {abs(w['diff']):.1f} points "
                f"relative to no steering ({ci}){note}.")
    diff = w["diff"] if round(w["diff"], 1) != 0 else 0.0  # no "-0.0"
    return (f"No effect of {subject} on the judged trait score was detected at this sample size: "
            f"difference {diff:+.1f} points ({ci}).")


def persona_validation_table(validation: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """Markdown of the steering check: mean judged trait and coherence score per steering coefficient
    (-alpha, 0, +alpha). A working persona vector gives trait(+alpha) > trait(0) > trait(-alpha).

    The sentences under the table claim that +alpha raises (or -alpha lowers) the trait score only when
    the Welch interval (``confidence``) of the difference from alpha = 0, computed from the per-answer
    ``trait_scores``, excludes zero; otherwise they say no effect was detected at this sample size.
    """
    lines = ["## Persona-vector steering check", "",
             "| layer | alpha | answers | mean trait score (n) | mean coherence (n) |", "|---|---|---|---|---|"]
    for r in validation.sort_values("alpha").itertuples(index=False):
        lines.append(f"| {r.layer} | {r.alpha:+g} | {r.n} | {r.trait_mean:.1f} ({r.trait_n}) | "
                     f"{r.coherent_mean:.1f} ({r.coherent_n}) |")
    if len(validation) == 3:
        rows = validation.sort_values("alpha").reset_index(drop=True)
        if "trait_scores" not in rows.columns:
            lines += ["", "This table has no per-answer trait scores (written by an older emguard), so the "
                          "steering effect cannot be tested and none is claimed."]
        else:
            scores = [[] if _is_null(v) else [float(x) for x in v] for v in rows["trait_scores"]]
            low, high = float(rows.loc[0, "alpha"]), float(rows.loc[2, "alpha"])
            lines += ["",
                      _effect_sentence(f"steering with alpha = {high:+g}", scores[1], scores[2], "raises", confidence),
                      "", _effect_sentence(f"steering with alpha = {low:+g}", scores[1], scores[0], "lowers", confidence)]
    return "\n".join(lines) + "\n"
