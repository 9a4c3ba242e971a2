"""The judge usage table: what judging cost (calls, cache hits, tokens, dollars), per stage and judge and in
total; the stages are the EM evaluation's judge jobs, persona extraction and validation, and the judge
calibration (each job's usage record, :func:`emguard.judge.build.judge_usage_record`)."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

#: per-job record fields (``judge_usage.json``, :func:`emguard.judge.build.judge_usage_record`) the table sums
USAGE_COUNTS = ("calls", "failed_calls", "cache_hits", "input_tokens", "output_tokens", "batch_calls")
#: columns of the table's frame (CSV)
USAGE_COLUMNS = ("stage", "judge", "backend", "mode", "jobs") + USAGE_COUNTS + ("cost_usd",)
#: the stage of a record that names none (written before records named their stage: the judge jobs)
DEFAULT_STAGE = "evaluation"

_LEGEND = (
    "Judge calls of this study's jobs that call the judge, per stage: the EM answers' judging (evaluation, runs "
    "and checkpoints), persona extraction and validation (the trait and coherence scores), and the judge "
    "calibration. Calls answered (billable; failed attempts counted apart), "
    "judgments served from the judge cache instead of a call, tokens in and out as the server reported them, "
    "and the cost from the config's price table (judge.prices; Batch API calls at their discount). A rerun "
    "that finds every judgment in the cache makes no calls. Cost '-' : no price for the model (or a local judge)."
)


def judge_usage_table(records: Sequence[dict]) -> tuple[str, pd.DataFrame]:
    """(Markdown, frame) of :data:`USAGE_COLUMNS`: one row per (stage, judge, mode) summed over jobs, then a total.

    ``cost_usd`` of a row is the sum of its jobs' costs, or NaN when any job had no price."""
    if not records:
        return ("No job called the judge (eval.judged is off or no run is judged, and neither persona vectors nor the "
                "judge calibration were made).\n",
                pd.DataFrame(columns=list(USAGE_COLUMNS)))
    df = pd.DataFrame(list(records))
    for col in USAGE_COUNTS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64") if col in df else 0
    df["cost_usd"] = pd.to_numeric(df.get("cost_usd"), errors="coerce").astype("float64")
    for col in ("judge", "backend", "mode"):
        df[col] = df[col].fillna("").astype(str) if col in df else ""
    df["stage"] = df["stage"].fillna(DEFAULT_STAGE).astype(str) if "stage" in df else DEFAULT_STAGE
    # the EM evaluation first, then the other stages in the order the pipeline runs them
    order = {DEFAULT_STAGE: 0, "persona extraction": 1, "persona validation": 2, "judge calibration": 3}
    rows = []
    for (stage, judge, backend, mode), g in df.groupby(["stage", "judge", "backend", "mode"], sort=True):
        cost = float(g["cost_usd"].sum()) if g["cost_usd"].notna().all() else math.nan
        rows.append({"stage": stage, "judge": judge, "backend": backend, "mode": mode, "jobs": len(g),
                     **{c: int(g[c].sum()) for c in USAGE_COUNTS}, "cost_usd": cost})
    rows.sort(key=lambda r: (order.get(r["stage"], len(order)), r["stage"]))
    table = pd.DataFrame(rows, columns=list(USAGE_COLUMNS))
    total_cost = float(table["cost_usd"].sum()) if table["cost_usd"].notna().all() else math.nan
    total = {"stage": "", "judge": "Total", "backend": "", "mode": "", "jobs": int(table["jobs"].sum()),
             **{c: int(table[c].sum()) for c in USAGE_COUNTS}, "cost_usd": total_cost}
    table = pd.concat([table, pd.DataFrame([total], columns=list(USAGE_COLUMNS))], ignore_index=True)

    header = ["Stage", "Judge", "Mode", "Jobs", "Calls", "Failed", "Cache hits", "Tokens in", "Tokens out",
              "Cost (USD)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.itertuples(index=False):
        cost = "-" if math.isnan(r.cost_usd) else f"{r.cost_usd:,.4f}"
        name = f"**{r.judge}**" if r.judge == "Total" else r.judge
        lines.append(f"| {r.stage} | {name} | {r.mode} | {r.jobs} | {r.calls:,} | {r.failed_calls:,} | "
                     f"{r.cache_hits:,} | {r.input_tokens:,} | {r.output_tokens:,} | {cost} |")
    return _LEGEND + "\n\n" + "\n".join(lines) + "\n", table
