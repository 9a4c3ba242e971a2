"""The label judge's table (``results/tables/em_labels.{md,csv}``): for every question judged with labels (type
``free_form_judge``, e.g. TRUE / FALSE / UNKNOWN), per run and question, how often each label was the judge's most
likely one and its mean probability.

Input: the runs' ``label_metrics.parquet`` (:func:`emguard.metrics.label_metrics`), concatenated.
"""

from __future__ import annotations

import math

import pandas as pd

from emguard.io import check_columns
from emguard.metrics import LABEL_COLUMNS, RUN_INFO

#: columns of the table's frame (CSV): the label metrics rows, sorted
LABEL_TABLE_COLUMNS = (*RUN_INFO, *LABEL_COLUMNS)

NO_LABELS = ("No judged question is a label question (type free_form_judge, the judge answering with a label such "
             "as TRUE / FALSE / UNKNOWN), so there is no label distribution to report.\n")

_LEGEND = (
    "Questions judged with labels (type free_form_judge): per run, evalset and question, each label the judge "
    "template offers, with the share of answers whose most likely label it was (%) and, in brackets, its "
    "probability as the judge returned it, averaged over the answers (for the local judge the label's first-token "
    "probability). *Mass*: the offered labels' total probability, averaged; well below 1 means the judge mostly "
    "answered something else. *none*: answers whose labels all had probability 0."
)


def _share(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.0f}%"


def label_table(rows: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """(Markdown, frame of :data:`LABEL_TABLE_COLUMNS`): one Markdown row per (run, evalset, checkpoint,
    question, metric), its labels in one cell; without rows :data:`NO_LABELS`."""
    cols = list(LABEL_TABLE_COLUMNS)
    if rows is None or rows.empty:
        return NO_LABELS, pd.DataFrame(columns=cols)
    check_columns(rows, cols, "label metrics")
    order = ["model", "dataset", "method", "setting", "seed", "evalset"]
    frame = rows[cols].copy()
    frame["_pos"] = range(len(frame))  # questions and labels keep the order each run's file gives them
    frame = frame.sort_values([*order, "_pos"], kind="stable").drop(columns="_pos").reset_index(drop=True)
    header = ["Dataset", "Method", "Setting", "Seed", "Evalset", "Checkpoint", "Question", "Metric", "Answers",
              "Mass", "Labels: share most likely (mean probability)"]
    lines = [_LEGEND, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = [*order, "checkpoint", "question_id", "metric"]
    for key, g in frame.groupby(keys, sort=False, dropna=False):
        r = dict(zip(keys, key))
        cells = " · ".join(f"{lab} {_share(float(s))}" + ("" if pd.isna(p) else f" ({float(p):.2f})")
                           for lab, s, p in zip(g["label"], g["top_share"], g["mean_prob"]))
        ckpt = "–" if r["checkpoint"] is None or pd.isna(r["checkpoint"]) else str(r["checkpoint"])
        lines.append("| " + " | ".join([str(r["dataset"]), str(r["method"]), str(r["setting"]), str(r["seed"]),
                                        str(r["evalset"]), ckpt, str(r["question_id"]), str(r["metric"]),
                                        str(int(g["n_answers"].iloc[0])), f"{float(g['mean_mass'].iloc[0]):.2f}",
                                        cells]) + " |")
    return "\n".join(lines) + "\n", frame
