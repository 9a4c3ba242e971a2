"""Figures of the judged metrics: EM vs incoherence (the paper's Figure 1(a)) and training loss."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd

from emguard.io import check_columns
from emguard.report._common import (METHOD_LABELS, REFERENCE_ROWS, _REF_STYLE, _SERIES_COLORS, _empty_axes,
                                    _family_name, _new_figure, _point_text, _save_png, _split_setting)
from emguard.report.em_table import _prepare


def figure_em_vs_incoherence(metrics: pd.DataFrame, path: str | os.PathLike, *, checkpoint=None,
                             reference_methods: Mapping[str, str] | None = None) -> None:
    """General misalignment (x) vs general incoherence (y), like the paper's Figure 1(a).

    Uses the ``general`` rows only. Each point is the mean over seeds, then over EM datasets, of one
    (method, setting); the base run's general row is the Untrained point. Settings of one method that
    differ only in their number (``frac0.01``, ``frac0.05``, ...; ``lambda0.1_forward`` and
    ``lambda1_forward`` but not ``lambda0.1``) form one series, connected in order of that number and
    annotated with it (``frac`` values as percent). Reference rows are single
    labelled markers, so a table with baselines only still gives a readable plot. One panel per model.
    A point averages over whichever datasets it was run on, so compare series run on the same ones.
    """
    df = _prepare(metrics, checkpoint=checkpoint, reference_methods=reference_methods)
    df = df[df["_kind"] == "general"]
    models = list(dict.fromkeys(df["_model"])) or [""]
    fig = _new_figure(6.0 * len(models), 4.8)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        mdf = df[df["_model"] == model]
        if mdf.empty:
            _empty_axes(ax, "no general-evaluation metrics")
            continue
        per_ds = (mdf.assign(_ds=mdf["_dataset"])
                  .groupby(["_role", "_label", "_method", "_setting", "_ds"], sort=False)[["misaligned_rate", "incoherent_rate"]]
                  .mean().reset_index())
        points = per_ds.groupby(["_role", "_label", "_method", "_setting"], sort=False)[["misaligned_rate", "incoherent_rate"]].mean().reset_index()
        for role in REFERENCE_ROWS:
            ref = points[points["_role"] == role]
            if ref.empty:
                continue
            marker, color = _REF_STYLE[role]
            x, y = ref["misaligned_rate"].mean(), ref["incoherent_rate"].mean()
            ax.scatter([x], [y], marker=marker, color=color, s=60, zorder=3, label=role)
            ax.annotate(role, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color=color)
        defs = points[points["_role"] == "method"].copy()
        colors = iter(_SERIES_COLORS * (1 + len(defs) // len(_SERIES_COLORS)))
        if len(defs):
            split = [_split_setting(s) for s in defs["_setting"]]
            defs["_prefix"] = [p for p, _ in split]
            defs["_value"] = [v for _, v in split]
            for (method, prefix), s in defs.groupby(["_method", "_prefix"], sort=False):
                s = s.sort_values("_value", na_position="first")
                family = _family_name(prefix)
                name = METHOD_LABELS.get(method, method) + (f" ({family})" if family else "")
                line = ax.plot(s["misaligned_rate"], s["incoherent_rate"], marker="o", ms=4, lw=1.2, label=name,
                               color=next(colors))[0]
                for _, r in s.iterrows():
                    ax.annotate(_point_text(prefix, r["_value"], r["_setting"]), (r["misaligned_rate"], r["incoherent_rate"]),
                                textcoords="offset points", xytext=(4, -10), fontsize=7, color=line.get_color())
        ax.set_xlabel("General misalignment (% of answers)")
        ax.set_ylabel("General incoherence (% of answers)")
        # from 0, with headroom for the annotations of the outermost points
        xmax = np.nanmax(points["misaligned_rate"].to_numpy(dtype=float), initial=0.0)
        ymax = np.nanmax(points["incoherent_rate"].to_numpy(dtype=float), initial=0.0)
        ax.set_xlim(0, 1.2 * xmax + 1.0)
        ax.set_ylim(0, 1.15 * ymax + 1.0)
        ax.grid(alpha=0.3)
        ax.set_title(f"EM vs incoherence{' · ' + model if model else ''} (mean over datasets)", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    _save_png(fig, path)


def figure_train_loss(logs: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """Training loss against step, one line per run (``logs``: run label -> train_log table).

    Each table needs ``step`` and ``loss``; rows with a null loss are skipped. An empty mapping
    still writes a PNG saying so.
    """
    fig = _new_figure(7.0, 4.5)
    ax = fig.subplots()
    drawn = 0
    for label, log in logs.items():
        check_columns(log, ("step", "loss"), f"train log {label!r}")
        d = log[["step", "loss"]].apply(pd.to_numeric, errors="coerce").dropna().sort_values("step")
        if d.empty:
            continue
        ax.plot(d["step"], d["loss"], lw=1.2, label=str(label))
        drawn += 1
    if not drawn:
        _empty_axes(ax, "no training-loss records")
    else:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7 if drawn <= 10 else 5, ncol=1 if drawn <= 10 else 2, loc="best")
    _save_png(fig, path)
