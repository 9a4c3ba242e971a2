"""LLM-as-a-judge: a 0-100 score from the judge's next-token probabilities.

The judge is asked (a single user message) to answer with one integer from 0 to 100. Instead of
sampling we read its distribution over the possible answers and report the probability-weighted
mean of the integers, renormalised over the integers' total probability (``prob_mass``). When that
mass is below ``min_prob_mass`` the judge did not really answer with a number: the score is ``None``
but the row is kept (so missing scores can be counted), with a ``label`` saying what it answered
instead (``REFUSAL`` / ``CODE`` when the prompt offered those options and they beat the integers).

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

The :class:`JudgeCache` keeps what the judge *returned*, not the verdict: per (settings, metric,
prompt) the integers' total probability ``prob_mass = sum_n P(n)``, their renormalised mean
``expected = sum_n n P(n) / prob_mass`` and the first-token probabilities of the offered special
answers (:class:`JudgeOutput`). The ``min_prob_mass`` threshold is applied when a row is *read*
(:meth:`JudgeOutput.verdict`), so changing it re-derives every verdict without a single model call.
The key is ``sha256(format version, judge settings, metric, prompt)`` where the judge settings
(:attr:`HFJudge.cache_identity`) are everything that changes the returned probabilities: the model
(its name and a fingerprint of its weights), its dtype (and quantisation), the chat template and the answer prefix (for the HTTP backend: URL,
model and ``top_logprobs``). The file is SQLite in WAL mode (several processes may share it);
results are committed batch by batch as soon as they are computed, so a crash or a rerun never
repeats a judge call that already finished. Rows of the pre-v2 table (``judgments``, thresholded
verdicts keyed without the settings) are never read: those prompts are judged again.

Backends share a tiny interface (:class:`Judge`): a ``name`` (recorded as ``judge_model``), a
``batch_size`` (the unit of work committed to the cache), ``min_prob_mass``, ``cache_identity`` and
``distributions(prompts)``; ``score_prompts(prompts)`` is the thresholded convenience on top. An
OpenAI-compatible HTTP backend (``/chat/completions`` with ``logprobs`` and ``top_logprobs`` on the
first token) is :class:`OpenAIJudge`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sqlite3
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import pandas as pd
import torch

from emguard.errors import InputError
from emguard.io import read_yaml
from emguard.schemas import GENERATION, JUDGMENT, to_messages

LABELS = ("number", "REFUSAL", "CODE", "none")
#: non-numeric answers a prompt may offer; labelled when asked for and more likely than the integers
SPECIAL_ANSWERS = ("REFUSAL", "CODE")
PLACEHOLDERS = ("{question}", "{answer}")
N_VALUES = 101  # the integers 0..100
_DIGITS = frozenset("0123456789")
#: version of the cache key and row format; bump when what is stored (or how a judge computes it) changes
CACHE_FORMAT = 2

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    score: float | None  # probability-weighted mean of 0..100, None when prob_mass < min_prob_mass
    prob_mass: float  # total probability of the integers 0..100
    label: str  # one of LABELS


@dataclass(frozen=True)
class JudgeOutput:
    """What a judge returned for one prompt, before any threshold: enough to derive every verdict.

    ``prob_mass = sum_n P(n)`` over n = 0..100; ``expected = sum_n n P(n) / prob_mass`` clamped to
    [0, 100] (None when ``prob_mass`` is 0); ``special`` = first-token probability of each special
    answer the prompt offered (:data:`SPECIAL_ANSWERS`).
    """

    prob_mass: float
    expected: float | None
    special: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_probs(cls, probs: Sequence[float], special: dict[str, float]) -> "JudgeOutput":
        """From P(0..100) (unnormalised) and the offered special answers' probabilities."""
        if len(probs) != N_VALUES:
            raise ValueError(f"expected {N_VALUES} integer probabilities, got {len(probs)}")
        mass = float(sum(float(p) for p in probs))
        expected = None
        if mass > 0:
            expected = float(min(100.0, max(0.0, sum(n * float(p) for n, p in enumerate(probs)) / mass)))
        return cls(mass, expected, {str(k): float(v) for k, v in special.items()})

    def verdict(self, min_prob_mass: float) -> ScoreResult:
        """The score when ``prob_mass >= min_prob_mass`` (and > 0); otherwise ``None`` with the label of
        the most likely offered special answer if it beats the integers' mass, else ``none``."""
        if self.prob_mass >= min_prob_mass and self.prob_mass > 0 and self.expected is not None:
            return ScoreResult(self.expected, self.prob_mass, "number")
        label, best = "none", self.prob_mass
        for name, p in self.special.items():
            if p > best:
                label, best = name, p
        return ScoreResult(None, self.prob_mass, label)


class Judge(Protocol):
    name: str
    batch_size: int
    min_prob_mass: float
    cache_identity: str  # every setting that changes what distributions() returns (the cache key)

    def distributions(self, prompts: list[str]) -> list[JudgeOutput]: ...

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]: ...


def result_from_distribution(probs: Sequence[float], special: dict[str, float], min_prob_mass: float) -> ScoreResult:
    """Turn P(0..100) (unnormalised) and the offered special answers' probabilities into a verdict."""
    return JudgeOutput.from_probs(probs, special).verdict(min_prob_mass)


def _identity(**settings) -> str:
    """Canonical text of a judge's settings (sorted JSON), hashed into the cache key."""
    return json.dumps(settings, sort_keys=True, default=str)


def offered_answers(prompt: str) -> list[str]:
    return [s for s in SPECIAL_ANSWERS if s in prompt]


# --------------------------------------------------------------------------------------------------
# Hugging Face backend
# --------------------------------------------------------------------------------------------------

def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to every sequence, leaving each at least one token of its own."""
    if not encoded:
        return 0
    first, limit = encoded[0], min(len(e) for e in encoded) - 1
    n = 0
    while n < limit and all(e[n] == first[n] for e in encoded):
        n += 1
    return max(n, 0)


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

    @torch.inference_mode()
    def _prefix_cache(self, prefix: list[int]):
        """Key/value states of the token prefix every prompt of a call shares (one forward pass, batch 1)."""
        out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        return getattr(out, "cache", None) or out.past_key_values

    @functools.cached_property
    def _cache_arg(self) -> str:
        """The forward pass's name for a key/value cache (read once: it is looked up for every batch)."""
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

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
        cache = self._prefix_cache(tokens)
        self._prefix_memo = (tokens, cache)
        return n, cache

    def _expanded_cache(self, prefix_cache, b: int):
        """A fresh cache holding the shared prefix for ``b`` rows (the forward pass appends to it in place)."""
        from transformers import DynamicCache

        data = [(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1)) for layer in prefix_cache.layers]
        return DynamicCache(ddp_cache_data=data, config=self.model.config)

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
            extra[self._cache_arg] = self._expanded_cache(prefix_cache, b)
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
        return results

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]:
        return [o.verdict(self.min_prob_mass) for o in self.distributions(prompts)]


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# --------------------------------------------------------------------------------------------------

class OpenAIJudge:
    """Any OpenAI-compatible ``/chat/completions`` endpoint that returns ``top_logprobs``.

    Only the first answer token is read (``max_tokens=1``): the integers 0..100 are single tokens in
    the vocabularies such services use. A token counts as integer ``n`` when its text, stripped of
    whitespace, is ``str(n)``; ``REFUSAL``/``CODE`` are matched when the token is a non-empty prefix
    of the word. Probability outside the ``top_logprobs`` list is unknown and counts as non-numeric.
    Transient failures (connection errors, HTTP 429 and 5xx) are retried with exponential backoff.
    The API key is read from the environment variable named by ``api_key_env`` (if set).
    """

    def __init__(self, base_url: str, model: str, *, name: str | None = None, api_key_env: str | None = None,
                 top_logprobs: int = 20, batch_size: int = 16, concurrency: int = 8, min_prob_mass: float = 0.25,
                 max_retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.top_logprobs = int(top_logprobs)
        self.batch_size = int(batch_size)
        self.concurrency = max(1, int(concurrency))
        self.min_prob_mass = float(min_prob_mass)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.timeout_s = float(timeout_s)

    @property
    def cache_identity(self) -> str:
        """Settings that change the returned probabilities: the endpoint, the model and how many top
        tokens are read (mass outside them counts as non-numeric)."""
        return _identity(backend="openai", url=self.url, model=self.model, top_logprobs=self.top_logprobs)

    def _request(self, prompt: str) -> dict:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": 1, "temperature": 0, "logprobs": True,
                           "top_logprobs": self.top_logprobs, "seed": 0}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:
                    detail = exc.read().decode(errors="replace")[:500]
                    raise RuntimeError(f"judge {self.name}: HTTP {exc.code} from {self.url}: {detail}") from exc
                last = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = exc
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * (2 ** attempt))
        raise RuntimeError(f"judge {self.name}: {self.url} failed after {self.max_retries + 1} attempts: {last}")

    def _score_one(self, prompt: str) -> JudgeOutput:
        data = self._request(prompt)
        try:
            top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(f"judge {self.name}: response without top_logprobs: {str(data)[:300]}") from exc
        probs = [0.0] * N_VALUES
        offered = offered_answers(prompt)
        special = {s: 0.0 for s in offered}
        for item in top:
            text = str(item["token"]).strip()
            p = math.exp(float(item["logprob"]))
            if text.isdigit() and text.isascii() and str(int(text)) == text and int(text) <= 100:
                probs[int(text)] += p
            for s in offered:
                if text and s.startswith(text):
                    special[s] += p
        return JudgeOutput.from_probs(probs, special)

    def distributions(self, prompts: list[str]) -> list[JudgeOutput]:
        if len(prompts) <= 1 or self.concurrency == 1:
            return [self._score_one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(self._score_one, prompts))

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]:
        return [o.verdict(self.min_prob_mass) for o in self.distributions(prompts)]


# --------------------------------------------------------------------------------------------------
# Durable cache
# --------------------------------------------------------------------------------------------------

def cache_key(judge_identity: str, metric: str, prompt: str) -> str:
    """``sha256`` of (:data:`CACHE_FORMAT`, the judge's settings, metric, prompt), length-prefixed."""
    h = hashlib.sha256()
    for part in (f"emguard-judge-v{CACHE_FORMAT}", judge_identity, metric, prompt):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def judge_identity(judge) -> str:
    """The settings a judge's outputs depend on (its ``cache_identity``; stand-ins without one: ``name``)."""
    ident = getattr(judge, "cache_identity", None)
    return str(ident) if ident is not None else _identity(name=str(judge.name))


#: the pre-v2 table (thresholded verdicts keyed by judge name, metric, prompt only); never read
_LEGACY_TABLE = "judgments"
_TABLE = "judge_outputs"


class JudgeCache:
    """SQLite cache of judge outputs (WAL mode; several processes may read and write it at once).

    One row per key (:func:`cache_key`): ``prob_mass``, ``expected`` and ``special`` (JSON) of a
    :class:`JudgeOutput`. The file records its :data:`CACHE_FORMAT` in ``PRAGMA user_version``; a file
    written by a newer format is refused with an error naming it. The pre-v2 ``judgments`` table, whose
    rows hold verdicts already thresholded with an unknown ``min_prob_mass``, is left in place but never
    read (its prompts are judged again), so an old file can never yield a stale verdict.
    """

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a judge cache (SQLite) file: {exc}") from exc
        if version > CACHE_FORMAT:
            self._conn.close()
            raise InputError(f"{self.path}: judge cache format {version} is newer than this emguard's "
                             f"({CACHE_FORMAT}); use a newer emguard or another judge.cache file")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (key TEXT PRIMARY KEY, prob_mass REAL NOT NULL, expected REAL, "
            "special TEXT NOT NULL, created REAL NOT NULL)")
        if version < CACHE_FORMAT:
            self._conn.execute(f"PRAGMA user_version={CACHE_FORMAT}")
        legacy = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?",
                                    (_LEGACY_TABLE,)).fetchone()
        if legacy:
            n = int(self._conn.execute(f"SELECT COUNT(*) FROM {_LEGACY_TABLE}").fetchone()[0])
            if n:
                log.warning("%s: ignoring %d judge verdicts in the pre-v%d format (thresholded, keyed without "
                            "the judge settings); those prompts will be judged again", self.path, n, CACHE_FORMAT)

    key = staticmethod(cache_key)

    def get_many(self, keys: Iterable[str]) -> dict[str, JudgeOutput]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, JudgeOutput] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, prob_mass, expected, special FROM {_TABLE} WHERE key IN ({marks})", chunk).fetchall()
            for k, mass, expected, special in rows:
                found[k] = JudgeOutput(float(mass), None if expected is None else float(expected), json.loads(special))
        return found

    def put_many(self, items: Iterable[tuple[str, JudgeOutput]] | dict[str, JudgeOutput]) -> None:
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        if not pairs:
            return
        for k, out in pairs:
            if not isinstance(out, JudgeOutput):
                raise TypeError(f"JudgeCache stores JudgeOutput (unthresholded), got {type(out).__name__} for {k}")
        now = time.time()
        rows = [(k, o.prob_mass, o.expected, json.dumps(o.special, sort_keys=True), now) for k, o in pairs]
        with self._conn:  # one transaction, committed on exit
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                f"INSERT OR REPLACE INTO {_TABLE} (key, prob_mass, expected, special, created) VALUES (?, ?, ?, ?, ?)",
                rows)

    def __len__(self) -> int:
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------------
# Prompts and table-level scoring
# --------------------------------------------------------------------------------------------------

def load_judge_prompts(path: str | os.PathLike) -> dict[str, str]:
    """Read ``metric: template`` pairs; each template must contain ``{question}`` and ``{answer}``."""
    path = Path(path)
    data = read_yaml(path, "judge prompt file")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a mapping of metric name -> prompt template, got {type(data).__name__}")
    prompts: dict[str, str] = {}
    for metric, template in data.items():
        if not isinstance(metric, str) or not metric.strip():
            raise InputError(f"{path}: metric names must be non-empty strings, got {metric!r}")
        if not isinstance(template, str):
            raise InputError(f"{path}: metric {metric!r}: template must be a string, got {type(template).__name__}")
        missing = [p for p in PLACEHOLDERS if p not in template]
        if missing:
            raise InputError(f"{path}: metric {metric!r}: template lacks placeholder(s) {', '.join(missing)}")
        prompts[metric] = template
    return prompts


def fill_template(template: str, question: str, answer: str) -> str:
    """Substitute the two placeholders literally (other braces in the template are left as they are)."""
    out = template.replace("{question}", "\x00Q\x00").replace("{answer}", "\x00A\x00")
    return out.replace("\x00Q\x00", question).replace("\x00A\x00", answer)


def score_cached(judge: Judge, metric: str, prompts: list[str], cache: JudgeCache | None, *,
                 min_prob_mass: float | None = None) -> tuple[list[ScoreResult], list[bool]]:
    """Score ``prompts`` (results, served-from-cache flags); new outputs are committed batch by batch.

    The cache holds unthresholded :class:`JudgeOutput` rows; the verdict applies ``min_prob_mass``
    (default: the judge's own) when read, so a new threshold needs no model call.
    """
    if not hasattr(judge, "distributions"):
        # a stand-in that only returns verdicts: they are already thresholded, so they must not be cached
        if cache is not None:
            raise TypeError(f"judge {judge.name!r} has no distributions(); only such judges can use a JudgeCache")
        return list(judge.score_prompts(list(prompts))), [False] * len(prompts)
    threshold = float(judge.min_prob_mass if min_prob_mass is None else min_prob_mass)
    ident = judge_identity(judge)
    keys = [cache_key(ident, metric, p) for p in prompts]
    hits = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, str] = {}
    for k, p in zip(keys, prompts):
        if k not in hits and k not in todo:
            todo[k] = p
    fresh: dict[str, JudgeOutput] = {}
    todo_items = list(todo.items())
    step = max(1, int(getattr(judge, "batch_size", 8)))
    for start in range(0, len(todo_items), step):
        chunk = todo_items[start:start + step]
        results = judge.distributions([p for _, p in chunk])
        if len(results) != len(chunk):
            raise RuntimeError(f"judge {judge.name} returned {len(results)} results for {len(chunk)} prompts")
        batch = list(zip([k for k, _ in chunk], results))
        if cache is not None:
            cache.put_many(batch)
        fresh.update(batch)
    out = [(hits[k] if k in hits else fresh[k]).verdict(threshold) for k in keys]
    return out, [k in hits for k in keys]


def score_texts(judge: Judge, template: str, pairs: list[tuple[str, str]], cache: JudgeCache | None,
                metric: str) -> list[ScoreResult]:
    """Score (question, answer) pairs with one template; ``metric`` namespaces the cache entries."""
    prompts = [fill_template(template, q, a) for q, a in pairs]
    results, _ = score_cached(judge, metric, prompts, cache)
    return results


def _question_text(messages) -> str:
    msgs = to_messages(messages)
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if not users:
        raise ValueError("prompt_messages has no user turn")
    return users[-1]


def judge_generations(generations: pd.DataFrame, questions: pd.DataFrame, judge: Judge, prompts: dict[str, str],
                      cache: JudgeCache | None = None) -> pd.DataFrame:
    """Judge every answer on every metric of its question; a table in the judgment contract.

    The judge sees the question as asked (the last user turn of ``prompt_messages``) and the answer.
    Row order: generations in input order, each followed by its metrics in the question's order.
    When both tables have an ``evalset`` column (a run's question sets judged in one call), questions
    are matched on (evalset, question_id) and the rows keep their ``evalset``.
    """
    for col in GENERATION:
        if col not in generations.columns:
            raise InputError(f"generations table: missing column {col!r}")
    for col in ("question_id", "judge_prompts"):
        if col not in questions.columns:
            raise InputError(f"questions table: missing column {col!r}")
    by_set = "evalset" in generations.columns and "evalset" in questions.columns
    extra = ["evalset"] if by_set else []

    def qkey(row) -> tuple:
        return (str(row.evalset), str(row.question_id)) if by_set else (None, str(row.question_id))

    metrics_of = {qkey(r): [str(m) for m in list(r.judge_prompts)] for r in questions.itertuples(index=False)}
    records, by_metric = [], {}
    for i, row in enumerate(generations.itertuples(index=False)):
        key = qkey(row)
        qid = key[1]
        if key not in metrics_of:
            where = f" of evalset {key[0]!r}" if by_set else ""
            raise InputError(f"generations table: row {i}: question_id {qid!r}{where} is not in the questions table")
        try:
            question = _question_text(row.prompt_messages)
        except ValueError as exc:
            raise InputError(f"generations table: row {i} (question_id={qid!r}): {exc}") from exc
        for metric in metrics_of[key]:
            if metric not in prompts:
                raise InputError(f"question {qid!r}: judge prompt {metric!r} is not defined "
                                 f"(known: {', '.join(sorted(prompts))})")
            text = fill_template(prompts[metric], question, str(row.answer))
            by_metric.setdefault(metric, []).append((len(records), text))
            base = {c: getattr(row, c) for c in GENERATION + extra}
            records.append({**base, "metric": metric})
    for metric, items in by_metric.items():
        results, cached = score_cached(judge, metric, [t for _, t in items], cache)
        for (pos, _), res, hit in zip(items, results, cached):
            records[pos].update(score=res.score, label=res.label, prob_mass=res.prob_mass,
                                judge_model=judge.name, cached=bool(hit))
    df = pd.DataFrame(records, columns=JUDGMENT + extra)
    if len(df):
        df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
        df["prob_mass"] = df["prob_mass"].astype("float64")
        df["cached"] = df["cached"].astype(bool)
    return df
