"""Running a stage from a Snakemake script (:func:`run_stage`: the rule's log and threads), and the small helpers
several stage families share: the sampling settings, a run's question sets, a model loaded for forward passes, the
judge's usage logged."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet

log = logging.getLogger("emguard")


# --------------------------------------------------------------------------------------------------
# Running a stage from a Snakemake script
# --------------------------------------------------------------------------------------------------

def run_stage(smk, fn: Callable[..., Any], **kwargs) -> Any:
    """Run ``fn(**kwargs)`` with logging (and stderr) sent to the rule's log file and torch limited to
    the rule's threads."""
    threads = int(getattr(smk, "threads", 1) or 1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    log_path = smk.log[0] if len(smk.log) else None
    with _logging_to(log_path):
        log.info("stage %s: %s", fn.__name__, kwargs)
        try:
            return fn(**kwargs)
        except BaseException:
            log.exception("stage %s failed", fn.__name__)
            raise


@contextlib.contextmanager
def _logging_to(path: str | None):
    if path is None:
        logging.basicConfig(level=logging.INFO)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_stderr = sys.stderr
        sys.stderr = fh
        try:
            yield
        finally:
            sys.stderr = old_stderr
            root.removeHandler(handler)


# --------------------------------------------------------------------------------------------------
# Shared by several stage families
# --------------------------------------------------------------------------------------------------

def sampling_settings(generation: dict):
    from emguard.generate import SamplingSettings

    return SamplingSettings(max_new_tokens=generation["max_new_tokens"], temperature=generation["temperature"],
                            top_p=generation["top_p"], batch_size=generation["batch_size"])


def read_question_sets(questions: dict[str, str]) -> pd.DataFrame:
    """The question files of a run's evalsets (evalset -> path) as one table with an ``evalset`` column."""
    if not questions:
        from emguard.errors import InputError

        raise InputError("no question set given (a run needs at least one evalset)")
    parts = [read_parquet(path, schemas.QUESTION).assign(evalset=name) for name, path in questions.items()]
    return pd.concat(parts, ignore_index=True)


def _inference_model(model_path: str, dtype: str, device: str, adapter: str | None):
    """The base model, with a run's adapter when given, for forward passes only. In float32 the adapter is folded
    into the weights (W + B A once: every forward then runs plain linears, no LoRA matmuls); not in bf16, where
    rounding W + B A would erase most of a small update."""
    from emguard.models import load_model, resolve_dtype

    model = load_model(model_path, dtype=dtype, device=device, adapter=adapter)
    if adapter is not None and resolve_dtype(dtype, device) == "float32":
        model = model.merge_and_unload()
    return model


def _log_judge_usage(judge, stage: str, usage_out: str | None = None) -> None:
    """The judge's calls, cache hits, tokens and cost (an API judge's spend on this stage) in the job's log and,
    with ``usage_out``, in a usage file the report's judge usage table sums (a one-record list, as the judge jobs
    write)."""
    from emguard.judge.build import judge_usage_record

    record = judge_usage_record(judge, stage=stage)
    log.info("judge usage (%s): %s", stage, record)
    if usage_out:
        from emguard.io import write_json

        write_json([record], usage_out)
