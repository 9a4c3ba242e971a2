"""GRPO on math word problems with the SFT defenses as interventions, on trl's ``GRPOTrainer``.

The RL setting of the method paper (Appendix B.3, Tables 5 and 9): a fresh rs-LoRA adapter (the same
:class:`emguard.models.LoraSettings` as SFT) trained with GRPO to answer in the ``<think> ... </think>
<answer> n </answer>`` format (:mod:`emguard.data.math_problems`), rewarded by the rule-based components of
:mod:`emguard.rewards` (weights in :attr:`GRPOSettings.reward_weights`, passed as ``GRPOConfig.reward_weights``).

One trainer, :class:`EMGuardGRPOTrainer`, a thin ``GRPOTrainer`` subclass. A GRPO micro-batch has two phases:
``_prepare_inputs`` (rollout generation, rewards and advantages, and, when needed, the old-policy and reference
log-probabilities, all without gradients) and the policy update (``compute_loss`` forward, then backward). The
interventions, each the same method as in SFT:

* **persona steering** (:class:`~emguard.regularisers.SteeringRegulariser`): :meth:`training_step` runs
  ``_prepare_inputs`` first, with no hook anywhere, then registers the hook (``alpha * vector`` added to the
  output of hidden-state index ``layer``) for the policy's forward and backward passes only, and removes it before
  the optimiser step. So rollouts are sampled from the unsteered policy, the reference log-probabilities are
  unsteered, and only the update is steered. With ``response_only`` the completion tokens are steered (in the
  interleaved SFT forward: the answer tokens). trl skips the separate old-policy pass when generation and update
  are aligned (``num_iterations = 1``, one generation per optimiser step, always so here): the old
  log-probabilities are then the detached steered forward, so the importance ratio is 1 at the first update and
  the gradient is the policy gradient of the steered model on unsteered rollouts. With vLLM rollouts trl computes
  old log-probabilities anyway (unsteered, for its correction of the vLLM / trainer mismatch); under steering
  :meth:`compute_loss` leaves them out of the update's ratio, so the update is the same as without vLLM;
* **KL** (a :class:`~emguard.regularisers.KLRegulariser`, or :attr:`GRPOSettings.beta`): trl's ``beta`` times its
  per-token estimate ``exp(r - p) - (r - p) - 1`` of ``KL(pi_theta || pi_ref)`` on the sampled completion tokens
  (``r``, ``p``: reference and policy log-probabilities). The reference is the same model with its adapter
  disabled (trl's own path for a peft model: ``ref_model`` stays None and no second copy of the weights exists),
  computed in ``_prepare_inputs``, so unsteered. ``kl_lambda`` of a KLRegulariser becomes ``beta``;
* **interleaving** (``interleave_df``: pool rows picked as in SFT, random or selected, by the caller with
  :func:`emguard.interleave.select`, :func:`interleave_rows` of them): the rows, in a seeded random order, are cut
  into SFT batches of :attr:`GRPOSettings.interleave_batch_size` rows spread evenly over the optimiser steps (batch
  ``k`` of ``M`` at step ``floor(k * T / M)`` of ``T``). At such a step the answer-token cross-entropy of the SFT
  batch (mean over its answer tokens, times ``interleave_weight``) is added to the RL loss of the step's first
  micro-batch, so it enters the step's one optimiser update with the weight of a whole SFT step. With the
  default batch size (the prompts of one RL step) the share of steps with an SFT batch equals the interleaving
  fraction. The paper alternates RL and SFT batches (separate updates); see ``docs/deviations.md``;
* **inoculation** (``inoculation_prompt``): prepended to the system prompt of every training problem, the
  format instruction kept (:func:`emguard.data.math_problems.system_prompt`); evaluation uses the plain prompt.

Rollouts: transformers' ``generate`` by default; with :attr:`GRPOSettings.use_vllm` trl's vLLM backend
(:func:`vllm_arguments`; the ``vllm`` extra, checked by :func:`require_rollout_backend` before a model loads).

Outputs of :func:`train_grpo` (all written atomically): ``out_dir/adapter/``, ``out_dir/train_log.parquet`` (one row
per optimiser step, :data:`LOG_COLUMNS` plus ``reward_<name>`` per reward function) and, with ``save_steps > 0``,
``out_dir/checkpoints/step-<N>/``. The rollouts logged at step ``s`` were sampled from the weights after ``s - 1``
updates (``policy_step``); :func:`best_checkpoint` picks the saved checkpoint whose own rollouts had the highest
training reward, the checkpoint the paper evaluates. :func:`evaluate` scores held-out problems (accuracy by exact
numeric match, mean reward) with :func:`emguard.generate.sample`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch

from emguard.chat import IGNORE_INDEX, pad_batch
from emguard.data.math_problems import check_problems, problem_messages
from emguard.errors import InputError
from emguard.io import write_parquet
from emguard.training.callbacks import checkpoint_callback, run_folder, train_and_save
from emguard.models import DTYPES, LoraSettings, device_for, load_model, load_tokenizer, resolve_dtype
from emguard.regularisers import KLRegulariser, Regulariser, SteeringRegulariser
from emguard.rewards import DEFAULT_REWARD_WEIGHTS, is_correct, reward_functions, score_completions
from emguard.steering import decoder_layers

log = logging.getLogger(__name__)

#: columns of ``train_log.parquet``, then one ``reward_<name>`` per reward function (its mean over the step's
#: completions, unweighted). ``accuracy``: percent of the step's completions with the right number;
#: ``reward``: the weighted total's mean; ``kl``: trl's estimate (NaN when ``beta`` is 0); ``sft_ce``: the
#: interleaved batches' cross-entropy (NaN at steps without one); ``n_interleaved``: SFT rows so far; the
#: ``rollout_*`` / ``update_*`` columns time the step's generation and its policy update.
LOG_COLUMNS = ["step", "policy_step", "loss", "reward", "reward_std", "accuracy", "kl", "entropy",
               "completion_length", "clipped_ratio", "sft_ce", "sft_batches", "n_interleaved", "learning_rate",
               "grad_norm", "rollout_tokens", "rollout_s", "update_tokens", "update_s", "epoch"]


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class GRPOSettings:
    """GRPO hyper-parameters; defaults are the paper's (Table 8) where it states them, else trl's.

    Different from trl's defaults: ``learning_rate`` 5e-6 (trl 1e-6), ``num_generations`` 4 (trl 8),
    ``temperature`` 0.9 (trl 1.0), ``top_p`` 0.9 (trl 1.0), ``gradient_checkpointing`` off and the dtype from
    ``dtype`` (trl turns on checkpointing and bf16). Not stated in the paper, trl's kept: ``loss_type`` (dapo),
    ``epsilon`` 0.2, ``max_completion_length`` 512, ``weight_decay`` 0, a linear schedule.
    ``dataclasses.fields(GRPOSettings)[i].metadata["help"]`` documents each field.
    """

    # --- data ---
    n_problems: int = _f(1000, "training problems (paper: 1000 GSM8K train problems); a larger table is subsampled "
                               "with the seed, a smaller one used whole")
    # --- optimisation ---
    learning_rate: float = _f(5e-6, "peak learning rate (paper: 5e-6)")
    epochs: int = _f(1, "passes over the problems (paper: 1; ignored when max_steps > 0)")
    batch_size: int = _f(4, "completions per micro-batch (paper: per-device train batch size 4)")
    grad_accum: int = _f(4, "micro-batches per optimiser step (paper: 4); batch_size * grad_accum completions, "
                            "num_generations per prompt, make one step")
    warmup_steps: int = _f(5, "linear warm-up steps (paper: 5)")
    weight_decay: float = _f(0.0, "AdamW weight decay (not stated in the paper; trl's 0)")
    lr_scheduler: str = _f("linear", "transformers scheduler name")
    optim: str = _f("adamw_torch", "transformers optimiser name")
    max_steps: int = _f(-1, "stop after this many optimiser steps; -1 = run all epochs")
    seed: int = _f(0, "seed of the LoRA initialisation, the problem order, the rollouts and the interleaved order")
    # --- rollouts ---
    num_generations: int = _f(4, "completions per prompt, the group of GRPO's advantage (paper: 4)")
    temperature: float = _f(0.9, "rollout sampling temperature (paper: 0.9)")
    top_p: float = _f(0.9, "rollout nucleus sampling (paper: 0.9)")
    max_completion_length: int = _f(512, "most tokens per completion (not stated in the paper; trl's 512)")
    use_vllm: bool = _f(False, "sample the rollouts with vLLM (trl's use_vllm; needs the vllm extra, "
                               "pip install 'emguard[vllm]', and a GPU); false: transformers' generate")
    vllm_mode: str = _f("colocate", "colocate: a vLLM engine in the training process, sharing its GPU; server: a "
                                    "separately started `trl vllm-serve` (vllm_server_base_url)")
    vllm_gpu_memory_utilization: float = _f(0.3, "colocate: share of the GPU's memory the vLLM engine takes (trl's "
                                                 "0.3); the rest is left to training")
    vllm_server_base_url: str | None = _f(None, "server: the vLLM server's URL (e.g. http://localhost:8000); "
                                                "None: trl's default host and port")
    # --- objective ---
    beta: float = _f(0.0, "KL coefficient (paper: 0; its KL grid 0.1 / 0.3 / 1.0); reference = adapter disabled")
    loss_type: str = _f("dapo", "trl loss aggregation: grpo, dapo, dr_grpo, bnpo, ... (not stated in the paper)")
    epsilon: float = _f(0.2, "PPO clipping range of the importance ratio (trl's)")
    reward_weights: dict = field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS),
                                 metadata={"help": "reward name -> weight (emguard.rewards; the paper sums the four "
                                                   "components: every weight 1)"})
    # --- interleaving ---
    interleave_weight: float = _f(1.0, "weight of an interleaved SFT batch's cross-entropy in its step's loss")
    interleave_batch_size: int = _f(0, "rows per interleaved SFT batch; 0 = the prompts of one RL step "
                                       "(batch_size * grad_accum / num_generations)")
    max_length: int = _f(1024, "truncate interleaved SFT conversations to this many tokens")
    # --- outputs ---
    save_steps: int = _f(0, "write out_dir/checkpoints/step-<N>/ every N optimiser steps; 0 = none")
    # --- model ---
    lora: LoraSettings = field(default_factory=LoraSettings,
                               metadata={"help": "rs-LoRA adapter settings (emguard.models.LoraSettings)"})
    dtype: str = _f("float32", "weight dtype: float32, bfloat16 or auto (emguard.models.resolve_dtype)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.reward_weights = dict(self.reward_weights)
        checks = [
            ("n_problems", self.n_problems >= 1), ("learning_rate", self.learning_rate > 0),
            ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1), ("grad_accum", self.grad_accum >= 1),
            ("warmup_steps", self.warmup_steps >= 0), ("weight_decay", self.weight_decay >= 0),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1), ("num_generations", self.num_generations >= 2),
            ("temperature", self.temperature > 0), ("top_p", 0 < self.top_p <= 1),
            ("max_completion_length", self.max_completion_length >= 1), ("beta", self.beta >= 0),
            ("epsilon", self.epsilon > 0), ("interleave_weight", self.interleave_weight >= 0),
            ("interleave_batch_size", self.interleave_batch_size >= 0), ("max_length", self.max_length >= 8),
            ("save_steps", self.save_steps >= 0), ("vllm_mode", self.vllm_mode in ("colocate", "server")),
            ("vllm_gpu_memory_utilization", 0 < self.vllm_gpu_memory_utilization <= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"GRPOSettings.{name}: invalid value {getattr(self, name)!r}")
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ValueError(f"GRPOSettings: batch_size * grad_accum ({self.batch_size * self.grad_accum}) must be a "
                             f"multiple of num_generations ({self.num_generations}): a step holds whole prompt groups")
        if self.dtype not in DTYPES and self.dtype != "auto":
            raise ValueError(f"GRPOSettings.dtype: {self.dtype!r} is not one of {sorted(DTYPES) + ['auto']}")
        reward_functions(self.reward_weights)  # unknown names fail here, naming them

    @property
    def prompts_per_step(self) -> int:
        """Distinct problems per optimiser step: ``batch_size * grad_accum / num_generations``."""
        return self.batch_size * self.grad_accum // self.num_generations

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GRPOSettings":
        """Build from plain values (e.g. a config section); an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"GRPOSettings: unknown key(s) {', '.join(unknown)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def planned_steps(settings: GRPOSettings, n_problems: int) -> int:
    """Optimiser steps of a run on ``n_problems`` problems (after the ``n_problems`` cap): ``max_steps``, or
    ``epochs * floor(n / prompts_per_step)`` (trl drops an incomplete last group of prompts)."""
    n = min(int(n_problems), settings.n_problems)
    if settings.max_steps > 0:
        return settings.max_steps
    per_epoch = n // settings.prompts_per_step
    if per_epoch < 1:
        raise InputError(f"problems: {n} problem(s), fewer than the {settings.prompts_per_step} one GRPO step needs")
    return settings.epochs * per_epoch


def require_rollout_backend(settings: GRPOSettings) -> None:
    """Fail before any model loads when ``use_vllm`` is set and vllm cannot be imported: a
    :class:`~emguard.errors.ConfigError` naming ``rl.training.use_vllm`` and the ``vllm`` extra."""
    if settings.use_vllm:
        from emguard.generate_vllm import require_vllm

        require_vllm("rl.training.use_vllm", "or set rl.training.use_vllm: false (rollouts with transformers' "
                                             "generate)")


def interleave_rows(settings: GRPOSettings, n_problems: int, fraction: float) -> int:
    """How many pool rows an interleaving run at ``fraction`` needs: ``fraction`` times the RL prompts it trains on
    (:func:`emguard.interleave.n_interleave` of ``planned_steps * prompts_per_step``), as SFT's fraction counts
    pool rows against fine-tuning rows."""
    from emguard.interleave import n_interleave

    return n_interleave(planned_steps(settings, n_problems) * settings.prompts_per_step, fraction)


def interventions(settings: GRPOSettings, regularisers: Iterable[Regulariser] = ()
                  ) -> tuple[SteeringRegulariser | None, float]:
    """(steering, beta) from SFT's regularisers: a :class:`SteeringRegulariser` steers the update, a
    :class:`KLRegulariser` (reverse direction: trl estimates ``KL(pi_theta || pi_ref)``) sets ``beta`` to its
    ``kl_lambda`` (not together with ``settings.beta > 0``). LDIFS and anything else is a ``ValueError``."""
    steering, beta = None, settings.beta
    for r in regularisers:
        if isinstance(r, SteeringRegulariser):
            if steering is not None:
                raise ValueError("GRPO takes at most one steering regulariser")
            steering = r
        elif isinstance(r, KLRegulariser):
            if r.direction != "reverse":
                raise ValueError("GRPO's KL is trl's estimate of KL(pi_theta || pi_ref): direction must be 'reverse'")
            if settings.beta > 0:
                raise ValueError(f"KL given twice: KLRegulariser(kl_lambda={r.weight}) and GRPOSettings.beta="
                                 f"{settings.beta}")
            beta = r.weight
        else:
            raise ValueError(f"{r!r} is not supported under GRPO (steering and KL are)")
    return steering, beta


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def select_problems(problems: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` problems: all when there are no more, else a seeded draw (table order kept)."""
    check_problems(problems)
    problems = problems.reset_index(drop=True)
    if len(problems) <= n:
        return problems
    keep = sorted(random.Random(f"grpo-problems:{seed}").sample(range(len(problems)), int(n)))
    return problems.iloc[keep].reset_index(drop=True)


def build_dataset(problems: pd.DataFrame, inoculation_prompt: str | None = None):
    """trl's conversational prompt dataset: ``prompt`` (system + user turn), plus the columns the rewards read
    (``question``, ``reference``) and ``problem_id``."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [problem_messages(q, inoculation_prompt) for q in problems["question"]],
        "question": [str(q) for q in problems["question"]],
        "reference": [str(r).strip() for r in problems["reference"]],
        "problem_id": [str(i) for i in problems["id"]],
    })


class InterleavePlan:
    """The interleaved SFT batches and the optimiser step each one joins (see the module doc).

    ``batches`` are padded tensors (``input_ids``, ``attention_mask``, ``labels``) of ``batch_size`` rows, the rows
    in a seeded random order; :meth:`batches_for_step` gives the batches of step ``s`` (0-based) of ``T``.
    """

    def __init__(self, tokenizer, rows: pd.DataFrame, batch_size: int, *, weight: float = 1.0, seed: int = 0,
                 max_length: int = 1024):
        from emguard.training.sft import encode_examples

        if batch_size < 1:
            raise ValueError(f"interleave batch size must be >= 1, got {batch_size}")
        encoded, _, dropped = encode_examples(tokenizer, rows.reset_index(drop=True), max_length)
        order = list(range(len(encoded)))
        random.Random(f"grpo-interleave:{seed}").shuffle(order)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batches = [pad_batch([encoded[i] for i in order[k:k + batch_size]], pad_id)
                        for k in range(0, len(order), batch_size)]
        self.n_rows = len(encoded)
        self.n_dropped = len(dropped)
        self.weight = float(weight)
        self._schedule: dict[int, list[int]] | None = None
        self._total_steps: int | None = None

    def schedule(self, total_steps: int) -> dict[int, list[int]]:
        """step -> indices of its batches: batch ``k`` of ``M`` at step ``floor(k * T / M)``."""
        if self._schedule is None or self._total_steps != total_steps:
            m, t = len(self.batches), max(1, int(total_steps))
            plan: dict[int, list[int]] = defaultdict(list)
            for k in range(m):
                plan[k * t // m].append(k)
            self._schedule, self._total_steps = dict(plan), total_steps
        return self._schedule

    def batches_for_step(self, step: int, total_steps: int) -> list[dict[str, torch.Tensor]]:
        return [self.batches[k] for k in self.schedule(total_steps).get(int(step), [])]


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------

def _make_trainer_class():
    from trl import GRPOTrainer

    from emguard.training.sft import head_loss

    class EMGuardGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` + steering of the update only, interleaved SFT batches, accuracy and timing in the log."""

        def __init__(self, *args, steering: SteeringRegulariser | None = None,
                     interleave: InterleavePlan | None = None, **kwargs):
            self.steering = steering
            self.interleave = interleave
            super().__init__(*args, **kwargs)
            if steering is not None:
                steering.bind(self.model)
            self._prepared: dict | None = None
            self._steer_mask: torch.Tensor | None = None
            self.steering_calls = 0  # steered layer forwards while the hook was registered
            self.n_interleaved = 0
            self._stats: dict[str, float] = defaultdict(float)
            self.totals: dict[str, float] = defaultdict(float)
            self.log_rows: list[dict[str, float]] = []

        def _send_telemetry(self):  # no network calls from training runs
            return None

        # -- phase 1: rollouts, rewards, old / reference log-probs (no hook) ------------------------
        def _prepare_inputs(self, generation_batch):
            if self._prepared is not None:  # prepared by training_step before the hook went on
                prepared, self._prepared = self._prepared, None
                return prepared
            return super()._prepare_inputs(generation_batch)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            t0 = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self._stats["rollout_s"] += time.perf_counter() - t0
            self._stats["rollout_tokens"] += sum(len(c) for c in completion_ids)
            return completion_ids, logprobs

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            mode = "train" if self.model.training else "eval"
            correct = [is_correct(c, x["reference"]) for c, x in zip(completions, inputs)]
            self._metrics[mode]["accuracy"].append(100.0 * sum(correct) / max(1, len(correct)))
            return rewards

        # -- phase 2: the policy update (steered) ---------------------------------------------------
        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            self._prepared = self._prepare_inputs(inputs)
            t0 = time.perf_counter()
            with self._steering():
                loss = super().training_step(model, inputs, num_items_in_batch)
            if self.accelerator.device.type == "cuda":
                torch.cuda.synchronize(self.accelerator.device)
            self._stats["update_s"] += time.perf_counter() - t0
            return loss

        @contextlib.contextmanager
        def _steering(self):
            if self.steering is None:
                yield
                return
            s = self.steering
            layer = decoder_layers(self.model)[s.layer - 1]

            def hook(_module, _inputs, output):
                hidden = output[0] if isinstance(output, tuple) else output
                self.steering_calls += 1
                delta = (s.alpha * s.vector).to(dtype=hidden.dtype, device=hidden.device)
                mask = self._steer_mask
                if mask is not None:
                    if tuple(mask.shape) != tuple(hidden.shape[:2]):
                        raise RuntimeError(f"steering mask {tuple(mask.shape)} does not fit the hidden states "
                                           f"{tuple(hidden.shape[:2])}")
                    hidden = hidden + mask.to(hidden.device, hidden.dtype).unsqueeze(-1) * delta
                else:
                    hidden = hidden + delta
                return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

            handle = layer.register_forward_hook(hook)
            try:
                yield
            finally:
                handle.remove()
                self._steer_mask = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.steering is not None and self.steering.response_only:
                self._steer_mask = torch.cat([torch.zeros_like(inputs["prompt_mask"]), inputs["completion_mask"]],
                                             dim=1).bool()
            else:
                self._steer_mask = None
            if self.steering is not None and "old_per_token_logps" in inputs:
                # trl computed the old log-probabilities in _prepare_inputs (with vLLM, for its importance sampling
                # correction), i.e. without the hook, from the same weights (GRPOSettings keeps generation and
                # update aligned). Left in, the update's ratio would compare the steered policy with the unsteered
                # one and clip it; taken out, trl uses the detached steered forward (ratio 1, as without vLLM).
                # The vLLM correction itself (importance_sampling_ratio: unsteered trainer vs vLLM) stays.
                inputs = {k: v for k, v in inputs.items() if k != "old_per_token_logps"}
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
            if model.training:
                self._stats["update_tokens"] += int(inputs["prompt_mask"].sum()) + int(inputs["completion_mask"].sum())
                # the interleaved batches of this optimiser step join its first micro-batch
                if self.interleave is not None and self._step % self.current_gradient_accumulation_steps == 0:
                    for batch in self.interleave.batches_for_step(self.state.global_step, self.state.max_steps):
                        ce = self._sft_ce(model, batch)
                        loss = loss + self.interleave.weight * ce
                        self._stats["sft_ce_sum"] += float(ce.detach())
                        self._stats["sft_batches"] += 1
                        self._stats["update_tokens"] += int(batch["attention_mask"].sum())
                        self.n_interleaved += int(batch["input_ids"].shape[0])
            return loss

        def _sft_ce(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            """Mean answer-token cross-entropy of one interleaved batch (chunked through the LM head)."""
            peft_model = self.accelerator.unwrap_model(model)
            dev = self.accelerator.device
            ids, attn, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
            if self.steering is not None and self.steering.response_only:
                self._steer_mask = labels != IGNORE_INDEX
            else:
                self._steer_mask = None
            backbone = peft_model.get_base_model().base_model
            with self.accelerator.autocast():
                hidden = backbone(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
                nxt = labels[:, 1:]
                sel = nxt != IGNORE_INDEX
                total, _ = head_loss(hidden[:, :-1][sel], nxt[sel], peft_model.get_output_embeddings())
            return total / sel.sum().clamp(min=1)

        # -- logging ------------------------------------------------------------------------------------
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            training = "loss" in logs and self.model.training
            super().log(logs, start_time)  # fills logs with trl's averaged metrics
            if not training:
                return
            st, self._stats = self._stats, defaultdict(float)
            for k, v in st.items():
                self.totals[k] += v
            nan = float("nan")

            def get(key):
                v = logs.get(key)
                return nan if v is None else float(v)

            step = int(self.state.global_step)
            row = {"step": step, "policy_step": step - 1, "loss": get("loss"), "reward": get("reward"),
                   "reward_std": get("reward_std"), "accuracy": get("accuracy"), "kl": get("kl"),
                   "entropy": get("entropy"), "completion_length": get("completions/mean_length"),
                   "clipped_ratio": get("completions/clipped_ratio"),
                   "sft_ce": st["sft_ce_sum"] / st["sft_batches"] if st.get("sft_batches") else nan,
                   "sft_batches": int(st.get("sft_batches", 0)), "n_interleaved": int(self.n_interleaved),
                   "learning_rate": get("learning_rate"), "grad_norm": get("grad_norm"),
                   "rollout_tokens": int(st.get("rollout_tokens", 0)), "rollout_s": float(st.get("rollout_s", 0.0)),
                   "update_tokens": int(st.get("update_tokens", 0)), "update_s": float(st.get("update_s", 0.0)),
                   "epoch": get("epoch")}
            for name in self.reward_func_names:
                row[f"reward_{name}"] = get(f"rewards/{name}/mean")
            self.log_rows.append(row)

    return EMGuardGRPOTrainer


@functools.cache
def trainer_class():
    """The :class:`EMGuardGRPOTrainer` class (built on first use, so ``import emguard.training.grpo`` stays light)."""
    return _make_trainer_class()


def vllm_arguments(settings: GRPOSettings) -> dict[str, Any]:
    """trl's ``GRPOConfig`` arguments for the rollout backend: ``use_vllm`` and, with it, ``vllm_mode`` and its
    mode's setting (colocate: ``vllm_gpu_memory_utilization``; server: ``vllm_server_base_url`` when given)."""
    if not settings.use_vllm:
        return {"use_vllm": False}
    args = {"use_vllm": True, "vllm_mode": settings.vllm_mode}
    if settings.vllm_mode == "colocate":
        args["vllm_gpu_memory_utilization"] = settings.vllm_gpu_memory_utilization
    elif settings.vllm_server_base_url:
        args["vllm_server_base_url"] = settings.vllm_server_base_url
    return args


def build_trainer(model, tokenizer, problems: pd.DataFrame, settings: GRPOSettings, *,
                  regularisers: Iterable[Regulariser] = (), inoculation_prompt: str | None = None,
                  interleave_df: pd.DataFrame | None = None, extra_rewards: Sequence[Callable] = (),
                  extra_reward_weights: Sequence[float] = (), device: str | torch.device = "auto",
                  scratch_dir: str | os.PathLike | None = None, callbacks: Sequence = ()):
    """An :class:`EMGuardGRPOTrainer` around ``model`` (a plain causal LM; the trainer wraps it in a fresh rs-LoRA
    adapter) on ``problems`` (already selected: :func:`select_problems`). Returns ``(trainer, info)``."""
    from trl import GRPOConfig

    require_rollout_backend(settings)
    dev = device_for(str(device)) if not isinstance(device, torch.device) else device
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    steering, beta = interventions(settings, regularisers)
    funcs, weights = reward_functions(settings.reward_weights)
    extra_rewards, extra_reward_weights = list(extra_rewards), [float(w) for w in extra_reward_weights]
    if len(extra_reward_weights) != len(extra_rewards):
        raise ValueError(f"{len(extra_rewards)} extra reward(s) but {len(extra_reward_weights)} weight(s)")
    funcs, weights = funcs + extra_rewards, weights + extra_reward_weights
    plan = None
    if interleave_df is not None and len(interleave_df):
        size = settings.interleave_batch_size or settings.prompts_per_step
        plan = InterleavePlan(tokenizer, interleave_df, size, weight=settings.interleave_weight, seed=settings.seed,
                              max_length=settings.max_length)
    scratch = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="emguard-grpo-"))
    bf16 = resolve_dtype(settings.dtype, dev) == "bfloat16"
    args = GRPOConfig(
        output_dir=str(scratch), seed=settings.seed, data_seed=settings.seed,
        learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler, optim=settings.optim,
        bf16=bf16, fp16=False, use_cpu=dev.type == "cpu", activation_checkpointing=settings.gradient_checkpointing,
        logging_strategy="steps", logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        num_generations=settings.num_generations, temperature=settings.temperature, top_p=settings.top_p,
        max_completion_length=settings.max_completion_length, beta=beta, loss_type=settings.loss_type,
        epsilon=settings.epsilon, reward_weights=weights, shuffle_dataset=True, remove_unused_columns=False,
        log_completions=False, dataloader_num_workers=0, dataloader_pin_memory=dev.type == "cuda",
        **vllm_arguments(settings),
    )
    trainer = trainer_class()(
        model=model, reward_funcs=funcs, args=args, train_dataset=build_dataset(problems, inoculation_prompt),
        processing_class=tokenizer, peft_config=settings.lora.to_peft(), callbacks=list(callbacks),
        steering=steering, interleave=plan,
    )
    return trainer, {"beta": beta, "steering": steering, "interleave": plan, "scratch": scratch,
                     "reward_names": list(trainer.reward_func_names), "reward_weights": weights}


def train_grpo_model(model, tokenizer, problems_df: pd.DataFrame, out_dir: str | os.PathLike,
                     settings: GRPOSettings | None = None, *, regularisers: Iterable[Regulariser] = (),
                     inoculation_prompt: str | None = None, interleave_df: pd.DataFrame | None = None,
                     extra_rewards: Sequence[Callable] = (), extra_reward_weights: Sequence[float] = (),
                     device: str | torch.device = "auto", callbacks: Sequence = ()) -> dict[str, Any]:
    """:func:`train_grpo` for an already loaded model and tokenizer (benchmarks build random-weight models)."""
    settings = settings or GRPOSettings()
    out_dir = Path(out_dir)
    problems = select_problems(problems_df, settings.n_problems, settings.seed)
    planned = planned_steps(settings, len(problems))
    with run_folder(out_dir, ".grpo-") as scratch:
        trainer, info = build_trainer(model, tokenizer, problems, settings, regularisers=regularisers,
                                      inoculation_prompt=inoculation_prompt, interleave_df=interleave_df,
                                      extra_rewards=extra_rewards, extra_reward_weights=extra_reward_weights,
                                      device=device, scratch_dir=scratch, callbacks=callbacks)
        if settings.save_steps:
            trainer.add_callback(checkpoint_callback(out_dir, settings.save_steps))
        _, runtime = train_and_save(trainer, out_dir)
        reward_cols = [f"reward_{n}" for n in info["reward_names"]]
        log_df = pd.DataFrame(trainer.log_rows).reindex(columns=LOG_COLUMNS + reward_cols)
        if len(log_df):
            log_df = log_df.astype({c: "int64" for c in ("step", "policy_step", "sft_batches", "n_interleaved",
                                                           "rollout_tokens", "update_tokens")})
        write_parquet(log_df, out_dir / "train_log.parquet")
    checkpoints = sorted((out_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    best = best_checkpoint(log_df, [int(p.name.split("-")[1]) for p in checkpoints])
    tot = trainer.totals
    plan: InterleavePlan | None = info["interleave"]
    return {
        "adapter": str(out_dir / "adapter"),
        "train_log": str(out_dir / "train_log.parquet"),
        "checkpoints": [str(p) for p in checkpoints],
        "steps": int(trainer.state.global_step),
        "planned_steps": planned,
        "n_problems": len(problems),
        "n_prompts": int(trainer.state.global_step) * settings.prompts_per_step,
        "n_interleaved": trainer.n_interleaved,
        "n_interleave_rows": plan.n_rows if plan is not None else 0,
        "n_interleave_dropped": plan.n_dropped if plan is not None else 0,
        "beta": info["beta"],
        "steering": repr(info["steering"]) if info["steering"] is not None else None,
        "steering_calls": trainer.steering_calls,
        "inoculation_prompt": inoculation_prompt,
        "reward_names": info["reward_names"],
        "reward_weights": info["reward_weights"],
        "first_reward": float(log_df["reward"].iloc[0]) if len(log_df) else math.nan,
        "final_reward": float(log_df["reward"].iloc[-1]) if len(log_df) else math.nan,
        "final_accuracy": float(log_df["accuracy"].iloc[-1]) if len(log_df) else math.nan,
        **best,
        "train_runtime_s": runtime,
        "rollout_tokens": int(tot["rollout_tokens"]), "rollout_s": tot["rollout_s"],
        "rollout_tokens_per_s": tot["rollout_tokens"] / tot["rollout_s"] if tot["rollout_s"] else math.nan,
        "update_tokens": int(tot["update_tokens"]), "update_s": tot["update_s"],
        "update_tokens_per_s": tot["update_tokens"] / tot["update_s"] if tot["update_s"] else math.nan,
        "settings": settings.to_dict(),
    }


def train_grpo(model_path: str | os.PathLike, problems_df: pd.DataFrame, out_dir: str | os.PathLike,
               settings: GRPOSettings | None = None, *, regularisers: Iterable[Regulariser] = (),
               inoculation_prompt: str | None = None, interleave_df: pd.DataFrame | None = None,
               extra_rewards: Sequence[Callable] = (), extra_reward_weights: Sequence[float] = (),
               device: str = "auto", callbacks: Sequence = ()) -> dict[str, Any]:
    """GRPO-train a fresh rs-LoRA adapter on ``problems_df`` and write it to ``out_dir``; return a summary dict.

    ``problems_df``: the problem table (``id``, ``question``, ``reference``: :func:`~emguard.data.math_problems.
    problem_table` or :func:`~emguard.data.math_problems.generate_problems`), subsampled to
    ``settings.n_problems`` with the seed. Interventions (the SFT method names): ``regularisers`` with a
    :class:`~emguard.regularisers.SteeringRegulariser` (persona) and/or a
    :class:`~emguard.regularisers.KLRegulariser` (kl: its ``kl_lambda`` becomes ``beta``), ``inoculation_prompt``
    (inoculation), ``interleave_df`` (interleave_*: chat-contract pool rows, :func:`interleave_rows` of them picked
    by the caller). ``extra_rewards`` / ``extra_reward_weights``: more trl reward functions, e.g. a
    :class:`emguard.rewards.JudgeReward`. The summary has the step count, the interleaved rows, the best checkpoint
    (:func:`best_checkpoint`), rollout and update token rates and the settings.
    """
    settings = settings or GRPOSettings()
    require_rollout_backend(settings)
    dev = device_for(device)
    model = load_model(model_path, dtype=settings.dtype, device=str(dev))
    tokenizer = load_tokenizer(model_path)
    return train_grpo_model(model, tokenizer, problems_df, out_dir, settings, regularisers=regularisers,
                            inoculation_prompt=inoculation_prompt, interleave_df=interleave_df,
                            extra_rewards=extra_rewards, extra_reward_weights=extra_reward_weights, device=dev,
                            callbacks=callbacks)


# --------------------------------------------------------------------------------------------------
# Checkpoint choice and evaluation
# --------------------------------------------------------------------------------------------------

def best_checkpoint(log_df: pd.DataFrame, checkpoint_steps: Iterable[int]) -> dict[str, Any]:
    """The saved checkpoint with the highest training reward (the one the paper evaluates).

    Checkpoint ``step-c`` holds the weights after ``c`` updates; the rollouts of log row ``step = c + 1``
    (``policy_step = c``) were sampled from exactly those weights, so that row's ``reward`` is the checkpoint's
    training reward. Checkpoints without such a row (the last step's) are not candidates; ties go to the earlier
    step. Returns ``best_checkpoint_step`` (None when no checkpoint qualifies), ``best_checkpoint_reward`` and
    ``best_checkpoint_accuracy``.
    """
    none = {"best_checkpoint_step": None, "best_checkpoint_reward": math.nan, "best_checkpoint_accuracy": math.nan}
    if log_df is None or not len(log_df):
        return none
    rows = log_df.set_index("policy_step")
    scored = [(float(rows.at[c, "reward"]), -c, c) for c in checkpoint_steps
              if c in rows.index and not math.isnan(float(rows.at[c, "reward"]))]
    if not scored:
        return none
    _, _, c = max(scored)
    return {"best_checkpoint_step": int(c), "best_checkpoint_reward": float(rows.at[c, "reward"]),
            "best_checkpoint_accuracy": float(rows.at[c, "accuracy"])}


#: columns of :func:`evaluate`'s per-answer table, then the four rule-based rewards
EVAL_COLUMNS = ["id", "sample", "completion", "reference", "reward", "correct"]


def evaluate(model, tokenizer, problems_df: pd.DataFrame, *, sampling=None, samples: int = 1, seed: int = 0,
             reward_weights: Mapping[str, float] | None = None, inoculation_prompt: str | None = None,
             extra_rewards: Sequence[Callable] = (), extra_reward_weights: Sequence[float] = ()
             ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Answer held-out problems and score them: ``(per-answer table, summary)``.

    ``sampling``: :class:`emguard.generate.SamplingSettings` (default greedy, 512 new tokens); ``samples`` answers
    per problem (seeded). The prompt is the training format's system prompt (with ``inoculation_prompt`` only if
    given; the paper evaluates without). The table has :data:`EVAL_COLUMNS` and each rule-based reward; the summary
    ``n_problems``, ``n_answers``, ``n_correct``, ``accuracy`` with its Wilson 95 % interval ``accuracy_lo`` /
    ``accuracy_hi`` (percent, exact numeric match), ``mean_reward``, ``reward_std`` and ``mean_<reward>``.
    ``extra_rewards`` (trl reward functions, e.g. a :class:`emguard.rewards.JudgeReward`) with their weights: each
    a column of its own (NaN where it returned None) and ``mean_<name>``, added to ``reward`` as in training (an
    unscored answer adds nothing, as trl sums the rewards ignoring NaN).
    """
    from emguard.generate import SamplingSettings, sample
    from emguard.metrics import wilson_interval

    sampling = sampling or SamplingSettings(max_new_tokens=512, temperature=0.0)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    problems = check_problems(problems_df).reset_index(drop=True)
    convs = [problem_messages(q, inoculation_prompt) for q in problems["question"]] * samples
    answers = sample(model, tokenizer, convs, sampling, seed=seed)
    refs = [str(r).strip() for r in problems["reference"]] * samples
    scores = score_completions(answers, refs, reward_weights)
    extra_rewards, extra_reward_weights = list(extra_rewards), [float(w) for w in extra_reward_weights]
    if len(extra_reward_weights) != len(extra_rewards):
        raise ValueError(f"{len(extra_rewards)} extra reward(s) but {len(extra_reward_weights)} weight(s)")
    questions = [str(q) for q in problems["question"]] * samples
    for func, weight in zip(extra_rewards, extra_reward_weights):
        values = pd.Series([math.nan if v is None else float(v)
                            for v in func(answers, question=questions, reference=refs)], dtype=float)
        scores[func.__name__] = values
        scores["reward"] = scores["reward"] + weight * values.fillna(0.0)
    n = len(problems)
    table = pd.DataFrame({"id": [str(i) for i in problems["id"]] * samples,
                          "sample": [k for k in range(samples) for _ in range(n)],
                          "completion": answers, "reference": refs})
    table = pd.concat([table, scores], axis=1)
    table = table[EVAL_COLUMNS + [c for c in table.columns if c not in EVAL_COLUMNS]]
    k = int(table["correct"].sum())
    lo, hi = wilson_interval(k, len(table))
    summary = {"n_problems": n, "n_answers": len(table), "n_correct": k, "accuracy": 100.0 * k / len(table),
               "accuracy_lo": 100.0 * lo, "accuracy_hi": 100.0 * hi, "mean_reward": float(table["reward"].mean()),
               "reward_std": float(table["reward"].std(ddof=0)),
               **{f"mean_{name}": float(table[name].mean())
                  for name in [*DEFAULT_REWARD_WEIGHTS, *(f.__name__ for f in extra_rewards)]}}
    return table, summary


def evaluate_adapter(model_path: str | os.PathLike, adapter: str | os.PathLike | None, problems_df: pd.DataFrame, *,
                     dtype: str = "float32", device: str = "auto", **kwargs) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`evaluate` on the base model with ``adapter`` (a run's ``adapter/`` or ``checkpoints/step-N/``; None:
    the untrained model)."""
    model = load_model(model_path, dtype=dtype, device=str(device_for(device)), adapter=adapter)
    tokenizer = load_tokenizer(model_path)
    return evaluate(model, tokenizer, problems_df, **kwargs)
