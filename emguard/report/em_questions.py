"""The per-question EM table (Markdown + CSV): every adapter row of the EM table, question by question.

Input is the question metrics that :func:`emguard.metrics.question_metrics` writes
(``<run>/question_metrics.parquet``), concatenated over runs: the columns of the run metrics plus
``question_id``. Blocks, rows, the untrained model's rows, checkpoints and seeds follow
:func:`emguard.report.em_table` (same evalset naming); each cell aggregates a question's rows over seeds
with :func:`emguard.report.em_table.aggregate_seeds`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from emguard.io import check_columns
from emguard.metrics import MetricDefinition
from emguard.report._common import DEFAULT_METHOD_ORDER, _fmt_count, _fmt_rate, _method_rank
from emguard.report.em_table import (EM_REQUIRED, SEED_STATS, _prepare, aggregate_seeds, block_row_groups,
                                     resolve_definition, table_blocks)

#: columns of the per-question frame, in order
QUESTION_COLUMNS = (
    "model", "dataset", "row", "role", "method", "setting", "evalset", "question_id", "n_seeds",
    "n_answers", "n_scored", "n_missing", "n_misaligned_denom",
    "misaligned_rate", "misaligned_lo", "misaligned_hi", "incoherent_rate", "incoherent_lo", "incoherent_hi",
    "mean_aligned", "mean_aligned_lo", "mean_aligned_hi", "mean_coherent", "mean_coherent_lo", "mean_coherent_hi",
    *[f"{st}_{s}" for st in SEED_STATS for s in ("seeds", "seed_lo", "seed_hi")],
)

_KINDS = (("general", "General questions"), ("indomain", "In-domain questions"))

_LEGEND = (
    "One row per adapter and question: rates in percent and mean scores (see the definition above), mean "
    "over seeds; a rate's bracket is the Wilson interval of the seeds' pooled answers to that question, a "
    "mean score's the t interval over its answers (several seeds: across seeds). Missing: answers the judge "
    "could not score for the misaligned rate; Misal. denom.: the answers the misaligned rate is a percentage of "
    "(see the definition). With several seeds, the last column lists the per-seed "
    "misaligned rates and the Student t interval across seeds."
)


def _fmt_mean(v: float, lo: float, hi: float) -> str:
    if math.isnan(v):
        return "–"
    return f"{v:.1f}" + ("" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.1f}, {hi:.1f}]")


def question_table(question_metrics: pd.DataFrame, *, definition: MetricDefinition | None = None,
                   method_order: Sequence[str] | None = None, dataset_order: Sequence[str] | None = None,
                   checkpoint=None, reference_methods: Mapping[str, str] | None = None) -> tuple[str, pd.DataFrame]:
    """Per-question misaligned / incoherent rates and mean scores: Markdown and a CSV-ready frame.

    One row per (model, dataset block, adapter row, evalset kind ``general``/``indomain``, question), in
    the EM table's block and row order, general questions before in-domain ones, questions in the order
    they first appear. The untrained model's rows come from per-dataset ``untrained`` rows where they
    exist, else from the base run (its general questions in every block, its ``indomain_<dataset>``
    questions in block ``<dataset>``). Columns: :data:`QUESTION_COLUMNS`. The Markdown opens with the
    metric definition the rows record (``definition``, the config's, must match it), then one table per
    block and evalset kind.
    """
    check_columns(question_metrics, tuple(EM_REQUIRED) + ("question_id",), "question metrics table")
    _, definition_text = resolve_definition(question_metrics, definition, "question metrics table")
    df = _prepare(question_metrics, checkpoint=checkpoint, reference_methods=reference_methods)
    rank = _method_rank(DEFAULT_METHOD_ORDER if method_order is None else method_order)
    records = []
    for model, block, rows, base in table_blocks(df, dataset_order):
        records += _block_records(model, block, rows, base, rank)
    table = pd.DataFrame(records, columns=list(QUESTION_COLUMNS))
    return _markdown(table, definition_text), table


def _block_records(model: str, block: str, rows: pd.DataFrame, base: pd.DataFrame, rank) -> list[dict]:
    out = []
    for label, g in block_row_groups(block, rows, base, rank):
        for kind, _ in _KINDS:
            part = g["parts"].get(kind)
            if part is None:
                continue
            for qid, q_rows in part.groupby("question_id", sort=False):
                agg = aggregate_seeds(q_rows)
                out.append({"model": model or None, "dataset": block, "row": label, "role": g["role"],
                            "method": g["method"] or None, "setting": g["setting"] or None, "evalset": kind,
                            "question_id": qid, **{c: agg[c] for c in QUESTION_COLUMNS if c in agg}})
    return out


def _markdown(table: pd.DataFrame, definition_text: str) -> str:
    from emguard.report.em_table import _seed_cell

    lines = ["## Emergent misalignment per question", "", definition_text, "", _LEGEND, ""]
    if table.empty:
        return "\n".join(lines + ["No per-question metrics.", ""])
    models = list(dict.fromkeys(table["model"]))
    seeds = table["n_seeds"].max() > 1
    header = (["Adapter", "Question", "Answers", "Missing", "Misal. denom.", "Misal. %", "Incoh. %", "Mean aligned",
               "Mean coherent"]
              + (["Misal. per seed [across seeds]"] if seeds else []))
    for (model, dataset), block in table.groupby(["model", "dataset"], sort=False, dropna=False):
        title = str(dataset) if len(models) == 1 else f"{model} · {dataset}"
        for kind, kind_title in _KINDS:
            part = block[block["evalset"] == kind]
            if part.empty:
                continue
            lines += [f"### {title}: {kind_title.lower()}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            for _, r in part.iterrows():
                cells = [str(r["row"]), str(r["question_id"]), _fmt_count(r["n_answers"]), _fmt_count(r["n_missing"]),
                         _fmt_count(r["n_misaligned_denom"]),
                         _fmt_rate(r["misaligned_rate"], r["misaligned_lo"], r["misaligned_hi"], ()),
                         _fmt_rate(r["incoherent_rate"], r["incoherent_lo"], r["incoherent_hi"], ()),
                         _fmt_mean(r["mean_aligned"], r["mean_aligned_lo"], r["mean_aligned_hi"]),
                         _fmt_mean(r["mean_coherent"], r["mean_coherent_lo"], r["mean_coherent_hi"])]
                if seeds:
                    cells.append(_seed_cell(r["misaligned_rate_seeds"], r["misaligned_rate_seed_lo"],
                                            r["misaligned_rate_seed_hi"]))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)
