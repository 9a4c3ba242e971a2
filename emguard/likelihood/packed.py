"""Answer NLLs of several answers to one prompt in one row: the prompt is computed once.

A probe is one prompt with two answers (aligned, misaligned). Scored as two separate rows, the prompt runs twice;
and every probe's prompt begins with the same chat-template header (the system prompt a template inserts, the user
turn's opening tokens). Here each prompt *group* is one packed row ``prompt | answer_1 | answer_2 | ...``:

* position ids restart after the prompt for every answer (answer ``k``'s first token has position ``len(prompt)``);
* a 4D attention mask lets each answer see the prompt and its own earlier tokens, never another answer's;
* the prefix every row of a call shares is computed once (one batch-1 forward pass with the key/value cache) and
  expanded to each batch, which then starts after it.

The logits at the prompt's last token predict every answer's first token; answer ``k``'s token ``j`` predicts its
token ``j + 1``. Only those positions go through the vocabulary projection (``logits_to_keep``). The result equals
scoring each (prompt, answer) as its own row up to floating-point rounding (tests compare both paths).

The same pass can also read the residual stream: with ``hidden_layer``, :func:`packed_answer_nll` averages one
decoder block's output over the first tokens of each group's first answer (a forward hook on that block, removed
after the call). The probe measure takes the persona projection from it (:func:`emguard.likelihood.probes.probe_nll`
with ``persona``), so that signal costs no forward pass of its own. Positions restart after the prompt and no answer
sees another, so the first answer's states are those of the row ``prompt | first answer`` on its own.

Hand-written because transformers scores one continuation per row; the mask-and-positions packing is the technique
the HF judge uses for its number tree (:mod:`emguard.judge`). It needs an attention implementation that takes a 4D
additive mask (``eager``, ``sdpa``): with any other (flash attention) :func:`supports_packing` is false and callers
score the rows one by one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emguard import kv_prefix
from emguard.chat import IGNORE_INDEX, Encoded

#: a shared prefix shorter than this is not worth a separate forward pass
MIN_SHARED_PREFIX = 8


@dataclass
class PromptGroup:
    """One prompt's token ids and its answers' token ids (each answer ends with its end-of-turn token)."""
    prompt: list[int]
    answers: list[list[int]]

    @property
    def width(self) -> int:
        return len(self.prompt) + sum(len(a) for a in self.answers)


def group_encoded(encoded: Sequence[Encoded], group_size: int) -> list[PromptGroup]:
    """Consecutive runs of ``group_size`` encoded examples that share their prompt, as :class:`PromptGroup`.

    The prompt of an example is its tokens before the first labelled one; a run whose prompts differ, or an
    example with no answer token or a label on a prompt position, is a :class:`ValueError`."""
    if group_size < 1 or len(encoded) % group_size:
        raise ValueError(f"{len(encoded)} examples do not split into groups of {group_size}")
    groups = []
    for start in range(0, len(encoded), group_size):
        prompt, answers = None, []
        for k, e in enumerate(encoded[start:start + group_size]):
            first = next((i for i, t in enumerate(e.labels) if t != IGNORE_INDEX), None)
            if first is None or first == 0:
                raise ValueError(f"example {start + k} has no answer token after a prompt")
            if any(t == IGNORE_INDEX for t in e.labels[first:]) or e.labels[first:] != e.input_ids[first:]:
                raise ValueError(f"example {start + k}: the labels are not one answer span at the end")
            if prompt is None:
                prompt = list(e.input_ids[:first])
            elif list(e.input_ids[:first]) != prompt:
                raise ValueError(f"examples {start}..{start + group_size - 1} do not share their prompt")
            answers.append(list(e.input_ids[first:]))
        groups.append(PromptGroup(prompt, answers))
    return groups


def shared_prefix_length(groups: Sequence[PromptGroup]) -> int:
    """Tokens every group's prompt starts with, leaving each prompt at least one token of its own (its last
    token's logits predict the answers, so it must be in the row)."""
    return kv_prefix.shared_prefix_length([g.prompt for g in groups])


def supports_packing(model) -> bool:
    """Whether the model's attention takes the 4D additive mask packing relies on (not flash attention)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = str(getattr(getattr(inner, "config", None), "_attn_implementation", None) or "sdpa")
    return "flash" not in impl


def _batch(model, groups: Sequence[PromptGroup], pad_id: int, n_prefix: int, states, captured=None,
           hidden_tokens: Sequence[int] | None = None):
    """Summed answer NLL (float64) of each answer of each group in one packed, right-padded forward pass.

    With ``captured`` (the slot of :func:`_block_output`, filled by this pass), also the mean of the captured
    states over the first ``hidden_tokens[r]`` tokens of group ``r``'s first answer (``[len(groups), hidden]``,
    float32 on the CPU); returns ``(nll, means)`` then, and the NLL list alone otherwise."""
    import torch

    b = len(groups)
    width = max(g.width for g in groups) - n_prefix
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    allowed = torch.zeros((b, width, width), dtype=torch.bool)
    keep = torch.zeros((b, width), dtype=torch.bool)
    targets: list[tuple[int, int, list[int]]] = []  # per answer: its row, its first column, its tokens
    for r, g in enumerate(groups):
        n_prompt = len(g.prompt) - n_prefix
        ids[r, :n_prompt] = torch.tensor(g.prompt[n_prefix:])
        pos[r, :n_prompt] = torch.arange(n_prefix, len(g.prompt))
        allowed[r, :n_prompt, :n_prompt] = torch.tril(torch.ones(n_prompt, n_prompt, dtype=torch.bool))
        keep[r, n_prompt - 1] = True
        start = n_prompt
        for ans in g.answers:
            end = start + len(ans)
            ids[r, start:end] = torch.tensor(ans)
            pos[r, start:end] = torch.arange(len(g.prompt), len(g.prompt) + len(ans))
            allowed[r, start:end, :n_prompt] = True
            allowed[r, start:end, start:end] = torch.tril(torch.ones(len(ans), len(ans), dtype=torch.bool))
            keep[r, start:end - 1] = True  # token j predicts token j + 1; the last predicts nothing scored
            targets.append((r, start, ans))
            start = end
    idx = torch.arange(width)
    allowed[:, idx, idx] = True  # padding queries see themselves (no all-masked row)
    if n_prefix:
        allowed = torch.cat([torch.ones((b, width, n_prefix), dtype=torch.bool), allowed], dim=2)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((b, 1, width, n_prefix + width), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)

    device = next(model.parameters()).device
    extra = {kv_prefix.cache_arg(model): kv_prefix.expanded_cache(model, states, b)} if n_prefix else {}
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=bool(n_prefix), logits_to_keep=keep.to(device), **extra).logits
    if logits.dim() == 3:  # a model that ignores boolean logits_to_keep returns every position
        logits = logits[keep.to(logits.device)]
    # flat[r, c]: the row of ``logits`` holding position (r, c) (a boolean mask keeps row-major order)
    flat = torch.cumsum(keep.flatten().long(), 0).view(b, width) - 1
    rows, tokens, owner = [], [], []
    for k, (r, start, ans) in enumerate(targets):
        last_prompt = len(groups[r].prompt) - n_prefix - 1
        rows += [int(flat[r, last_prompt])] + flat[r, start:start + len(ans) - 1].tolist()
        tokens += ans
        owner += [k] * len(ans)
    rows_t = torch.tensor(rows, device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits[rows_t].float(), torch.tensor(tokens, device=logits.device),
                                            reduction="none")
    sums = torch.zeros(len(targets), dtype=torch.float64)
    sums.index_add_(0, torch.tensor(owner), nll.double().cpu())
    out, k = [], 0
    for g in groups:
        out.append(sums[k:k + len(g.answers)].numpy())
        k += len(g.answers)
    if captured is None:
        return out
    # the row's columns start after the shared prefix (its states are in the cache), so the first answer
    # begins at column len(prompt) - n_prefix, as in the layout above
    hidden = captured.pop("h")
    means = torch.stack([hidden[r, len(g.prompt) - n_prefix:len(g.prompt) - n_prefix + n].float().sum(0) / n
                         for r, (g, n) in enumerate(zip(groups, hidden_tokens))])
    return out, means.cpu()


@contextlib.contextmanager
def _block_output(model, layer: int):
    """A slot whose ``"h"`` is the output of decoder block ``layer - 1`` (hidden-state index ``layer``, numbered as
    in :mod:`emguard.persona`: the last block's output is taken before the final norm) of each forward pass run
    inside the ``with``. A forward hook that changes nothing, removed on leaving, also on an error."""
    from emguard.steering import decoder_layers

    layers = decoder_layers(model)
    if not 1 <= int(layer) <= len(layers):
        raise ValueError(f"hidden_layer {layer} outside 1..{len(layers)} (hidden-state index of a decoder block's "
                         "output)")
    slot: dict = {}

    def hook(_module, _inputs, output):
        slot["h"] = output[0] if isinstance(output, tuple) else output

    handle = layers[int(layer) - 1].register_forward_hook(hook)
    try:
        yield slot
    finally:
        handle.remove()


def _hidden_size(model) -> int:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(getattr(getattr(inner, "config", None), "hidden_size", 0) or 0)


def packed_answer_nll(model, groups: Sequence[PromptGroup], pad_id: int, *, batch_size: int = 16,
                      max_padding: float | None = 0.1, share_prefix: bool = True, hidden_layer: int | None = None,
                      hidden_tokens: Sequence[int] | None = None):
    """Mean token NLL of every answer of every group under ``model`` as it is (``[len(groups), group size]``,
    groups in input order; every group must have the same number of answers).

    With ``hidden_layer`` (a hidden-state index, 1..n_layers), returns ``(nll, means)``: ``means[i]`` is the
    output of decoder block ``hidden_layer - 1`` averaged over the first ``hidden_tokens[i]`` tokens of group
    ``i``'s first answer (1..its length; None: all of them), float32 on the CPU, ``[len(groups), hidden]``,
    read in the same forward pass."""
    import torch

    from emguard.likelihood.nll import length_sorted_batches

    if hidden_tokens is not None and hidden_layer is None:
        raise ValueError("hidden_tokens given without hidden_layer")
    if hidden_layer is not None:
        hidden_tokens = ([len(g.answers[0]) for g in groups] if hidden_tokens is None
                         else [int(n) for n in hidden_tokens])
        if len(hidden_tokens) != len(groups):
            raise ValueError(f"{len(hidden_tokens)} hidden_tokens for {len(groups)} groups")
        for i, (g, n) in enumerate(zip(groups, hidden_tokens)):
            if not 1 <= n <= len(g.answers[0]):
                raise ValueError(f"group {i}: hidden_tokens {n} outside 1..{len(g.answers[0])} (its first answer's "
                                 "tokens)")
    if not groups:
        empty = np.zeros((0, 0))
        return empty if hidden_layer is None else (empty, torch.zeros((0, _hidden_size(model))))
    size = len(groups[0].answers)
    if any(len(g.answers) != size for g in groups):
        raise ValueError("every prompt group must have the same number of answers")
    n_prefix = shared_prefix_length(groups) if share_prefix else 0
    if n_prefix < MIN_SHARED_PREFIX or len(groups) < 2:
        n_prefix = 0
    out = np.full((len(groups), size), np.nan)
    means = None
    with torch.inference_mode():
        states = kv_prefix.prefix_states(model, groups[0].prompt[:n_prefix]) if n_prefix else None
        # hooked after the prefix pass: only the batches' own columns are read
        with (_block_output(model, hidden_layer) if hidden_layer is not None else contextlib.nullcontext()) as slot:
            for idx in length_sorted_batches([g.width for g in groups], batch_size, max_padding):
                batch = [groups[i] for i in idx]
                if slot is None:
                    sums = _batch(model, batch, pad_id, n_prefix, states)
                else:
                    sums, part = _batch(model, batch, pad_id, n_prefix, states, slot,
                                        [hidden_tokens[i] for i in idx])
                    if means is None:
                        means = torch.empty((len(groups), part.shape[1]), dtype=torch.float32)
                    means[torch.tensor(idx)] = part
                for i, s in zip(idx, sums):
                    out[i] = s / np.array([len(a) for a in groups[i].answers])
    return out if hidden_layer is None else (out, means)
