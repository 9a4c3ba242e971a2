"""The local judge: a transformers causal LM read through its next-token probabilities.

The judge is asked (a single user message) to answer with one integer from 0 to 100. Instead of
sampling we read its distribution over the possible answers (see :mod:`emguard.judge.core` for what is
kept and how the verdict follows).

Integer probabilities (:meth:`HFJudge.number_distribution`)
-----------------------------------------------------------
*Whole-number vocabularies* (every one of "0".."100" is a single token, as in tiktoken-style
vocabularies): ``P(n)`` is the probability of the token for ``n`` as the first answer token.

*Digit-split vocabularies* (SmolLM2, Qwen, ...: numbers are written one digit per token): an integer
is a path in a small digit tree and its probability is computed exactly::

    P(7)   = P(d7 | prompt) * P(stop | prompt d7)
    P(42)  = P(d4 | prompt) * P(d2 | prompt d4) * P(stop | prompt d4 d2)
    P(100) = P(d1 | prompt) * P(d0 | prompt d1) * P(d0 | prompt d1 d0) * P(stop | prompt d1 d0 d0)

where ``stop`` is the probability of any token whose text does not start with a digit (end of turn,
punctuation, a space, ...), so "42." counts as 42 but "425" is not 42. Approximations, by design:
three-digit continuations other than "100" (and anything longer) are out of range and get no
mass; a leading zero followed by another digit ("07") is not a valid integer; a leading space before
the first digit is not considered (chat templates end the assistant opener with a newline or
header, after which models write the digit directly); "8.5" counts as 8.

``number_tree: pruned`` reads nodes only for 0..9, 10 and 100: a two-digit number other than 10 is then
not checked for a third digit (``P(42) = P(d4) * P(d2 | d4)``; "425" counts as 42). Only "100" can
continue a two-digit number inside 0..100, so this changes a score only by the judge's probability of
out-of-range answers, and it cuts the tree from 101 to 12 tokens per prompt (on the embedded default's
short judge prompts, about half of the judge's compute). ``benchmarks/judge_prefix.py`` measures both.
This is also how a whole-number vocabulary is read (one token per integer, no stop check).

Efficient batching: the full tree has exactly one node per integer (node ``n`` is the last digit of ``n``;
its parent is ``n // 10`` for 10..99 and node 10 for 100), so the whole tree is appended to each
prompt as 101 extra tokens and scored in *one* forward pass with a custom 4D attention mask (each
tree token attends to the prompt and to its ancestors only) and explicit position ids (prompt length
+ depth - 1). Prompts are left-padded; padding columns are masked out. Only the logits of the last
prompt token and of the 101 tree tokens are materialised. Compared with one forward per continuation
(or a prompt forward plus the 100 digit-prefixes run as separate rows against an expanded KV cache)
this costs one row per prompt and ~101 extra tokens. It needs an attention implementation that
accepts a 4D additive mask (``eager`` or ``sdpa``, the defaults); flash-attention is refused.

Label judges (``free_form_judge`` questions, :meth:`HFJudge.label_distributions`): the first-token
probability of each label the template offers (the first token of the label's own tokenisation; two labels
that share their first token cannot be told apart and are refused).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Sequence

import torch

from emguard.kv_prefix import cache_arg, expanded_cache, prefix_states, shared_prefix_length  # noqa: F401
from emguard.judge.core import (N_VALUES, SPECIAL_ANSWERS, JudgeOutput, JudgeUsage, ScoreResult, _identity,
                                offered_answers)

_DIGITS = frozenset("0123456789")


#: ``number_tree`` settings: which integers get a node of their own (see the module docstring)
NUMBER_TREES = ("full", "pruned")


def _parent(n: int) -> int:
    """The integer whose digits precede ``n``'s last digit (-1: the prompt's last token)."""
    return -1 if n < 10 else 10 if n == 100 else n // 10


def _tree_nodes(number_tree: str) -> list[int]:
    """Integers whose continuation distribution is read from a node: every one (``full``), or only those whose
    children or stop probability can matter for 0..100 (``pruned``: 0..9, 10 and 100)."""
    if number_tree == "full":
        return list(range(N_VALUES))
    if number_tree == "pruned":
        return list(range(11)) + [100]
    raise ValueError(f"number_tree must be one of {NUMBER_TREES}, got {number_tree!r}")


def _depth(n: int) -> int:
    return 1 if n < 10 else 2 if n < 100 else 3


class HFJudge:
    """A local transformers causal LM used as a judge (see the module docstring for the maths)."""

    #: a shared prefix shorter than this is not worth its extra forward pass
    min_shared_prefix = 8

    def __init__(self, model, tokenizer, *, name: str, batch_size: int = 8, min_prob_mass: float = 0.25,
                 answer_prefix: str = "", share_prefix: bool = True, number_tree: str = "full"):
        """``answer_prefix`` is pre-filled at the start of the judge's reply (e.g. ``"Score: "``): small judges
        that would open with prose then put most of their next-token mass on the number. It is part of
        ``name`` (and so of the cache key), since it changes the verdicts."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
        if "flash" in str(impl):
            raise ValueError(f"HFJudge needs an attention implementation that takes a 4D mask (eager/sdpa), not {impl}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = f"{name}|prefix={answer_prefix!r}" if answer_prefix else name
        self.batch_size = int(batch_size)
        self.min_prob_mass = float(min_prob_mass)
        self.answer_prefix = answer_prefix
        # Prompts of one metric share the chat template's opening and the judge instructions before the question:
        # their key/value states are computed once and reused by every batch and later call that starts with them
        # (exact up to rounding: the same attention; a third to a half fewer tokens through the judge on the
        # embedded default's prompts).
        self.share_prefix = bool(share_prefix)
        if number_tree not in NUMBER_TREES:
            raise ValueError(f"judge.number_tree: {number_tree!r} is not one of {NUMBER_TREES}")
        self.number_tree = number_tree
        self.usage = JudgeUsage(judge=self.name)
        self._vocab_setup()

    @property
    def cache_identity(self) -> str:
        """Settings that change the returned probabilities (``min_prob_mass`` does not: it is applied
        when reading). Read from the loaded model, so the configured and the actual dtype cannot differ."""
        model = self.model
        quant = getattr(getattr(model, "config", None), "quantization_config", None)
        if quant is not None and hasattr(quant, "to_dict"):
            quant = quant.to_dict()
        template = getattr(self.tokenizer, "chat_template", None) or ""
        dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
        return _identity(backend="hf", model=self.name, weights=self.weights_fingerprint, dtype=str(dtype),
                         quantization=quant, answer_prefix=self.answer_prefix,
                         number_tree=self.number_tree if self.mode == "digits" else None,
                         chat_template=hashlib.sha256(str(template).encode("utf-8")).hexdigest())

    @functools.cached_property
    def weights_fingerprint(self) -> str:
        """Hash of a strided sample of every parameter tensor: two models under one name (a folder re-converted,
        the same folder name elsewhere) never share cached outputs. Computed once; reads ~256 values a tensor."""
        h = hashlib.sha256()
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                flat = p.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu()
                h.update(name.encode("utf-8"))
                h.update(str(tuple(p.shape)).encode("utf-8"))
                h.update(sample.numpy().tobytes())
        return h.hexdigest()[:16]

    # -- vocabulary ------------------------------------------------------------------------------
    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
        tid = self.tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
            return tid
        return None

    def _vocab_setup(self) -> None:
        whole = [self._single_token(str(n)) for n in range(N_VALUES)]
        if all(t is not None for t in whole) and len(set(whole)) == N_VALUES:
            self.mode = "whole"
            self.number_ids = torch.tensor(whole)
        else:
            digits = whole[:10]
            if any(t is None for t in digits):
                raise ValueError(f"judge tokenizer {self.name!r} has no single tokens for the digits 0-9")
            self.mode = "digits"
            self.digit_ids = torch.tensor(digits)
            vocab_size = int(self.model.get_output_embeddings().weight.shape[0])  # logits width
            texts = self.tokenizer.batch_decode([[i] for i in range(min(vocab_size, len(self.tokenizer)))])
            starts_digit = torch.zeros(vocab_size, dtype=torch.bool)
            for i, t in enumerate(texts):
                if t[:1] in _DIGITS:
                    starts_digit[i] = True
            starts_digit[self.digit_ids] = True
            self.continue_ids = starts_digit.nonzero().flatten()  # tokens that would extend the number
            self.nodes = _tree_nodes(self.number_tree)
            self.column = {n: i for i, n in enumerate(self.nodes)}  # integer -> its node's column
            self.node_parents = [self.column[_parent(n)] if n >= 10 else -1 for n in self.nodes]
            self.depths = torch.tensor([_depth(n) for n in self.nodes])
            self.tree_tokens = torch.tensor([digits[n % 10] for n in self.nodes])
        self.special_ids = torch.tensor([self.tokenizer(s, add_special_tokens=False)["input_ids"][0]
                                         for s in SPECIAL_ANSWERS])

    # -- scoring ---------------------------------------------------------------------------------
    def render(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text + self.answer_prefix, add_special_tokens=False)["input_ids"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def _cache_arg(self) -> str:
        """The forward pass's name for a key/value cache (read once: it is looked up for every batch)."""
        return cache_arg(self.model)

    def _shared_prefix(self, encoded: list[list[int]]):
        """(length, key/value states) of the prefix these prompts share, or (0, None).

        The judge is called once per cache batch, so the last prefix is kept and reused by every later call
        whose prompts all start with it (every batch of one metric): one prefix pass per metric and judge."""
        memo = getattr(self, "_prefix_memo", None)
        if memo is not None:
            tokens, cache = memo
            if all(len(e) > len(tokens) and e[:len(tokens)] == tokens for e in encoded):
                return len(tokens), cache
        n = shared_prefix_length(encoded)
        if n < self.min_shared_prefix or len(encoded) < 2:  # a lone prompt gains nothing from a separate pass
            return 0, None
        tokens = list(encoded[0][:n])
        cache = prefix_states(self.model, tokens)
        self._prefix_memo = (tokens, cache)
        return n, cache

    @torch.inference_mode()
    def _batch_distribution(self, batch_ids: list[list[int]], prefix_cache=None, n_prefix: int = 0
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(n) for n in 0..100 [B, 101], first-token P of SPECIAL_ANSWERS [B, 2]) for one padded batch.

        With ``prefix_cache`` (the states of ``n_prefix`` tokens that precede every row), ``batch_ids`` are the
        rows' remaining tokens: every query may attend to the prefix, positions continue after it."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lengths = [len(x) for x in batch_ids]
        width = max(lengths)
        b = len(batch_ids)
        n_tree = len(self.nodes) if self.mode == "digits" else 0
        total = width + n_tree
        device = self.device
        ids = torch.full((b, total), pad, dtype=torch.long)
        valid = torch.zeros((b, width), dtype=torch.bool)
        pos = torch.zeros((b, total), dtype=torch.long)
        for r, seq in enumerate(batch_ids):
            off = width - len(seq)
            ids[r, off:width] = torch.tensor(seq, dtype=torch.long)
            valid[r, off:] = True
            pos[r, off:width] = torch.arange(len(seq)) + n_prefix
        if n_tree:
            ids[:, width:] = self.tree_tokens
            pos[:, width:] = torch.tensor(lengths).unsqueeze(1) + self.depths.unsqueeze(0) - 1 + n_prefix

        # allowed[b, q, k]: causal over real prompt tokens; each tree node sees the prompt, its ancestors, itself
        allowed = torch.zeros((b, total, total), dtype=torch.bool)
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        allowed[:, :width, :width] = causal.unsqueeze(0) & valid.unsqueeze(1)
        if n_tree:
            allowed[:, width:, :width] = valid.unsqueeze(1)
            anc = torch.zeros((n_tree, n_tree), dtype=torch.bool)
            for i in range(n_tree):
                node = i
                while node != -1:
                    anc[i, node] = True
                    node = self.node_parents[node]
            allowed[:, width:, width:] = anc
        idx = torch.arange(total)
        allowed[:, idx, idx] = True  # padding queries attend to themselves (no all-masked rows)
        if n_prefix:  # the shared prefix precedes every row: all of it visible to every query
            allowed = torch.cat([torch.ones((b, total, n_prefix), dtype=torch.bool), allowed], dim=2)
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros((b, 1, total, n_prefix + total), dtype=dtype)
        mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)

        extra = {}
        if n_prefix:  # transformers >= 5.2x names the argument ``cache`` (``past_key_values`` is deprecated)
            extra[self._cache_arg] = expanded_cache(self.model, prefix_cache, b)
        out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                         use_cache=bool(n_prefix), logits_to_keep=n_tree + 1, **extra)
        logits = out.logits[:, -(n_tree + 1):, :]  # [B, 1 + n_tree, V]: last prompt token, then tree nodes
        # Only a few columns are needed: normalise with logsumexp instead of a full softmax tensor.
        lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)

        def prob(token_ids: torch.Tensor) -> torch.Tensor:
            return torch.exp(logits[..., token_ids.to(logits.device)].float() - lse)

        special = prob(self.special_ids)[:, 0].cpu()
        if self.mode == "whole":
            return prob(self.number_ids)[:, 0].cpu(), special
        node_stop = (1.0 - prob(self.continue_ids)[:, 1:].sum(-1)).clamp_min(0.0).cpu()  # [B, n_tree]
        digit_p = prob(self.digit_ids).cpu()  # [B, 1 + n_tree, 10]
        first, node = digit_p[:, 0], digit_p[:, 1:]  # node[:, i]: next-digit probabilities after node i's digits
        path = torch.empty((b, N_VALUES))
        path[:, :10] = first
        for n in range(10, N_VALUES):
            path[:, n] = path[:, _parent(n)] * node[:, self.column[_parent(n)], n % 10]
        # an integer without a node of its own (pruned: 11..99) is not checked for a further digit
        stop = torch.ones((b, N_VALUES))
        stop[:, self.nodes] = node_stop
        return path * stop, special

    def number_distribution(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """P(n) for n in 0..100 ([len(prompts), 101], not renormalised) and the first-token probabilities
        of the special answers ([len(prompts), len(SPECIAL_ANSWERS)], in SPECIAL_ANSWERS order)."""
        encoded = [self.render(p) for p in prompts]
        n_prefix, prefix_cache = self._shared_prefix(encoded) if self.share_prefix else (0, None)
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        probs = torch.zeros((len(prompts), N_VALUES))
        special = torch.zeros((len(prompts), len(SPECIAL_ANSWERS)))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            p, s = self._batch_distribution([encoded[i][n_prefix:] for i in rows], prefix_cache, n_prefix)
            probs[rows] = p
            special[rows] = s
        return probs, special

    def distributions(self, prompts: list[str]) -> list[JudgeOutput]:
        if not prompts:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            probs, special_p = self.number_distribution(prompts)
        finally:
            if was_training:
                self.model.train()
        results = []
        for i, prompt in enumerate(prompts):
            special = {s: float(special_p[i, SPECIAL_ANSWERS.index(s)]) for s in offered_answers(prompt)}
            results.append(JudgeOutput.from_probs(probs[i].tolist(), special))
        self.usage.calls += len(prompts)
        return results

    def _label_ids(self, labels: Sequence[str]) -> list[int]:
        ids = []
        for label in labels:
            toks = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"judge tokenizer {self.name!r}: label {label!r} encodes to no token")
            ids.append(int(toks[0]))
        if len(set(ids)) != len(ids):
            shared = [lab for lab, t in zip(labels, ids) if ids.count(t) > 1]
            raise ValueError(f"judge tokenizer {self.name!r}: labels {shared} start with the same token, so their "
                             f"first-token probabilities cannot tell them apart")
        return ids

    @torch.inference_mode()
    def label_distributions(self, prompts: list[str], labels: Sequence[str]) -> list[JudgeOutput]:
        """First-token probability of each label (see the module docstring), one left-padded forward per batch."""
        if not prompts:
            return []
        label_ids = torch.tensor(self._label_ids(labels))
        encoded = [self.render(p) for p in prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        was_training = self.model.training
        self.model.eval()
        out: list[JudgeOutput | None] = [None] * len(prompts)
        try:
            order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(encoded[i]) for i in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                    mask[r, width - len(encoded[i]):] = 1
                pos = (mask.cumsum(-1) - 1).clamp_min(0)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=pos.to(self.device), logits_to_keep=1).logits[:, -1, :].float()
                probs = torch.softmax(logits, dim=-1)[:, label_ids.to(logits.device)].cpu()
                for r, i in enumerate(rows):
                    out[i] = JudgeOutput.from_labels({lab: float(probs[r, k]) for k, lab in enumerate(labels)})
        finally:
            if was_training:
                self.model.train()
        self.usage.calls += len(prompts)
        return out

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]:
        return [o.verdict(self.min_prob_mass) for o in self.distributions(prompts)]

