"""In-training regularisers against emergent misalignment, plugged into :mod:`emguard.training`.

Each regulariser is a small named object. The trainer (``EMGuardTrainer.compute_loss``) asks it what it needs and
adds its term to the loss; every term is logged per optimisation step under the regulariser's ``name``.

* :class:`KLRegulariser` -- ``CE + kl_lambda * KL(p_theta || p_0)`` on answer tokens.
* :class:`LDIFSRegulariser` -- ``CE + ldifs_lambda * ||x_theta - x_0||^2`` on residual-stream features
  (every 5th layer, summed over token positions by default, as in the paper).
* :class:`SteeringRegulariser` -- preventive steering: adds ``alpha * vector`` to one layer's output during the
  training forward (and backward) pass only; no loss term.

Inoculation prompting is not a regulariser: it is a data transform (``inoculation_prompt`` of
:func:`emguard.training.train`).

The reference distribution ``p_0`` and features ``x_0`` come from the SAME model with its LoRA adapter disabled
(``with model.disable_adapter():`` under ``torch.no_grad()``): one extra no-grad forward pass per micro-batch, shared
by every regulariser that needs it, and no second copy of the weights. When a :class:`SteeringRegulariser` is
present too, the reference pass runs with the steering hook active as well, so KL and LDIFS measure only the drift
the adapter causes (a steered policy against an unsteered reference would push the adapter to cancel the steering
vector, which is exactly what preventive steering tries to avoid).

Layer numbering follows ``docs/architecture.md``: hidden-state index ``l`` is the embedding output for ``l = 0`` and
the output of decoder block ``l - 1`` for ``1 <= l <= n_layers``. Features are captured with forward hooks on those
modules (:func:`capture_hidden_states`), so index ``n_layers`` is the last block's output *before* the final norm
(transformers' ``hidden_states[-1]`` is after it); all other indices agree with ``output_hidden_states``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch

from emguard.chat import IGNORE_INDEX
from emguard.steering import decoder_layers, steer


def every_nth_layer(n_layers: int, step: int = 5, include_final: bool = False) -> list[int]:
    """Hidden-state indices ``step, 2*step, ...`` up to ``n_layers`` (LDIFS' "every 5th layer").

    ``include_final`` appends ``n_layers`` (the last block's output) when the stride misses it.
    ``every_nth_layer(28, 5) == [5, 10, 15, 20, 25]``; ``every_nth_layer(28, 5, include_final=True) ==
    [5, 10, 15, 20, 25, 28]``; ``every_nth_layer(4, 5, include_final=True) == [4]``. A stride longer than the
    model without ``include_final`` selects nothing and raises ``ValueError``.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    layers = list(range(step, n_layers + 1, step))
    if include_final and (not layers or layers[-1] != n_layers):
        layers.append(n_layers)
    if not layers:
        raise ValueError(f"step {step} is larger than n_layers {n_layers}: it selects no layer "
                         f"(use a smaller step or include the final layer)")
    return layers


def _embedding_module(model) -> torch.nn.Module:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.get_input_embeddings()


@contextlib.contextmanager
def capture_hidden_states(model, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the residual stream at hidden-state indices ``layers`` during forward passes inside the block.

    Yields a dict that the hooks fill with ``{layer: tensor[batch, seq, hidden]}`` (the last forward pass wins).
    The tensors keep their autograd history, so a penalty on them back-propagates into the adapter. Hooks that
    modify a layer's output and were registered earlier (e.g. a steering hook) are seen by the capture.
    """
    captured: dict[int, torch.Tensor] = {}
    handles = []
    blocks = decoder_layers(model)

    def make_hook(index: int):
        def hook(_module, _inputs, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
        return hook

    try:
        for layer in sorted(set(int(x) for x in layers)):
            if not 0 <= layer <= len(blocks):
                raise ValueError(f"hidden-state layer {layer} outside 0..{len(blocks)} (the model's layers)")
            module = _embedding_module(model) if layer == 0 else blocks[layer - 1]
            handles.append(module.register_forward_hook(make_hook(layer)))
        yield captured
    finally:
        for h in handles:
            h.remove()


class Regulariser:
    """Base class: what the trainer needs to know about a regulariser.

    Attributes read by the trainer:
      ``name``           log column of the (unweighted) term;
      ``weight``         the lambda the term is multiplied by (0 for regularisers without a loss term);
      ``hidden_layers``  hidden-state indices whose policy and reference features :meth:`penalty` reads;
      ``uses_logits``    whether :meth:`token_term` needs next-token log-probabilities on answer positions.
    """

    name: str = "regulariser"
    weight: float = 0.0
    hidden_layers: tuple[int, ...] = ()
    uses_logits: bool = False

    @property
    def needs_reference(self) -> bool:
        """Whether the trainer must run the adapter-disabled reference pass for this regulariser."""
        return bool(self.hidden_layers) or self.uses_logits

    def bind(self, model) -> None:
        """Check the settings against ``model`` (layer ranges, vector size); raise ``ValueError`` if they do not fit."""

    def step_context(self, model, inputs: Mapping[str, torch.Tensor]) -> contextlib.AbstractContextManager:
        """Context active for one whole training step (forward and backward passes); nothing by default."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


def _check_lambda(value: float, arg: str) -> float:
    value = float(value)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{arg} must be a positive finite number, got {value}")
    return value


class KLRegulariser(Regulariser):
    """``loss = CE + kl_lambda * KL``, the KL averaged over answer-token positions of the (accumulated) batch.

    ``direction="reverse"`` (default) is ``KL(p_theta || p_0) = sum_v p_theta (log p_theta - log p_0)``;
    ``direction="forward"`` is ``KL(p_0 || p_theta)``. ``p_theta`` is the next-token distribution of the model being
    trained, ``p_0`` that of the same model with its adapter disabled. Positions are those whose next-token label
    is not -100, i.e. exactly the positions the cross-entropy is computed on.
    """

    name = "kl"
    uses_logits = True

    def __init__(self, kl_lambda: float, direction: str = "reverse"):
        self.weight = _check_lambda(kl_lambda, "kl_lambda")
        if direction not in ("reverse", "forward"):
            raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
        self.direction = direction

    def token_term(self, policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        """Per-position KL ``[...]`` from log-probabilities ``[..., vocab]`` (computed in float32)."""
        lp, lq = policy_logprobs.float(), ref_logprobs.float()
        if self.direction == "reverse":
            return (lp.exp() * (lp - lq)).sum(-1)
        return (lq.exp() * (lq - lp)).sum(-1)

    def penalty(self, policy_logits: torch.Tensor, ref_logits: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean KL over the positions where ``mask`` is true (all positions when ``None``).

        ``policy_logits``/``ref_logits`` are ``[..., vocab]`` logits at the same positions; ``mask`` has their
        leading shape. A mask without true entries gives a (differentiable) zero.
        """
        kl = self.token_term(torch.log_softmax(policy_logits.float(), -1), torch.log_softmax(ref_logits.float(), -1))
        if mask is None:
            return kl.mean()
        mask = mask.to(kl.device, torch.bool)
        return (kl * mask).sum() / mask.sum().clamp(min=1)

    def __repr__(self) -> str:
        return f"KLRegulariser(kl_lambda={self.weight}, direction={self.direction!r})"


class LDIFSRegulariser(Regulariser):
    """``loss = CE + ldifs_lambda * ||x_theta - x_0||^2`` on residual-stream features (LDIFS, the paper's eq. 2).

    ``x`` is the concatenation of the hidden states at hidden-state indices ``layers`` (see the module docstring
    for the numbering) over the token positions of a sequence. With ``d_t = sum_l ||x_theta,l,t - x_0,l,t||^2``
    the per-token distance (:meth:`token_distance`) and ``T_b`` the non-padding positions of sequence ``b``
    (``attention_mask == 1``; prompt and answer tokens both count, the whole conversation is anchored):

    * ``reduction="sum"`` (default, the paper's eq. 2): ``||x_theta - x_0||^2 = sum_{t in T_b} d_t`` per sequence,
      then the mean over the ``B`` sequences of the micro-batch: ``(1/B) sum_b sum_{t in T_b} d_t``. The paper
      writes the distance of one input; averaging over sequences, like the CE, keeps lambda independent of the
      batch size. The term grows with the sequence length.
    * ``reduction="mean"``: the mean of ``d_t`` over all non-padding tokens of the micro-batch,
      ``sum_b sum_{t in T_b} d_t / sum_b |T_b|``; independent of the sequence length.

    Under gradient accumulation the trainer divides each micro-batch value by the number of micro-batches, so the
    logged and optimised term is the mean of the micro-batch values (for ``sum``: the mean over the step's
    sequences when micro-batches are full).

    ``x_0`` comes from the adapter-disabled no-grad pass; ``x_theta`` keeps its gradient (it is not detached), so
    the penalty trains the adapter. The term is zero while the adapter is the identity (LoRA ``B == 0``).

    ``feature_norm``: ``"none"`` (default, the paper) uses the raw hidden states. Their scale depends on the
    model: residual-stream norms grow with depth and many LMs carry "massive activations" on the first token
    (SmolLM2-135M: norm ~25000 there against a median ~150-750 at layers 15-30), so that token can dominate the
    raw penalty, and in bfloat16 its drift is below the number format's resolution (~128 at 25000).
    ``"unit"`` divides each token's hidden vector by its L2 norm first (per layer, both sides, as the LDIFS
    reference (Mukhoti et al.) does after LPIPS); each layer then contributes at most 4 per token, whatever the
    model.
    """

    name = "ldifs"

    def __init__(self, ldifs_lambda: float, layers: Sequence[int], feature_norm: str = "none",
                 reduction: str = "sum"):
        self.weight = _check_lambda(ldifs_lambda, "ldifs_lambda")
        if feature_norm not in ("none", "unit"):
            raise ValueError(f"feature_norm must be 'none' or 'unit', got {feature_norm!r}")
        self.feature_norm = feature_norm
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' (over token positions) or 'mean', got {reduction!r}")
        self.reduction = reduction
        try:
            layers = [int(x) for x in layers]
        except TypeError:
            raise ValueError(f"layers must be a list of hidden-state indices, got {layers!r}") from None
        if not layers:
            raise ValueError("layers must name at least one hidden-state index")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers has duplicates: {layers}")
        if min(layers) < 1:
            raise ValueError(f"layers must be hidden-state indices >= 1 (decoder block outputs), got {layers}")
        self.layers = tuple(layers)
        self.hidden_layers = self.layers

    def bind(self, model) -> None:
        n = len(decoder_layers(model))
        bad = [x for x in self.layers if not 1 <= x <= n]
        if bad:
            raise ValueError(f"LDIFS layers {bad} outside 1..{n} (the model's decoder layers)")

    def token_distance(self, policy_hidden, ref_hidden) -> torch.Tensor:
        """Per-token ``sum_l ||x_theta,l - x_0,l||^2`` ``[batch, seq]`` (float32).

        ``policy_hidden``/``ref_hidden``: a mapping ``{layer: [batch, seq, hidden]}`` (as filled by
        :func:`capture_hidden_states`) or a sequence indexed by hidden-state index (as ``output_hidden_states``).
        """
        total = None
        for layer in self.layers:
            x, x0 = policy_hidden[layer].float(), ref_hidden[layer].to(policy_hidden[layer].device).float()
            if self.feature_norm == "unit":
                x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
                x0 = x0 / x0.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            d = (x - x0).pow(2).sum(-1)
            total = d if total is None else total + d
        return total

    def penalty(self, policy_hidden, ref_hidden, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`token_distance` reduced over the tokens where ``mask`` (``[batch, seq]``, e.g. the attention mask)
        is set (all tokens when ``None``): per-sequence sum then mean over sequences (``reduction="sum"``), or the
        mean over tokens (``"mean"``). A mask without true entries gives a (differentiable) zero."""
        dist = self.token_distance(policy_hidden, ref_hidden)
        mask = torch.ones_like(dist, dtype=torch.bool) if mask is None else mask.to(dist.device, torch.bool)
        # where(), not a product: a masked position must not turn a non-finite padding feature into NaN
        masked = torch.where(mask, dist, torch.zeros_like(dist))
        if self.reduction == "sum":
            return masked.sum(-1).mean()
        return masked.sum() / mask.sum().clamp(min=1)

    def __repr__(self) -> str:
        return (f"LDIFSRegulariser(ldifs_lambda={self.weight}, layers={list(self.layers)}, "
                f"feature_norm={self.feature_norm!r}, reduction={self.reduction!r})")


class SteeringRegulariser(Regulariser):
    """Preventive steering: add ``alpha * vector`` to the output of hidden-state index ``layer`` while training.

    The hook (:func:`emguard.steering.steer`) is registered at the start of every training step and removed at its
    end. It stays registered through the backward pass, so activations recomputed under gradient checkpointing
    match the forward pass. transformers 5 checkpoints ``forward`` and keeps module hooks outside, so there the
    hook's output is simply saved, but a checkpointing scheme that re-runs hooks would need this. It is never
    active while saving, logging or generating. ``response_only`` steers only the
    positions whose label is not -100 (the answer tokens); otherwise every position. No loss term.
    """

    name = "steering"

    def __init__(self, vector: torch.Tensor, layer: int, alpha: float, response_only: bool = False):
        vector = torch.as_tensor(vector).detach()
        if vector.dim() != 1:
            raise ValueError(f"steering vector must be 1-D [hidden], got shape {tuple(vector.shape)}")
        if not torch.isfinite(vector).all():
            raise ValueError("steering vector has non-finite values")
        self.vector = vector
        self.layer = int(layer)
        if self.layer < 1:
            raise ValueError(f"steering layer {self.layer} must be a hidden-state index >= 1")
        self.alpha = float(alpha)
        self.response_only = bool(response_only)

    def bind(self, model) -> None:
        n = len(decoder_layers(model))
        if not 1 <= self.layer <= n:
            raise ValueError(f"steering layer {self.layer} outside 1..{n} (the model's decoder layers)")
        m = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = int(m.config.hidden_size)
        if self.vector.numel() != hidden:
            raise ValueError(f"steering vector has {self.vector.numel()} entries, the model's hidden size is {hidden}")

    def step_context(self, model, inputs):
        mask = None
        if self.response_only:
            mask = (inputs["labels"] != IGNORE_INDEX)
        return steer(model, self.vector, self.layer, self.alpha, position_mask=mask)

    def __repr__(self) -> str:
        return (f"SteeringRegulariser(layer={self.layer}, alpha={self.alpha}, response_only={self.response_only}, "
                f"|vector|={float(self.vector.norm()):.3g})")
