"""Dataset names and what they imply: OpSwap tiers (``opswap_t<t>``) and benign real tasks (scored by exact
match, not judged), the subset a defense trains on, a run's evaluation sets and their question files, and the
leave-one-out domains whose adapters score the interleaving pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emguard.config.defaults import BASE_DATASET, BENIGN_TASKS, OPSWAP_PREFIX

if TYPE_CHECKING:
    from emguard.config.runs import Run


def opswap_dataset(tier: int) -> str:
    return f"{OPSWAP_PREFIX}{tier}"


def is_opswap(dataset: str) -> bool:
    """Whether ``dataset`` is an OpSwap tier (``opswap_t<digits>``)."""
    return dataset.startswith(OPSWAP_PREFIX) and dataset[len(OPSWAP_PREFIX):].isdigit()


def is_benign_task(dataset: str) -> bool:
    """Whether ``dataset`` is a benign real task (FoQA, GSM8K: :data:`BENIGN_TASKS`)."""
    return dataset in BENIGN_TASKS


def is_task_dataset(dataset: str) -> bool:
    """Whether ``dataset`` is a task scored by exact match, not judged: an OpSwap tier or a benign real task."""
    return is_opswap(dataset) or is_benign_task(dataset)


def method_subset(dataset: str) -> str:
    """The subset a defense trains on for ``dataset``: the benign rows of a task dataset (OpSwap, FoQA, GSM8K),
    else the misaligned EM rows (also the rows an interleaved mix is built from)."""
    return "benign" if is_task_dataset(dataset) else "misaligned"


def leave_one_out(domains, target: str) -> list[str]:
    """The domains other than ``target`` (order kept, duplicates dropped): the misaligned models whose
    adapters score the interleaving pool for a run on ``target``. Empty when ``target`` is the only domain.
    Lives here, free of torch, because the Snakefile calls it while planning the DAG."""
    seen: list[str] = []
    for d in domains:
        if d != target and d not in seen:
            seen.append(d)
    return seen


def evalsets(run: Run, cfg: dict) -> list[str]:
    """Evaluation sets of a run: 'general' plus in-domain holdouts ('indomain' for a trained run on its
    own domain; 'indomain_<domain>' for every domain for the untrained base model), and 'adversarial' when
    ``eval.adversarial.source`` is set. An OpSwap run has
    only the task set 'opswap' (its tier's holdout problems, scored by exact match, not judged)."""
    if is_opswap(run.dataset):
        return ["opswap"]
    if is_benign_task(run.dataset):  # its held-out questions, scored by exact match (question set <task>)
        return [run.dataset]
    extra = ["adversarial"] if cfg["eval"]["adversarial"]["source"] else []
    if run.dataset == BASE_DATASET:
        return ["general"] + [f"indomain_{d}" for d in cfg["data"]["em"]["domains"]] + extra
    return ["general", "indomain"] + extra


def question_set(run_dataset: str, evalset: str) -> str:
    """Name of the question file an evalset of a run reads (results/data/questions/<name>.parquet)."""
    if evalset == "indomain":
        return f"indomain_{run_dataset}"
    if evalset == "opswap":
        return run_dataset
    return evalset
