"""The judge-free EM measure in the report: likelihood-shift columns of the EM table, the per-probe-set
shift table and the in-domain vs out-of-domain shift figure (the likelihood analogue of the paper's
Figure 1(b)).

Input is the *shift summary* that :mod:`emguard.likelihood` writes: one row per (model, dataset,
method, setting, probe_set), seeds pooled, with the columns :data:`SHIFT_COLUMNS`:

* ``dataset`` is the training dataset (``"base"`` for the untrained model, whose ``method`` is
  ``untrained`` and whose shift is 0 with interval [0, 0] by definition);
* ``probe_set`` is an EM domain, ``general`` or ``ood``; ``scope`` is ``indomain`` (the run's own
  dataset), ``ood_set`` (one out-of-domain set) or ``ood`` (all of the run's out-of-domain sets
  together; its probe_set is ``ood``);
* per probe triple, NLL is the answer-only mean token NLL (nats per answer token); ``margin`` = mean
  over triples of NLL(aligned answer) - NLL(misaligned answer); ``shift`` = margin(run) -
  margin(untrained model), positive when the misaligned answers became relatively more likely;
  ``shift_lo/_hi`` its bootstrap interval over triples;
* ``excess`` = the run's shift minus the Aligned run's on the same dataset and seeds, for
  out-of-domain scopes (NaN for the Aligned and untrained rows or without an Aligned run).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from emguard.errors import InputError
from emguard.io import check_columns
from emguard.report._common import (BASE_DATASET, DEFAULT_METHOD_ORDER, DEFAULT_REFERENCE_METHODS, METHOD_LABELS,
                                    REFERENCE_ROWS, _REF_STYLE, _SERIES_COLORS, _empty_axes, _is_null,
                                    _method_rank, _new_figure, _point_text, _row_label, _save_png, _setting_key,
                                    _split_setting)

#: columns of the shift summary (:mod:`emguard.likelihood`)
SHIFT_COLUMNS = ("model", "dataset", "method", "setting", "n_seeds", "probe_set", "scope", "n_triples", "margin_base",
                 "margin", "shift", "shift_lo", "shift_hi", "excess", "excess_lo", "excess_hi", "vs_misaligned",
                 "vs_misaligned_lo", "vs_misaligned_hi", "confidence", "n_bootstrap")

#: the columns this module reads (the others are used where present)
SHIFT_REQUIRED = ("dataset", "method", "setting", "probe_set", "scope", "shift", "shift_lo", "shift_hi", "excess",
                  "excess_lo", "excess_hi")

#: ``scope`` values: the run's own dataset, one out-of-domain set, all of them together
SCOPES = ("indomain", "ood_set", "ood")

#: ``probe_set`` of the aggregate over a run's out-of-domain sets
OOD_PROBE_SET = "ood"
#: the general (non-domain) probe set
GENERAL_PROBE_SET = "general"

#: the EM table's likelihood columns: (CSV prefix, scope, value, header)
SHIFT_TABLE_COLUMNS = (
    ("indomain_shift", "indomain", "shift", "In-domain LL shift (↑)"),
    ("ood_shift", "ood", "shift", "OOD LL shift (↓)"),
    ("ood_excess", "ood", "excess", "OOD excess vs Aligned (↓)"),
)

#: the CSV columns :func:`add_shift_columns` adds to the EM table frame
SHIFT_CSV_COLUMNS = tuple(f"{p}{s}" for p, *_ in SHIFT_TABLE_COLUMNS for s in ("", "_lo", "_hi"))


def shift_legend(shifts: pd.DataFrame | None) -> str:
    """What the shift columns mean, with the interval's confidence and resample count when the summary has them."""
    conf = _first(shifts, "confidence")
    boot = _first(shifts, "n_bootstrap")
    interval = (f"{100 * conf:g}% " if conf is not None else "") + "bootstrap interval over probe triples"
    if boot is not None:
        interval += f" ({int(boot)} resamples)"
    return (
        "LL shift (judge-free, nats per answer token): for each probe triple (prompt, aligned answer, misaligned "
        "answer), NLL is the answer-only mean token negative log-likelihood; margin = mean over triples of "
        "NLL(aligned) - NLL(misaligned); shift = margin(run) - margin(untrained model), so a positive shift means "
        f"the misaligned answers became relatively more likely than under the untrained model. In brackets: the "
        f"{interval}, seeds pooled. In-domain: the held-out triples of the training dataset (the narrow task "
        "learned; the Untrained row is 0 by definition). OOD: all of the run's out-of-domain probe sets together "
        "(the other EM domains and the general set; the judge-free EM proxy). OOD excess vs Aligned: the OOD "
        "shift minus the Aligned run's on the same dataset and seeds, which removes the drift any fine-tuning "
        "on that dataset causes. In these columns **bold** means only that the interval excludes 0."
    )


def _first(df: pd.DataFrame | None, col: str):
    if df is None or col not in df.columns:
        return None
    vals = pd.to_numeric(df[col], errors="coerce").dropna()
    return float(vals.iloc[0]) if len(vals) else None


def prepare_shifts(shifts: pd.DataFrame, *, where: str = "likelihood-shift summary") -> pd.DataFrame:
    """Check the summary and add normalised string keys ``_model, _dataset, _method, _setting, _probe, _scope``.

    Raises :class:`InputError` (naming ``where`` and the row) for a missing column or an unknown scope.
    """
    check_columns(shifts, SHIFT_REQUIRED, where)
    df = shifts.reset_index(drop=True).copy()
    for col, key in (("model", "_model"), ("dataset", "_dataset"), ("method", "_method"), ("setting", "_setting"),
                     ("probe_set", "_probe"), ("scope", "_scope")):
        src = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        df[key] = [("" if _is_null(v) else str(v)) for v in src]
    bad = df[~df["_scope"].isin(SCOPES)]
    if len(bad):
        i = bad.index[0]
        raise InputError(f"{where}: row {i} has scope {bad.loc[i, '_scope']!r}; expected one of {', '.join(SCOPES)}")
    for col in ("shift", "shift_lo", "shift_hi", "excess", "excess_lo", "excess_hi"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _untrained_methods(reference_methods: Mapping[str, str] | None) -> set[str]:
    refs = DEFAULT_REFERENCE_METHODS if reference_methods is None else reference_methods
    return {m for m, role in refs.items() if role == "Untrained"}


def _is_untrained(df: pd.DataFrame, untrained: set[str]) -> np.ndarray:
    return (df["_dataset"] == BASE_DATASET).to_numpy() | df["_method"].isin(untrained).to_numpy()


def _lookup(df: pd.DataFrame, untrained: set[str]) -> dict[tuple, pd.Series]:
    """``{(model, dataset, method, setting, scope): row}`` for the in-domain and OOD-aggregate rows; the
    untrained model's rows are keyed ``(model, None, None, None, scope)`` (one base run per model)."""
    out: dict[tuple, pd.Series] = {}
    base = _is_untrained(df, untrained)
    for i, r in df.iterrows():
        if r["_scope"] == "ood_set":
            continue
        key = ((r["_model"], None, None, None, r["_scope"]) if base[i] else
               (r["_model"], r["_dataset"], r["_method"], r["_setting"], r["_scope"]))
        if key in out:
            raise InputError(f"likelihood-shift summary: more than one {r['_scope']!r} row for "
                             f"{', '.join(str(k) for k in key if k is not None)}")
        out[key] = r
    return out


def unjudged_rows(metrics: pd.DataFrame, shifts: pd.DataFrame, *,
                  reference_methods: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Placeholder metrics rows (judged cells NaN, evalset ``general``) for every trained run of the shift summary
    that ``metrics`` lacks (``eval.judged: baselines`` judges only the reference runs), one per seed of the
    summary's ``n_seeds``: with them the EM table lists every run, its judged cells empty ("–") and its
    likelihood-shift cells filled."""
    df = prepare_shifts(shifts)
    df = df[(df["_scope"] == "ood") & ~_is_untrained(df, _untrained_methods(reference_methods))]
    judged = set()
    for r in metrics.itertuples(index=False):
        judged.add(tuple("" if _is_null(getattr(r, c, None)) else str(getattr(r, c, None))
                         for c in ("model", "dataset", "method", "setting")))
    rows = []
    for _, r in df.iterrows():
        key = (r["_model"], r["_dataset"], r["_method"], r["_setting"])
        if key in judged:
            continue
        n = int(r["n_seeds"]) if "n_seeds" in r and not _is_null(r["n_seeds"]) else 1
        rows += [{"model": r.get("model"), "dataset": r["dataset"], "method": r["method"], "setting": r["setting"],
                  "seed": None, "evalset": "general"} for _ in range(max(1, n))]
    out = pd.DataFrame(rows, columns=["model", "dataset", "method", "setting", "seed", "evalset"])
    for col in EM_REQUIRED_RATES:
        out[col] = math.nan
    # what every judged row shares (the metric definition, the confidence level) the placeholders share too
    for col in metrics.columns.difference(out.columns):
        values = metrics[col].dropna().unique() if len(metrics) else ()
        if len(values) == 1:
            out[col] = values[0]
    return out


#: the judged columns a placeholder row of :func:`unjudged_rows` leaves empty
EM_REQUIRED_RATES = ("misaligned_rate", "misaligned_lo", "misaligned_hi", "incoherent_rate", "incoherent_lo",
                     "incoherent_hi")


def add_shift_columns(table: pd.DataFrame, shifts: pd.DataFrame, *,
                      reference_methods: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The EM table frame with :data:`SHIFT_CSV_COLUMNS` added (NaN where the summary has no row).

    A table row (``model, dataset, method, setting``) takes the summary row with the same keys and
    scope ``indomain`` (``indomain_shift*``) or ``ood`` (``ood_shift*``, ``ood_excess*``). The
    Untrained row takes the untrained model's ``ood`` row, and its in-domain shift is 0 with interval
    [0, 0] by definition (the shift is measured relative to it).
    """
    df = prepare_shifts(shifts)
    untrained = _untrained_methods(reference_methods)
    rows = _lookup(df, untrained)
    out = table.copy()
    values: dict[str, list[float]] = {c: [] for c in SHIFT_CSV_COLUMNS}
    for _, t in table.iterrows():
        model = "" if _is_null(t["model"]) else str(t["model"])
        is_base = t["role"] == "Untrained"
        for prefix, scope, value, _ in SHIFT_TABLE_COLUMNS:
            if is_base and scope == "indomain":
                trio = (0.0, 0.0, 0.0)
            else:
                key = ((model, None, None, None, scope) if is_base else
                       (model, str(t["dataset"]), "" if _is_null(t["method"]) else str(t["method"]),
                        "" if _is_null(t["setting"]) else str(t["setting"]), scope))
                r = rows.get(key)
                trio = ((math.nan,) * 3 if r is None else
                        (float(r[value]), float(r[f"{value}_lo"]), float(r[f"{value}_hi"])))
            for s, v in zip(("", "_lo", "_hi"), trio):
                values[f"{prefix}{s}"].append(v)
    for c, v in values.items():
        out[c] = pd.Series(v, index=table.index, dtype=float)
    return out


def excludes_zero(lo: float, hi: float) -> bool:
    """Whether the interval [lo, hi] lies strictly on one side of 0 (NaN bounds: no)."""
    return not (math.isnan(lo) or math.isnan(hi)) and (lo > 0 or hi < 0)


def _signed(v: float) -> str:
    return f"{round(v, 2) + 0.0:+.2f}"  # + 0.0 turns a rounded -0.0 into 0.0: no "-0.00"


def fmt_shift(value: float, lo: float, hi: float) -> str:
    """``+0.12 [+0.05, +0.19]``; the value in bold when the interval excludes 0; ``–`` when missing; a
    definitional zero (value and both bounds exactly 0) as ``0.00``."""
    if _is_null(value) or math.isnan(value):
        return "–"
    if value == 0 and lo == 0 and hi == 0:
        return "0.00"
    text = _signed(value)
    if excludes_zero(lo, hi):
        text = f"**{text}**"
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{_signed(lo)}, {_signed(hi)}]"
    return text


def shift_cells(r: pd.Series) -> list[str]:
    """The three likelihood cells of one EM table row (Markdown)."""
    return [fmt_shift(r[p], r[f"{p}_lo"], r[f"{p}_hi"]) for p, *_ in SHIFT_TABLE_COLUMNS]


# --------------------------------------------------------------------------- rows of the summary, ordered

def run_groups(df: pd.DataFrame, *, method_order: Sequence[str] | None = None,
               dataset_order: Sequence[str] | None = None,
               reference_methods: Mapping[str, str] | None = None) -> list[dict]:
    """The summary's run groups in table order, one block per (model, training dataset).

    Each block: ``{"model", "dataset", "rows": [{"label", "role", "method", "setting", "rows": DataFrame}]}``
    with rows ordered Untrained (the model's untrained rows, repeated in every block), Aligned,
    Misaligned, then defenses by ``method_order`` (default :data:`DEFAULT_METHOD_ORDER`) and setting.
    A model with untrained rows only gets one block with dataset ``base``.
    """
    refs = dict(DEFAULT_REFERENCE_METHODS if reference_methods is None else reference_methods)
    untrained = {m for m, role in refs.items() if role == "Untrained"}
    rank = _method_rank(DEFAULT_METHOD_ORDER if method_order is None else method_order)
    ds_order = {d: i for i, d in enumerate(dataset_order or ())}
    base_mask = _is_untrained(df, untrained)

    def row_order(g):
        if g["role"] in REFERENCE_ROWS:
            return (0, REFERENCE_ROWS.index(g["role"]), (), g["label"])
        return (1, rank(g["method"]), _setting_key(g["setting"]), g["label"])

    blocks = []
    for model in list(dict.fromkeys(df["_model"])):
        m = (df["_model"] == model).to_numpy()
        base, trained = df[m & base_mask], df[m & ~base_mask]
        datasets = sorted(set(trained["_dataset"]), key=lambda d: (0, ds_order[d], "") if d in ds_order else (1, 0, d))
        for dataset in datasets or [BASE_DATASET]:
            groups = []
            if len(base):
                groups.append({"label": "Untrained", "role": "Untrained", "method": base["_method"].iloc[0],
                               "setting": "", "rows": base})
            d = trained[trained["_dataset"] == dataset]
            for (method, setting), g in d.groupby(["_method", "_setting"], sort=False):
                role = refs.get(method, "method")
                groups.append({"label": _row_label(role, method, setting), "role": role, "method": method,
                               "setting": setting, "rows": g})
            blocks.append({"model": model, "dataset": dataset, "rows": sorted(groups, key=row_order)})
    return blocks


def _probe_order(probes: set[str], dataset_order: Sequence[str] | None) -> list[str]:
    ds_order = {d: i for i, d in enumerate(dataset_order or ())}
    domains = sorted(probes - {GENERAL_PROBE_SET, OOD_PROBE_SET},
                     key=lambda d: (0, ds_order[d], "") if d in ds_order else (1, 0, d))
    return domains + [p for p in (GENERAL_PROBE_SET, OOD_PROBE_SET) if p in probes]


# --------------------------------------------------------------------------- the shift table

def shift_table(shifts: pd.DataFrame, *, method_order: Sequence[str] | None = None,
                dataset_order: Sequence[str] | None = None,
                reference_methods: Mapping[str, str] | None = None) -> tuple[str, pd.DataFrame]:
    """Every probe set's shift per run group: Markdown text and a CSV-ready DataFrame.

    One block per (model, training dataset), rows ordered as :func:`run_groups` (like the EM table);
    one column per probe set: the EM domains (``dataset_order``, then alphabetically), ``general``,
    then ``ood`` (all out-of-domain sets together), and a last column with the OOD excess vs Aligned.
    In a block, the training dataset's own probe set is marked ``(in-domain)``. Cells: shift with
    interval; **bold** when the interval excludes 0 (:func:`fmt_shift`).

    The DataFrame has ``model, dataset, row, role, method, setting, n_seeds`` and per probe set ``p``:
    ``<p>_shift``, ``<p>_shift_lo``, ``<p>_shift_hi``, ``<p>_excess``, ``<p>_excess_lo``,
    ``<p>_excess_hi``, ``<p>_n_triples`` (NaN where the group has no row for ``p``).
    """
    df = prepare_shifts(shifts)
    probes = _probe_order(set(df["_probe"]), dataset_order)
    values = ("shift", "shift_lo", "shift_hi", "excess", "excess_lo", "excess_hi", "n_triples")
    records = []
    for block in run_groups(df, method_order=method_order, dataset_order=dataset_order,
                            reference_methods=reference_methods):
        for g in block["rows"]:
            rows = g["rows"]
            n_seeds = pd.to_numeric(rows["n_seeds"], errors="coerce").max() if "n_seeds" in rows.columns else math.nan
            rec = {"model": block["model"] or None, "dataset": block["dataset"], "row": g["label"], "role": g["role"],
                   "method": g["method"] or None, "setting": g["setting"] or None, "n_seeds": n_seeds}
            for p in probes:
                hit = rows[rows["_probe"] == p]
                if len(hit) > 1:
                    raise InputError(f"likelihood-shift summary: {len(hit)} rows for probe set {p!r} of "
                                     f"{block['dataset']} / {g['label']}")
                for v in values:
                    rec[f"{p}_{v}"] = (float(pd.to_numeric(hit[v].iloc[0], errors="coerce"))
                                       if len(hit) and v in hit.columns else math.nan)
            records.append(rec)
    cols = ["model", "dataset", "row", "role", "method", "setting", "n_seeds"]
    cols += [f"{p}_{v}" for p in probes for v in values]
    table = pd.DataFrame(records, columns=cols)
    return _shift_markdown(table, probes, shifts), table


def _shift_markdown(table: pd.DataFrame, probes: Sequence[str], shifts: pd.DataFrame) -> str:
    lines = ["## Likelihood shift per probe set", "", shift_legend(shifts), ""]
    if table.empty:
        return "\n".join(lines + ["No likelihood-shift summary rows.", ""])
    models = list(dict.fromkeys(table["model"]))
    for (model, dataset), block in table.groupby(["model", "dataset"], sort=False, dropna=False):
        names = {OOD_PROBE_SET: "OOD (all)", GENERAL_PROBE_SET: "general"}
        header = ["Adapter"] + [f"{p} (in-domain)" if p == dataset else names.get(p, p) for p in probes]
        header.append("OOD excess vs Aligned")
        title = f"{model} · {dataset}" if len(models) > 1 else str(dataset)
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in block.iterrows():
            cells = [str(r["row"])] + [fmt_shift(r[f"{p}_shift"], r[f"{p}_shift_lo"], r[f"{p}_shift_hi"])
                                       for p in probes]
            o = OOD_PROBE_SET
            cells.append(fmt_shift(r[f"{o}_excess"], r[f"{o}_excess_lo"], r[f"{o}_excess_hi"])
                         if o in probes else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the figure

def figure_likelihood_shift(shifts: pd.DataFrame, path: str | os.PathLike, *,
                            method_order: Sequence[str] | None = None, dataset_order: Sequence[str] | None = None,
                            reference_methods: Mapping[str, str] | None = None) -> None:
    """In-domain shift (x) vs OOD shift (y), the likelihood analogue of the paper's Figure 1(b).

    One panel per (model, training dataset); one point per (method, setting) with x and y error bars
    from the intervals (scope ``indomain`` and ``ood``); Aligned / Misaligned in the reference styles of
    the EM figure, the untrained model at (0, 0) (its in-domain shift is 0 by definition); defenses
    coloured per method and labelled with their setting's value. Dashed lines mark zero. Empty input
    still writes a PNG saying so.
    """
    df = prepare_shifts(shifts)
    blocks = [b for b in run_groups(df, method_order=method_order, dataset_order=dataset_order,
                                    reference_methods=reference_methods) if b["dataset"] != BASE_DATASET]
    n = max(len(blocks), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(5.2 * ncols, 4.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(blocks):]:
        ax.set_axis_off()
    if not blocks:
        axes[0].set_axis_on()
        _empty_axes(axes[0], "no likelihood-shift results")
    models = {b["model"] for b in blocks}
    for ax, block in zip(axes, blocks):
        _shift_panel(ax, block)
        ax.set_title(f"trained on {block['dataset']}" + (f" · {block['model']}" if len(models) > 1 else ""),
                     fontsize=10)
    _save_png(fig, path)


def _point(rows: pd.DataFrame, scope: str) -> tuple[float, float, float]:
    hit = rows[rows["_scope"] == scope]
    if hit.empty:
        return (math.nan,) * 3
    r = hit.iloc[0]
    return float(r["shift"]), float(r["shift_lo"]), float(r["shift_hi"])


def _shift_panel(ax, block: dict) -> None:
    colors: dict[str, str] = {}
    palette = iter(_SERIES_COLORS * 4)
    drawn = 0
    for g in block["rows"]:
        if g["role"] == "Untrained":
            x, xlo, xhi = 0.0, 0.0, 0.0
        else:
            x, xlo, xhi = _point(g["rows"], "indomain")
        y, ylo, yhi = _point(g["rows"], "ood")
        if math.isnan(x) or math.isnan(y):
            continue
        if g["role"] in _REF_STYLE:
            marker, color = _REF_STYLE[g["role"]]
            label, text = g["role"], g["role"]
        else:
            color = colors.setdefault(g["method"], next(palette))
            marker, label = "o", METHOD_LABELS.get(g["method"], g["method"])
            prefix, value = _split_setting(g["setting"])
            text = _point_text(prefix, value, g["setting"])  # "5%" for frac0.05, as in the EM figure
        xerr = [[max(x - xlo, 0.0)], [max(xhi - x, 0.0)]] if not (math.isnan(xlo) or math.isnan(xhi)) else None
        yerr = [[max(y - ylo, 0.0)], [max(yhi - y, 0.0)]] if not (math.isnan(ylo) or math.isnan(yhi)) else None
        _, labels = ax.get_legend_handles_labels()  # one legend entry per method, not per setting
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt=marker, color=color, ms=6 if marker != "o" else 5,
                    elinewidth=0.8, capsize=2, zorder=3, label=label if label not in labels else None)
        if text:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        drawn += 1
    if not drawn:
        _empty_axes(ax, "no in-domain and OOD shift for this dataset")
        return
    ax.axhline(0, color="0.5", lw=0.8, ls="--", zorder=1)
    ax.axvline(0, color="0.5", lw=0.8, ls="--", zorder=1)
    ax.set_xlabel("In-domain shift (nats/token; ↑ task learned)")
    ax.set_ylabel("OOD shift (nats/token; ↓ less EM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
