"""Checkpoint stages (rules of ``checkpoints.smk``; :mod:`emguard.checkpoints`): the runs' intermediate adapters
evaluated like the final one, and each run's checkpoint curve assembled from them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet
from emguard.stages.common import _inference_model
from emguard.stages.probes import _probe_table

log = logging.getLogger("emguard")


def checkpoint_questions(questions_path: str, out: str, *, samples: int) -> None:
    """The general questions at a checkpoint: the prepared set with ``samples`` answers per question
    (``checkpoints.general_samples``, a cheaper count than the final evaluation's)."""
    df = read_parquet(questions_path, schemas.QUESTION)
    log.info("checkpoints.general_samples = %d answers per general question at each checkpoint (final: %s)", samples,
             ", ".join(str(n) for n in sorted(set(df["samples"]))))
    write_parquet(schemas.validate(df.assign(samples=int(samples)), "question", out), out)


def _task_table(model, tok, em_path: str, *, subset: str, batch_size: int, max_length: int | None,
                label: str) -> pd.DataFrame:
    """The task metric of an EM run's adapter: the answer NLL of every held-out answer of the run's fine-tuning
    subset (:func:`emguard.checkpoints.holdout_nll`) under ``model`` as it is."""
    from emguard.checkpoints import holdout_answers, holdout_nll

    rows = holdout_answers(read_parquet(em_path, schemas.CHAT), subset, em_path)
    nll = holdout_nll(model, tok, rows, batch_size=batch_size, max_length=max_length)
    log.info("%s: mean holdout NLL %.4f nats/token over %d %s answers", label, float(nll["nll"].mean()),
             int(nll["nll"].notna().sum()), subset)
    return nll


def adapter_signals_stage(model_path: str, adapter: str, em_path: str, probes_path: str, out_task: str,
                          out_probes: str, *, subset: str, batch_size: int, max_length: int | None, probes: dict,
                          name: str, dtype: str, device: str, persona_vectors: str | None = None,
                          persona_layer: int | None = None) -> None:
    """An EM run's adapter at a point of its checkpoint curve (a checkpoint, or the final adapter), measured without
    the judge in one model load: the task metric (:func:`_task_table`) and the probe NLLs with the persona projection
    (:func:`probe_nll_stage`'s table). One job instead of two: each heavy job pays ~7 s of imports and a model
    load here, a GPU allocation and a model load on a cluster."""
    from emguard.models import load_tokenizer

    model, tok = _inference_model(model_path, dtype, device, adapter), load_tokenizer(model_path)
    task = _task_table(model, tok, em_path, subset=subset, batch_size=batch_size, max_length=max_length, label=adapter)
    nll = _probe_table(model, tok, probes_path, probes=probes, name=name, persona_vectors=persona_vectors,
                       persona_layer=persona_layer)
    write_parquet(task, out_task)
    write_parquet(nll, out_probes)


def checkpoint_curve_stage(meta_path: str, base_nll_path: str, out: str, *, run_info: dict, steps: list[int],
                           task_paths: list[str], probe_paths: list[str], metrics_paths: list[str] = (),
                           probes: dict, confidence: float) -> None:
    """One run's checkpoint curve (:func:`emguard.checkpoints.assemble_curve`), indexed by step.

    ``steps``: the intermediate checkpoints; ``task_paths`` (holdout NLL tables, or exact-match task metrics rows),
    ``probe_paths`` (probe NLLs) and ``metrics_paths`` (judged metrics rows; empty: the run is not judged) hold
    their files in that order, then the final adapter's. The final adapter's step is the run's last
    (``run.json``: ``steps``). ``probes``: ``bootstrap`` and ``seed`` of the shift intervals."""
    from emguard import checkpoints as ck
    from emguard.errors import InputError
    from emguard.likelihood.probes import PROBE_NLL

    try:
        final_step = int(json.loads(Path(meta_path).read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: no training step count (run.json 'steps'): {exc}") from exc
    points = [(int(s), ck.step_label(s)) for s in steps] + [(final_step, ck.FINAL)]
    for name, paths in (("task_paths", task_paths), ("probe_paths", probe_paths),
                        ("metrics_paths", metrics_paths or [None] * len(points))):
        if len(paths) != len(points):
            raise InputError(f"checkpoint curve of {run_info['run_id']}: {len(paths)} {name} for {len(points)} "
                             "checkpoints (the intermediate ones and the final adapter)")
    exact = ck.task_metric(run_info["dataset"]) == ck.EXACT_MATCH
    task = pd.DataFrame([{"checkpoint": label, **(ck.exact_match_summary(read_parquet(p), where=p) if exact else
                                                  ck.task_nll_summary(read_parquet(p, ck.TASK_NLL_COLUMNS),
                                                                      confidence=confidence, where=p))}
                         for (_, label), p in zip(points, task_paths)])
    base = read_parquet(base_nll_path, PROBE_NLL)
    shifts = []
    for (_, label), p in zip(points, probe_paths):
        nll = read_parquet(p, PROBE_NLL)
        shifts.append({"checkpoint": label, **ck.checkpoint_shift(
            base, nll, run_info, n_bootstrap=probes["bootstrap"], confidence=confidence, seed=probes["seed"], where=p),
            ck.PERSONA_COLUMN: ck.checkpoint_persona(base, nll, run_info["dataset"], where=p)})
    shifts = pd.DataFrame(shifts)
    metrics = None
    if metrics_paths:
        frames = []
        for (_, label), p in zip(points, metrics_paths):
            m = read_parquet(p, ["evalset", "checkpoint"])
            found = sorted(set(m["checkpoint"].astype(str)))
            if found != [label]:  # a stale file of another checkpoint would put its rates at this step
                raise InputError(f"{p}: metrics of checkpoint(s) {', '.join(found)}, expected {label!r}")
            frames.append(m)
        metrics = pd.concat(frames, ignore_index=True)
    curve = ck.assemble_curve(points, run=run_info, task=task, shifts=shifts, metrics=metrics,
                              where=f"checkpoint curve of {run_info['run_id']}")
    write_parquet(curve, out)
