"""The OpSwap table (the paper's Table 3)."""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

from emguard.errors import InputError
from emguard.io import check_columns
from emguard.metrics import wilson_interval
from emguard.report._common import (DEFAULT_METHOD_ORDER, DEFAULT_REFERENCE_METHODS, _fmt_rate, _is_null,
                                    _method_rank, _row_label, _setting_key)


#: columns :func:`opswap_table` needs (``tier`` may instead come from a ``dataset`` named ``opswap_t<tier>``)
OPSWAP_REQUIRED = ("method", "setting", "accuracy", "accuracy_lo", "accuracy_hi")

#: ``method`` of the plain fine-tuning row of the OpSwap table
OPSWAP_SFT = "sft"
#: ``method`` of the untrained base model's row of the OpSwap table (the paper's "Baseline" row)
OPSWAP_UNTRAINED = "untrained"

_OPSWAP_LEGEND = (
    "Exact-match accuracy (percent of sampled answers whose final 'Answer: <number>' equals the reference) on "
    "each tier's held-out problems, after fine-tuning on that tier's OpSwap problems with each method "
    "(Untrained: the base model, not fine-tuned); "
    "mean over seeds, with the Wilson interval in brackets. Higher is better."
)


def _tier_of(row_tier, dataset) -> int:
    if not _is_null(row_tier):
        return int(row_tier)
    m = re.fullmatch(r"opswap_t(\d+)", "" if _is_null(dataset) else str(dataset))
    if not m:
        raise InputError(f"task metrics table: row with dataset {dataset!r} has no tier")
    return int(m.group(1))


def _pool_accuracy(rows: pd.DataFrame) -> dict:
    """Mean accuracy over seeds; interval from the pooled counts when several seeds have them."""
    acc = pd.to_numeric(rows["accuracy"], errors="coerce").to_numpy(dtype=float)
    ok = ~np.isnan(acc)
    out = {"accuracy": float(acc[ok].mean()) if ok.any() else math.nan}
    n_scored = pd.to_numeric(rows["n_scored"], errors="coerce") if "n_scored" in rows.columns else None
    out["n_scored"] = float(n_scored.sum()) if n_scored is not None and n_scored.notna().any() else math.nan
    if len(rows) > 1 and {"n_scored", "n_correct"} <= set(rows.columns) and ok.any():
        conf = float(rows["confidence"].dropna().iloc[0]) if "confidence" in rows.columns and rows["confidence"].notna().any() else 0.95
        k = int(pd.to_numeric(rows["n_correct"], errors="coerce").fillna(0).sum())
        lo, hi = wilson_interval(k, int(n_scored.fillna(0).sum()), conf)
        out["lo"], out["hi"] = 100.0 * lo, 100.0 * hi
    else:
        for b in ("lo", "hi"):
            v = pd.to_numeric(rows[f"accuracy_{b}"], errors="coerce").to_numpy(dtype=float)
            out[b] = float(np.nanmean(v[ok])) if ok.any() else math.nan
    return out


def opswap_table(task_metrics: pd.DataFrame, *, method_order: Sequence[str] | None = None) -> tuple[str, pd.DataFrame]:
    """The paper's Table 3 from task-metrics rows: Markdown text and a CSV-ready DataFrame.

    Input: one row per (run, seed) as written by the ``task_metrics`` rule: ``method``, ``setting``,
    ``accuracy``/``accuracy_lo``/``accuracy_hi`` (percent), and ``tier`` (or ``dataset`` =
    ``opswap_t<tier>``); ``model``, ``seed``, ``n_scored``, ``n_correct`` and ``confidence`` are used
    where present.

    Rows: ``Untrained`` (method ``untrained``: the base model on the tier's held-out problems), ``SFT``
    (method ``sft``) first, then the defenses in ``method_order`` (default
    :data:`DEFAULT_METHOD_ORDER`; others follow alphabetically) and within a method by setting, labelled
    like the EM table (``KL (lambda0.1)``). Columns: one per tier present, ``Tier <t>``. Seeds of a cell
    are pooled as in :func:`em_table` (mean accuracy; Wilson interval of the summed counts).

    The DataFrame has ``model, row, method, setting, n_seeds`` and per tier ``t``:
    ``tier<t>_accuracy``, ``tier<t>_lo``, ``tier<t>_hi``, ``tier<t>_n_scored`` (NaN where a row has no run
    on that tier).
    """
    check_columns(task_metrics, OPSWAP_REQUIRED, "task metrics table")
    df = task_metrics.reset_index(drop=True).copy()
    tiers_col = df["tier"] if "tier" in df.columns else pd.Series([None] * len(df), dtype=object)
    datasets = df["dataset"] if "dataset" in df.columns else pd.Series([None] * len(df), dtype=object)
    df["_tier"] = [_tier_of(t, d) for t, d in zip(tiers_col, datasets)]
    for col in ("model", "method", "setting"):
        src = df[col] if col in df.columns else pd.Series([None] * len(df), dtype=object)
        df[f"_{col}"] = [("" if _is_null(v) else str(v)) for v in src]
    tiers = sorted(set(df["_tier"]))
    table = method_accuracy_rows(df, "_tier", tiers, lambda t: f"tier{t}", method_order)
    return _opswap_markdown(table, tiers), table


def method_accuracy_rows(df: pd.DataFrame, key: str, keys: Sequence, prefix, method_order: Sequence[str] | None = None
                         ) -> pd.DataFrame:
    """Task-accuracy rows by method: ``df`` holds task-metrics rows with ``_model``, ``_method``, ``_setting`` (text)
    and a column ``key`` whose values ``keys`` become the column groups ``<prefix(k)>_accuracy`` / ``_lo`` / ``_hi`` /
    ``_n_scored`` (seeds pooled by :func:`_pool_accuracy`); rows Untrained, SFT, then the methods in
    ``method_order``, within a method by setting. Shared by the OpSwap table (key = tier) and the benign task
    table (key = task)."""
    fixed = {OPSWAP_UNTRAINED: DEFAULT_REFERENCE_METHODS["untrained"], OPSWAP_SFT: "SFT"}
    df = df.copy()
    df["_label"] = [fixed.get(m) or _row_label("method", m, s) for m, s in zip(df["_method"], df["_setting"])]
    rank = _method_rank(DEFAULT_METHOD_ORDER if method_order is None else method_order)

    def order(row_key):
        _, method, setting = row_key
        if method in fixed:
            return (0, list(fixed).index(method))
        return (1, rank(method), _setting_key(setting))

    records = []
    for model in list(dict.fromkeys(df["_model"])):
        mdf = df[df["_model"] == model]
        row_keys = sorted({(lbl, m, s) for lbl, m, s in zip(mdf["_label"], mdf["_method"], mdf["_setting"])},
                          key=order)
        for label, method, setting in row_keys:
            rows = mdf[mdf["_label"] == label]
            rec = {"model": model or None, "row": label, "method": method or None, "setting": setting or None,
                   "n_seeds": int(rows.groupby(key).size().max())}
            for k in keys:
                cell = rows[rows[key] == k]
                agg = _pool_accuracy(cell) if len(cell) else {"accuracy": math.nan, "lo": math.nan, "hi": math.nan,
                                                               "n_scored": math.nan}
                p = prefix(k)
                rec.update({f"{p}_accuracy": agg["accuracy"], f"{p}_lo": agg["lo"], f"{p}_hi": agg["hi"],
                            f"{p}_n_scored": agg["n_scored"]})
            records.append(rec)
    cols = ["model", "row", "method", "setting", "n_seeds"]
    cols += [f"{prefix(k)}_{c}" for k in keys for c in ("accuracy", "lo", "hi", "n_scored")]
    return pd.DataFrame(records, columns=cols)


def _opswap_markdown(table: pd.DataFrame, tiers: Sequence[int]) -> str:
    lines = ["## OpSwap task accuracy", "", _OPSWAP_LEGEND, ""]
    if table.empty:
        return "\n".join(lines + ["No task metrics.", ""])
    models = list(dict.fromkeys(table["model"]))
    seeds = table["n_seeds"].max() > 1
    header = ["Method"] + [f"Tier {t}" for t in tiers] + (["Seeds"] if seeds else [])
    for model, block in table.groupby("model", sort=False, dropna=False):
        if len(models) > 1:
            lines += [f"### {model}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in block.iterrows():
            cells = [str(r["row"])] + [_fmt_rate(r[f"tier{t}_accuracy"], r[f"tier{t}_lo"], r[f"tier{t}_hi"], ())
                                       for t in tiers]
            if seeds:
                cells.append(str(int(r["n_seeds"])))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
