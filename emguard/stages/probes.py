"""The judge-free EM measure's stages (rules of ``probes.smk``): the probe sets, each model's probe NLLs (with the
persona projection when asked), and the likelihood shifts across runs (:mod:`emguard.likelihood`)."""

from __future__ import annotations

import logging
import time

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet
from emguard.stages.common import _inference_model

log = logging.getLogger("emguard")


def prepare_probes(out: str, *, em_paths: dict[str, str], general: str | None, domains: bool,
                   max_per_domain: int | None, training_paths: list[str], whole_paths: list[str] = (),
                   general_per_category: int | None = None) -> None:
    """The probe sets of the judge-free EM measure (every EM domain's holdout triples and the general file, the
    first ``general_per_category`` probes of each of its categories when set),
    checked against every table a run trains on (``training_paths``: train splits; ``whole_paths``: files
    every row of which may be trained on, the interleaving pool). Fails, writing nothing, on any overlap."""
    from emguard.likelihood import probes as pr

    sets = []
    if domains:
        for domain, path in em_paths.items():
            sets.append(pr.domain_probes(read_parquet(path, schemas.CHAT), domain, max_per_domain, where=path))
    if general:
        sets.append(pr.first_per_category(pr.load_general_probes(general), general_per_category))
    probes = pd.concat(sets, ignore_index=True)
    pr.validate_probes(probes, out)
    training = {p: pr.trainable_rows(read_parquet(p, schemas.CHAT), whole=p in whole_paths)
                for p in [*training_paths, *whole_paths]}
    checked = pr.check_no_overlap(probes, training)
    log.info("%d probe triples in %d sets; none of their prompts occurs in %d training rows of %d files",
             len(probes), probes["probe_set"].nunique(), checked, len(training))
    write_parquet(probes, out)


def _probe_table(model, tok, probes_path: str, *, probes: dict, name: str | None, persona_vectors: str | None,
                 persona_layer: int | None) -> pd.DataFrame:
    """The probe NLL table of ``model`` as it is (see :func:`probe_nll_stage`)."""
    from emguard.likelihood.probes import BASE, PROBE, probe_nll

    table = read_parquet(probes_path, PROBE)
    persona = None
    if persona_vectors:
        from emguard.persona import layer_vector

        if persona_layer is None:
            raise ValueError("probe_nll_stage: persona_vectors given without persona_layer")
        vector = layer_vector(persona_vectors, persona_layer)
        persona = (vector / vector.norm(), int(persona_layer))
    start = time.perf_counter()
    nll = probe_nll(model, tok, table, name=name or BASE, batch_size=probes["batch_size"],
                    max_length=probes["max_length"], where=probes_path, persona=persona)
    log.info("%d probes x 2 answers in %.1f s", len(table), time.perf_counter() - start)
    return nll


def probe_nll_stage(model_path: str, probes_path: str, out: str, *, probes: dict, dtype: str, device: str,
                    adapter: str | None = None, name: str | None = None, persona_vectors: str | None = None,
                    persona_layer: int | None = None) -> None:
    """Both answers of every probe under one model: a run's (``adapter``, rows labelled with its run id
    ``name``) or the untrained model (no adapter, rows labelled ``base``). One job per run, not one for all:
    a run is scored as soon as it is trained, beside the other runs' evaluation, and a changed run rescores
    alone. With ``persona_vectors`` (and ``persona_layer``, a hidden-state index), column ``persona_proj``: each
    probe's aligned answer projected on that layer's unit persona vector, from the same forward pass."""
    from emguard.models import load_tokenizer

    model, tok = _inference_model(model_path, dtype, device, adapter), load_tokenizer(model_path)
    write_parquet(_probe_table(model, tok, probes_path, probes=probes, name=name, persona_vectors=persona_vectors,
                               persona_layer=persona_layer), out)


def probe_shifts_stage(nll_paths: list[str], out_shifts: str, out_summary: str, *, runs: list[dict],
                       probes: dict, confidence: float) -> None:
    """Per-run likelihood shifts (in-domain, each out-of-domain set, their aggregate) and excess over the
    Aligned run, with bootstrap intervals; and their across-seed summary. ``nll_paths``: the probe NLL
    tables, the untrained model's and every run's.

    With a learning-rate grid (settings tagged ``_lr<v>``, :func:`emguard.config.setting_lr`) each rate's runs
    are measured apart, with the untrained model, so a run's excess and ``vs_misaligned`` are taken against the
    Aligned and Misaligned runs of its own rate; the untrained model's rows are written once."""
    from emguard.config import setting_lr
    from emguard.likelihood.probes import PROBE_NLL
    from emguard.likelihood.shift import run_shifts

    paths = list(nll_paths)
    nll = pd.concat([read_parquet(p, PROBE_NLL) for p in paths], ignore_index=True)
    kw = dict(n_bootstrap=probes["bootstrap"], confidence=confidence, seed=probes["seed"],
              where=paths[0] if len(paths) == 1 else f"{len(paths)} probe NLL tables")
    by_rate: dict = {}
    for r in runs:
        by_rate.setdefault(setting_lr(str(r["setting"])), []).append(r)
    untagged = by_rate.pop(None, [])
    if len(by_rate) <= 1:
        shifts, summary = run_shifts(nll, runs, **kw)
    else:
        shared = {r["run_id"] for r in untagged}
        parts = [run_shifts(nll, untagged + rate_runs, **kw) for rate_runs in by_rate.values()]
        shifts = pd.concat([parts[0][0]] + [p[~p["run_id"].isin(shared)] for p, _ in parts[1:]], ignore_index=True)
        keys = {(r["model"], r["dataset"], r["method"], r["setting"]) for r in untagged}
        summary = pd.concat([parts[0][1]] + [s[[k not in keys for k in zip(s["model"], s["dataset"], s["method"],
                                                                             s["setting"])]]
                                             for _, s in parts[1:]], ignore_index=True)
    write_parquet(shifts, out_shifts)
    write_parquet(summary, out_summary)
