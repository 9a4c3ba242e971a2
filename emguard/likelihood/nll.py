"""Answer-only NLL of chat examples under a base model and several LoRA adapters, in one model load.

Shared by pool scoring (:mod:`emguard.interleave`) and the judge-free EM measure
(:mod:`emguard.likelihood.probes`). The NLL of an example is the mean over its answer tokens (the final
assistant message and its end-of-turn token, :func:`emguard.chat.encode_example`) of
``-log p(token | everything before it)``, in nats per token.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from emguard.chat import IGNORE_INDEX, Encoded, encode_example, pad_batch
from emguard.errors import InputError

if TYPE_CHECKING:
    import torch

#: names that would clash with the columns callers derive from adapter names (``nll_base``, ``nll_mis_mean``)
RESERVED_ADAPTER_NAMES = ("base", "mis_mean")


def check_adapter_names(adapters: dict[str, str]) -> list[str]:
    if not adapters:
        raise ValueError("NLL scoring needs at least one adapter (adapters is empty)")
    names = [str(n) for n in adapters]
    reserved = set(RESERVED_ADAPTER_NAMES)
    for n in names:
        if n in reserved:
            raise ValueError(f"adapter name {n!r} is reserved (it would clash with column nll_{n})")
        if not n:
            raise ValueError("adapter names must be non-empty")
    for n, path in adapters.items():
        if not Path(path).is_dir():
            raise InputError(f"{path}: adapter folder for {n!r} not found")
    return names


def encode_conversations(tokenizer, conversations: Sequence[list[dict]], max_length: int | None) -> list[Encoded]:
    """Tokenise each conversation with labels on the final answer only (see :func:`emguard.chat.encode_example`)."""
    return [encode_example(tokenizer, msgs, max_length) for msgs in conversations]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    inner = model
    get_base = getattr(model, "get_base_model", None)
    if get_base is not None:
        inner = get_base()
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def _batch_nll(model, batch: dict[str, torch.Tensor], use_keep: bool) -> torch.Tensor:
    """Per-row sum of answer-token NLL (float64, on the CPU) for one right-padded batch.

    No attention mask is passed: the batch is right-padded and the model causal, so real tokens never
    see the padding; this keeps the fast causal attention kernels. Logits are projected only at the
    positions that predict an answer token (``logits_to_keep`` as a boolean mask), which skips the
    vocabulary projection on prompt and padding tokens.
    """
    import torch

    device = _model_device(model)
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # [B, W-1]: position t predicts token t+1
    rows = keep.nonzero(as_tuple=True)[0]
    if use_keep:
        keep_full = torch.cat([keep, torch.zeros_like(keep[:, :1])], dim=1)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep_full).logits
        if logits.dim() == 3:  # a model that ignores boolean masks returns every position
            logits = logits[keep_full]
    else:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1][keep]
    nll = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")
    sums = torch.zeros(ids.shape[0], dtype=torch.float64)
    sums.index_add_(0, rows.cpu(), nll.double().cpu())
    return sums


def length_sorted_batches(lengths: Sequence[int], batch_size: int,
                          max_padding: float | None = 0.1) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory shows at once).

    A batch holds at most ``batch_size`` examples; with ``max_padding`` set, it is also closed early when
    adding the next example would make the padding exceed that fraction of its real tokens (with a
    large pool neighbouring lengths are close and batches stay full; a small or very varied pool gets
    smaller batches instead of wasted compute). ``None`` disables the padding limit.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        if cur:
            width = lengths[cur[0]]  # descending order: the first is the longest
            full = len(cur) >= batch_size
            too_padded = (max_padding is not None
                          and width * (len(cur) + 1) > (1 + max_padding) * (real + lengths[i]))
            if full or too_padded:
                batches.append(cur)
                cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    if cur:
        batches.append(cur)
    return batches


def mean_answer_nll(model, encoded: Sequence[Encoded], pad_id: int, *, batch_size: int = 16,
                    max_padding: float | None = 0.1) -> np.ndarray:
    """Answer-only mean token NLL of each example under ``model`` as it is now (active adapter), in input order.

    Examples with no answer token left (truncated away) get NaN.
    """
    import torch

    use_keep = _accepts_logits_to_keep(model)
    out = np.full(len(encoded), np.nan, dtype=np.float64)
    counts = np.array([e.n_answer_tokens for e in encoded])
    with torch.inference_mode():
        for idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size, max_padding):
            batch = pad_batch([encoded[i] for i in idx], pad_id, side="right")
            sums = _batch_nll(model, batch, use_keep).numpy()
            for j, i in enumerate(idx):
                if counts[i] > 0:
                    out[i] = sums[j] / counts[i]
    return out


def score_encoded(model, encoded: Sequence[Encoded], adapters: dict[str, str], pad_id: int, *,
                  batch_size: int = 16, max_padding: float | None = 0.1) -> dict[str, np.ndarray]:
    """Mean answer NLL of pre-tokenised examples under the base model and each adapter (the core of
    :func:`score_pool`). Returns ``{"base": ..., <adapter name>: ...}``, arrays in input order.

    ``model`` is a plain transformers model or a ``PeftModel``. The adapters are attached with peft's
    multi-adapter API (``PeftModel.from_pretrained`` for the first, ``load_adapter`` for the rest,
    ``set_adapter`` to switch, ``disable_adapter()`` for the base pass) and removed again afterwards,
    leaving ``model`` as it was.
    """
    from peft import PeftModel

    names = check_adapter_names(adapters)
    # Internal adapter names are "emguard_k": valid module keys whatever the user-facing names are.
    internal = [f"emguard_{k}" for k in range(len(names))]
    paths = [str(adapters[n]) for n in names]
    wrapped = not isinstance(model, PeftModel)
    if wrapped:
        peft_model = PeftModel.from_pretrained(model, paths[0], adapter_name=internal[0], is_trainable=False)
        to_load = list(zip(internal[1:], paths[1:]))
    else:
        peft_model = model
        previous_active = peft_model.active_adapter
        requires_grad = {pname: p.requires_grad for pname, p in peft_model.named_parameters()}
        to_load = list(zip(internal, paths))
    loaded = [internal[0]] if wrapped else []
    was_training = peft_model.training
    peft_model.eval()
    out: dict[str, np.ndarray] = {}
    try:
        for name, path in to_load:
            peft_model.load_adapter(path, adapter_name=name, is_trainable=False)
            loaded.append(name)
        with peft_model.disable_adapter():
            out["base"] = mean_answer_nll(peft_model, encoded, pad_id, batch_size=batch_size,
                                          max_padding=max_padding)
        for user_name, name in zip(names, internal):
            peft_model.set_adapter(name, inference_mode=True)
            out[user_name] = mean_answer_nll(peft_model, encoded, pad_id, batch_size=batch_size,
                                          max_padding=max_padding)
    finally:
        if wrapped:
            peft_model.unload()  # removes the LoRA layers; ``model`` is the plain base model again
        else:
            peft_model.set_adapter(previous_active)
            for name in loaded:
                peft_model.delete_adapter(name)
            for pname, param in peft_model.named_parameters():
                param.requires_grad_(requires_grad.get(pname, False))
        if was_training:
            model.train()
    return out

