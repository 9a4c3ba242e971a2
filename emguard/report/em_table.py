"""The EM table (Markdown + CSV), laid out like the paper's Table 2.

Input is the metrics table that :func:`emguard.metrics.run_metrics` writes, concatenated over runs:
one row per (run, evalset[, checkpoint]) with the run descriptors ``model, dataset, method, setting,
seed, run_id``, ``evalset`` and the rate columns (``misaligned_rate/_lo/_hi``,
``incoherent_rate/_lo/_hi``, ``n_missing``; ``n_scored``, ``n_misaligned``, ``n_misaligned_denom``,
``n_incoherent``, ``n_coherence_scored``, the mean scores, ``n_questions``, ``seed`` and the definition
columns of :data:`emguard.metrics.DEFINITION_COLUMNS` are used where present).

Evalset naming (the contract between the eval rules and this module):

* a **trained run** (``dataset`` = the EM dataset it was trained on, e.g. ``legal``) has rows with
  ``evalset`` ``"general"`` and ``"indomain"`` (``"indomain_<its dataset>"`` is accepted as a
  synonym; in-domain sets of other datasets are ignored here);
* the **untrained base model** is one run with ``dataset == "base"`` and rows ``"general"`` and
  ``"indomain_<dataset>"`` for each EM dataset it was evaluated on.

"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from emguard.config import setting_lr
from emguard.errors import InputError
from emguard.io import check_columns
from emguard.metrics import MetricDefinition, seed_interval, wilson_interval
from emguard.report._common import (BASE_DATASET, DEFAULT_METHOD_ORDER, DEFAULT_REFERENCE_METHODS, REFERENCE_ROWS,
                                    _fmt_count, _fmt_rate, _is_null, _method_rank, _row_label, _setting_key)
from emguard.report.likelihood import SHIFT_TABLE_COLUMNS, add_shift_columns, shift_cells, shift_legend

#: the four table columns: (evalset kind, rate, header, lower is better)
TABLE_COLUMNS = (
    ("general", "misaligned", "General Misal. (↓)", True),
    ("general", "incoherent", "General Incoh. (↓)", True),
    ("indomain", "misaligned", "In-domain Misal. (↑)", False),
    ("indomain", "incoherent", "In-domain Incoh. (↓)", True),
)

EM_REQUIRED = ("dataset", "method", "evalset", "misaligned_rate", "misaligned_lo", "misaligned_hi",
             "incoherent_rate", "incoherent_lo", "incoherent_hi")

_LEGEND = (
    "Rates in percent (see the definition above), mean over seeds, with the Wilson interval of the seeds' "
    "pooled answers in brackets. "
    "Among the defenses: <u>underlined</u> general misalignment is at most 10% of the Misaligned "
    "baseline's (EM reduced by at least 90%); <u>underlined</u> in-domain misalignment is at least 90% "
    "of the baseline's; *italic* incoherence is higher than the baseline's; **bold** is the best "
    "defense per column. Emphasis compares the point estimates, as in the paper, and is not a test: "
    "where the intervals overlap, the difference may be noise. "
    "Missing: answers the judge could not score for the misaligned rate (general / in-domain)."
)

#: the per-seed statistics of a cell (rate or mean score), as in the metrics rows
SEED_STATS = ("misaligned_rate", "incoherent_rate", "mean_aligned", "mean_coherent")


# --------------------------------------------------------------------------- preparing metrics rows

def _checkpoint_rank(c) -> tuple:
    if _is_null(c) or str(c).lower() == "final":
        return (2, 0)
    m = re.search(r"(\d+)$", str(c))
    return (1, int(m.group(1))) if m else (0, str(c))


def _select_checkpoint(df: pd.DataFrame, checkpoint) -> pd.DataFrame:
    """Keep one checkpoint per run and evalset: ``checkpoint`` if given, else the last one.

    "Last" is ``final`` (or a null checkpoint), then the highest trailing step number.
    """
    if "checkpoint" not in df.columns or df.empty:
        return df
    if checkpoint is not None:
        out = df[df["checkpoint"].astype(str) == str(checkpoint)]
        if out.empty:
            found = sorted({str(c) for c in df["checkpoint"]})
            raise InputError(f"metrics table: no rows for checkpoint {checkpoint!r}; found {', '.join(found)}")
        return out
    run_cols = ["run_id"] if "run_id" in df.columns else [c for c in ("model", "dataset", "method", "setting", "seed") if c in df.columns]
    rank = df["checkpoint"].map(_checkpoint_rank)
    keep = np.zeros(len(df), dtype=bool)
    for _, idx in df.groupby(run_cols + ["evalset"], dropna=False, sort=False).indices.items():
        best = max(rank.iloc[i] for i in idx)
        for i in idx:
            keep[i] = rank.iloc[i] == best
    return df[keep]


def _prepare(metrics: pd.DataFrame, *, checkpoint, reference_methods: Mapping[str, str] | None) -> pd.DataFrame:
    """Normalise descriptors and tag every row with ``_model, _dataset, _kind, _role, _label``."""
    check_columns(metrics, EM_REQUIRED, "metrics table")
    refs = dict(DEFAULT_REFERENCE_METHODS if reference_methods is None else reference_methods)
    df = _select_checkpoint(metrics.reset_index(drop=True), checkpoint).reset_index(drop=True).copy()
    for col in ("model", "method", "setting", "dataset"):
        src = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        df[f"_{col}"] = [("" if _is_null(v) else str(v)) for v in src]
    is_base = (df["_dataset"] == BASE_DATASET).to_numpy()
    roles, kinds, datasets, labels = [], [], [], []
    for base, method, setting, dataset, evalset in zip(is_base, df["_method"], df["_setting"], df["_dataset"], df["evalset"].astype(str)):
        role = "Untrained" if base else refs.get(method, "method")
        if evalset == "general":
            kind, ds = "general", (None if base else dataset)
        elif base and evalset.startswith("indomain_"):
            kind, ds = "indomain", evalset[len("indomain_"):]
        elif not base and evalset in ("indomain", f"indomain_{dataset}"):
            kind, ds = "indomain", dataset
        else:
            kind, ds = None, None
        roles.append(role)
        kinds.append(kind)
        datasets.append(ds)
        labels.append(_row_label(role, method, setting))
    df["_role"], df["_kind"], df["_block"], df["_label"], df["_base"] = roles, kinds, datasets, labels, is_base
    return df[df["_kind"].notna()].reset_index(drop=True)


def _pool(rows: pd.DataFrame, rate: str) -> dict:
    """Mean over seeds of one rate; interval from the pooled counts when several seeds have them."""
    rates = pd.to_numeric(rows[f"{rate}_rate"], errors="coerce").to_numpy(dtype=float)
    ok = ~np.isnan(rates)
    out = {"rate": float(rates[ok].mean()) if ok.any() else math.nan}
    lo = pd.to_numeric(rows[f"{rate}_lo"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows[f"{rate}_hi"], errors="coerce").to_numpy(dtype=float)
    # the incoherent rate's denominator is every coherence-scored answer, the misaligned rate's the configured
    # one (emguard.metrics.em_metrics: n_misaligned_denom; older rows: n_scored)
    if rate == "incoherent":
        denom = "n_coherence_scored" if "n_coherence_scored" in rows.columns else "n_scored"
    else:
        denom = "n_misaligned_denom" if "n_misaligned_denom" in rows.columns else "n_scored"
    counted = {denom, f"n_{rate}"} <= set(rows.columns)
    if len(rows) > 1 and counted and ok.any():
        n = int(pd.to_numeric(rows[denom], errors="coerce").fillna(0).sum())
        k = int(pd.to_numeric(rows[f"n_{rate}"], errors="coerce").fillna(0).sum())
        conf = 0.95
        if "confidence" in rows.columns and rows["confidence"].notna().any():
            conf = float(rows["confidence"].dropna().iloc[0])
        plo, phi = wilson_interval(k, n, conf)
        out["lo"], out["hi"] = 100.0 * plo, 100.0 * phi
    else:
        out["lo"] = float(np.nanmean(lo[ok])) if ok.any() else math.nan
        out["hi"] = float(np.nanmean(hi[ok])) if ok.any() else math.nan
    return out


def _by_seed(rows: pd.DataFrame) -> pd.DataFrame:
    if "seed" not in rows.columns:
        return rows
    return rows.assign(_seed_key=pd.to_numeric(rows["seed"], errors="coerce")).sort_values("_seed_key", kind="stable")


def _seed_values(rows: pd.DataFrame, stat: str) -> tuple[list, np.ndarray]:
    rows = _by_seed(rows)
    vals = (pd.to_numeric(rows[stat], errors="coerce").to_numpy(dtype=float) if stat in rows.columns
            else np.full(len(rows), math.nan))
    seeds = list(rows["seed"]) if "seed" in rows.columns else list(range(len(rows)))
    return seeds, vals


def _confidence(rows: pd.DataFrame) -> float:
    if "confidence" in rows.columns and rows["confidence"].notna().any():
        return float(rows["confidence"].dropna().iloc[0])
    return 0.95


def aggregate_seeds(rows: pd.DataFrame, prefix: str = "") -> dict:
    """One cell's statistics from its metrics rows (one per seed), keys prefixed with ``prefix``.

    * ``misaligned_rate``/``incoherent_rate`` with ``_lo``/``_hi``: mean over seeds, the Wilson interval of
      the pooled counts (:func:`_pool`);
    * ``mean_aligned``/``mean_coherent`` with ``_lo``/``_hi``: mean over seeds; the run's t interval over
      answers with one seed, the interval across seeds with several;
    * for each of :data:`SEED_STATS`: ``<stat>_seeds`` (the per-seed values, ``seed0=2.000;seed1=4.000``)
      and ``<stat>_seed_lo``/``_seed_hi`` (:func:`emguard.metrics.seed_interval`, NaN with one seed);
    * ``n_seeds`` and the summed ``n_answers``, ``n_scored``, ``n_missing``, ``n_misaligned_denom``
      (NaN where the rows lack the column), ``n_questions`` (the largest of the seeds').
    """
    out: dict = {}
    for rate in ("misaligned", "incoherent"):
        for k, v in _pool(rows, rate).items():
            out[f"{rate}_{k}"] = v
    conf = _confidence(rows)
    for stat in SEED_STATS:
        seeds, vals = _seed_values(rows, stat)
        iv = seed_interval(vals, conf)
        out[f"{stat}_seeds"] = ";".join(f"seed{s}={v:.3f}" for s, v in zip(seeds, vals) if not math.isnan(v))
        out[f"{stat}_seed_lo"], out[f"{stat}_seed_hi"] = iv["lo"], iv["hi"]
        if stat.startswith("mean_"):
            out[stat] = iv["mean"]
            if iv["n_seeds"] > 1:
                out[f"{stat}_lo"], out[f"{stat}_hi"] = iv["lo"], iv["hi"]
            else:
                ok = ~np.isnan(vals)
                one = _by_seed(rows)[ok] if ok.any() else rows.iloc[:0]
                for side in ("lo", "hi"):
                    col = f"{stat}_{side}"
                    out[col] = float(pd.to_numeric(one[col], errors="coerce").iloc[0]) if len(one) and col in one else math.nan
    out["n_seeds"] = len(rows)
    for n in ("n_answers", "n_scored", "n_missing", "n_misaligned_denom"):
        vals = pd.to_numeric(rows[n], errors="coerce") if n in rows.columns else pd.Series([math.nan])
        out[n] = float(vals.sum()) if vals.notna().any() else math.nan
    q = pd.to_numeric(rows["n_questions"], errors="coerce") if "n_questions" in rows.columns else pd.Series([math.nan])
    out["n_questions"] = float(q.max()) if q.notna().any() else math.nan
    return {f"{prefix}{k}": v for k, v in out.items()}


#: the per-kind columns of the EM table's frame (each prefixed ``general_`` / ``indomain_``)
KIND_COLUMNS = tuple(
    [f"{r}_{s}" for r in ("misaligned", "incoherent") for s in ("rate", "lo", "hi")]
    + ["n_scored", "n_missing"]
    + [f"{m}{s}" for m in ("mean_aligned", "mean_coherent") for s in ("", "_lo", "_hi")]
    + [f"{st}_{s}" for st in SEED_STATS for s in ("seeds", "seed_lo", "seed_hi")]
    + ["n_answers", "n_misaligned_denom", "n_questions"])


def _aggregate(rows: pd.DataFrame, kind: str) -> dict:
    agg = aggregate_seeds(rows)
    return {f"{kind}_{k}": agg[k] for k in KIND_COLUMNS}


def resolve_definition(metrics: pd.DataFrame, definition: MetricDefinition | None,
                       where: str = "metrics table") -> tuple[MetricDefinition, str]:
    """The definition a table states and its paragraph: the one the rows record, which must equal
    ``definition`` (the config's) when both exist; a table whose rows record none states ``definition``
    (or the paper's defaults) and says that the rows did not record it."""
    recorded = MetricDefinition.from_rows(metrics, where)
    if recorded is not None and definition is not None and recorded != definition:
        raise InputError(f"{where}: the rows were computed with {recorded} but the config's metrics section is "
                         f"{definition}; rerun the metrics rules")
    used = recorded or definition or MetricDefinition()
    text = used.text()
    if recorded is None and len(metrics):
        text += " (The metrics rows do not record their definition; this is " + (
            "the config's." if definition is not None else "emguard's default.") + ")"
    return used, text


def indomain_note(table: pd.DataFrame, indomain_questions: int | None) -> str | None:
    """One sentence on the in-domain sets' question counts: how many were asked for
    (``eval.indomain.n_questions``) and which sets have fewer because their holdout has fewer distinct
    prompts; None without in-domain counts."""
    if "indomain_n_questions" not in table.columns:
        return None
    counts = {}
    for ds, n in zip(table["dataset"], pd.to_numeric(table["indomain_n_questions"], errors="coerce")):
        if not math.isnan(n):
            counts[str(ds)] = max(counts.get(str(ds), 0), int(n))
    if not counts:
        return None
    have = ", ".join(f"{d} {n}" for d, n in counts.items())
    if indomain_questions is None:
        return f"In-domain questions per set: {have}."
    short = {d: n for d, n in counts.items() if n < indomain_questions}
    text = f"In-domain sets: {indomain_questions} holdout questions per domain asked (`eval.indomain.n_questions`)"
    if not short:
        return text + "."
    return (text + "; fewer distinct prompts exist in the holdout of " + ", ".join(f"{d} ({n})" for d, n in short.items())
            + ", so those sets use all of them.")


# --------------------------------------------------------------------------- the EM table

def em_table(metrics: pd.DataFrame, *, method_order: Sequence[str] | None = None,
             dataset_order: Sequence[str] | None = None, checkpoint=None,
             reference_methods: Mapping[str, str] | None = None,
             shifts: pd.DataFrame | None = None, definition: MetricDefinition | None = None,
             indomain_questions: int | None = None) -> tuple[str, pd.DataFrame]:
    """The paper's Table 2 from a metrics table: Markdown text and a tidy, CSV-ready DataFrame.

    **Blocks.** One block per (model, dataset): the datasets of the model's trained runs, ordered
    by ``dataset_order`` (unlisted ones follow alphabetically). A model with no trained runs gets one
    block per ``indomain_<dataset>`` evalset of its base run.

    **Rows.** Each block lists, in order: ``Untrained``, ``Aligned``, ``Misaligned`` (those present),
    then the defenses ordered by ``method_order`` (default :data:`DEFAULT_METHOD_ORDER`; unlisted
    methods follow alphabetically, never dropped) and, within a method, by setting (its family, then
    its number: ``lambda0.01`` before ``lambda0.1``, see :func:`_split_setting`). A row's label is the
    method's display
    name (:data:`METHOD_LABELS`) plus the setting in brackets, e.g. ``KL (lambda0.1)``. A row is a
    reference row when its ``method`` is a key of ``reference_methods`` (default
    :data:`DEFAULT_REFERENCE_METHODS`, mapping e.g. ``"misaligned"`` to ``"Misaligned"``).

    **Untrained row.** Taken from rows with ``method`` mapping to ``Untrained`` and ``dataset`` equal
    to the block's dataset, where such rows exist (per kind: general / in-domain). Otherwise from the
    base run (``dataset == "base"``): its ``general`` row fills the general columns of *every* block
    of that model, and its ``indomain_<dataset>`` row the in-domain columns of block ``<dataset>``.

    **Definition.** The Markdown opens with the metric definition (:meth:`MetricDefinition.text`) the
    rows record (:data:`emguard.metrics.DEFINITION_COLUMNS`); ``definition`` (the config's) must match
    it. With ``indomain_questions`` (``eval.indomain.n_questions``) a sentence says how many in-domain
    questions each set has and which holdouts had fewer (:func:`indomain_note`).

    **Seeds and checkpoints.** Rows differing only in ``seed``/``run_id`` are seeds of one row: rates
    are the mean over seeds; the interval is the Wilson interval of the pooled counts
    (``n_misaligned`` over ``n_misaligned_denom`` (older rows: ``n_scored``), ``n_incoherent`` over
    ``n_coherence_scored``, summed over seeds) when those columns exist, else the mean of the seeds'
    bounds; ``n_missing`` and ``n_scored`` are summed. Every cell also has its per-seed values and the
    Student t interval across seeds (:func:`aggregate_seeds`); with more than one seed anywhere, each
    block is followed by an "across seeds" table of them. With a
    ``checkpoint`` column, each run's last checkpoint (``final``, else the highest step) is used
    unless ``checkpoint`` names one.

    **Emphasis** (Markdown only, within a block, on defense rows only, comparing unrounded means):
    general misalignment is underlined (``<u>``) when at most 10% of the Misaligned row's (EM
    reduced by >= 90%); in-domain misalignment is underlined when at least 90% of the Misaligned
    row's; underlining needs a Misaligned rate > 0. Incoherence (both columns) is italic when
    strictly higher than the Misaligned row's. Bold marks the best defense per column (lowest,
    except highest in-domain misalignment; ties all bold).

    The DataFrame has one row per table row: ``model, dataset, row, role, method, setting, n_seeds``
    and for ``kind`` in ``general``/``indomain`` the :data:`KIND_COLUMNS`: ``<kind>_misaligned_rate/_lo/_hi``,
    ``<kind>_incoherent_rate/_lo/_hi``, ``<kind>_n_scored``, ``<kind>_n_missing``, the mean scores with
    intervals, the per-seed values and across-seed intervals, ``<kind>_n_answers``,
    ``<kind>_n_misaligned_denom``, ``<kind>_n_questions`` (NaN where the row has no such evaluation).

    **Likelihood shift** (with ``shifts``, the shift summary of :mod:`emguard.report.likelihood`):
    three more columns after the judged rates, *In-domain LL shift*, *OOD LL shift* and *OOD excess
    vs Aligned*, each ``+0.12 [+0.05, +0.19]`` (nats per answer token, bootstrap interval), **bold**
    only when the interval excludes 0, ``–`` where the summary has no row. Rows are matched by
    ``(model, dataset, method, setting)``; the Untrained row by the untrained model's rows, and its
    in-domain shift is 0 by definition. The frame gains ``indomain_shift``, ``ood_shift``,
    ``ood_excess``, each with ``_lo``/``_hi`` (:func:`emguard.report.likelihood.add_shift_columns`).
    """
    _, definition_text = resolve_definition(metrics, definition)
    df = _prepare(metrics, checkpoint=checkpoint, reference_methods=reference_methods)
    rank = _method_rank(DEFAULT_METHOD_ORDER if method_order is None else method_order)
    records = []
    for model, block, rows, base in table_blocks(df, dataset_order):
        records.extend(_block_records(model, block, rows, base, rank))

    cols = ["model", "dataset", "row", "role", "method", "setting", "n_seeds"]
    for kind in ("general", "indomain"):
        cols += [f"{kind}_{c}" for c in KIND_COLUMNS]
    table = pd.DataFrame(records, columns=cols)
    if shifts is not None:
        table = add_shift_columns(table, shifts, reference_methods=reference_methods)
    intro = [definition_text] + [n for n in [indomain_note(table, indomain_questions)] if n]
    return _markdown(table, shift_legend(shifts) if shifts is not None else None, intro), table


def table_blocks(df: pd.DataFrame, dataset_order: Sequence[str] | None = None):
    """(model, block, the block's trained rows, the model's untrained rows) of a prepared metrics frame, models in
    order of appearance, blocks (datasets) in ``dataset_order`` and then by name; a model with only untrained rows
    gets the untrained rows' blocks."""
    ds_order = {d: i for i, d in enumerate(dataset_order or ())}
    for model in list(dict.fromkeys(df["_model"])):
        mdf = df[df["_model"] == model]
        trained, base = mdf[~mdf["_base"]], mdf[mdf["_base"]]
        blocks = set(trained["_block"].dropna()) or set(base["_block"].dropna())
        for block in sorted(blocks, key=lambda d: (0, ds_order[d], "") if d in ds_order else (1, 0, d)):
            yield model, block, trained[trained["_block"] == block], base


def block_row_groups(block: str, rows: pd.DataFrame, base: pd.DataFrame, rank) -> list[tuple[str, dict]]:
    """A table block's rows (label -> role, method, setting and its per-evalset metric ``parts``) in table order:
    reference rows first, then methods by ``rank`` and setting; the untrained base run fills the Untrained row."""
    groups: dict[str, dict] = {}
    for label, g in rows.groupby("_label", sort=False):
        groups[label] = {"role": g["_role"].iloc[0], "method": g["_method"].iloc[0],
                         "setting": g["_setting"].iloc[0], "parts": {k: p for k, p in g.groupby("_kind")}}
    # the base run fills whatever per-dataset Untrained rows do not provide
    base_parts = {"general": base[base["_kind"] == "general"],
                  "indomain": base[(base["_kind"] == "indomain") & (base["_block"] == block)]}
    base_parts = {k: p for k, p in base_parts.items() if len(p)}
    if base_parts:
        entry = groups.setdefault("Untrained", {"role": "Untrained", "method": next(iter(base_parts.values()))["_method"].iloc[0],
                                                "setting": "", "parts": {}})
        for k, p in base_parts.items():
            entry["parts"].setdefault(k, p)

    def order(item):
        label, g = item
        if g["role"] in REFERENCE_ROWS:
            return (0, REFERENCE_ROWS.index(g["role"]), (), label)
        return (1, rank(g["method"]), _setting_key(g["setting"]), label)

    return sorted(groups.items(), key=order)


def _block_records(model: str, block: str, rows: pd.DataFrame, base: pd.DataFrame, rank) -> list[dict]:
    out = []
    for label, g in block_row_groups(block, rows, base, rank):
        rec = {"model": model or None, "dataset": block, "row": label, "role": g["role"],
               "method": g["method"] or None, "setting": g["setting"] or None,
               "n_seeds": max(len(p) for p in g["parts"].values())}
        for kind in ("general", "indomain"):
            if kind in g["parts"]:
                rec.update(_aggregate(g["parts"][kind], kind))
        out.append(rec)
    return out


def emphasis(block: pd.DataFrame) -> dict[tuple[int, str], set[str]]:
    """Emphasis flags for one block of the tidy table: ``{(row index, rate column): {"bold", ...}}``.

    Rules as documented in :func:`em_table`; only rows with ``role == "method"`` get flags. With several
    Misaligned rows (a learning-rate grid), a defense is compared with the one of its learning rate
    (:func:`emguard.config.setting_lr`).
    """
    flags: dict[tuple[int, str], set[str]] = {}
    methods = block[block["role"] == "method"]
    baseline = block[block["role"] == "Misaligned"]
    # with a learning-rate grid, one Misaligned row per rate: a defense is compared with the one of its rate
    base_lr = [setting_lr(str(s or "")) for s in baseline["setting"]]

    def baseline_row(idx) -> int | None:
        if not len(baseline):
            return None
        lr = setting_lr(str(methods.at[idx, "setting"] or ""))
        return baseline.index[base_lr.index(lr)] if lr in base_lr else baseline.index[0]

    for kind, rate, _, lower_better in TABLE_COLUMNS:
        col = f"{kind}_{rate}_rate"
        vals = pd.to_numeric(methods[col], errors="coerce")
        for idx, v in vals.items():
            if math.isnan(v):
                continue
            b_idx = baseline_row(idx)
            b = float(baseline.at[b_idx, col]) if b_idx is not None else math.nan
            f = flags.setdefault((idx, col), set())
            if rate == "misaligned" and b > 0:
                if (kind == "general" and v <= 0.1 * b + 1e-9) or (kind == "indomain" and v >= 0.9 * b - 1e-9):
                    f.add("underline")
            if rate == "incoherent" and not math.isnan(b) and v > b:
                f.add("italic")
        if vals.notna().any():
            best = vals.min() if lower_better else vals.max()
            for idx, v in vals.items():
                if not math.isnan(v) and math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-9):
                    flags.setdefault((idx, col), set()).add("bold")
    return flags


def _seed_cell(seeds_text, lo: float, hi: float) -> str:
    """``2.00, 4.00 [0.0, 15.7]``: per-seed values and the interval across seeds."""
    if not isinstance(seeds_text, str) or not seeds_text:
        return "–"
    vals = ", ".join(f"{float(part.split('=', 1)[1]):.2f}" for part in seeds_text.split(";"))
    if math.isnan(lo) or math.isnan(hi):
        return vals
    return f"{vals} [{lo:.1f}, {hi:.1f}]"


def _markdown(table: pd.DataFrame, shift_text: str | None = None, intro: Sequence[str] = ()) -> str:
    """``shift_text``: the likelihood columns' legend, when the table has them; ``intro``: paragraphs (the
    metric definition) before the legend."""
    lines = ["## Emergent misalignment", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    lines += [_LEGEND, ""] + ([shift_text, ""] if shift_text else [])
    if table.empty:
        return "\n".join(lines + ["No metrics.", ""])
    models = list(dict.fromkeys(table["model"]))
    seeds = table["n_seeds"].max() > 1
    shift_headers = [h for *_, h in SHIFT_TABLE_COLUMNS] if shift_text else []
    header = (["Adapter"] + [h for _, _, h, _ in TABLE_COLUMNS] + shift_headers + ["Missing (gen. / in-dom.)"]
              + (["Seeds"] if seeds else []))
    for (model, dataset), block in table.groupby(["model", "dataset"], sort=False, dropna=False):
        title = str(dataset)  # the dataset id as in the config and the CSV
        if len(models) > 1:
            title = f"{model} · {title}"
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        flags = emphasis(block)
        for idx, r in block.iterrows():
            cells = [str(r["row"])]
            for kind, rate, _, _ in TABLE_COLUMNS:
                col = f"{kind}_{rate}"
                cells.append(_fmt_rate(r[f"{col}_rate"], r[f"{col}_lo"], r[f"{col}_hi"], flags.get((idx, f"{col}_rate"), ())))
            if shift_text:
                cells += shift_cells(r)
            cells.append(f"{_fmt_count(r['general_n_missing'])} / {_fmt_count(r['indomain_n_missing'])}")
            if seeds:
                cells.append(str(int(r["n_seeds"])))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if seeds:
            lines += [f"Across seeds ({title}): the per-seed rates, then the Student t interval across seeds.", "",
                      "| " + " | ".join(["Adapter", "Seeds"] + [h for _, _, h, _ in TABLE_COLUMNS]) + " |",
                      "|" + "---|" * (2 + len(TABLE_COLUMNS))]
            for _, r in block.iterrows():
                cells = [str(r["row"]), str(int(r["n_seeds"]))]
                for kind, rate, _, _ in TABLE_COLUMNS:
                    col = f"{kind}_{rate}_rate"
                    cells.append(_seed_cell(r[f"{col}_seeds"], r[f"{col}_seed_lo"], r[f"{col}_seed_hi"]))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)
