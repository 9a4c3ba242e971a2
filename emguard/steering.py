"""Adding a steering vector to the residual stream of one decoder layer.

Used both for preventive steering during training (training forward passes only) and for the
persona-vector validation at generation time. The hook is a context manager, so it is removed even
when the body raises, and a model saved after the ``with`` block carries no trace of it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of a (possibly PEFT-wrapped) Llama/Qwen/Mistral-style model."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    inner = getattr(m, "model", m)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise AttributeError(f"cannot find decoder layers on {type(m).__name__}")
    return layers


@contextlib.contextmanager
def steer(model, vector: torch.Tensor, layer: int, alpha: float,
          position_mask: torch.Tensor | None = None) -> Iterator[None]:
    """Add ``alpha * vector`` to the residual stream at hidden-state index ``layer``.

    Layers are numbered as in ``output_hidden_states`` and in the persona-vector tensor: index 0 is
    the embeddings, index ``l`` (1..n_layers) the output of decoder block ``l - 1``; so "layer 20"
    hooks the 20th block and uses ``vectors[20]``. ``position_mask`` ([batch, seq], 1 where to steer) restricts steering to
    some positions (e.g. response tokens); ``None`` steers every position.
    """
    layers = decoder_layers(model)
    if not 1 <= layer <= len(layers):
        raise ValueError(f"steering layer {layer} outside 1..{len(layers)} (the model's decoder layers)")

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        delta = (alpha * vector).to(dtype=hidden.dtype, device=hidden.device)
        if position_mask is not None:
            hidden = hidden + position_mask.to(hidden.device, hidden.dtype).unsqueeze(-1) * delta
        else:
            hidden = hidden + delta
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        return hidden

    handle = layers[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
