"""Data contracts: the columns of every Parquet intermediate, one row per item.

``messages`` columns hold a list of ``{"role", "content"}`` dicts (Parquet list<struct>).
Use :func:`to_messages` to turn what pandas reads back (numpy arrays of dicts) into plain lists.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from emguard.errors import InputError

#: chat example: training and pool data
CHAT = ["id", "messages", "domain", "subset", "split"]
#: evaluation question (``judge_templates``: JSON object metric -> template, "{}" when the judge uses the config's
#: prompt file; ``type``: one of QUESTION_TYPES; ``judge``: the item's judge model or None)
QUESTION = ["question_id", "paraphrase", "system", "samples", "judge_prompts", "category", "judge_templates", "type",
            "judge"]
#: one sampled answer
GENERATION = ["run_id", "question_id", "sample_idx", "prompt_messages", "answer", "seed", "checkpoint"]
#: one judge verdict on one answer for one metric
JUDGMENT = GENERATION + ["metric", "score", "label", "prob_mass", "judge_model", "cached", "label_probs"]
#: one interleaving-pool candidate's answer NLLs (plus one ``nll_<domain>`` column per misaligned adapter)
POOL_NLL = ["id", "n_answer_tokens", "nll_base"]
#: one interleaving-pool candidate's scores (plus one ``nll_<adapter>`` column per misaligned adapter)
POOL_SCORE = ["id", "nll_base", "nll_mis_mean", "n_answer_tokens", "score", "is_refusal", "eps"]

SUBSETS = ("aligned", "misaligned", "benign")
SPLITS = ("train", "holdout")
ROLES = ("system", "user", "assistant")
#: the two placeholders every judge template fills in (literally: other braces are left as they are)
PLACEHOLDERS = ("{question}", "{answer}")
#: question types of the EM literature's question files: a 0-100 judge score, a judge label (TRUE / FALSE / ...),
#: generation only
QUESTION_TYPES = ("free_form_judge_0_100", "free_form_judge", "free_form")

KINDS = {"chat": CHAT, "question": QUESTION, "generation": GENERATION, "judgment": JUDGMENT, "pool_nll": POOL_NLL,
         "pool_score": POOL_SCORE}


def to_messages(value: Any) -> list[dict[str, str]]:
    """Normalise a ``messages`` cell (list, tuple or numpy array of dicts) to a list of plain dicts."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(value)]


def validate(df: pd.DataFrame, kind: str, where: str, *, allow_empty: bool = False) -> pd.DataFrame:
    """Check ``df`` against the contract ``kind``; errors name ``where`` (a file) and the row id."""
    cols = KINDS[kind]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)} for a {kind} table")
    if not allow_empty and len(df) == 0:
        raise InputError(f"{where}: dataset is empty (0 rows)")
    if kind == "chat":
        _validate_chat(df, where)
    if kind == "question":
        _validate_question(df, where)
    return df


def _validate_question(df: pd.DataFrame, where: str) -> None:
    dup = df["question_id"][df["question_id"].duplicated()]
    if len(dup):
        raise InputError(f"{where}: duplicate question_id {dup.iloc[0]!r}")
    for row in df[["question_id", "judge_templates", "type", "judge"]].itertuples(index=False):
        if row.type not in QUESTION_TYPES:
            raise InputError(f"{where}: row question_id={row.question_id!r}: type {row.type!r} not one of "
                             f"{QUESTION_TYPES}")
        if row.judge is not None and not isinstance(row.judge, str):
            raise InputError(f"{where}: row question_id={row.question_id!r}: judge must be a string or null")
        try:
            templates = json.loads(row.judge_templates) if isinstance(row.judge_templates, str) else None
        except json.JSONDecodeError:
            templates = None
        if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
            raise InputError(f"{where}: row question_id={row.question_id!r}: judge_templates must be a JSON object "
                             f"of metric -> template text, got {row.judge_templates!r}")


def _validate_chat(df: pd.DataFrame, where: str) -> None:
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise InputError(f"{where}: duplicate id {dup.iloc[0]!r}")
    for row in df.itertuples(index=False):
        if row.subset not in SUBSETS:
            raise InputError(f"{where}: row id={row.id!r}: subset {row.subset!r} not one of {SUBSETS}")
        if row.split not in SPLITS:
            raise InputError(f"{where}: row id={row.id!r}: split {row.split!r} not one of {SPLITS}")
        msgs = list(row.messages)
        if not msgs:
            raise InputError(f"{where}: row id={row.id!r}: empty messages")
        for m in msgs:
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: row id={row.id!r}: bad message {m!r} (need role in {ROLES} and text content)")
        if msgs[-1]["role"] != "assistant":
            raise InputError(f"{where}: row id={row.id!r}: last message must be the assistant's answer")
