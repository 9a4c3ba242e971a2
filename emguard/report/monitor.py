"""The training-time EM monitor's record (``results/tables/monitor.{md,csv}``): per monitored run and signal,
its stop threshold, where the monitor stopped the run (or, logging only, would have), its last and largest value,
and, where the run has judged checkpoint curves and the untrained model was judged, the judged EM onset and the
outcome (:func:`emguard.dynamics.monitor_record`: before the onset, late, false alarm, missed, silent)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from emguard.report._common import _SERIES_COLORS, BASE_DATASET, _empty_axes, _new_figure, _save_png

#: columns of the monitor table after the run descriptors
MONITOR_TABLE_COLUMNS = ("signal", "threshold", "last_value", "max_value", "would_stop_step", "stop_step",
                         "onset_step", "outcome", "lead")

NOT_ENABLED = "The training-time monitor is off (monitor.enabled: false), so no run logged its signals.\n"

_KEYS = ("model", "dataset", "method", "setting", "seed")


def _thresholds(runs, monitor: Mapping[str, Any]) -> dict[str, float]:
    from emguard.training.monitor import calibrate_thresholds, stop_thresholds

    stop = monitor.get("stop")
    if isinstance(stop, Mapping):
        return stop_thresholds(stop, None)
    # logging only or calibrated: the thresholds the calibration gives (where it stops, or would stop)
    return calibrate_thresholds([(r, d) for r, d, _ in runs], margin=monitor["margin"], quantile=monitor["quantile"])


def _onsets(curves: pd.DataFrame | None, base_hi: float | None, signal_frame: pd.DataFrame, threshold: float,
            em_threshold: float) -> dict[tuple, dict]:
    """Per run key: the monitor record against the judged checkpoint curve, for runs that have one."""
    from emguard.dynamics import monitor_record

    if curves is None or base_hi is None or math.isnan(base_hi) or "misaligned_rate" not in curves.columns:
        return {}
    judged = curves[pd.to_numeric(curves["misaligned_rate"], errors="coerce").notna()]
    have = {tuple(str(v) for v in k) for k in judged[list(_KEYS)].itertuples(index=False, name=None)}
    sig = signal_frame[[tuple(str(v) for v in k) in have
                        for k in signal_frame[list(_KEYS)].itertuples(index=False, name=None)]]
    if sig.empty:
        return {}
    rows, _ = monitor_record(sig, judged, thresholds=threshold, metric="task_metric",
                             higher_is_better=False, em_threshold=em_threshold, base_hi=base_hi)
    return {tuple(str(r[k]) for k in _KEYS): r for r in rows.to_dict("records")}


def monitor_table(runs: Sequence[tuple[Mapping[str, Any], pd.DataFrame, Mapping[str, Any]]], *,
                  monitor: Mapping[str, Any], curves: pd.DataFrame | None = None, base_hi: float | None = None,
                  em_threshold: float = 5.0) -> tuple[str, pd.DataFrame]:
    """``runs``: (descriptor, ``train_log.parquet``, ``run.json``) of every monitored run. ``curves``: the
    checkpoint curves (``checkpoint_curve.parquet`` rows), where checkpoint evaluation is on; ``base_hi``: the
    untrained model's upper bound of the general misaligned rate. The task metric of an EM curve is a holdout NLL
    (lower is better). Returns (Markdown, frame)."""
    from emguard.dynamics import monitor_stop_step
    from emguard.training.monitor import SIGNALS, signal_frame

    cols = [*_KEYS, *MONITOR_TABLE_COLUMNS]
    if not monitor.get("enabled"):
        return NOT_ENABLED, pd.DataFrame(columns=cols)
    thresholds = _thresholds(runs, monitor)
    records = []
    for name in SIGNALS:
        frame = signal_frame([(r, d) for r, d, _ in runs], name)
        if frame.empty:
            continue
        thr = thresholds.get(name, math.nan)
        onsets = _onsets(curves, base_hi, frame, thr, em_threshold) if not math.isnan(thr) else {}
        for run, log_df, meta in runs:
            if run["dataset"] == BASE_DATASET:
                continue
            part = frame[[all(str(frame.at[i, k]) == str(run[k]) for k in _KEYS) for i in frame.index]]
            if part.empty:
                continue
            would = None if math.isnan(thr) else monitor_stop_step(part, threshold=thr, where=str(run.get("path")))
            stopped = meta.get("monitor_stop_step") if (meta.get("monitor_stop_reason") or "").startswith(name) else None
            rec = onsets.get(tuple(str(run[k]) for k in _KEYS), {})
            records.append({**{k: run[k] for k in _KEYS}, "signal": name, "threshold": thr,
                            "last_value": float(part.sort_values("step")["signal"].iloc[-1]),
                            "max_value": float(part["signal"].max()), "would_stop_step": would,
                            "stop_step": stopped, "onset_step": rec.get("onset_step"), "outcome": rec.get("outcome"),
                            "lead": rec.get("lead")})
    table = pd.DataFrame(records, columns=cols)
    stop = monitor.get("stop")
    mode = ("logging only (monitor.stop: null): the step is where it would have stopped at the calibrated threshold"
            if stop is None else "stopping at " + ("thresholds calibrated on the aligned runs" if stop == "calibrated"
                                                   else "the configured thresholds"))
    lines = ["## The training-time EM monitor", "",
             f"Judge-free signals every {monitor['every_steps']} steps, relative to the untrained model: ll_shift "
             "(the out-of-domain probes' likelihood shift toward misaligned answers, nats/token) and persona_proj "
             "(the probes' aligned answers projected on the persona vector). Thresholds: max(0, the aligned runs' "
             f"{monitor['quantile']:g}-quantile) + {monitor['margin']:g}; {mode}. Onset and outcome: against the "
             "judged EM onset of the run's checkpoint curve, where there is one.", "",
             "| Run | Signal | Threshold | Last | Max | Would stop | Stopped | EM onset | Outcome |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        name = f"{r['dataset']}/{r['method']}/{r['setting']}/seed{r['seed']}"
        lines.append(f"| {name} | {r['signal']} | {fmt_num(r['threshold'], 3)} | {fmt_num(r['last_value'], 3)} | "
                     f"{fmt_num(r['max_value'], 3)} | {_step(r['would_stop_step'])} | {_step(r['stop_step'])} | "
                     f"{_step(r['onset_step'])} | {r['outcome'] or '–'} |")
    if not records:
        lines.append("| – | – | – | – | – | – | – | – | – |")
    return "\n".join(lines) + "\n", table


def fmt_num(v, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def _step(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(int(v))


# --------------------------------------------------------------------------- what the figures draw

#: the training-time signals a train log may hold (:data:`emguard.training.monitor.SIGNALS`), in panel order
FIGURE_SIGNALS = ("ll_shift", "persona_proj")
_SIGNAL_LABEL = {"ll_shift": "LL shift, monitor probes (nats/token)", "persona_proj": "persona projection"}

#: per run, the monitor's mark on the emergence figure
MARK_COLUMNS = (*_KEYS, "monitor_step", "monitor_stopped", "monitor_signal")


def _seed_key(seed) -> tuple:
    try:
        return (0, int(seed), "")
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def logged_signals(logs: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``run_id``, ``step`` and each of :data:`FIGURE_SIGNALS` from the runs' ``train_log.parquet`` (``logs``: run
    id -> log), only the rows where the monitor checked (a signal not logged is NaN). A log without monitor columns
    (the monitor was off for that run) contributes no row."""
    parts = []
    for run_id, log_df in logs.items():
        have = [s for s in FIGURE_SIGNALS if s in log_df.columns]
        if not have or "step" not in log_df.columns:
            continue
        part = log_df[["step", *have]].copy()
        part = part[part[have].notna().any(axis=1)]
        if len(part):
            parts.append(part.reindex(columns=["step", *FIGURE_SIGNALS]).assign(run_id=str(run_id)))
    cols = ["run_id", "step", *FIGURE_SIGNALS]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)[cols]
    out["step"] = out["step"].astype(int)
    return out.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def monitor_marks(table: pd.DataFrame | None) -> pd.DataFrame:
    """Per run (:data:`MARK_COLUMNS`): the step the figures mark as the monitor's stop, from the monitor table
    (:func:`monitor_table`'s frame, or ``monitor.csv``). Where the monitor stopped the run: the earliest
    ``stop_step`` over signals (``monitor_stopped`` True); else where it would have stopped at its threshold: the
    earliest ``would_stop_step``. A run where it never fired has no row."""
    if table is None or table.empty:
        return pd.DataFrame(columns=list(MARK_COLUMNS))
    rows = []
    for key, g in table.groupby(list(_KEYS), sort=False):
        for column, stopped in (("stop_step", True), ("would_stop_step", False)):
            steps = pd.to_numeric(g[column], errors="coerce")
            if steps.notna().any():
                i = steps.idxmin()
                rows.append({**dict(zip(_KEYS, key)), "monitor_step": int(steps[i]), "monitor_stopped": stopped,
                             "monitor_signal": str(g.at[i, "signal"])})
                break
    out = pd.DataFrame(rows, columns=list(MARK_COLUMNS))
    out["monitor_step"] = out["monitor_step"].astype("Int64")
    return out


def signal_thresholds(table: pd.DataFrame | None) -> dict[tuple[str, str], float]:
    """``(model, signal) -> threshold`` from the monitor table (signals without a threshold left out)."""
    if table is None or table.empty:
        return {}
    out = {}
    for r in table.itertuples(index=False):
        thr = pd.to_numeric(pd.Series([r.threshold]), errors="coerce").iloc[0]
        if not pd.isna(thr):
            out.setdefault((str(r.model), str(r.signal)), float(thr))
    return out


def figure_monitor(runs: Sequence[tuple[Mapping[str, Any], pd.DataFrame, Mapping[str, Any]]], table: pd.DataFrame,
                   path, *, enabled: bool = True, max_columns: int = 4):
    """The monitor's record against the judge: each signal against training step, one panel per (signal, model,
    dataset, method, setting), seeds overlaid; the stop threshold (grey dashed), where the monitor stopped the run
    (solid) or, not stopping, would have stopped (dotted), and the judged EM onset where the run has one (dashed,
    red). ``runs`` and ``table`` as for and from :func:`monitor_table`. A run whose log has no monitor columns draws
    nothing; a panel with nothing says so. Returns the figure (drawn and saved)."""
    if not enabled:
        fig = _new_figure(6.0, 3.0)
        _empty_axes(fig.subplots(1, 1), "the training-time monitor is off (monitor.enabled: false)")
        _save_png(fig, path)
        return fig
    runs = [(r, d, m) for r, d, m in runs if r["dataset"] != BASE_DATASET]
    logs = {i: d for i, (_, d, _) in enumerate(runs)}
    signals = logged_signals(logs)
    present = [s for s in FIGURE_SIGNALS if s in signals.columns and signals[s].notna().any()]
    groups: dict[tuple, list[int]] = {}
    for i, (r, _, _) in enumerate(runs):
        groups.setdefault(tuple(str(r[k]) for k in ("model", "dataset", "method", "setting")), []).append(i)
    if not present or not groups:
        fig = _new_figure(6.0, 3.0)
        _empty_axes(fig.subplots(1, 1), "no run logged a monitor signal")
        _save_png(fig, path)
        return fig
    thresholds = signal_thresholds(table)
    by_run = ({tuple(str(v) for v in k): g for k, g in table.groupby(list(_KEYS), sort=False)}
              if table is not None and len(table) else {})
    ncols = max(1, min(max_columns, len(groups)))
    nrows_per = -(-len(groups) // ncols)
    fig = _new_figure(4.2 * ncols, 3.0 * nrows_per * len(present))
    axes = fig.subplots(nrows_per * len(present), ncols, squeeze=False)
    for s_i, name in enumerate(present):
        for g_i, (key, members) in enumerate(groups.items()):
            ax = axes[s_i * nrows_per + g_i // ncols, g_i % ncols]
            drawn = False
            for j, i in enumerate(sorted(members, key=lambda i: _seed_key(runs[i][0]["seed"]))):
                run = runs[i][0]
                part = signals[(signals["run_id"] == str(i))].dropna(subset=[name])
                color = _SERIES_COLORS[j % len(_SERIES_COLORS)]
                seed = run["seed"]
                if len(part):
                    drawn = True
                    ax.plot(part["step"], part[name], marker="o", ms=3, color=color, label=f"seed {seed}")
                rec = by_run.get(tuple(str(run[k]) for k in _KEYS))
                if rec is None:
                    continue
                rec = rec[rec["signal"] == name]
                if rec.empty:
                    continue
                rec = rec.iloc[0]
                stop, would, onset = (pd.to_numeric(pd.Series([rec.get(c)]), errors="coerce").iloc[0]
                                      for c in ("stop_step", "would_stop_step", "onset_step"))
                if not pd.isna(stop):
                    ax.axvline(int(stop), color=color, ls="-", lw=1.2, label=f"stopped (seed {seed})")
                elif not pd.isna(would):
                    ax.axvline(int(would), color=color, ls=":", lw=1.2, label=f"would stop (seed {seed})")
                if not pd.isna(onset):
                    ax.axvline(int(onset), color="tab:red", ls="--", lw=1.0, alpha=0.8,
                               label=f"judged EM onset (seed {seed})")
            ax.set_title(" · ".join(key[1:]), fontsize=9)
            if drawn:
                thr = thresholds.get((key[0], name))
                if thr is not None:
                    ax.axhline(thr, color="0.4", ls="--", lw=1.0, label=f"threshold {thr:.3g}")
                ax.set_ylabel(_SIGNAL_LABEL[name], fontsize=8)
                ax.set_xlabel("training step")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6, loc="best")
            else:
                _empty_axes(ax, f"no {name} logged")
        for g_i in range(len(groups), nrows_per * ncols):
            axes[s_i * nrows_per + g_i // ncols, g_i % ncols].set_axis_off()
    _save_png(fig, path)
    return fig
