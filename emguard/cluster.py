"""What the workflow exports to its jobs' environment: model sizes for the cluster profiles' resource
expressions, and the source tree on ``PYTHONPATH`` for ``--sdm conda``.

Snakemake evaluates the ``set-resources`` / ``default-resources`` expressions of a profile with only
``wildcards``, ``input``, ``threads``, ``attempt`` and the environment (``$VAR`` is expanded) in scope, not
the workflow config. The workflow therefore exports, once the config is validated, the sizes the profiles
scale memory and runtime by (see ``profiles/slurm/config.yaml``):

``EMGUARD_MODEL_B``
    parameters of the base model in billions: ``model.params_b``, else read from ``model.source.hub`` or
    ``model.name`` (``Qwen/Qwen2.5-7B-Instruct`` -> 7, ``smollm2-135m`` -> 0.135); with several base models
    (``models``) the largest, for jobs that belong to no one model;
``EMGUARD_MODELS_B``
    each model's size by name, as a Python dict literal (``{'qwen2.5-7b-instruct': 7.0}``): the profile's
    expressions look the job's ``{model}`` wildcard up in it,
    ``$EMGUARD_MODELS_B.get(wildcards.get('model'), $EMGUARD_MODEL_B)``, so each model's jobs get its own memory
    and runtime;
``EMGUARD_JUDGE_B``
    the same for the judge (``judge.model``; ``base`` = the base model);
``EMGUARD_JUDGE_GPUS``
    1 when the judge runs a local model (``judge.backend: hf``), 0 for an API backend.

A value already set in the environment wins, so ``EMGUARD_MODEL_B=70 snakemake --profile profiles/slurm``
sizes jobs for a model whose name carries no size (and, unless ``EMGUARD_MODELS_B`` is set too, every model's
jobs: the per-model sizes are then that value).

``PYTHONPATH`` gets the workflow's source tree in front, so a job imports the ``emguard`` next to the
Snakefile it runs -- also inside the conda environments of ``envs/``, which hold only third-party packages
(an edit to the package then needs no new environment, and the code a rule's ``code_version`` hashes is
the code it runs).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from emguard.config import models

#: assumed when a name carries no size: jobs are sized for a 7B model, the paper's
DEFAULT_BILLIONS = 7.0

_SIZE = re.compile(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([bBmM])(?![A-Za-z0-9])")


def params_billions(model_id: str | None, default: float = DEFAULT_BILLIONS) -> float:
    """Parameters in billions from a model name or hub id (the last size token wins: ``org/x-1.5B``)."""
    if not model_id:
        return default
    found = _SIZE.findall(str(model_id).rsplit("/", 1)[-1])
    if not found:
        return default
    number, unit = found[-1]
    value = float(number) / (1000.0 if unit in "mM" else 1.0)
    return value if value > 0 else default


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def model_billions(model: dict) -> float:
    """A base model's size for the profiles: its ``params_b``, else the size in its hub id or name."""
    if model.get("params_b"):
        return float(model["params_b"])
    return params_billions(model["source"].get("hub") or model["name"])


def _models_literal(sizes: dict[str, float]) -> str:
    return "{" + ", ".join(f"{name!r}: {_fmt(b)}" for name, b in sizes.items()) + "}"


def profile_env(config: dict) -> dict[str, str]:
    """The variables the cluster profiles read, from a validated config (one ``model`` or several ``models``)."""
    sizes = {m["name"]: model_billions(m) for m in models(config)}
    model_b = max(sizes.values())
    judge = config.get("judge", {})
    judge_model = judge.get("model", "base")
    judge_b = model_b if judge_model in (None, "base") else params_billions(judge_model)
    return {
        "EMGUARD_MODEL_B": _fmt(model_b),
        "EMGUARD_MODELS_B": _models_literal(sizes),
        "EMGUARD_JUDGE_B": _fmt(judge_b),
        "EMGUARD_JUDGE_GPUS": "1" if judge.get("backend", "hf") == "hf" else "0",
    }


def export_workflow_env(config: dict, source_root: str | os.PathLike,
                        environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the profile variables in ``environ`` (default ``os.environ``) unless already set, and put
    ``source_root`` first on ``PYTHONPATH``; returns the profile variables. A size the user set in
    ``EMGUARD_MODEL_B`` (without ``EMGUARD_MODELS_B``) sizes every model's jobs."""
    environ = os.environ if environ is None else environ
    values = profile_env(config)
    if "EMGUARD_MODEL_B" in environ and "EMGUARD_MODELS_B" not in environ:
        names = [m["name"] for m in models(config)]
        values["EMGUARD_MODELS_B"] = "{" + ", ".join(f"{n!r}: ({environ['EMGUARD_MODEL_B']})" for n in names) + "}"
    for key, value in values.items():
        environ.setdefault(key, value)
    root = str(os.path.abspath(source_root))
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    environ["PYTHONPATH"] = os.pathsep.join([root, *rest])
    return {key: environ[key] for key in profile_env(config)}
