"""rs-LoRA fine-tuning with pluggable in-training regularisers, on trl's ``SFTTrainer``.

One trainer, :class:`EMGuardTrainer`, a thin ``SFTTrainer`` subclass:

* the data is pre-tokenised with :func:`emguard.chat.encode_example` (labels = -100 on every prompt token) and
  handed over with ``skip_prepare_dataset``, so trl neither re-tokenises nor re-masks it; the collator pads with
  :func:`emguard.chat.pad_batch`;
* the training order is decided here and only here: every epoch is a fresh uniform random permutation of all rows
  (fine-tuning and interleaved alike), drawn by transformers' own sampler (``train_sampling_strategy="random"``)
  which accelerate turns into its ``SeedableRandomSampler`` (``use_seedable_sampler=True``), seeded with
  ``data_seed = settings.seed`` plus the epoch number. The row order of ``train_df`` therefore never matters: a
  file sorted by some key still gives i.i.d. batches, and :func:`emguard.interleave.mix` only appends the
  interleaved rows, which the shuffle spreads uniformly through the run. Same seed, same order;
* plain SFT (no regulariser, or steering only) is trl's own loss; with KL and/or LDIFS, :meth:`compute_loss`
  runs one adapter-disabled no-grad reference pass and adds the terms (see :mod:`emguard.regularisers`);
* :meth:`training_step` enters each regulariser's step context (the steering hook) around the forward *and*
  backward passes of a micro-batch; the hook is gone before the optimiser step, logging and saving.

Outputs of :func:`train` (all written atomically, temporary name then rename):
``out_dir/adapter/`` (peft adapter, safetensors), ``out_dir/train_log.parquet`` (one row per logged step) and,
with ``save_steps > 0`` or ``checkpoint_steps``, ``out_dir/checkpoints/step-<N>/`` adapters. With a monitor
(:mod:`emguard.training.monitor`) the log also has its signal columns and the run may end early, at the step where a signal
crossed its threshold.

``loss`` in the log is the optimised objective, ``ce + sum(lambda * term)``; ``ce`` and each term column
(``kl``, ``ldifs``) are unweighted. CE and KL are means over the answer tokens of the optimisation step (all
gradient-accumulation micro-batches together); LDIFS is the mean of its micro-batch values (each the mean over
the micro-batch's sequences of their summed distances with the paper's ``reduction="sum"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch

from emguard.chat import IGNORE_INDEX, Encoded, encode_example, pad_batch, with_system
from emguard.errors import InputError
from emguard.io import check_columns, write_parquet
from emguard.training.callbacks import checkpoint_callback, run_folder, train_and_save
from emguard.models import DTYPES, LoraSettings, device_for, load_model, load_tokenizer, resolve_dtype
from emguard.regularisers import Regulariser, capture_hidden_states
from emguard.schemas import to_messages

log = logging.getLogger(__name__)

#: columns of ``train_log.parquet`` besides one per regulariser term
LOG_COLUMNS = ["step", "loss", "ce", "learning_rate", "tokens_per_s", "n_interleaved", "epoch"]

#: elements of one ``[tokens, vocab]`` logits chunk in the regularised loss (128 MiB in float32)
_LOGIT_CHUNK_ELEMENTS = 1 << 25


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainSettings:
    """Training hyper-parameters; ``dataclasses.fields(TrainSettings)[i].metadata["help"]`` documents each."""

    # --- optimisation ---
    learning_rate: float = _f(1e-4, "peak learning rate of the optimiser")
    epochs: int = _f(1, "passes over the training data (ignored when max_steps > 0)")
    batch_size: int = _f(4, "examples per micro-batch (per device)")
    grad_accum: int = _f(4, "micro-batches accumulated per optimiser step (effective batch = batch_size * grad_accum)")
    warmup_steps: int = _f(5, "linear warm-up steps of the learning-rate schedule")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    lr_scheduler: str = _f("linear", "transformers scheduler name: linear, cosine, constant, constant_with_warmup, ...")
    optim: str = _f("adamw_torch", "transformers optimiser name, e.g. adamw_torch; adamw_8bit on GPU (bitsandbytes: the gpu "
                                 "extra); checked by optimizer_settings before a run loads anything")
    max_steps: int = _f(-1, "stop after this many optimiser steps; -1 = run all epochs")
    seed: int = _f(0, "seed for the LoRA initialisation, the data order (a fresh shuffle each epoch) and everything "
                      "random in training")
    # --- data ---
    max_length: int = _f(2048, "truncate tokenised conversations to this many tokens")
    # --- outputs ---
    save_steps: int = _f(0, "write out_dir/checkpoints/step-<N>/ every N optimiser steps; 0 = no intermediate checkpoints")
    checkpoint_steps: tuple[int, ...] = _f((), "also write out_dir/checkpoints/step-<N>/ at these optimiser steps, each "
                                           "before the run's last step (checked when training starts): the evaluated "
                                           "checkpoints of emguard.checkpoints; the last step is the final adapter")
    logging_steps: int = _f(1, "log (train_log.parquet row) every N optimiser steps")
    # --- model ---
    lora: LoraSettings = field(default_factory=LoraSettings,
                               metadata={"help": "rs-LoRA adapter settings (emguard.models.LoraSettings)"})
    dtype: str = _f("float32", "weight dtype: float32, bfloat16 (also enables bf16 autocast), or auto (bfloat16 where "
                    "the device has native bf16 matmuls, else float32: emguard.models.resolve_dtype)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.checkpoint_steps = tuple(sorted({int(x) for x in self.checkpoint_steps}))
        checks = [
            ("checkpoint_steps", all(x >= 1 for x in self.checkpoint_steps)),
            ("learning_rate", self.learning_rate > 0), ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
            ("grad_accum", self.grad_accum >= 1), ("warmup_steps", self.warmup_steps >= 0),
            ("weight_decay", self.weight_decay >= 0), ("max_length", self.max_length >= 8),
            ("save_steps", self.save_steps >= 0), ("max_steps", self.max_steps == -1 or self.max_steps >= 1),
            ("logging_steps", self.logging_steps >= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"TrainSettings.{name}: invalid value {getattr(self, name)!r}")
        if self.dtype not in DTYPES and self.dtype != "auto":
            raise ValueError(f"TrainSettings.dtype: {self.dtype!r} is not one of {sorted(DTYPES) + ['auto']}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        """Build from plain values (e.g. a config section); an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainSettings: unknown key(s) {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: what to install for the bitsandbytes optimisers (adamw_8bit, paged_*, lion_8bit, ...)
GPU_EXTRA_HINT = "pip install -e '.[gpu]' (the conda env envs/train.yaml has it)"


def _mentions_bitsandbytes(exc: BaseException | None) -> bool:
    while exc is not None:
        if "bitsandbytes" in f"{exc} {getattr(exc, 'name', '') or ''}":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def optimizer_settings(settings: TrainSettings, model=None) -> tuple[type, dict[str, Any]]:
    """The optimiser class and keyword arguments the trainer will build for ``settings.optim``.

    Asks transformers itself (``Trainer.get_optimizer_cls_and_kwargs`` on ``TrainingArguments`` with the same
    ``optim``, learning rate and weight decay as :func:`build_trainer`), so it imports the optimiser's package the
    way training will. Meant to run before any data or model is loaded: a config that cannot train fails in
    seconds, not after the model load. Raises :class:`~emguard.errors.ConfigError` naming ``training.optim``; when
    the optimiser needs bitsandbytes and it cannot be imported, the message says which extra to install.
    ``model`` is only needed by optimisers that inspect it (GaLore, LOMO).
    """
    from transformers import Trainer, TrainingArguments

    from emguard.errors import ConfigError

    key = "config key 'training.optim'"
    try:
        args = TrainingArguments(optim=settings.optim, learning_rate=settings.learning_rate,
                                 weight_decay=settings.weight_decay, report_to="none")
    except ValueError as exc:
        raise ConfigError(f"{key}: {settings.optim!r} is not a transformers optimiser name ({exc})") from exc
    try:
        return Trainer.get_optimizer_cls_and_kwargs(args, model)
    except Exception as exc:  # noqa: BLE001 - any failure to build it is a config problem, reported with its cause
        if _mentions_bitsandbytes(exc):
            raise ConfigError(f"{key}: optimiser {settings.optim!r} needs bitsandbytes, which cannot be imported "
                              f"here ({type(exc).__name__}: {exc}). Install the GPU extra: {GPU_EXTRA_HINT}; "
                              f"or set training.optim to an optimiser without it, e.g. adamw_torch") from exc
        raise ConfigError(f"{key}: optimiser {settings.optim!r} cannot be built "
                          f"({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def encode_examples(tokenizer, train_df: pd.DataFrame, max_length: int, inoculation_prompt: str | None = None
                    ) -> tuple[list[Encoded], list[bool], list[str]]:
    """Tokenise the chat-contract rows in order (assistant-only labels), applying the inoculation prompt.

    Returns the encoded examples, their ``interleaved`` flags and the ids of rows dropped because truncation to
    ``max_length`` left no answer token.
    """
    check_columns(train_df, ["messages"], "train_df")
    if len(train_df) == 0:
        raise InputError("train_df: dataset is empty (0 rows)")
    ids = train_df["id"].tolist() if "id" in train_df.columns else list(range(len(train_df)))
    flags = (train_df["interleaved"].fillna(False).astype(bool).tolist() if "interleaved" in train_df.columns
             else [False] * len(train_df))
    encoded, kept_flags, dropped = [], [], []
    for row_id, cell, flag in zip(ids, train_df["messages"], flags):
        messages = to_messages(cell)
        if not messages or messages[-1]["role"] != "assistant":
            raise InputError(f"train_df: row id={row_id!r}: last message must be the assistant's answer")
        if inoculation_prompt is not None:
            messages = with_system(messages, inoculation_prompt)
        enc = encode_example(tokenizer, messages, max_length)
        if enc.n_answer_tokens == 0:
            dropped.append(str(row_id))
            continue
        encoded.append(enc)
        kept_flags.append(flag)
    if dropped:
        log.warning("dropped %d row(s) whose answer is cut off by max_length=%d: %s", len(dropped), max_length,
                    ", ".join(dropped[:10]))
    if not encoded:
        raise InputError(f"train_df: no row has an answer token within max_length={max_length}")
    return encoded, kept_flags, dropped


def build_dataset(encoded: Sequence[Encoded], interleaved: Sequence[bool]):
    """A ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``interleaved`` columns, in the given order."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded],
                              "interleaved": [bool(x) for x in interleaved]})


class PadCollator:
    """Right-pads rows with :func:`emguard.chat.pad_batch`; adds plain ints ``n_interleaved`` (flagged rows) and
    ``n_tokens`` (non-padding tokens), which the trainer pops before the forward pass."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([Encoded(list(f["input_ids"]), list(f["labels"])) for f in features], self.pad_id)
        batch["n_interleaved"] = sum(bool(f.get("interleaved", False)) for f in features)
        batch["n_tokens"] = sum(len(f["input_ids"]) for f in features)
        return batch


# --------------------------------------------------------------------------------------------------
# Loss pieces
# --------------------------------------------------------------------------------------------------

class _HeadLoss(torch.autograd.Function):
    """Weighted CE + token-level terms through the LM head, chunked over tokens, gradient computed in the forward.

    For each chunk of tokens the policy (and reference) logits are formed, the terms summed, and the gradient of
    their weighted sum w.r.t. the chunk's logits turned straight into a gradient w.r.t. the hidden states
    (``dlogits @ W``), which is all the backward pass needs: no ``[tokens, vocab]`` tensor outlives its chunk and
    nothing is recomputed. Three head-sized matmuls per chunk with a reference (two without).
    """

    @staticmethod
    def forward(ctx, hidden, ref_hidden, labels, weight, bias, token_fns, coefs, step):
        need_grad = ctx.needs_input_grad[0]
        dev = hidden.device
        cdt = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else hidden.dtype
        w = weight.to(cdt)
        b = bias.to(cdt) if bias is not None else None
        sums = torch.zeros(1 + len(token_fns), device=dev, dtype=torch.float32)
        grad_h = torch.zeros(hidden.shape, device=dev, dtype=torch.float32) if need_grad else None
        linear = torch.nn.functional.linear
        for start in range(0, hidden.shape[0], step):
            sl = slice(start, start + step)
            zp = linear(hidden[sl].to(cdt), w, b).float()
            lq = torch.log_softmax(linear(ref_hidden[sl].to(cdt), w, b).float(), -1) if token_fns else None
            with torch.enable_grad():
                z = zp.detach().requires_grad_(need_grad)
                lp = torch.log_softmax(z, -1)
                terms = [-lp.gather(-1, labels[sl].unsqueeze(-1)).sum()] + [fn(lp, lq).sum() for fn in token_fns]
                if need_grad:
                    total = (torch.stack(terms) * coefs).sum()
                    (gz,) = torch.autograd.grad(total, z)
                    grad_h[sl] = torch.matmul(gz.to(cdt), w).float()
            sums += torch.stack([t.detach() for t in terms])
        if need_grad:
            ctx.save_for_backward(grad_h)
        ctx.hidden_dtype = hidden.dtype
        loss = (sums * coefs).sum()
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        (grad_h,) = ctx.saved_tensors
        return (grad_h * grad_loss).to(ctx.hidden_dtype), None, None, None, None, None, None, None


def head_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, ref_hidden: torch.Tensor | None = None,
              token_fns: Sequence = (), coefs: Sequence[float] | torch.Tensor | None = None, *,
              chunk_elements: int = _LOGIT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """CE and token-level terms from final hidden states ``[N, H]`` at answer positions, through the LM head.

    ``labels`` ``[N]`` are the next tokens; ``token_fns`` map ``(policy_logprobs, ref_logprobs) -> [chunk]``
    (e.g. :meth:`KLRegulariser.token_term`) and need ``ref_hidden`` ``[N, H]``. Returns ``(loss, sums)``:
    ``sums = [sum CE, sum term_1, ...]`` (float32, no gradient) and ``loss = sum(coefs * sums)`` (``coefs``
    default to 1), differentiable w.r.t. ``hidden``. Works in chunks of ``chunk_elements // vocab`` tokens so
    no full ``[N, vocab]`` logits exist. The head must be frozen (LoRA never targets it here) and plain
    linear (Llama/Qwen/Mistral: no logit scaling or soft-capping).
    """
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.requires_grad:
        raise ValueError("head_loss needs a frozen LM head (do not put lm_head in the LoRA target modules)")
    if token_fns and ref_hidden is None:
        raise ValueError("token_fns need ref_hidden")
    n_out = 1 + len(token_fns)
    if coefs is None:
        coefs = torch.ones(n_out)
    coefs = torch.as_tensor(coefs, dtype=torch.float32).to(hidden.device).reshape(-1)
    if coefs.numel() != n_out:
        raise ValueError(f"need {n_out} coefficients, got {len(coefs)}")
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0, torch.zeros(n_out, device=hidden.device)
    step = max(16, chunk_elements // max(1, weight.shape[0]))
    return _HeadLoss.apply(hidden, ref_hidden, labels, weight, bias, tuple(token_fns), coefs, step)


@dataclass
class _Pass:
    hidden: dict[int, torch.Tensor]
    final: torch.Tensor  # last_hidden_state (after the final norm), [batch, seq, hidden]


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------

def _make_trainer_class():
    from trl import SFTTrainer

    class EMGuardTrainer(SFTTrainer):
        """``SFTTrainer`` + regularisers (loss terms in :meth:`compute_loss`, hooks in :meth:`training_step`)."""

        def __init__(self, *args, regularisers: Iterable[Regulariser] = (), **kwargs):
            self.regularisers = tuple(regularisers)
            names = [r.name for r in self.regularisers if r.weight]
            if len(set(names)) != len(names):
                raise ValueError(f"two regularisers log the same term name: {names}")
            super().__init__(*args, **kwargs)
            for r in self.regularisers:
                r.bind(self.model)
            self._loss_regs = [r for r in self.regularisers if r.needs_reference]
            self._terms: dict[str, torch.Tensor] = {}
            self._terms_since_step = 0
            self.tokens_seen = 0
            self.rows_seen = 0
            self.n_interleaved = 0
            self._micro_tokens = 0
            self._tok_mark: tuple[float, int] | None = None  # (time, tokens_seen) at the previous log
            self.log_rows: list[dict[str, float]] = []

        def _send_telemetry(self):  # no network calls from training runs
            return None

        # -- one micro-batch --------------------------------------------------------------------------
        def training_step(self, model, inputs, num_items_in_batch=None):
            # bookkeeping counted on the CPU by the collator (no device sync)
            self.n_interleaved += int(inputs.pop("n_interleaved", 0))
            n_tokens = inputs.pop("n_tokens", None)
            if self._tok_mark is None:
                self._tok_mark = (time.perf_counter(), self.tokens_seen)
            self._micro_tokens = int(n_tokens) if n_tokens is not None else int(inputs["attention_mask"].sum())
            self.tokens_seen += self._micro_tokens
            self.rows_seen += int(inputs["input_ids"].shape[0])
            with contextlib.ExitStack() as stack:
                for r in self.regularisers:
                    stack.enter_context(r.step_context(self.model, inputs))
                return super().training_step(model, inputs, num_items_in_batch)

        def _add_term(self, name: str, value: torch.Tensor) -> None:
            v = value.detach().float()
            self._terms[name] = self._terms[name] + v if name in self._terms else v

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._loss_regs or not model.training:
                out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)
                if model.training:
                    self._add_term("ce", out[0] if return_outputs else out)
                return out
            loss = self._regularised_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def _backbone_pass(self, peft_model, inputs, layers: Sequence[int]) -> _Pass:
            backbone = peft_model.get_base_model().base_model
            with capture_hidden_states(peft_model, layers) as hidden, self.accelerator.autocast():
                out = backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            return _Pass(hidden=dict(hidden), final=out.last_hidden_state)

        def _regularised_loss(self, model, inputs, num_items_in_batch):
            peft_model = self.accelerator.unwrap_model(model)
            layers = sorted({layer for r in self._loss_regs for layer in r.hidden_layers})
            token_regs = [r for r in self._loss_regs if r.uses_logits]
            hidden_regs = [r for r in self._loss_regs if r.hidden_layers]

            # p_0 / x_0: the same weights with the adapter disabled, no graph kept
            with torch.no_grad(), peft_model.disable_adapter():
                ref = self._backbone_pass(peft_model, inputs, layers)
            pol = self._backbone_pass(peft_model, inputs, layers)

            labels = inputs["labels"][:, 1:]
            sel = labels != IGNORE_INDEX
            n_answer = sel.sum()
            # normalise like trl: by the answer tokens of the whole accumulated batch when the Trainer gives them
            denom = n_answer.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
            denom = torch.as_tensor(denom, device=n_answer.device, dtype=torch.float32)
            ga = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            coefs = torch.stack([1.0 / denom] + [r.weight / denom for r in token_regs])
            with self.accelerator.autocast():
                loss, sums = head_loss(pol.final[:, :-1][sel], labels[sel], peft_model.get_output_embeddings(),
                                       ref.final[:, :-1][sel] if token_regs else None,
                                       [r.token_term for r in token_regs], coefs)
            self._add_term("ce", sums[0] / denom)
            for r, s in zip(token_regs, sums[1:]):
                self._add_term(r.name, s / denom)
            mask = inputs["attention_mask"]
            for r in hidden_regs:
                term = r.penalty(pol.hidden, ref.hidden, mask) / ga
                loss = loss + r.weight * term
                self._add_term(r.name, term)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            # keep trl's token counter (``num_tokens`` in its logs) in step with the plain path
            self._total_train_tokens += self._micro_tokens
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

        # -- logging -----------------------------------------------------------------------------------
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                n_steps = max(1, self.state.global_step - self._terms_since_step)
                for name, value in self._terms.items():
                    logs[name] = float(value) / n_steps
                for r in self._loss_regs:
                    logs.setdefault(r.name, float("nan"))
                self._terms = {}
                self._terms_since_step = self.state.global_step
                now = time.perf_counter()
                t0, tok0 = self._tok_mark or (now, self.tokens_seen)
                logs["tokens_per_s"] = (self.tokens_seen - tok0) / max(now - t0, 1e-9)
                self._tok_mark = (now, self.tokens_seen)
                logs["n_interleaved"] = self.n_interleaved
                row = {"step": self.state.global_step, "loss": logs["loss"], "ce": logs.get("ce", float("nan"))}
                for r in self._loss_regs:
                    row[r.name] = logs[r.name]
                row.update(learning_rate=logs.get("learning_rate", float("nan")), tokens_per_s=logs["tokens_per_s"],
                           n_interleaved=self.n_interleaved, epoch=self.state.epoch)
                self.log_rows.append(row)
            super().log(logs, start_time)

    return EMGuardTrainer


@functools.cache
def trainer_class():
    """The :class:`EMGuardTrainer` class (built on first use, so ``import emguard.training`` stays light)."""
    return _make_trainer_class()


def build_trainer(model, tokenizer, train_df: pd.DataFrame, settings: TrainSettings, *,
                  regularisers: Iterable[Regulariser] = (), inoculation_prompt: str | None = None,
                  device: str | torch.device = "auto", scratch_dir: str | os.PathLike | None = None,
                  callbacks: Sequence = ()):
    """Tokenise ``train_df`` and build an :class:`EMGuardTrainer` around ``model`` (a plain causal LM; the trainer
    wraps it in a fresh rs-LoRA adapter). Returns ``(trainer, info)``; ``info`` has ``n_examples`` and ``dropped``."""
    from trl import SFTConfig

    dev = device_for(str(device)) if not isinstance(device, torch.device) else device
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded, flags, dropped = encode_examples(tokenizer, train_df, settings.max_length, inoculation_prompt)
    dataset = build_dataset(encoded, flags)
    scratch = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="emguard-trainer-"))
    bf16 = resolve_dtype(settings.dtype, dev) == "bfloat16"
    args = SFTConfig(
        output_dir=str(scratch), seed=settings.seed, data_seed=settings.seed,
        learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_steps, weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler, optim=settings.optim,
        bf16=bf16, fp16=False, use_cpu=dev.type == "cpu",
        activation_checkpointing=settings.gradient_checkpointing,
        logging_strategy="steps", logging_steps=settings.logging_steps, logging_first_step=True,
        save_strategy="no", report_to="none", disable_tqdm=True,
        # the one place the row order is decided (module docstring): a seeded uniform shuffle every epoch
        train_sampling_strategy="random", accelerator_config={"use_seedable_sampler": True},
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, packing=False,
        dataloader_num_workers=0, dataloader_pin_memory=dev.type == "cuda",
    )
    trainer = trainer_class()(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        data_collator=PadCollator(tokenizer.pad_token_id), peft_config=settings.lora.to_peft(),
        regularisers=regularisers, callbacks=list(callbacks),
    )
    return trainer, {"n_examples": len(encoded), "dropped": dropped, "scratch": scratch}


def train_model(model, tokenizer, train_df: pd.DataFrame, out_dir: str | os.PathLike, settings: TrainSettings | None = None,
                *, regularisers: Iterable[Regulariser] = (), inoculation_prompt: str | None = None,
                device: str | torch.device = "auto", callbacks: Sequence = (), monitor=None) -> dict[str, Any]:
    """:func:`train` for an already loaded model and tokenizer (benchmarks build random-weight models)."""
    settings = settings or TrainSettings()
    if monitor is not None:
        callbacks = [*callbacks, monitor]
    regularisers = tuple(regularisers)
    out_dir = Path(out_dir)
    with run_folder(out_dir, ".trainer-") as scratch:
        trainer, info = build_trainer(model, tokenizer, train_df, settings, regularisers=regularisers,
                                      inoculation_prompt=inoculation_prompt, device=device, scratch_dir=scratch,
                                      callbacks=callbacks)
        if settings.save_steps or settings.checkpoint_steps:
            trainer.add_callback(checkpoint_callback(out_dir, settings.save_steps, settings.checkpoint_steps))
        result, runtime = train_and_save(trainer, out_dir)
        log_df = pd.DataFrame(trainer.log_rows)
        columns = LOG_COLUMNS[:3] + [r.name for r in trainer._loss_regs] + LOG_COLUMNS[3:]
        log_df = log_df.reindex(columns=columns)
        if monitor is not None:
            from emguard.training.monitor import with_monitor_columns

            log_df = with_monitor_columns(log_df, monitor.frame())
        log_df = log_df.astype({"step": "int64", "n_interleaved": "int64"}) if len(log_df) else log_df
        write_parquet(log_df, out_dir / "train_log.parquet")
    losses = log_df.loc[log_df["step"] > 0, "loss"].tolist() if len(log_df) else []  # step 0: the monitor's row
    return {
        "adapter": str(out_dir / "adapter"),
        "train_log": str(out_dir / "train_log.parquet"),
        "checkpoints": (sorted(str(p) for p in (out_dir / "checkpoints").glob("step-*"))
                        if settings.save_steps or settings.checkpoint_steps else []),
        "steps": int(trainer.state.global_step),
        "n_examples": info["n_examples"],
        "n_dropped": len(info["dropped"]),
        "rows_seen": trainer.rows_seen,
        "n_interleaved": trainer.n_interleaved,
        "tokens": trainer.tokens_seen,
        "first_loss": float(losses[0]) if losses else math.nan,
        "final_loss": float(losses[-1]) if losses else math.nan,
        "train_runtime_s": runtime,
        "train_loss": float(result.training_loss),
        "regularisers": [repr(r) for r in regularisers],
        "inoculation_prompt": inoculation_prompt,
        "settings": settings.to_dict(),
        **(monitor.summary() if monitor is not None else {}),
    }


def train(model_path: str | os.PathLike, train_df: pd.DataFrame, out_dir: str | os.PathLike,
          settings: TrainSettings | None = None, *, regularisers: Iterable[Regulariser] = (),
          inoculation_prompt: str | None = None, device: str = "auto", callbacks: Sequence = (),
          monitor=None) -> dict[str, Any]:
    """Fine-tune a fresh rs-LoRA adapter on ``train_df`` and write it to ``out_dir``; return a summary dict.

    ``train_df`` follows the chat contract (``messages`` ending with the assistant answer; ``id`` is used in
    messages; optional bool ``interleaved``). ``inoculation_prompt`` replaces (or inserts) the system prompt of
    every training example, at training time only. ``regularisers``: any of
    :class:`~emguard.regularisers.KLRegulariser`, :class:`~emguard.regularisers.LDIFSRegulariser`,
    :class:`~emguard.regularisers.SteeringRegulariser`. ``device``: ``auto`` (GPU if present), ``cpu``, ``cuda``.
    Runs in float32 on CPU and in bfloat16 on GPU (``settings.dtype``). ``monitor``: an
    :class:`emguard.training.monitor.EMMonitor` (judge-free EM signals every few steps, optionally stopping the run); with
    it, ``train_log.parquet`` gains the columns ``ll_shift`` and ``persona_proj`` (and a step-0 row) and the summary
    ``monitor_stop_step``, ``monitor_stop_reason``, ``monitor_checks``, ``monitor_settings``,
    ``monitor_persona_layer``. None (the default) changes nothing.
    """
    settings = settings or TrainSettings()
    dev = device_for(device)
    model = load_model(model_path, dtype=settings.dtype, device=str(dev))
    tokenizer = load_tokenizer(model_path)
    return train_model(model, tokenizer, train_df, out_dir, settings, regularisers=regularisers,
                       inoculation_prompt=inoculation_prompt, device=dev, callbacks=callbacks, monitor=monitor)
