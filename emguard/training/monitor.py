"""An EM monitor that runs during training: two judge-free signals every few steps, and an optional stop.

**What.** :class:`EMMonitor` is a transformers ``TrainerCallback``. At each check it measures, on out-of-domain
probe sets (:mod:`emguard.likelihood.probes`; the run's own domain left out, :func:`build_monitor`), two signals
relative to the untrained model, i.e. the same weights with the LoRA adapter disabled:

* ``ll_shift``, the likelihood shift toward misaligned answers, in nats per token. With
  ``margin_i = NLL(aligned_i) - NLL(misaligned_i)`` (answer-only mean token NLL, scored by
  :func:`emguard.likelihood.probes.probe_nll`), it is the mean over probe sets of
  ``mean_i [margin_i(now) - margin_i(untrained)]``. That is the ``ood`` scope of
  :func:`emguard.likelihood.shift.run_shifts` (each set weighs the same, however many probes it has); with
  one set it is the mean over its probes. Positive means the misaligned answers became relatively likelier.
* ``persona_proj``, the persona projection. At hidden-state index ``persona_layer`` (numbered as in
  ``docs/architecture.md``), take the mean activation over each probe's response tokens (the span of
  :func:`emguard.persona.response_hidden_means`) and project it on the unit persona vector ``v / |v|``
  (:func:`emguard.likelihood.probes.probe_nll` with ``persona``: its ``persona_proj`` column). Take the
  difference to the untrained model probe by probe, its mean over probes within a set, then the mean over sets
  (:func:`emguard.likelihood.shift.persona_shift`). Positive means the model's states moved along the trait direction
  (positive-minus-negative in :func:`emguard.persona.persona_vectors`).

  The response is each probe's **aligned** answer, held fixed as teacher-forced text. The text is the same at
  every check and for the untrained model, so a change in the projection is a change in how the model
  represents a benign continuation. It is not a change in what the text says. The misaligned answers carry the
  trait in their own words: their projection is high under any model, and a change there would mix the text's
  content with the model's drift. The aligned answers have no generation cost and no sampling noise. A model
  that has taken on the persona should show it while it reads a benign answer too.

**When.** The first check is in ``on_train_begin``, before the first optimiser step. It runs one pass with the
adapter disabled (peft's ``disable_adapter()``; the trainer's own model, no second copy), which gives the
reference, and one pass as the model is, which gives step 0. Both signals are 0 at step 0, because a fresh LoRA
adapter has ``B = 0``. After that the monitor checks every ``every_steps`` optimiser steps in ``on_step_end``,
and once more at the last step. ``on_step_end`` runs after the optimiser step and outside
:meth:`EMGuardTrainer.training_step`, so a regulariser's ``step_context`` (the persona method's steering hook) is
not active during a check. Every pass runs in eval mode under ``torch.no_grad``, and the model's train mode is
restored afterwards. The persona projection is read by a forward hook of the probe pass on block
``persona_layer - 1``; it changes nothing and is removed when the pass ends, and a test checks that a run trains
to the same adapter with and without the monitor. A check also asks the trainer to log that step
(``control.should_log``), so each check has its own ``train_log.parquet`` row. :func:`emguard.training.train_model`
writes the two signals there as columns ``ll_shift`` and ``persona_proj``, with a step-0 row for the reference
check. When a threshold is set for a signal, the first check whose value exceeds it (strictly, like the offline
reading) sets ``control.should_training_stop``. Training then ends at that step. The adapter saved as
``adapter/`` is the model of that step. ``stop_step`` and ``stop_reason`` are recorded, and ``train_model``
returns them as ``monitor_stop_step`` and ``monitor_stop_reason``.

**Cost.** A check is forward passes only: no generation, no backward pass, no judge. For ``P`` probes it is one
pass over ``P`` packed rows, each prompt once and then both answers (:mod:`emguard.likelihood.packed`). Both
signals come from that pass: the NLLs for ``ll_shift`` and, through the hook, the aligned answers' states for
``persona_proj``. With the 32 general probes under SmolLM2-135M-Instruct's template a packed row holds ~170
tokens (prompt ~51, answers ~59 and ~61), so a check runs ~5,500 tokens forward; a training step on 64
prompt-answer rows of that size (~110 tokens) runs ~7,000 tokens forward and backward, about three forward
passes' worth, so a check costs about a quarter of such a step. The persona projection used to be a second
pass over ``P`` prompt-and-aligned-answer rows with ``output_hidden_states``: measured on a CPU with that model
and those probes, it took ~70-75% of the probe pass's time again, a check ~1.8x as long as now, while the hook
costs nothing measurable (within the ~2% run-to-run noise). A model that cannot pack (flash attention) still
takes that second pass. Step 0 costs twice a check. A run of ``S`` steps makes ``floor(S / every_steps) + 2``
checks at most. Memory is that of an inference batch of ``batch_size`` packed rows, plus one block's output held
for the hook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from emguard.errors import InputError
from emguard.likelihood.probes import BASE, PERSONA_PROJ, PROBE, probe_nll, validate_probes
from emguard.likelihood.shift import margins, ood_probes, persona_shift, set_means

log = logging.getLogger(__name__)

#: signal columns the monitor adds to ``train_log.parquet``, one value per check (NaN on other rows)
SIGNALS = ["ll_shift", "persona_proj"]

#: adapter label of the model as it is at a check, in the monitor's probe NLL tables
CURRENT = "current"


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class MonitorSettings:
    """When the monitor checks and when it stops a run; ``dataclasses.fields(...)[i].metadata["help"]`` per field."""

    every_steps: int = _f(10, "check every N optimiser steps (also at step 0, before training, and at the last step)")
    ll_shift_threshold: float | None = _f(None, "stop training at the first check whose ll_shift (nats/token) is "
                                               ">= this; None = never stop on it")
    persona_threshold: float | None = _f(None, "stop training at the first check whose persona_proj is >= this; "
                                              "None = never stop on it")
    batch_size: int = _f(16, "probe rows per forward pass")
    max_length: int | None = _f(None, "a probe over this many tokens is refused (never cut); None = no limit")

    def __post_init__(self):
        if not isinstance(self.every_steps, int) or self.every_steps < 1:
            raise ValueError(f"MonitorSettings.every_steps: must be an integer >= 1, got {self.every_steps!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"MonitorSettings.batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"MonitorSettings.max_length: must be >= 8 or None, got {self.max_length!r}")
        for name in ("ll_shift_threshold", "persona_threshold"):
            value = getattr(self, name)
            # both signals are 0 on the untrained model by definition: a threshold <= 0 would stop every run at once
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"MonitorSettings.{name}: must be a positive number or None, got {value!r} (the "
                                 "signals are 0 on the untrained model, so a threshold <= 0 stops before training)")

    def thresholds(self) -> dict[str, float]:
        """``{signal: threshold}`` of the signals that can stop training."""
        pairs = (("ll_shift", self.ll_shift_threshold), ("persona_proj", self.persona_threshold))
        return {name: float(t) for name, t in pairs if t is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def likelihood_shift(reference: pd.DataFrame, current: pd.DataFrame, where: str = "monitor") -> float:
    """``ll_shift`` from two probe NLL tables (:data:`emguard.likelihood.probes.PROBE_NLL`): ``reference`` under the
    untrained model, ``current`` under the model at a check. Margins come from
    :func:`emguard.likelihood.shift.margins` and are paired by probe id within each set."""
    nll = pd.concat([reference.assign(adapter=BASE), current.assign(adapter=CURRENT)], ignore_index=True)
    m = margins(nll, where)
    per_set = []
    for probe_set, base in m[BASE].items():
        now = m[CURRENT][probe_set]
        per_set.append(float((now - base.reindex(now.index)).mean()))
    return float(np.mean(per_set))


def persona_projection(model, tokenizer, probes: pd.DataFrame, unit_vector: torch.Tensor, layer: int, *,
                       batch_size: int = 16, max_length: int | None = None) -> float:
    """Mean over probe sets of the mean over probes of ``<h_layer(aligned answer), unit_vector>``, where
    ``h_layer`` is the mean hidden state over the aligned answer's response tokens at hidden-state index
    ``layer``, under ``model`` as it is: the :data:`~emguard.likelihood.probes.PERSONA_PROJ` column of
    :func:`emguard.likelihood.probes.probe_nll` (one packed pass; a probe over ``max_length`` is refused)."""
    table = probe_nll(model, tokenizer, probes, batch_size=batch_size, max_length=max_length,
                      persona=(unit_vector, layer))
    return set_means(table[PERSONA_PROJ].to_numpy(), table["probe_set"].to_numpy())


def _unwrap(model):
    """The peft model behind a distributed wrapper (accelerate's DDP keeps it as ``.module``)."""
    return getattr(model, "module", model)


class EMMonitor(TrainerCallback):
    """Judge-free EM signals during training, and an optional stop: see :mod:`emguard.training.monitor`.

    ``probes``: a probe table (:data:`emguard.likelihood.probes.PROBE`), the out-of-domain sets only (the
    caller leaves the run's own domain out; :func:`build_monitor` does). ``persona_vector`` (``[hidden]``)
    and ``persona_layer`` (hidden-state index 1..n_layers) are given together or not at all. Without them,
    ``persona_proj`` is NaN. ``tokenizer`` defaults to the trainer's ``processing_class``.

    After training: ``records`` (one dict per check: ``step``, ``ll_shift``, ``persona_proj``),
    :meth:`frame`, ``stop_step`` and ``stop_reason`` (None when it did not stop the run), and ``reference``
    (the untrained model's probe NLL table and ``persona_proj`` before subtraction).
    """

    def __init__(self, probes: pd.DataFrame, settings: MonitorSettings | None = None, *,
                 persona_vector: torch.Tensor | None = None, persona_layer: int | None = None, tokenizer=None,
                 where: str = "monitor probes"):
        validate_probes(probes, where)
        if len(probes) == 0:
            raise InputError(f"{where}: the monitor needs at least one probe")
        if (persona_vector is None) != (persona_layer is None):
            raise ValueError("EMMonitor: give persona_vector and persona_layer together, or neither")
        self.probes = probes.reset_index(drop=True)
        self.settings = settings or MonitorSettings()
        self.where = where
        self.tokenizer = tokenizer
        self.persona_layer = None if persona_layer is None else int(persona_layer)
        self.unit_vector = None
        if persona_vector is not None:
            v = torch.as_tensor(persona_vector).detach().float().cpu()
            if v.dim() != 1 or not torch.isfinite(v).all() or float(v.norm()) == 0.0:
                raise ValueError(f"EMMonitor: persona_vector must be a finite, non-zero 1-D tensor, got shape "
                                 f"{tuple(v.shape)}, norm {float(v.norm()) if v.numel() else 0.0}")
            self.unit_vector = v / v.norm()
        self._reset()

    def _reset(self) -> None:
        self.records: list[dict[str, float]] = []
        self.reference: dict[str, Any] = {}
        self.stop_step: int | None = None
        self.stop_reason: str | None = None

    # -- checks -------------------------------------------------------------------------------------
    def _bind(self, model) -> None:
        """Layer and vector size against the model, before the first pass."""
        if self.unit_vector is None:
            return
        from emguard.steering import decoder_layers

        n = len(decoder_layers(model))
        if not 1 <= self.persona_layer <= n:
            raise ValueError(f"EMMonitor: persona_layer {self.persona_layer} outside 1..{n} (hidden-state index "
                             "of a decoder block's output)")
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = int(base.config.hidden_size)
        if self.unit_vector.numel() != hidden:
            raise ValueError(f"EMMonitor: persona_vector has {self.unit_vector.numel()} entries, the model's "
                             f"hidden size is {hidden}")

    def measure(self, model, *, untrained: bool = False) -> tuple[pd.DataFrame, float]:
        """One pass over the probes: their NLL table (with the per-probe ``persona_proj`` column when the monitor
        has a vector) and the raw persona projection, the mean over sets of its set means (NaN without a vector),
        under ``model`` as it is, or with its adapter disabled (``untrained``). The model is in eval mode and
        under ``torch.no_grad`` for the pass, and its train mode is restored afterwards."""
        net = _unwrap(model)
        if untrained and not hasattr(net, "disable_adapter"):
            raise TypeError(f"EMMonitor: the model ({type(net).__name__}) has no adapter to disable; the "
                            "monitor measures a peft (LoRA) model against its own base weights")
        s = self.settings
        persona = None if self.unit_vector is None else (self.unit_vector, self.persona_layer)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), (net.disable_adapter() if untrained else contextlib.nullcontext()):
                nll = probe_nll(net, self.tokenizer, self.probes, name=BASE if untrained else CURRENT,
                                batch_size=s.batch_size, max_length=s.max_length, where=self.where, persona=persona)
        finally:
            net.train(was_training)
        proj = math.nan if persona is None else set_means(nll[PERSONA_PROJ].to_numpy(), nll["probe_set"].to_numpy())
        return nll, proj

    def signals(self, model) -> dict[str, float]:
        """Both signals of ``model`` as it is now, relative to the reference of ``on_train_begin``."""
        nll, _ = self.measure(model)
        return {"ll_shift": likelihood_shift(self.reference["nll"], nll, self.where),
                "persona_proj": persona_shift(self.reference["nll"], nll, self.where)}

    def _check(self, model, step: int, control) -> None:
        values = self.signals(model)
        self.records.append({"step": int(step), **{k: float(values[k]) for k in SIGNALS}})
        log.info("monitor step %d: %s", step, ", ".join(f"{k}={values[k]:.4g}" for k in SIGNALS))
        if self.stop_step is not None:
            return
        for name, threshold in self.settings.thresholds().items():
            value = values[name]
            if math.isnan(value):
                log.warning("monitor step %d: %s is NaN; no stop decision on it", step, name)
            elif value > threshold:  # exceeds, as dynamics.monitor_stop_step reads the log offline
                self.stop_step = int(step)
                self.stop_reason = f"{name} {value:.4g} > threshold {threshold:.4g} at step {step}"
                control.should_training_stop = True
                log.warning("monitor stops training: %s", self.stop_reason)
                return

    # -- callback events ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._reset()
        if self.tokenizer is None:
            self.tokenizer = processing_class
        if self.tokenizer is None:
            raise ValueError("EMMonitor: no tokenizer (give tokenizer= or train with a processing_class)")
        net = _unwrap(model)
        self._bind(net)
        nll, proj = self.measure(net, untrained=True)
        self.reference = {"nll": nll, "persona_proj": proj}
        self._check(net, state.global_step, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.settings.every_steps == 0 or step >= state.max_steps:
            self._check(model, step, control)
            control.should_log = True  # one train_log row per check
        return control

    # -- results ------------------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """The checks as a table: ``step`` and :data:`SIGNALS`."""
        return pd.DataFrame(self.records, columns=["step", *SIGNALS]).astype({"step": "int64"})

    def summary(self) -> dict[str, Any]:
        """What :func:`emguard.training.train_model` adds to its run summary."""
        return {"monitor_stop_step": self.stop_step, "monitor_stop_reason": self.stop_reason,
                "monitor_checks": len(self.records), "monitor_settings": self.settings.to_dict(),
                "monitor_persona_layer": self.persona_layer}


def with_monitor_columns(log_df: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """``train_log`` rows with :data:`SIGNALS` columns appended: each check's values on its step's row (NaN on
    steps without a check), and a row for step 0 (the check before training: no loss, ``n_interleaved`` 0,
    ``epoch`` 0). A check at a step that was not logged is dropped, with a warning. That does not happen under
    the trainer, because the monitor makes it log every check."""
    base = log_df.drop(columns=[c for c in SIGNALS if c in log_df.columns])
    checks = checks.set_index("step")[SIGNALS]
    if 0 in checks.index and (len(base) == 0 or 0 not in set(base["step"])):
        start = {c: math.nan for c in base.columns}
        start.update(step=0, n_interleaved=0, epoch=0.0)
        base = pd.concat([pd.DataFrame([start], columns=base.columns), base], ignore_index=True)
    missing = sorted(set(checks.index) - set(base["step"]))
    if missing:
        log.warning("monitor checks at steps %s have no train_log row; left out of the log", missing)
    out = base.join(checks, on="step")
    return out.sort_values("step", kind="stable").reset_index(drop=True)


def build_monitor(probes_path: str | os.PathLike, *, run_dataset: str | None, settings: MonitorSettings,
                  persona_vectors: str | os.PathLike | None = None, persona_layer: int | None = None,
                  n_layers: int | None = None, probe_sets: Sequence[str] | None = None):
    """An :class:`EMMonitor` from the pipeline's files.

    The probe table is ``probes.parquet``, restricted to ``probe_sets`` when given, and always without the run's
    own set (:func:`ood_probes`). The persona vector is row ``persona_layer`` of the persona-vector file
    (:func:`emguard.persona.load_vectors`, checked against ``n_layers`` when given). Without a vector file,
    ``persona_proj`` is NaN. Errors name the file.
    """
    from emguard.io import read_parquet
    from emguard.persona import layer_vector

    table = read_parquet(probes_path, PROBE)
    if probe_sets is not None:
        unknown = sorted(set(probe_sets) - set(table["probe_set"]))
        if unknown:
            raise InputError(f"{probes_path}: probe set(s) {unknown} not found "
                             f"(sets: {sorted(table['probe_set'].unique())})")
        table = table[table["probe_set"].isin(list(probe_sets))]
    table = ood_probes(table, run_dataset, str(probes_path))
    vector = None
    if persona_vectors is not None:
        if persona_layer is None:
            raise ValueError("build_monitor: persona_vectors given without persona_layer")
        vector = layer_vector(persona_vectors, persona_layer, n_layers=n_layers)
    return EMMonitor(table, settings, persona_vector=vector,
                     persona_layer=persona_layer if vector is not None else None, where=str(probes_path))


__all__ = ["SIGNALS", "MonitorSettings", "EMMonitor", "build_monitor", "likelihood_shift", "ood_probes",
           "persona_projection", "persona_shift", "with_monitor_columns"]


# --------------------------------------------------------------------------------------------------------------
# Calibration of the stop thresholds and the offline record (the pipeline's rules monitor_thresholds, report)
# --------------------------------------------------------------------------------------------------------------

def signal_frame(logs: Sequence[tuple[Mapping[str, Any], pd.DataFrame]], signal: str) -> pd.DataFrame:
    """Long frame of one signal over the monitored runs: ``model, dataset, method, setting, seed, step, signal``
    from each run's ``train_log.parquet`` (rows where the monitor checked; other rows have NaN there)."""
    rows = []
    for run, log_df in logs:
        if signal not in log_df.columns:
            continue
        part = log_df[["step", signal]].dropna()
        for step, value in zip(part["step"], part[signal]):
            rows.append({**{k: run[k] for k in ("model", "dataset", "method", "setting", "seed")},
                         "step": int(step), "signal": float(value)})
    return pd.DataFrame(rows, columns=["model", "dataset", "method", "setting", "seed", "step", "signal"])


def calibrate_thresholds(logs: Sequence[tuple[Mapping[str, Any], pd.DataFrame]], *, margin: float, quantile: float,
                         signals: Sequence[str] = SIGNALS) -> dict[str, float]:
    """Stop thresholds per signal from the aligned runs' logged signals (:func:`emguard.dynamics.monitor_threshold`:
    max(untrained model's value, the aligned runs' ``quantile``) + ``margin``). The untrained model's value is 0
    by definition (both signals are measured relative to it). A signal no aligned run logged gets no threshold."""
    from emguard.dynamics import monitor_threshold

    out = {}
    for name in signals:
        frame = signal_frame([(r, d) for r, d in logs if r["method"] == "aligned"], name)
        if frame.empty:
            continue
        models = frame["model"].unique()
        base = pd.DataFrame({"model": models, "dataset": "base", "method": "untrained", "setting": "default",
                             "seed": 0, "step": 0, "signal": 0.0})
        table = monitor_threshold(pd.concat([frame, base], ignore_index=True), margin=margin, quantile=quantile,
                                  where=f"monitor calibration ({name})")
        out[name] = float(table["threshold"].max())
    return out


def stop_thresholds(stop, calibrated: Mapping[str, float] | None) -> dict[str, float]:
    """The thresholds a run stops at: none (``stop`` None), the calibrated ones (``stop == "calibrated"``), or the
    configured mapping. Non-positive calibrated values cannot occur (the margin is >= 0 over a maximum with 0)
    unless margin is 0 and nothing moved: such a signal is left out (it would stop every run at step 0)."""
    if stop is None:
        return {}
    if stop == "calibrated":
        return {k: float(v) for k, v in (calibrated or {}).items() if v > 0}
    return {k: float(v) for k, v in dict(stop).items() if v is not None}
