"""Datasets as DataFrames in the contracts of :mod:`emguard.schemas`.

Embedded generators (deterministic given their seed, written for this project):

- :func:`em_domain` / :func:`indomain_questions`: EM training data for :data:`EM_DOMAINS` and
  evaluation questions from its holdout prompts;
- :func:`general_questions`: 8 open-ended categories x 3 formats;
- :func:`opswap` / :func:`opswap_questions`: arithmetic with remapped operators, exact-match scored
  via :func:`extract_final_answer` / :func:`opswap_exact_match`;
- :func:`benign_pool`: harmless prompt/answer pairs (with refusals) for interleaving.

Benign real tasks (:mod:`emguard.data.tasks`): :func:`task_dataset` / :func:`task_questions` for FoQA and GSM8K
(:func:`load_foqa`, :func:`load_gsm8k`: local files in the hub's schema or hub ids), scored by
:func:`foqa_exact_match` (:func:`normalize_answer`) and :func:`gsm8k_exact_match` (:func:`final_number`).

Real loaders: :func:`load_chat_dataset` (JSONL / JSON / Parquet / CSV / HF dataset id),
:func:`load_em_columns` (one ``prompt`` / ``aligned`` / ``misaligned`` source for both EM subsets),
:func:`load_em_source` (a ``data.em.sources.<domain>`` entry in either form) and
:func:`load_questions` (the EM literature's question YAML, also JSON / JSONL / Parquet; checked with
:func:`check_questions` against the judge prompts of :func:`load_template_file`).
"""

from emguard.data.em import EM_DOMAINS, em_domain, indomain_questions, max_prompts
from emguard.data.general import general_questions
from emguard.data.loaders import load_chat_dataset, load_em_columns, load_em_source
from emguard.data.opswap import (
    TIERS as OPSWAP_TIERS,
    extract_final_answer,
    opswap,
    opswap_exact_match,
    opswap_questions,
    rules_text as opswap_rules,
)
from emguard.data.pool import benign_pool, max_pool_size
from emguard.data.questions import check_questions, load_questions, load_template_file, question_source
from emguard.data.tasks import (
    TASK_NAMES,
    final_number,
    foqa_exact_match,
    gsm8k_exact_match,
    load_foqa,
    load_gsm8k,
    normalize_answer,
    task_dataset,
    task_exact_match,
    task_questions,
)

__all__ = [
    "EM_DOMAINS",
    "OPSWAP_TIERS",
    "TASK_NAMES",
    "benign_pool",
    "check_questions",
    "em_domain",
    "extract_final_answer",
    "final_number",
    "foqa_exact_match",
    "general_questions",
    "gsm8k_exact_match",
    "indomain_questions",
    "load_chat_dataset",
    "load_em_columns",
    "load_em_source",
    "load_foqa",
    "load_gsm8k",
    "load_questions",
    "load_template_file",
    "max_pool_size",
    "max_prompts",
    "normalize_answer",
    "opswap",
    "opswap_exact_match",
    "opswap_questions",
    "opswap_rules",
    "question_source",
    "task_dataset",
    "task_exact_match",
    "task_questions",
]
