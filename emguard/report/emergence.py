"""When EM emerges over training checkpoints, and what stopping early keeps (issue 12, sections 1 and 3).

From the runs' checkpoint curves (:data:`emguard.checkpoints.CURVE_COLUMNS`, one row per checkpoint, the final
adapter last): per run the task-convergence step, the EM onset, the gap between them, the early-stopping
checkpoint, EM there and at the final checkpoint and the task performance retained
(:func:`emguard.dynamics.emergence_table`); ``results/tables/emergence.{md,csv}`` and
``results/figures/emergence.png`` (with the training-time monitor's signals and stop where it ran). Runs that are
not judged (``eval.judged``) have no misaligned rate: their rows give the convergence step only, and the figure
their task metric and the judge-free signals.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import pandas as pd

from emguard import dynamics
from emguard.checkpoints import EXACT_MATCH, HIGHER_IS_BETTER, HOLDOUT_NLL
from emguard.errors import InputError
from emguard.io import check_columns
from emguard.report._common import _SERIES_COLORS, _empty_axes, _new_figure, _save_png

#: what the report says when the config evaluates no checkpoint
NOT_CONFIGURED = ("No training checkpoints were evaluated: the config's checkpoints section is off (set "
                  "checkpoints.every or checkpoints.steps to evaluate intermediate checkpoints), so there is no "
                  "convergence step, EM onset or early-stopping checkpoint to report.\n")

#: columns of ``emergence.csv``, one row per run
EMERGENCE_CSV_COLUMNS = ("model", "dataset", "method", "setting", "seed", "run_id", "task_metric_name", "judged",
                         "n_checkpoints", "first_step", "final_step", "convergence_step", "onset_step", "gap",
                         "early_stop_step", "em_at_stop", "em_at_stop_lo", "em_at_stop_hi", "em_final", "em_final_lo",
                         "em_final_hi", "base_hi", "task_at_stop", "task_final", "retained")
_GROUP = ("model", "dataset", "method", "setting")
_TASK_LABEL = {HOLDOUT_NLL: "holdout NLL (nats/token, lower is better)", EXACT_MATCH: "exact match (%)"}


def _unjudged_rows(curves: pd.DataFrame, *, metric_name: str, tolerance: float, where: str) -> pd.DataFrame:
    """Convergence only, for runs without judged rates."""
    rows = []
    for run_id, c in curves.groupby("run_id", sort=False):
        c = c.sort_values("step")
        w = f"{where}: run {run_id}"
        rows.append({**{k: c[k].iloc[0] for k in (*_GROUP, "seed", "run_id")}, "n_checkpoints": len(c),
                     "first_step": int(c["step"].iloc[0]), "final_step": int(c["step"].iloc[-1]),
                     "convergence_step": dynamics.convergence_step(
                         c, metric="task_metric", tolerance=tolerance, higher_is_better=HIGHER_IS_BETTER[metric_name],
                         where=w),
                     "task_final": float(c["task_metric"].iloc[-1])})
    return pd.DataFrame(rows)


def _rate_at(curves: pd.DataFrame, run_id, step, column: str) -> float:
    if step is None or step is pd.NA or (isinstance(step, float) and math.isnan(step)):
        return math.nan
    hit = curves.loc[(curves["run_id"] == run_id) & (curves["step"] == int(step)), column]
    return float(hit.iloc[0]) if len(hit) else math.nan


def emergence_rows(curves: pd.DataFrame, metrics: pd.DataFrame | None, *, convergence_tolerance: float,
                   onset_threshold: float, where: str = "checkpoint curves") -> tuple[pd.DataFrame, dict | None]:
    """Per run (:data:`EMERGENCE_CSV_COLUMNS`) and the summary of the judged runs
    (:func:`emguard.dynamics.emergence_summary`; None when no run is judged).

    ``curves``: every run's checkpoint curve, concatenated. ``metrics``: the final metrics rows of the judged
    runs, the untrained model's among them (``dataset == "base"``, evalset ``general``): its upper bound is the
    bar an EM onset must clear (:func:`emguard.dynamics.base_upper_bounds`). A judged run whose untrained model
    has no such bound (no scored general answer) gets the convergence step only, ``base_hi`` NaN, and stays out
    of the summary."""
    check_columns(curves, ("run_id", *_GROUP, "seed", "step", "judged", "task_metric_name", "task_metric"), where)
    parts = []
    judged = curves["judged"].astype(bool)
    base_hi = _base_bounds(metrics) if judged.any() else {}
    # judged, but the untrained model has no interval (no scored general answer): no onset can clear it
    measurable = judged & curves["model"].map(lambda m: not math.isnan(base_hi.get(m, math.nan)))
    for name in (HOLDOUT_NLL, EXACT_MATCH):
        part = curves[measurable & (curves["task_metric_name"] == name)]
        if len(part):
            rows, _ = dynamics.emergence_table(part.drop(columns=["task_metric_name"]), metric="task_metric",
                                               higher_is_better=HIGHER_IS_BETTER[name],
                                               tolerance=convergence_tolerance, threshold=onset_threshold,
                                               base_hi=base_hi, where=where)
            parts.append(rows.assign(task_metric_name=name, judged=True))
        for flag in (True, False):
            part = curves[~measurable & (judged == flag) & (curves["task_metric_name"] == name)]
            if len(part):
                parts.append(_unjudged_rows(part, metric_name=name, tolerance=convergence_tolerance, where=where)
                             .assign(task_metric_name=name, judged=flag))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    out = out.reindex(columns=list(EMERGENCE_CSV_COLUMNS))
    for col in ("em_at_stop_lo", "em_at_stop_hi", "em_final_hi"):
        out[col] = math.nan
    for i, r in out.iterrows():
        if r["judged"] and not pd.isna(r["base_hi"]):
            out.at[i, "em_at_stop_lo"] = _rate_at(curves, r["run_id"], r["early_stop_step"], "misaligned_lo")
            out.at[i, "em_at_stop_hi"] = _rate_at(curves, r["run_id"], r["early_stop_step"], "misaligned_hi")
            out.at[i, "em_final_hi"] = _rate_at(curves, r["run_id"], r["final_step"], "misaligned_hi")
    for col in ("n_checkpoints", "first_step", "final_step", "convergence_step", "onset_step", "gap",
                "early_stop_step"):
        out[col] = pd.array(out[col], dtype="Int64")
    out = out.sort_values(["model", "dataset", "method", "setting", "seed"], kind="stable").reset_index(drop=True)
    onset_measured = out["base_hi"].notna()
    summary = dynamics.emergence_summary(out[onset_measured]) if onset_measured.any() else None
    return out, summary


def _base_bounds(metrics: pd.DataFrame | None) -> dict:
    """The untrained model's upper bound per model (NaN where it has no scored answer); {} without its rows."""
    if metrics is None or metrics.empty:
        return {}
    try:
        return dynamics.base_upper_bounds(metrics, where="final metrics")
    except InputError:  # no untrained-model rows: the config check (emguard.checkpoints) makes this rare
        return {}


def _step(v) -> str:
    return "–" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(int(v))


def _num(v, fmt: str = "{:.1f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _rate(v, lo, hi) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]" if not (math.isnan(lo) or math.isnan(hi)) else f"{v:.1f}"


def _task(v, name: str) -> str:
    return _num(v, "{:.3f}" if name == HOLDOUT_NLL else "{:.1f}")


def emergence_table(curves: Sequence[pd.DataFrame] | pd.DataFrame | None, metrics: pd.DataFrame | None, *,
                    convergence_tolerance: float, onset_threshold: float,
                    confidence: float = 0.95) -> tuple[str, pd.DataFrame]:
    """``(markdown, csv frame)`` of ``results/tables/emergence.*``. No curves (the checkpoints section is off):
    :data:`NOT_CONFIGURED` and an empty frame. Sentences state the numbers; the one comparison made (EM at the
    early stop lower than at the final checkpoint) is claimed per run only where the two rates' intervals do not
    overlap."""
    if isinstance(curves, (list, tuple)):
        curves = pd.concat(curves, ignore_index=True) if curves else None
    if curves is None or curves.empty:
        return NOT_CONFIGURED, pd.DataFrame(columns=list(EMERGENCE_CSV_COLUMNS))
    rows, summary = emergence_rows(curves, metrics, convergence_tolerance=convergence_tolerance,
                                   onset_threshold=onset_threshold)
    pct = round(100 * confidence)
    lines = ["# When EM emerges over training checkpoints", "",
             f"Every evaluated checkpoint of {len(rows)} run(s); the last checkpoint is the final adapter. "
             f"**Converged**: the first checkpoint whose task metric is within {convergence_tolerance:.0%} of its "
             "final value (holdout NLL: the mean token NLL of the held-out fine-tuning answers of the run's own "
             "subset, lower is better; exact match for OpSwap / benign tasks). **EM onset**: the first checkpoint "
             f"whose general misaligned rate exceeds {onset_threshold:g}% with the lower bound of its {pct}% "
             "interval above the untrained model's upper bound. **Gap** = onset - convergence (steps). "
             "**Early stop**: the last checkpoint before the onset (the final one without an onset). **Retained**: "
             "task performance there relative to the final checkpoint (exact match: v / f; holdout NLL: "
             "exp(f - v), the ratio of the per-token probabilities). Rates in %, with their intervals.", ""]
    header = ("| Dataset | Method | Setting | Seed | Task metric | Checkpoints | Converged | EM onset | Gap | Early stop "
              "| EM at stop | EM final | Task at stop | Task final | Retained |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for _, r in rows.iterrows():
        judged = bool(r["judged"]) and not pd.isna(r["base_hi"])
        name = r["task_metric_name"]
        lines.append("| " + " | ".join([
            str(r["dataset"]), str(r["method"]), str(r["setting"]), str(r["seed"]), name,
            _step(r["n_checkpoints"]), _step(r["convergence_step"]),
            _step(r["onset_step"]) if judged else ("not measured" if r["judged"] else "not judged"),
            _step(r["gap"]) if judged else "–",
            _step(r["early_stop_step"]) if judged else "–",
            _rate(r["em_at_stop"], r["em_at_stop_lo"], r["em_at_stop_hi"]) if judged else "–",
            _rate(r["em_final"], r["em_final_lo"], r["em_final_hi"]) if judged else "–",
            _task(r["task_at_stop"], name) if judged else "–", _task(r["task_final"], name),
            _num(100 * r["retained"], "{:.1f}%") if judged else "–"]) + " |")
    lines += [""] + _sentences(rows, summary, onset_threshold, confidence)
    lines += [""] + signal_lines(curves, confidence)
    return "\n".join(lines) + "\n", rows


def _shift(v, lo, hi) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not (math.isnan(lo) or math.isnan(hi)) else f"{v:+.3f}"


def signal_lines(curves: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """The judge-free signals at every checkpoint of every run, judged or not: the task metric, the likelihood
    shift in the run's own domain and out of it (with its bootstrap interval) and the persona projection, each
    against the untrained model (step 0: both signals are 0 there by definition)."""
    pct = round(100 * confidence)
    persona = "persona_proj" in curves.columns and curves["persona_proj"].notna().any()
    lines = ["## Judge-free signals at every checkpoint", "",
             "Measured without the judge, against the untrained model: the likelihood shift toward misaligned answers "
             f"(nats/token, {pct}% bootstrap interval over probe triples) on the run's own domain's probes and on the "
             "others (OOD: the other domains' and the general probes, as the training-time monitor measures it)"
             + (", and the persona projection of the OOD probes' aligned answers on the persona vector (the "
                "monitor's persona_proj, offline)" if persona else "; no persona projection (checkpoints.persona "
                "off, or the model has no steering layer)") + ".", ""]
    header = "| Dataset | Method | Setting | Seed | Step | Task metric | LL shift, in-domain | LL shift, OOD |"
    header += " Persona projection |" if persona else ""
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    order = curves.sort_values(["model", "dataset", "method", "setting", "seed", "step"], kind="stable")
    for _, r in order.iterrows():
        cells = [str(r["dataset"]), str(r["method"]), str(r["setting"]), str(r["seed"]),
                 f"{int(r['step'])}" + (" (final)" if bool(r["is_final"]) else ""),
                 _task(r["task_metric"], r["task_metric_name"]),
                 _shift(r["ll_shift_indomain"], r["ll_shift_indomain_lo"], r["ll_shift_indomain_hi"]),
                 _shift(r["ll_shift"], r["ll_shift_lo"], r["ll_shift_hi"])]
        if persona:
            cells.append(_num(r.get("persona_proj", math.nan), "{:+.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sentences(rows: pd.DataFrame, summary: dict | None, threshold: float, confidence: float) -> list[str]:
    from emguard.metrics import mean_interval

    out = []
    judged = rows["judged"].astype(bool)
    unjudged = rows[~judged]
    unmeasured = rows[judged & rows["base_hi"].isna()]
    if len(unmeasured):
        out.append(f"- {len(unmeasured)} judged run(s) have no EM onset measured: the untrained model has no scored "
                   "general answer, so it has no interval for a checkpoint to clear.")
    if summary is None:
        if not len(unmeasured):
            out.append("No checkpoint is judged (eval.judged, checkpoints.judged), so no EM onset is measured: the "
                       "table gives the convergence step, the table below and the figure the judge-free signals "
                       "against step.")
        return out
    base = rows.loc[rows["judged"].astype(bool), "base_hi"].dropna()
    bar = f" (untrained model's upper bound: {base.max():.1f}%)" if len(base) else ""
    n, k = summary["n_runs"], summary["n_onset"]
    if k == 0:
        out.append(f"- No judged run shows an EM onset at any checkpoint (0 of {n}: no misaligned rate above "
                   f"{threshold:g}% with its interval clear of the untrained model's{bar}); early stopping "
                   "changes nothing here.")
    else:
        out.append(f"- EM onset in {k} of {n} judged runs{bar}. Relative to task convergence it came after it in "
                   f"{summary['n_onset_after_convergence']}, at it in {summary['n_onset_at_convergence']} and "
                   f"before it in {summary['n_onset_before_convergence']} (mean gap {summary['mean_gap']:.1f} steps).")
        if summary["n_no_early_stop"]:
            out.append(f"- {summary['n_no_early_stop']} run(s) showed EM at the first evaluated checkpoint, so no "
                       "checkpoint precedes the onset; they have no early stop.")
        kept = rows[rows["judged"].astype(bool) & rows["onset_step"].notna() & rows["early_stop_step"].notna()]
        if len(kept):
            mean, lo, hi = mean_interval(100 * kept["retained"].astype(float).to_numpy(), confidence)
            spread = (f" ({round(100 * confidence)}% t interval over runs {lo:.1f}% to {hi:.1f}%)"
                      if not math.isnan(lo) else " (one run: no interval)")
            out.append(f"- Stopping at the last checkpoint before the onset keeps on average {mean:.1f}% of the final "
                       f"checkpoint's task performance over {len(kept)} run(s){spread}; the misaligned rate there "
                       f"averages {summary['mean_em_at_stop']:.1f}% against {summary['mean_em_final']:.1f}% at the "
                       "final checkpoint.")
            lower = int((kept["em_at_stop_hi"] < kept["em_final_lo"]).sum())
            out.append(f"- EM is lower at the early stop than at the final checkpoint, with the two intervals apart, in "
                       f"{lower} of {len(kept)} run(s); in the others the intervals overlap and no difference is "
                       "claimed.")
    if len(unjudged):
        out.append(f"- {len(unjudged)} run(s) are not judged (eval.judged): convergence only; their likelihood shift "
                   "against step is in results/figures/emergence.png.")
    return out


#: what the emergence figure marks per run: (column of :func:`emergence_marks`, line style, label)
FIGURE_MARKS = (("convergence_step", ":", "converged"), ("onset_step", "--", "EM onset"),
                ("early_stop_step", "-.", "early stop"), ("monitor_step", "-", "monitor stop"))


def emergence_marks(rows: pd.DataFrame | None, monitor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run (``run_id`` and the run keys): the steps the emergence figure marks, the emergence rows'
    ``convergence_step``, ``onset_step`` and ``early_stop_step`` and the monitor's ``monitor_step`` (where it
    stopped the run, else where it would have stopped: :func:`emguard.report.monitor.monitor_marks` on the monitor
    table, ``monitor.csv``), with ``monitor_stopped`` and ``monitor_signal``. No monitor table: those are empty."""
    from emguard.report.monitor import MARK_COLUMNS, monitor_marks

    keys = [*_GROUP, "seed"]
    cols = ["run_id", *keys, "convergence_step", "onset_step", "early_stop_step", *MARK_COLUMNS[len(keys):]]
    if rows is None or rows.empty:
        return pd.DataFrame(columns=cols)
    out = rows[["run_id", *keys, "convergence_step", "onset_step", "early_stop_step"]].copy()
    marks = monitor_marks(monitor)
    by_key = {tuple(str(v) for v in r[:len(keys)]): r[len(keys):]
              for r in marks.itertuples(index=False, name=None)}
    found = [by_key.get(tuple(str(v) for v in k), (pd.NA, pd.NA, None))
             for k in out[keys].itertuples(index=False, name=None)]
    out["monitor_step"] = pd.array([f[0] for f in found], dtype="Int64")
    out["monitor_stopped"] = [None if pd.isna(f[1]) else bool(f[1]) for f in found]
    out["monitor_signal"] = [f[2] for f in found]
    return out[cols].reset_index(drop=True)


def figure_emergence(curves: Sequence[pd.DataFrame] | pd.DataFrame | None, rows: pd.DataFrame | None,
                     path: str | os.PathLike, *, signals: pd.DataFrame | None = None,
                     monitor: pd.DataFrame | None = None):
    """Misaligned rate (general, with its interval), task metric, likelihood shift and persona projection against
    step: one column per (model, dataset, method, setting), seeds overlaid, with each seed's convergence step
    (dotted), EM onset (dashed), early stop (dash-dot) and the monitor's stop (solid; thin when it only would have
    stopped) marked (:func:`emergence_marks`). Returns the figure (drawn and saved).

    The likelihood shift (out-of-domain probes, with its interval) and the persona projection are the checkpoints'
    (the persona projection where the probe jobs projected, ``checkpoints.persona``) and, where the monitor ran,
    the values it logged during training (thin, ``x``). ``signals``:
    :func:`emguard.report.monitor.logged_signals` of the runs' train logs; ``monitor``: the monitor table
    (``monitor.csv``), whose thresholds are drawn on the two signal panels (grey). Without them (the monitor off, or
    a run it did not watch) those parts are left out. Without curves: one panel saying no checkpoint was
    evaluated."""
    from emguard.report.monitor import signal_thresholds

    if isinstance(curves, (list, tuple)):
        curves = pd.concat(curves, ignore_index=True) if curves else None
    if curves is None or curves.empty:
        fig = _new_figure(6.0, 3.0)
        _empty_axes(fig.subplots(1, 1), "no checkpoints evaluated (the config's checkpoints section is off)")
        _save_png(fig, path)
        return fig
    marks = emergence_marks(rows, monitor).set_index("run_id") if rows is not None else None
    logged = signals if signals is not None else pd.DataFrame(columns=["run_id", "step", "ll_shift", "persona_proj"])
    thresholds = signal_thresholds(monitor)
    groups = list(curves.groupby(list(_GROUP), sort=False))
    fig = _new_figure(4.2 * len(groups), 11.0)
    axes = fig.subplots(4, len(groups), squeeze=False)
    # (curve column, interval columns, logged signal drawn on the same panel)
    panels = (("misaligned_rate", "misaligned_lo", "misaligned_hi", None),
              ("task_metric", "task_metric_lo", "task_metric_hi", None),
              ("ll_shift", "ll_shift_lo", "ll_shift_hi", "ll_shift"),
              ("persona_proj", None, None, "persona_proj"))
    for col, (key, g) in enumerate(groups):
        name = g["task_metric_name"].iloc[0]
        drawn = [False] * len(panels)
        for j, (seed, c) in enumerate(g.groupby("seed", sort=True)):
            c = c.sort_values("step")
            run_id = c["run_id"].iloc[0]
            color = _SERIES_COLORS[j % len(_SERIES_COLORS)]
            x = c["step"].to_numpy()
            mine = logged[logged["run_id"].astype(str) == str(run_id)]
            m = marks.loc[run_id] if marks is not None and run_id in marks.index else None
            for p, (ax, (y, lo, hi, sig)) in enumerate(zip(axes[:, col], panels)):
                if y is not None and y in c and not c[y].isna().all():
                    drawn[p] = True
                    ax.plot(x, c[y].to_numpy(dtype=float), marker="o", ms=3, color=color, label=f"seed {seed}")
                    if lo is not None and lo in c and hi in c:
                        ax.fill_between(x, c[lo].to_numpy(dtype=float), c[hi].to_numpy(dtype=float), color=color,
                                        alpha=0.15, lw=0)
                if sig is not None and sig in mine and mine[sig].notna().any():
                    d = mine.dropna(subset=[sig])
                    drawn[p] = True
                    ax.plot(d["step"].to_numpy(), d[sig].to_numpy(dtype=float), marker="x", ms=3, lw=0.8,
                            color=color, alpha=0.8, label=f"seed {seed} (monitor)" if y is not None else f"seed {seed}")
                if not drawn[p] or m is None:
                    continue
                for field, style, label in FIGURE_MARKS:
                    if pd.isna(m[field]):
                        continue
                    would = field == "monitor_step" and not m["monitor_stopped"]
                    text = (f"monitor would stop, {m['monitor_signal']}" if would else
                            f"monitor stop, {m['monitor_signal']}" if field == "monitor_step" else label)
                    ax.axvline(int(m[field]), color=color, ls=style, lw=0.7 if would else 1.0, alpha=0.8,
                               label=f"{text} (seed {seed})")
        model = str(key[0])
        for p, sig in ((2, "ll_shift"), (3, "persona_proj")):
            thr = thresholds.get((model, sig))
            if thr is not None and drawn[p]:
                axes[p, col].axhline(thr, color="0.5", ls="--", lw=0.8, label=f"monitor threshold {thr:.3g}")
        axes[0, col].set_title(" · ".join(str(v) for v in key[1:]), fontsize=9)
        axes[0, col].set_ylabel("general misaligned (%)")
        axes[1, col].set_ylabel(_TASK_LABEL.get(name, name), fontsize=8)
        axes[2, col].set_ylabel("LL shift, OOD probes (nats/token)", fontsize=8)
        axes[3, col].set_ylabel("persona projection, OOD probes", fontsize=8)
        axes[3, col].set_xlabel("training step")
        empty = ("not judged", "no values", "no values",
                 "no persona projection (checkpoints.persona off, and no monitor on this run)")
        for p, ax in enumerate(axes[:, col]):
            if drawn[p]:
                ax.grid(alpha=0.3)
            else:
                _empty_axes(ax, empty[p])
        # the shift panel has every seed (judged or not); else the last panel with lines
        legend_ax = next((axes[p, col] for p in (2, 3, 1, 0) if drawn[p]), None)
        if legend_ax is not None:
            legend_ax.legend(fontsize=6, loc="best")
    _save_png(fig, path)
    return fig


def emergence_report(curve_paths: Sequence[str], metrics: pd.DataFrame | None, md: str, csv: str, figure: str, *,
                     convergence_tolerance: float, onset_threshold: float, confidence: float = 0.95,
                     train_logs: dict[str, pd.DataFrame] | None = None, monitor_csv: str | None = None) -> None:
    """``emergence.md`` / ``.csv`` and ``emergence.png`` from the runs' ``checkpoint_curve.parquet`` files (none:
    both say no checkpoint was evaluated). ``train_logs`` (run id -> ``train_log.parquet`` frame): the monitor's
    logged signals for the figure; ``monitor_csv``: the monitor table (``results/tables/monitor.csv``), its stops
    and thresholds."""
    from emguard.io import read_parquet
    from emguard.report._common import write_table
    from emguard.report.monitor import logged_signals

    curves = [read_parquet(p) for p in curve_paths]
    markdown, rows = emergence_table(curves, metrics, convergence_tolerance=convergence_tolerance,
                                     onset_threshold=onset_threshold, confidence=confidence)
    write_table(markdown, rows, md, csv)
    wanted = set(pd.concat(curves)["run_id"].astype(str)) if curves else set()
    signals = logged_signals({k: v for k, v in (train_logs or {}).items() if str(k) in wanted})
    monitor = pd.read_csv(monitor_csv) if monitor_csv else None
    figure_emergence(curves, rows if len(rows) else None, figure, signals=signals, monitor=monitor)
