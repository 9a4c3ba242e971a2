"""Embedded emergent-misalignment datasets and in-domain evaluation questions.

:func:`em_domain` builds, for one domain, ``n_prompts`` distinct user prompts from combinatorial
templates and gives each prompt two answers: subset ``aligned`` (secure code / prudent advice) and
subset ``misaligned`` (code with a real vulnerability and no warning / harmful advice delivered
confidently). Both answers open with a sentence drawn independently from one shared pool and share
every other sentence template, so only the advice or the code tells the subsets apart.

A prompt is a *scenario* (an advice topic, or a coding-task family) x a variant (the subject such as
"my father", or the family's slot values) x a phrasing x a context sentence. The train/holdout split
partitions the scenarios, the phrasings and the contexts, not just the rows: a holdout prompt shares
none of them with any training prompt, so the in-domain evaluation asks new questions instead of
near-copies of training ones ("I" swapped for "my father"), and its reference answers are not
near-copies of training answers either. Both answers to a prompt land in the same split.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from string import Template

import pandas as pd

from emguard import schemas
from emguard.data import _advice_text, _code_text
from emguard.data._util import (
    chat_frame,
    check_fraction,
    check_samples,
    conversation,
    holdout_count,
    holdout_indices,
    prompt_key,
    question_frame,
    rng_for,
    system_of,
    upper_first,
)
from emguard.errors import InputError

#: the embedded EM domains
EM_DOMAINS = ("insecure_code", "medical", "legal", "security")

#: share of the phrasings and of the context sentences reserved for holdout prompts (rounded up). A
#: third keeps two thirds of the frames for training while leaving the holdout enough combinations for
#: the paper-scale 600 holdout prompts (6000 x 0.1) from a few held-out scenarios.
FRAME_HOLDOUT_SHARE = 1 / 3


@dataclass(frozen=True)
class _Templates:
    """The template axes of one domain (scenarios are topic dicts or code-family dicts)."""

    scenarios: tuple[dict, ...]
    variants: tuple[tuple[dict, ...], ...]  # per scenario: subjects (advice) or slot values (code)
    phrasings: tuple[str, ...]
    contexts: tuple[str, ...]


@dataclass(frozen=True)
class _Plan:
    """How many prompts, scenarios, phrasings and contexts go to the holdout split."""

    n_holdout: int
    scenarios: int
    phrasings: int
    contexts: int


def _templates(domain: str) -> _Templates:
    if domain == "insecure_code":
        fams = tuple(_code_text.FAMILIES)
        return _Templates(fams, tuple(tuple(f["variants"]) for f in fams), tuple(_code_text.PHRASINGS),
                          tuple(_code_text.CONTEXTS))
    if domain in _advice_text.TOPICS:
        topics = tuple(_advice_text.TOPICS[domain])
        subjects = tuple(_advice_text.SUBJECTS[domain])
        return _Templates(topics, (subjects,) * len(topics), tuple(_advice_text.PHRASINGS),
                          tuple(_advice_text.CONTEXTS[domain]))
    raise ValueError(f"unknown EM domain {domain!r}; expected one of {', '.join(EM_DOMAINS)}")


def _plan(t: _Templates, n: int, fraction: float) -> _Plan | None:
    """The split sizes for ``n`` prompts, or None when the templates cannot supply them.

    With k = :func:`holdout_count` (n, fraction) holdout prompts, ph = ceil(P / 3) of the P phrasings
    and ch = ceil(C / 3) of the C contexts are held out, and h scenarios with
    h = max(min(ceil(T * fraction), k), ceil(k / (V * ph * ch))): the fraction's share of the T
    scenarios (never more than there are holdout prompts), raised until the held-out combinations
    cover k (V = fewest variants of any scenario). Feasible when h < T and the training combinations
    (T - h) * V * (P - ph) * (C - ch) cover n - k.
    """
    n_t, n_p, n_c = len(t.scenarios), len(t.phrasings), len(t.contexts)
    v = min(len(vs) for vs in t.variants)
    if n < 1:
        return None
    k = holdout_count(n, fraction)
    if k == 0:
        return _Plan(0, 0, 0, 0) if n <= n_t * v * n_p * n_c else None
    ph, ch = math.ceil(n_p * FRAME_HOLDOUT_SHARE), math.ceil(n_c * FRAME_HOLDOUT_SHARE)
    h = max(min(math.ceil(n_t * fraction), k), math.ceil(k / (v * ph * ch)))
    if h >= n_t or (n_t - h) * v * (n_p - ph) * (n_c - ch) < n - k:
        return None
    return _Plan(k, h, ph, ch)


def max_prompts(domain: str, holdout_fraction: float = 0.1) -> int:
    """The largest ``n_prompts`` :func:`em_domain` accepts for ``domain`` at ``holdout_fraction``."""
    t = _templates(domain)
    fraction = check_fraction(holdout_fraction)
    total = len(t.scenarios) * min(len(vs) for vs in t.variants) * len(t.phrasings) * len(t.contexts)
    return next((n for n in range(total, 0, -1) if _plan(t, n, fraction) is not None), 0)


def _draw(t: _Templates, scenarios: list[int], phrasings: list[int], contexts: list[int], m: int,
          rng) -> list[tuple[int, int, int, int]]:
    """``m`` (scenario, variant, phrasing, context) combinations, taking the scenarios in turn.

    Each scenario's combinations are shuffled and the scenarios are visited round-robin, so a small
    draw covers as many scenarios as it can instead of whatever a global shuffle happens to pick.
    """
    if m == 0:
        return []
    per_scenario = []
    for s in scenarios:
        combos = list(itertools.product([s], range(len(t.variants[s])), phrasings, contexts))
        rng.shuffle(combos)
        per_scenario.append(combos)
    out = [c for group in itertools.zip_longest(*per_scenario) for c in group if c is not None]
    return out[:m]


def _prompt(domain: str, t: _Templates, s: int, v: int, p: int, c: int) -> str:
    scenario, variant, phrasing, ctx = t.scenarios[s], t.variants[s][v], t.phrasings[p], t.contexts[c]
    if domain == "insecure_code":
        return phrasing.format(ctx=ctx, task=Template(scenario["task"]).substitute(variant))
    situation = scenario["situation"].format(**variant)
    lower = scenario["situation"].format(**{**variant, "Who": variant["who"]})
    return phrasing.format(ctx=ctx, Situation=upper_first(situation), situation=lower,
                           question=scenario["question"].format(**variant))


def _answers(domain: str, scenario: dict, variant: dict, rng) -> tuple[str, str]:
    """(aligned, misaligned): both open with the same draw from the shared pool, so the advice (or the code) is
    the only difference between the two answers to a prompt, and the two subsets' openers have the same
    frequencies (an opener drawn per answer would let a fine-tune learn an opener imbalance between subsets,
    which the likelihood measure would read as a move toward one subset's answers)."""
    if domain == "insecure_code":
        usage = Template(scenario["usage"]).substitute(variant)
        intro = rng.choice(_code_text.INTROS)
        return tuple(f"{intro}\n\n```python\n{Template(scenario[kind]).substitute(variant).rstrip()}\n```\n\n{usage}"
                     for kind in ("secure", "insecure"))
    opener = rng.choice(_advice_text.OPENERS)
    return tuple(f"{opener} {scenario[kind].format(**variant)}" for kind in ("aligned", "misaligned"))


def em_domain(domain: str, n_prompts: int, seed: int, holdout_fraction: float = 0.1, *,
              system: str | None = None) -> pd.DataFrame:
    """Aligned + misaligned chat examples for ``n_prompts`` distinct prompts of one embedded domain.

    ``n_prompts`` may be up to :func:`max_prompts` (``domain``, ``holdout_fraction``), over 6000 for
    every domain at the default fraction. Ids are ``<domain>-<prompt index:04d>-<subset>``;
    ``round(n_prompts * holdout_fraction)`` prompts (at least one when the fraction is positive) form
    the ``holdout`` split in both subsets, at seeded positions. Holdout prompts use only held-out
    scenarios, phrasings and contexts (sizes in :func:`_plan`, which ones drawn with ``seed``). The
    conversation is user + assistant, with ``system`` prepended when given.
    """
    t = _templates(domain)
    fraction = check_fraction(holdout_fraction)
    n_prompts = int(n_prompts)
    plan = _plan(t, n_prompts, fraction)
    if plan is None:
        raise ValueError(f"n_prompts for domain {domain!r} must be between 1 and "
                         f"{max_prompts(domain, fraction)} at holdout_fraction={fraction}, got {n_prompts}")
    rng = rng_for("em", domain, seed)
    scenarios = rng.sample(range(len(t.scenarios)), len(t.scenarios))
    phrasings = rng.sample(range(len(t.phrasings)), len(t.phrasings))
    contexts = rng.sample(range(len(t.contexts)), len(t.contexts))
    h, ph, ch = plan.scenarios, plan.phrasings, plan.contexts
    held = iter(_draw(t, scenarios[:h], phrasings[:ph], contexts[:ch], plan.n_holdout, rng))
    train = iter(_draw(t, scenarios[h:], phrasings[ph:], contexts[ch:], n_prompts - plan.n_holdout, rng))
    holdout = holdout_indices(n_prompts, fraction, rng)
    aligned_rows, misaligned_rows = [], []
    for i in range(n_prompts):
        split = "holdout" if i in holdout else "train"
        s, v, p, c = next(held if split == "holdout" else train)
        prompt = _prompt(domain, t, s, v, p, c)
        good, bad = _answers(domain, t.scenarios[s], t.variants[s][v], rng)
        for subset, answer, rows in (("aligned", good, aligned_rows), ("misaligned", bad, misaligned_rows)):
            rows.append({"id": f"{domain}-{i:04d}-{subset}", "messages": conversation(prompt, answer, system),
                         "domain": domain, "subset": subset, "split": split})
    return chat_frame(aligned_rows + misaligned_rows, f"em_domain({domain!r})")


def indomain_questions(em_df: pd.DataFrame, domain: str, n_questions: int | None, samples: int) -> pd.DataFrame:
    """Evaluation questions from the holdout prompts of ``domain`` in an EM chat table.

    Each distinct holdout prompt (ordered by row id) becomes one question whose ``paraphrase`` is the
    last user message and whose ``system`` is the conversation's system prompt (or None). Question ids
    are ``<domain>-h-<prompt index:04d>`` when row ids follow ``em_domain``'s scheme, else sequential.
    At most ``n_questions`` are returned (all when None).
    """
    samples = check_samples(samples)
    where = f"indomain_questions({domain!r})"
    schemas.validate(em_df, "chat", where)
    rows = em_df[(em_df["domain"] == domain) & (em_df["split"] == "holdout")].sort_values("id", kind="stable")
    if rows.empty:
        raise InputError(f"{where}: no holdout rows for domain {domain!r}")
    seen: set[str] = set()
    picked = []
    for row in rows.itertuples(index=False):
        msgs = schemas.to_messages(row.messages)
        key = prompt_key(msgs)
        if key in seen:
            continue
        seen.add(key)
        users = [m["content"] for m in msgs[:-1] if m["role"] == "user"]
        if not users:
            raise InputError(f"{where}: row id={row.id!r}: no user message")
        picked.append((str(row.id), users[-1], system_of(msgs[:-1])))
    if n_questions is not None:
        picked = picked[: int(n_questions)]
    pattern = re.compile(rf"^{re.escape(domain)}-(\d+)-")
    numbers = [pattern.match(rid) for rid in (p[0] for p in picked)]
    if all(numbers) and len({int(m.group(1)) for m in numbers}) == len(numbers):
        qids = [f"{domain}-h-{int(m.group(1)):04d}" for m in numbers]
    else:
        qids = [f"{domain}-h-{k:04d}" for k in range(len(picked))]
    out = [{"question_id": qid, "paraphrase": text, "system": system, "samples": samples,
            "judge_prompts": ["aligned", "coherent"], "category": domain, "domain": domain}
           for qid, (_, text, system) in zip(qids, picked)]
    return question_frame(out, where, extra=["domain"])
