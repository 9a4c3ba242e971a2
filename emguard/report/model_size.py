"""EM rate against model size across base models (``results/tables/em_model_size.md`` / ``.csv``), as the
"Overtrained, Not Misaligned" study correlates model size with EM susceptibility.

Per configuration (dataset, method, setting; the setting carries the learning rate with several rates), each
model is one point: its size in billions of parameters and its general misaligned rate, the mean over its judged
seeds at each run's last checkpoint (``rate_mean`` of :func:`emguard.report.consistency_table`). The statistic is
Pearson's

    r = sum((x - mean x)(y - mean y)) / sqrt(sum((x - mean x)^2) sum((y - mean y)^2)),

computed twice: on the size itself and on log10 of it (our copy of the study does not say which scale its r
uses, and sizes spanning orders of magnitude make the raw-size r rest on the largest model). The interval is
Fisher's: z = atanh(r), z +- q / sqrt(n - 3) with q the standard normal quantile at (1 + confidence) / 2,
back-transformed with tanh; it assumes the points are a sample from a bivariate normal and needs n >= 4. With 3
models r is given without an interval; with fewer than 3, or when every model has the same size or the same
rate, r is undefined and the table says why.

A model's size (:func:`model_sizes`): ``params_b`` from the config, else the parameters counted from the
safetensors headers of a local model folder (``source.path``; no weights are read), else the size in its hub id
or name (``Qwen/Qwen2.5-7B-Instruct`` -> 7, :func:`emguard.cluster.params_billions`), else unknown (the model
is left out of every r, and the table names it).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from emguard.errors import InputError
from emguard.io import check_columns
from emguard.report._common import _is_null

#: the per-model size frame of :func:`model_sizes`
MODEL_SIZE_COLUMNS = ("model", "params_b", "size_source")
#: the correlation frame of :func:`size_em_table`, one row per (configuration, scale)
SIZE_EM_COLUMNS = ("dataset", "row", "method", "setting", "lr", "scale", "n_models", "models", "r", "r_lo", "r_hi",
                   "confidence", "interval", "note")
#: the two size scales r is computed on
SCALES = ("params_b", "log10_params_b")
#: fewest models for which r is reported, and for which the Fisher interval exists
MIN_MODELS_R, MIN_MODELS_INTERVAL = 3, 4
#: the interval method named in the frame
FISHER = "fisher_z"

_SCALE_LABELS = {"params_b": "parameters (B)", "log10_params_b": "log10 parameters"}


def safetensors_parameters(folder: str | Path) -> int | None:
    """Parameters of a local model folder, counted from the headers of its ``*.safetensors`` files (the tensor
    shapes; no weights are read). None when the folder holds no safetensors file."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, struct.error, ValueError) as exc:
            raise InputError(f"{f}: not a safetensors file ({exc})") from exc
        total += sum(int(np.prod(t["shape"], dtype=np.int64)) for k, t in header.items() if k != "__metadata__")
    return total


def model_sizes(models: Sequence[Mapping]) -> pd.DataFrame:
    """Each model's size in billions and where it came from (:data:`MODEL_SIZE_COLUMNS`; ``size_source``
    ``config``, ``safetensors``, ``name`` or ``unknown``).

    ``models``: ``{model, params_b, hub, path}`` per model (the config's ``params_b``, ``source.hub`` and
    ``source.path``; absent keys are None)."""
    from emguard.cluster import params_billions

    rows = []
    for m in models:
        if not _is_null(m.get("params_b")):
            size, source = float(m["params_b"]), "config"
        else:
            size, source = math.nan, "unknown"
            path = m.get("path")
            counted = safetensors_parameters(path) if path and Path(path).is_dir() else None
            if counted:
                size, source = counted / 1e9, "safetensors"
            else:
                named = params_billions(m.get("hub") or m["model"], default=math.nan)
                if not math.isnan(named):
                    size, source = named, "name"
        rows.append({"model": str(m["model"]), "params_b": size, "size_source": source})
    return pd.DataFrame(rows, columns=list(MODEL_SIZE_COLUMNS))


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r of paired values; NaN with fewer than 2 pairs or when either side has no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"pearson_r: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx <= 0 or syy <= 0:
        return math.nan
    return float(np.clip((dx @ dy) / math.sqrt(sxx * syy), -1.0, 1.0))


def fisher_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Fisher's interval for a correlation: tanh(atanh(r) -+ q / sqrt(n - 3)), q = the standard normal quantile at
    (1 + confidence) / 2. (NaN, NaN) for n < 4 or r NaN; (r, r) for |r| = 1 (every point on a line)."""
    if math.isnan(r) or n < MIN_MODELS_INTERVAL:
        return math.nan, math.nan
    if abs(r) >= 1.0:
        return r, r
    half = NormalDist().inv_cdf((1.0 + confidence) / 2.0) / math.sqrt(n - 3)
    z = math.atanh(r)
    return math.tanh(z - half), math.tanh(z + half)


def _definition(confidence: float) -> str:
    return (f"One point per base model: its size and its general misaligned rate (mean over its judged seeds at "
            f"each run's last checkpoint: the consistency table's mean). Pearson's r across the models of each "
            f"configuration, on the parameter count and on its log10 (our copy of the study does not say which scale "
            f"its r uses), with a {100 * confidence:g}% Fisher interval: tanh(atanh(r) ± q / sqrt(n - 3)), which "
            f"assumes bivariate normal points and needs at least {MIN_MODELS_INTERVAL} models. With "
            f"{MIN_MODELS_R} models r is given without an interval; with fewer, r is undefined.")


def _fmt_r(v) -> str:
    return "–" if _is_null(v) or (isinstance(v, float) and math.isnan(v)) else f"{float(v):+.2f}"


def size_em_table(consistency: pd.DataFrame, sizes: pd.DataFrame, *,
                  confidence: float = 0.95) -> tuple[str, pd.DataFrame]:
    """The correlation between model size and EM rate across models, per configuration and size scale.

    ``consistency``: :func:`emguard.report.consistency_table`'s frame (``model``, ``dataset``, ``row``, ``method``,
    ``setting``, ``lr``, ``consistent``, ``rate_mean``); rows without a judged rate (not judged, no seed judged)
    give no point. ``sizes``: :func:`model_sizes`. Returns Markdown and a frame with :data:`SIZE_EM_COLUMNS`
    (``models``: the models with a point, comma-separated; ``note``: why r or its interval is missing).
    """
    check_columns(consistency, ("model", "dataset", "row", "method", "setting", "lr", "rate_mean"), "consistency table")
    check_columns(sizes, MODEL_SIZE_COLUMNS, "model sizes")
    size_of = {str(m): float(b) for m, b in zip(sizes["model"], sizes["params_b"])}
    unknown = [m for m, b in size_of.items() if math.isnan(b)]
    lines = ["## EM rate and model size", "", _definition(confidence), "",
             "| Model | Parameters (B) | Size from |", "|---|---|---|"]
    lines += [f"| {r.model} | {'unknown' if math.isnan(r.params_b) else f'{r.params_b:.3g}'} | {r.size_source} |"
              for r in sizes.itertuples(index=False)]
    lines.append("")
    if unknown:
        lines += [f"Size unknown, so left out of every r: {', '.join(unknown)} (set `params_b` in the model's "
                  f"config entry).", ""]
    n_models = len(size_of)
    if n_models < MIN_MODELS_R:
        lines += [f"**Undefined**: the config has {n_models} base model{'s' if n_models != 1 else ''}; a correlation "
                  f"across models needs at least {MIN_MODELS_R} (list them under `models`).", ""]

    rated = consistency[pd.to_numeric(consistency["rate_mean"], errors="coerce").notna()].copy()
    rated["rate_mean"] = rated["rate_mean"].astype(float)
    records = []
    for (dataset, method, setting), part in rated.groupby(["dataset", "method", "setting"], sort=False):
        points = part[part["model"].astype(str).map(lambda m: not math.isnan(size_of.get(m, math.nan)))]
        x = np.array([size_of[str(m)] for m in points["model"]], dtype=float)
        y = points["rate_mean"].to_numpy(dtype=float)
        n = len(points)
        for scale in SCALES:
            xs = np.log10(x) if scale == "log10_params_b" else x
            note = ""
            if n < MIN_MODELS_R:
                r = math.nan
                note = f"undefined: {n} model{'s' if n != 1 else ''} with a judged rate and a known size (needs {MIN_MODELS_R})"
            else:
                r = pearson_r(xs, y)
                if math.isnan(r):
                    note = "undefined: " + ("every model has the same size" if np.ptp(xs) == 0
                                            else "every model has the same rate")
                elif n < MIN_MODELS_INTERVAL:
                    note = f"no interval: the Fisher interval needs {MIN_MODELS_INTERVAL} models"
            lo, hi = fisher_interval(r, n, confidence)
            first = part.iloc[0]
            records.append({"dataset": dataset, "row": first["row"], "method": method, "setting": setting,
                            "lr": first["lr"], "scale": scale, "n_models": n,
                            "models": ",".join(points["model"].astype(str)), "r": r, "r_lo": lo, "r_hi": hi,
                            "confidence": confidence, "interval": FISHER, "note": note})
    table = pd.DataFrame(records, columns=list(SIZE_EM_COLUMNS))
    if table.empty:
        lines += ["No configuration has a judged misaligned rate (eval.judged off for the trained runs, or nothing "
                  "judged yet), so there is no point to correlate.", ""]
        return "\n".join(lines), table
    header = ["Dataset", "Run", "Learning rate", "Size scale", "Models", "r", f"{100 * confidence:g}% interval", "Note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.itertuples(index=False):
        lr = "–" if _is_null(r.lr) or (isinstance(r.lr, float) and math.isnan(r.lr)) else f"{float(r.lr):g}"
        interval = "–" if math.isnan(r.r_lo) else f"[{_fmt_r(r.r_lo)}, {_fmt_r(r.r_hi)}]"
        lines.append("| " + " | ".join([str(r.dataset), str(r.row), lr, _SCALE_LABELS[r.scale], str(r.n_models),
                                        _fmt_r(r.r), interval, r.note or ""]) + " |")
    return "\n".join(lines + [""]), table
