"""The training-time EM monitor's record (``results/tables/monitor.{md,csv}``): per monitored run and signal,
its stop threshold, where the monitor stopped the run (or, logging only, would have), its last and largest value,
and, where the run has judged checkpoint curves and the untrained model was judged, the judged EM onset and the
outcome (:func:`emguard.dynamics.monitor_record`: before the onset, late, false alarm, missed, silent)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from emguard.report._common import BASE_DATASET

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
