"""The benign task table: FoQA (the paper's Table 4) and GSM8K next to it, one column per task."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from emguard.errors import InputError
from emguard.io import check_columns
from emguard.report._common import _fmt_rate, _is_null
from emguard.report.opswap import OPSWAP_REQUIRED, method_accuracy_rows

#: columns :func:`task_table` needs (the task is the row's ``dataset``, else its ``evalset``)
TASK_REQUIRED = OPSWAP_REQUIRED

#: column headers of the known tasks (others are shown as named)
TASK_LABELS = {"foqa": "FoQA", "gsm8k": "GSM8K"}

_TASK_LEGEND = (
    "Exact-match accuracy (percent of sampled answers) on each task's held-out questions after fine-tuning on its "
    "train split with each method (Untrained: the base model, not fine-tuned); mean over seeds, with the Wilson "
    "interval in brackets. Higher is better. FoQA: the whole answer equals a gold answer after SQuAD normalisation "
    "(lower-case; punctuation, the words a / an / the and extra whitespace removed). GSM8K: the final number "
    "(after the last '####', else the last number of the answer) equals the reference number."
)


def _task_of(dataset, evalset) -> str:
    for value in (dataset, evalset):
        if not _is_null(value) and str(value):
            return str(value)
    raise InputError("task metrics table: a row has neither dataset nor evalset")


def task_table(task_metrics: pd.DataFrame, *, method_order: Sequence[str] | None = None) -> tuple[str, pd.DataFrame]:
    """The benign task table from task-metrics rows of FoQA / GSM8K runs: Markdown text and a CSV-ready frame.

    Rows as in :func:`emguard.report.opswap_table` (Untrained, SFT, then the defenses); one column per task
    present (FoQA first, then GSM8K, then any other). The frame has ``model, row, method, setting, n_seeds`` and
    per task ``<task>_accuracy``, ``<task>_lo``, ``<task>_hi``, ``<task>_n_scored``.
    """
    check_columns(task_metrics, TASK_REQUIRED, "task metrics table")
    df = task_metrics.reset_index(drop=True).copy()
    datasets = df["dataset"] if "dataset" in df.columns else pd.Series([None] * len(df), dtype=object)
    evalsets = df["evalset"] if "evalset" in df.columns else pd.Series([None] * len(df), dtype=object)
    df["_task"] = [_task_of(d, e) for d, e in zip(datasets, evalsets)]
    for col in ("model", "method", "setting"):
        src = df[col] if col in df.columns else pd.Series([None] * len(df), dtype=object)
        df[f"_{col}"] = [("" if _is_null(v) else str(v)) for v in src]
    known = list(TASK_LABELS)
    tasks = sorted(set(df["_task"]), key=lambda t: (known.index(t) if t in known else len(known), t))
    table = method_accuracy_rows(df, "_task", tasks, str, method_order)
    return _markdown(table, tasks), table


def _markdown(table: pd.DataFrame, tasks: Sequence[str]) -> str:
    lines = ["## Benign task accuracy", "", _TASK_LEGEND, ""]
    if table.empty:
        return "\n".join(lines + ["No task metrics.", ""])
    models = list(dict.fromkeys(table["model"]))
    seeds = table["n_seeds"].max() > 1
    header = ["Method"] + [f"{TASK_LABELS.get(t, t)} (%)" for t in tasks] + (["Seeds"] if seeds else [])
    for model, block in table.groupby("model", sort=False, dropna=False):
        if len(models) > 1:
            lines += [f"### {model}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in block.iterrows():
            cells = [str(r["row"])] + [_fmt_rate(r[f"{t}_accuracy"], r[f"{t}_lo"], r[f"{t}_hi"], ()) for t in tasks]
            if seeds:
                cells.append(str(int(r["n_seeds"])))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
