"""What every judge backend shares: the verdict types, the backend interface, labels and usage.

A judge returns, per prompt, a :class:`JudgeOutput`: the integers' total probability
``prob_mass = sum_n P(n)`` (n = 0..100), their renormalised mean ``expected = sum_n n P(n) / prob_mass``
and the probabilities of the non-numeric answers the prompt offered (``special``). The threshold
``min_prob_mass`` is applied only when a verdict is read (:meth:`JudgeOutput.verdict`), so a new
threshold re-derives every verdict from the cache without a single judge call.

*Label judges* (question type ``free_form_judge``: the judge answers with a word such as TRUE / FALSE /
UNKNOWN) use the same record: ``special`` holds each label's probability, ``prob_mass`` is 0 and the
verdict (:meth:`JudgeOutput.label_verdict`) is the most likely label with no score. The labels are
read from the template by :func:`template_labels`.

Backends share a tiny interface (:class:`Judge`): a ``name`` (recorded as ``judge_model``), a
``batch_size`` (the unit of work committed to the cache), ``min_prob_mass``, ``cache_identity``,
``distributions(prompts)`` and ``label_distributions(prompts, labels)``; ``score_prompts(prompts)`` is the
thresholded convenience on top. A backend that talks to a paid service also has
``judge_pending(items, cache, labels)``: it writes every answer to the cache itself, as soon as it arrives
(:mod:`emguard.judge.openai`). Every backend counts its work in a :class:`JudgeUsage`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

from emguard.schemas import PLACEHOLDERS, QUESTION_TYPES  # noqa: F401  (used and re-exported by emguard.judge)

LABELS = ("number", "REFUSAL", "CODE", "none")
#: non-numeric answers a prompt may offer; labelled when asked for and more likely than the integers
SPECIAL_ANSWERS = ("REFUSAL", "CODE")
N_VALUES = 101  # the integers 0..100
#: version of the cache key and row format; bump when what is stored (or how a judge computes it) changes
CACHE_FORMAT = 2


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

    @classmethod
    def from_labels(cls, label_probs: dict[str, float]) -> "JudgeOutput":
        """A label judge's output: each offered label's probability, no integers."""
        return cls(0.0, None, {str(k): float(v) for k, v in label_probs.items()})

    def label_verdict(self) -> ScoreResult:
        """A label judge's verdict: no score, the most likely label (``none`` when every label has
        probability 0), ``prob_mass`` = the labels' total probability."""
        mass = float(sum(self.special.values()))
        label, best = "none", 0.0
        for name, p in self.special.items():
            if p > best:
                label, best = name, p
        return ScoreResult(None, mass, label)

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

    def label_distributions(self, prompts: list[str], labels: Sequence[str]) -> list[JudgeOutput]: ...

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]: ...


def result_from_distribution(probs: Sequence[float], special: dict[str, float], min_prob_mass: float) -> ScoreResult:
    """Turn P(0..100) (unnormalised) and the offered special answers' probabilities into a verdict."""
    return JudgeOutput.from_probs(probs, special).verdict(min_prob_mass)


def _identity(**settings) -> str:
    """Canonical text of a judge's settings (sorted JSON), hashed into the cache key."""
    return settings_json(settings)


def offered_answers(prompt: str) -> list[str]:
    return [s for s in SPECIAL_ANSWERS if s in prompt]



_LABEL_WORD = re.compile(r"(?<![A-Za-z0-9_])[A-Z]{2,}(?![A-Za-z0-9_])")


#: what may stand between two labels of one list: spaces, commas, slashes, bars, quotes, "or" / "and"
_LIST_GAP = re.compile(r"""^[\s,/|"'`*]*(?:(?:or|and)[\s"'`*]*)?$""")


def template_labels(template: str) -> list[str]:
    """The labels a label-judge template (``free_form_judge``) offers, in order of first appearance.

    A label is a word of at least two capital letters A-Z and nothing else (``TRUE``, ``FALSE``,
    ``UNKNOWN``; not ``AI's``, not ``I``). Templates name their labels as a list in the instruction and may
    use capitals elsewhere ("do NOT explain"), so the labels are the *last list* of two or more such words
    joined only by spaces, commas, slashes, bars, quotes, "or" or "and" ("one of TRUE, FALSE or UNKNOWN",
    "'YES' / 'NO'"); a template with no such list offers every such word it contains. The placeholders are
    removed first. Fewer than two labels is a :class:`ValueError` (nothing to choose between)."""
    text = template.replace("{question}", "\n").replace("{answer}", "\n")
    words = list(_LABEL_WORD.finditer(text))
    lists, current = [], []
    for prev, word in zip([None] + words[:-1], words):
        if prev is not None and _LIST_GAP.match(text[prev.end():word.start()]):
            current.append(word.group(0))
        else:
            if current:
                lists.append(current)
            current = [word.group(0)]
    if current:
        lists.append(current)
    for candidate in reversed(lists):
        distinct = list(dict.fromkeys(candidate))
        if len(distinct) >= 2:
            return distinct
    distinct = list(dict.fromkeys(w.group(0) for w in words))
    if len(distinct) < 2:
        raise ValueError(f"a label-judge template must offer at least two labels (words in capitals such as "
                         f"TRUE / FALSE), found {distinct or 'none'}")
    return distinct


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The first offered label written in ``text`` as a whole word (case-sensitive), else ``None``."""
    for word in _LABEL_WORD.findall(text):
        if word in labels:
            return word
    return None


class JudgeIncomplete(RuntimeError):
    """Some items could not be judged (retries exhausted, a batch failed or is still running). The ones
    answered are in the cache: a rerun judges only the ``remaining``."""

    def __init__(self, message: str, *, remaining: int, answered: int):
        super().__init__(message)
        self.remaining = int(remaining)
        self.answered = int(answered)


@dataclass
class JudgeUsage:
    """What one judging job cost: calls answered (billable), failed attempts, cache hits and tokens.

    ``batch_*`` count the part answered through a Batch API (billed at ``1 - batch_discount`` of the price).
    """

    judge: str = ""
    calls: int = 0
    failed_calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    batch_calls: int = 0
    batch_input_tokens: int = 0
    batch_output_tokens: int = 0

    def add_call(self, input_tokens: int = 0, output_tokens: int = 0, *, batch: bool = False) -> None:
        self.calls += 1
        self.input_tokens += int(input_tokens or 0)
        self.output_tokens += int(output_tokens or 0)
        if batch:
            self.batch_calls += 1
            self.batch_input_tokens += int(input_tokens or 0)
            self.batch_output_tokens += int(output_tokens or 0)

    def cost(self, price: dict | None) -> float | None:
        """US dollars under ``price`` (``input_per_mtok``, ``output_per_mtok``, ``batch_discount``: the
        fraction off for batch calls); ``None`` without a price."""
        if not price:
            return None
        return price_tokens(price, self.input_tokens - self.batch_input_tokens,
                            self.output_tokens - self.batch_output_tokens) + \
            price_tokens(price, self.batch_input_tokens, self.batch_output_tokens, batch=True)

    def record(self, price: dict | None = None, **extra) -> dict:
        """A JSON-ready record: the counts, ``cost_usd`` (None without a price) and ``extra`` fields."""
        return {**extra, **asdict(self), "cost_usd": self.cost(price), "priced": bool(price)}


def price_tokens(price: dict, input_tokens: float, output_tokens: float, *, batch: bool = False) -> float:
    """Dollars for these tokens: ``(in * input_per_mtok + out * output_per_mtok) / 1e6``, times
    ``1 - batch_discount`` for batch calls."""
    dollars = (input_tokens * float(price.get("input_per_mtok", 0.0))
               + output_tokens * float(price.get("output_per_mtok", 0.0))) / 1e6
    return dollars * (1.0 - float(price.get("batch_discount", 0.0))) if batch else dollars


def settings_json(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)
