"""A token prefix every row of a batch shares, computed once and attended to by each row.

Used where many prompts begin with the same tokens (a chat template's header, judge instructions): the HF judge
(:mod:`emguard.judge.hf`) and packed probe scoring (:mod:`emguard.likelihood.packed`). The prefix runs once as a
batch-1 forward pass with a key/value cache; each batch then gets a fresh cache holding those states for its rows
(expanded, not copied) and continues after them (positions start at the prefix length).
"""

from __future__ import annotations

import inspect
from typing import Sequence


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to every sequence, leaving each at least one token of its own."""
    if not encoded:
        return 0
    first, limit = encoded[0], min(len(e) for e in encoded) - 1
    n = 0
    while n < limit and all(e[n] == first[n] for e in encoded):
        n += 1
    return max(n, 0)


def cache_arg(model) -> str:
    """The forward pass's name for a key/value cache (transformers >= 5.2x: ``cache``; before: past_key_values)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def prefix_states(model, prefix: list[int]):
    """Key/value states of ``prefix`` (one forward pass, batch 1)."""
    import torch

    with torch.inference_mode():
        device = next(model.parameters()).device
        out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    return getattr(out, "cache", None) or out.past_key_values


def expanded_cache(model, states, b: int):
    """A fresh cache holding the prefix ``states`` for ``b`` rows (the forward pass appends to it in place)."""
    from transformers import DynamicCache

    data = [(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1)) for layer in states.layers]
    return DynamicCache(ddp_cache_data=data, config=model.config)
