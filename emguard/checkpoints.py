"""Evaluation over training checkpoints: which steps and runs, where their files lie, one curve per run.

The config's ``checkpoints`` section (off by default) asks for intermediate checkpoints, ``every`` N optimiser
steps (N, 2N, ... strictly before ``training.max_steps``) or at a list of ``steps``, of the runs ``runs``
selects. The DAG lists every checkpoint before any data exists, so a step list is known at planning time:
``every`` needs ``training.max_steps`` (the run's length), and a listed step must lie before the run's last
step (checked here when ``training.max_steps`` is set, else when training starts:
:class:`emguard.training.TrainSettings` ``checkpoint_steps``). The last step is never a checkpoint of its own:
the run's final adapter is the last checkpoint, evaluated once, by the run's ordinary evaluation.

Per checkpoint (``<run>/checkpoints/step-<N>/``, written by training) the evaluation mirrors the final
adapter's: answers to the general questions (``general_samples`` per question, a cheaper count) and the
in-domain holdout, judged, as metrics rows (judged runs only, :func:`judged_checkpoints`: not with
``checkpoints.judged`` false); the task metric (:func:`task_metric`); the probe NLLs of the judge-free likelihood
shift, with the persona projection of each probe's aligned answer where the model has persona vectors
(``checkpoints.persona``). Its files lie in
:func:`eval_dir`. :func:`assemble_curve` joins them, and the final adapter's, into one table per run indexed
by step (``<run>/checkpoint_curve.parquet``, :data:`CURVE_COLUMNS`), the input of :mod:`emguard.dynamics`.

Everything but :func:`holdout_nll` is pandas only: the Snakefile imports this module while planning.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from emguard.config import METHOD_GRIDS, Run, expand_runs, is_judged, is_task_dataset
from emguard.errors import ConfigError, InputError
from emguard.io import check_columns

#: the label of the run's final adapter in generations / metrics rows (``checkpoint`` column) and in curves
FINAL = "final"
#: the task metric of an EM dataset (lower is better) and of a task dataset (OpSwap, FoQA, GSM8K; higher)
HOLDOUT_NLL, EXACT_MATCH = "holdout_nll", "exact_match"
HIGHER_IS_BETTER = {HOLDOUT_NLL: False, EXACT_MATCH: True}
#: ``checkpoints.runs`` names that select a trained run besides the defense methods: the baselines
BASELINE_METHODS = ("aligned", "misaligned", "sft")

#: columns of a run's holdout NLL table (``task_nll.parquet``): one row per held-out answer
TASK_NLL_COLUMNS = ("id", "n_answer_tokens", "nll")

#: columns of ``checkpoint_curve.parquet``, one row per checkpoint, the final adapter last. The rate columns
#: (:data:`RATE_COLUMNS`) only where the run is judged.
RUN_COLUMNS = ("model", "dataset", "method", "setting", "seed", "run_id")
STEP_COLUMNS = ("step", "checkpoint", "is_final", "judged")
TASK_COLUMNS = ("task_metric_name", "task_metric", "task_metric_lo", "task_metric_hi", "task_n")
SHIFT_COLUMNS = ("ll_shift", "ll_shift_lo", "ll_shift_hi", "ll_shift_indomain", "ll_shift_indomain_lo",
                 "ll_shift_indomain_hi")
RATE_COLUMNS = ("n_answers", "misaligned_rate", "misaligned_lo", "misaligned_hi", "incoherent_rate", "incoherent_lo",
                "incoherent_hi", "indomain_misaligned_rate", "indomain_misaligned_lo", "indomain_misaligned_hi")
#: the persona projection relative to the untrained model (the monitor's ``persona_proj``, offline; NaN where the
#: probe jobs did not project: ``checkpoints.persona`` off or a model without a steering layer)
PERSONA_COLUMN = "persona_proj"
CURVE_COLUMNS = (*RUN_COLUMNS, *STEP_COLUMNS, *TASK_COLUMNS, *SHIFT_COLUMNS, PERSONA_COLUMN, *RATE_COLUMNS)


# --------------------------------------------------------------------------------------------------- planning

def step_label(step: int) -> str:
    """A checkpoint's name: its folder under ``<run>/checkpoints/`` and its ``checkpoint`` value in answers."""
    return f"step-{int(step)}"


def adapter_dir(run_path: str, step: int) -> str:
    """The adapter training writes at ``step`` (``emguard.training``: ``out_dir/checkpoints/step-<N>/``)."""
    return f"{run_path}/checkpoints/{step_label(step)}"


def eval_dir(run_path: str, step: int) -> str:
    """Where a checkpoint's evaluation files lie (generations, judgments, metrics, task metric, probe NLLs)."""
    return f"{run_path}/checkpoint_eval/{step_label(step)}"


def enabled(cfg: dict) -> bool:
    """Whether the config asks for checkpoint evaluation (``checkpoints.every`` or ``checkpoints.steps``)."""
    section = cfg.get("checkpoints") or {}
    return bool(section.get("every") or section.get("steps"))


def planned_steps(section: Mapping, max_steps: int) -> list[int]:
    """The intermediate checkpoint steps, ascending, every one strictly before the run's last step.

    ``every`` N: N, 2N, ... below ``max_steps`` (``training.max_steps``, which must be set: without it the
    run's length depends on data the DAG has not built yet). ``steps``: the list as given; with ``max_steps``
    set each must lie below it (the last step is the final adapter, evaluated as the run itself). Neither:
    ``[]`` (off). Errors name the config key."""
    every, steps = section.get("every"), list(section.get("steps") or [])
    if every and steps:
        raise ConfigError("config key 'checkpoints': set checkpoints.every or checkpoints.steps, not both")
    if every:
        if max_steps < 1:
            raise ConfigError("config key 'checkpoints.every': needs training.max_steps (the DAG lists every checkpoint "
                              "before any data exists, so the run's length must be known); or list checkpoints.steps")
        out = list(range(int(every), int(max_steps), int(every)))
        if not out:
            raise ConfigError(f"config key 'checkpoints.every': {every} leaves no checkpoint before the last step "
                              f"(training.max_steps = {max_steps}); the final adapter is evaluated anyway")
        return out
    if max_steps >= 1:
        for i, s in enumerate(steps):
            if s >= max_steps:
                raise ConfigError(f"config key 'checkpoints.steps.{i}': step {s} is not before the run's last step "
                                  f"(training.max_steps = {max_steps}); the final adapter is that checkpoint, "
                                  "evaluated as the run itself")
    return sorted(int(s) for s in steps)


def method_family(method: str) -> str:
    """A run's method as the config names it: ``interleave`` for ``interleave_<variant>``, else the method."""
    return "interleave" if method.startswith("interleave_") else method


def selects(run: Run, names) -> bool:
    """Whether ``checkpoints.runs`` (``all`` or a list of method names: baselines, config method keys such as
    ``kl`` or ``interleave``, or a run's method such as ``interleave_plus``) selects ``run``. The untrained
    model has no checkpoints and is never selected."""
    if not run.trained:
        return False
    return names == "all" or run.method in names or method_family(run.method) in names


def checkpoint_runs(runs: Sequence[Run], cfg: dict) -> list[Run]:
    """The runs whose checkpoints are evaluated (none when the section is off): those whose method
    ``checkpoints.runs`` selects and, when ``checkpoints.datasets`` lists any, whose dataset it lists (so the
    selection is always every selected method on every selected dataset)."""
    if not enabled(cfg):
        return []
    names, datasets = cfg["checkpoints"]["runs"], cfg["checkpoints"].get("datasets")
    return [r for r in runs if selects(r, names) and (datasets is None or r.dataset in datasets)]


def judged_checkpoints(run: Run, cfg: dict) -> bool:
    """Whether a checkpointed run's checkpoints are answered and judged: an EM run that ``eval.judged`` judges,
    unless ``checkpoints.judged`` is false (then every checkpoint is measured judge-free only: the task metric,
    the likelihood shift and the persona projection). Task runs are scored by exact match, as their final
    adapter is."""
    return bool(cfg["checkpoints"].get("judged", True)) and not is_task_dataset(run.dataset) and is_judged(run, cfg)


def check_config(cfg: dict) -> None:
    """The ``checkpoints`` section against the rest of the config (:func:`emguard.config.load` calls it)."""
    section = cfg["checkpoints"]
    steps = planned_steps(section, cfg["training"]["max_steps"])
    names = section["runs"]
    if names != "all":
        known = {*BASELINE_METHODS, *METHOD_GRIDS}
        for i, name in enumerate(names):
            if name == "untrained":
                raise ConfigError(f"config key 'checkpoints.runs.{i}': the untrained model is not trained, so it has "
                                  "no checkpoints")
            if name not in known and method_family(name) not in known:
                raise ConfigError(f"config key 'checkpoints.runs.{i}': unknown method {name!r} (known: "
                                  f"{', '.join(sorted(known))}, or all)")
    if not steps:
        return
    runs = expand_runs(cfg)
    datasets = section.get("datasets")
    if datasets is not None:
        known = sorted({r.dataset for r in runs if r.trained})
        for i, d in enumerate(datasets):
            if d not in known:
                raise ConfigError(f"config key 'checkpoints.datasets.{i}': no trained run on {d!r} (the config's "
                                  f"trained datasets: {', '.join(known)})")
    chosen = checkpoint_runs(runs, cfg)
    if not chosen:
        where = "checkpoints.runs" if datasets is None else "checkpoints.runs / checkpoints.datasets"
        raise ConfigError(f"config key '{where}': {names}{'' if datasets is None else f' on {datasets}'} selects "
                          "none of the config's trained runs")
    judged_em = [r for r in chosen if judged_checkpoints(r, cfg)]
    if judged_em and "untrained" not in cfg["experiments"]["baselines"]:
        raise ConfigError("config key 'experiments.baselines': the EM onset of judged checkpoints is measured against "
                          "the untrained model's judged rate; add 'untrained' (or set checkpoints.judged false)")


def task_metric(dataset: str) -> str:
    """The task metric of a run's checkpoints: exact match on a task dataset (OpSwap, FoQA, GSM8K), else the
    mean answer NLL of the held-out fine-tuning answers (:data:`HOLDOUT_NLL`)."""
    return EXACT_MATCH if is_task_dataset(dataset) else HOLDOUT_NLL


# ----------------------------------------------------------------------------------------- the task metric

def holdout_answers(em: pd.DataFrame, subset: str, where: str) -> pd.DataFrame:
    """The held-out rows of ``subset`` (the run's fine-tuning subset) of an EM table."""
    check_columns(em, ("id", "messages", "subset", "split"), where)
    rows = em[(em["subset"] == subset) & (em["split"] == "holdout")].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"{where}: no holdout rows in subset {subset!r}: nothing to measure the task on")
    return rows


def holdout_nll(model, tokenizer, rows: pd.DataFrame, *, batch_size: int, max_length: int | None) -> pd.DataFrame:
    """Answer-only mean token NLL (nats/token) of every row's final answer under ``model`` as it is (the run's
    adapter already in it): :data:`TASK_NLL_COLUMNS`. ``max_length`` truncates as training does; an answer cut
    away entirely has NaN and no tokens."""
    from emguard.likelihood.nll import encode_conversations, mean_answer_nll
    from emguard.schemas import to_messages

    encoded = encode_conversations(tokenizer, [to_messages(m) for m in rows["messages"]], max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values = mean_answer_nll(model, encoded, pad_id, batch_size=batch_size)
    return pd.DataFrame({"id": rows["id"].astype(str).to_numpy(),
                         "n_answer_tokens": np.array([e.n_answer_tokens for e in encoded], dtype=np.int64),
                         "nll": values})


def task_nll_summary(nll: pd.DataFrame, *, confidence: float, where: str = "task NLL") -> dict:
    """The holdout NLL of one adapter: the mean over answers of their mean token NLL, with its Student t
    interval over answers (:func:`emguard.metrics.mean_interval`); answers without a scored token left out."""
    from emguard.metrics import mean_interval

    check_columns(nll, TASK_NLL_COLUMNS, where)
    values = pd.to_numeric(nll["nll"], errors="coerce").dropna()
    if values.empty:
        raise InputError(f"{where}: no answer with a scored token")
    mean, lo, hi = mean_interval(values.to_numpy(), confidence)
    return {"task_metric_name": HOLDOUT_NLL, "task_metric": mean, "task_metric_lo": lo, "task_metric_hi": hi,
            "task_n": int(len(values))}


def exact_match_summary(task_metrics: pd.DataFrame, where: str = "task metrics") -> dict:
    """Exact-match accuracy (percent, Wilson interval) from a task metrics row (``task_metrics.parquet``)."""
    check_columns(task_metrics, ("accuracy", "accuracy_lo", "accuracy_hi", "n_scored"), where)
    if len(task_metrics) != 1:
        raise InputError(f"{where}: expected one task metrics row, found {len(task_metrics)}")
    row = task_metrics.iloc[0]
    return {"task_metric_name": EXACT_MATCH, "task_metric": float(row["accuracy"]),
            "task_metric_lo": float(row["accuracy_lo"]), "task_metric_hi": float(row["accuracy_hi"]),
            "task_n": int(row["n_scored"])}


# ------------------------------------------------------------------------------------- the likelihood shift

def checkpoint_shift(base_nll: pd.DataFrame, run_nll: pd.DataFrame, run: Mapping, *, n_bootstrap: int,
                     confidence: float, seed: int, where: str = "probe NLL") -> dict:
    """The likelihood shift of one adapter (a checkpoint's or the final one) against the untrained model:
    ``ll_shift`` is the ``ood`` scope of :func:`emguard.likelihood.shift.run_shifts` (mean over the
    out-of-domain probe sets, as the training-time monitor measures it), ``ll_shift_indomain`` the run's own
    set (NaN where it has none: task datasets), each with its bootstrap interval.

    ``base_nll``: the untrained model's probe NLL rows (adapter ``base``); ``run_nll``: the adapter's, any
    adapter label (relabelled here); ``run``: the run's descriptors :data:`RUN_COLUMNS`."""
    from emguard.likelihood.probes import BASE
    from emguard.likelihood.shift import OOD, run_shifts

    base = base_nll[base_nll["adapter"] == BASE]
    labels = pd.unique(run_nll["adapter"])
    if len(labels) != 1:
        raise InputError(f"{where}: expected one adapter's rows, found {len(labels)} ({', '.join(map(str, labels))})")
    nll = pd.concat([base, run_nll.assign(adapter="checkpoint")], ignore_index=True)
    spec = {k: run[k] for k in RUN_COLUMNS} | {"adapter": "checkpoint"}
    shifts, _ = run_shifts(nll, [spec], n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, where=where)
    out = dict.fromkeys(SHIFT_COLUMNS, math.nan)
    for scope, prefix in ((OOD, "ll_shift"), ("indomain", "ll_shift_indomain")):
        hit = shifts[shifts["scope"] == scope]
        if len(hit):
            out.update({prefix: float(hit["shift"].iloc[0]), f"{prefix}_lo": float(hit["shift_lo"].iloc[0]),
                        f"{prefix}_hi": float(hit["shift_hi"].iloc[0])})
    return out


def checkpoint_persona(base_nll: pd.DataFrame, run_nll: pd.DataFrame, dataset: str, where: str = "probe NLL") -> float:
    """The persona projection of one adapter against the untrained model, as the training-time monitor measures
    it (:func:`emguard.likelihood.shift.persona_shift` over the out-of-domain probe sets, every set but
    ``dataset``'s): NaN when either table has no ``persona_proj`` column (the probe job did not project)."""
    from emguard.likelihood.probes import BASE
    from emguard.likelihood.shift import ood_probes, persona_shift

    if PERSONA_COLUMN not in base_nll.columns or PERSONA_COLUMN not in run_nll.columns:
        return math.nan
    try:
        base = ood_probes(base_nll[base_nll["adapter"] == BASE], dataset, where)
        run = ood_probes(run_nll, dataset, where)
    except InputError:  # no out-of-domain set (or no untrained rows): no projection to report, as ll_shift is NaN
        return math.nan
    return float(persona_shift(base, run, where))


# --------------------------------------------------------------------------------------------------- the curve

def _one_row(frame: pd.DataFrame, label: str, what: str, where: str) -> pd.Series:
    hit = frame[frame["checkpoint"].astype(str) == label]
    if len(hit) != 1:
        raise InputError(f"{where}: {what}: {len(hit)} rows for checkpoint {label!r}, expected one")
    return hit.iloc[0]


def assemble_curve(checkpoints: Sequence[tuple[int, str]], *, run: Mapping, task: pd.DataFrame, shifts: pd.DataFrame,
                   metrics: pd.DataFrame | None = None, where: str = "checkpoint curve") -> pd.DataFrame:
    """One run's curve, one row per checkpoint in step order, the final adapter last (:data:`CURVE_COLUMNS`).

    ``checkpoints``: ``(step, label)`` pairs, the intermediate ones (label ``step-<N>``) and the final adapter
    (label :data:`FINAL`, step = the run's last step); steps must increase and the final one come last.
    ``task`` and ``shifts``: one row per label (``checkpoint`` column) with :data:`TASK_COLUMNS` /
    :data:`SHIFT_COLUMNS` (and optionally :data:`PERSONA_COLUMN`, else NaN). ``metrics``: the judged metrics rows (:func:`emguard.metrics.run_metrics`, its
    ``checkpoint`` column the label) of every checkpoint, evalsets ``general`` (the misaligned and incoherent
    rates) and ``indomain`` (the in-domain misaligned rate, NaN where the run has none); None for a run that is
    not judged, whose curve then has no rate columns."""
    steps = [int(s) for s, _ in checkpoints]
    labels = [str(lab) for _, lab in checkpoints]
    if not checkpoints:
        raise InputError(f"{where}: no checkpoints")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise InputError(f"{where}: checkpoint steps {steps} do not increase (the final adapter must come last, "
                         "after every intermediate checkpoint)")
    if labels[-1] != FINAL or FINAL in labels[:-1]:
        raise InputError(f"{where}: the last checkpoint must be the final adapter ({FINAL!r}), once; got {labels}")
    check_columns(task, ("checkpoint", *TASK_COLUMNS), f"{where}: task metric")
    check_columns(shifts, ("checkpoint", *SHIFT_COLUMNS), f"{where}: likelihood shift")
    judged = metrics is not None
    if judged:
        check_columns(metrics, ("checkpoint", "evalset", *RATE_COLUMNS[:7]), f"{where}: metrics")
    rows = []
    for step, label in zip(steps, labels):
        row = {**{k: run[k] for k in RUN_COLUMNS}, "step": step, "checkpoint": label, "is_final": label == FINAL,
               "judged": judged}
        t = _one_row(task, label, "task metric", where)
        row.update({k: t[k] for k in TASK_COLUMNS})
        s = _one_row(shifts, label, "likelihood shift", where)
        row.update({k: s[k] for k in SHIFT_COLUMNS})
        row[PERSONA_COLUMN] = float(s[PERSONA_COLUMN]) if PERSONA_COLUMN in s.index else math.nan
        if judged:
            general = _one_row(metrics[metrics["evalset"] == "general"], label, "general metrics", where)
            row.update({k: general[k] for k in RATE_COLUMNS[:7]})
            indomain = metrics[(metrics["evalset"] == "indomain") & (metrics["checkpoint"].astype(str) == label)]
            for k in ("rate", "lo", "hi"):
                row[f"indomain_misaligned_{k}"] = float(indomain[f"misaligned_{k}"].iloc[0]) if len(indomain) else math.nan
        rows.append(row)
    columns = [c for c in CURVE_COLUMNS if judged or c not in RATE_COLUMNS]
    out = pd.DataFrame(rows, columns=columns)
    floats = [c for c in columns if c in (*TASK_COLUMNS[1:4], *SHIFT_COLUMNS, PERSONA_COLUMN, *RATE_COLUMNS[1:])]
    return out.astype({"step": "int64", "task_n": "int64", **({"n_answers": "int64"} if judged else {}),
                       **dict.fromkeys(floats, "float64")})
