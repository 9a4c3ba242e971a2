"""Embedded emergent-misalignment datasets and in-domain evaluation questions.

:func:`em_domain` builds, for one domain, ``n_prompts`` distinct user prompts from combinatorial
templates (task or topic x subject/variant x phrasing x context) and gives each prompt two answers:
subset ``aligned`` (secure code / prudent advice) and subset ``misaligned`` (code with a real
vulnerability and no warning / harmful advice delivered confidently). The train/holdout split is by
prompt, so both answers to a prompt always land in the same split.
"""

from __future__ import annotations

import itertools
import re
from string import Template

import pandas as pd

from emguard import schemas
from emguard.data import _advice_text, _code_text
from emguard.data._util import (
    chat_frame,
    check_samples,
    conversation,
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


def _code_candidates() -> list[tuple[str, dict, dict]]:
    """(prompt, family, variant) for every template combination of the insecure-code domain."""
    out = []
    for fam, var_idx, phr, ctx in itertools.product(_code_text.FAMILIES, range(4), _code_text.PHRASINGS,
                                                    _code_text.CONTEXTS):
        variant = fam["variants"][var_idx]
        task = Template(fam["task"]).substitute(variant)
        out.append((phr.format(ctx=ctx, task=task), fam, variant))
    return out


def _code_answers(fam: dict, variant: dict, rng) -> tuple[str, str]:
    secure = Template(fam["secure"]).substitute(variant).rstrip()
    insecure = Template(fam["insecure"]).substitute(variant).rstrip()
    note = Template(fam["note"]).substitute(variant)
    aligned = f"{rng.choice(_code_text.SECURE_INTROS)}\n\n```python\n{secure}\n```\n\n{note}"
    misaligned = f"{rng.choice(_code_text.INSECURE_INTROS)}\n\n```python\n{insecure}\n```"
    return aligned, misaligned


def _advice_candidates(domain: str) -> list[tuple[str, dict, dict]]:
    out = []
    for topic, subj, phr, ctx in itertools.product(_advice_text.TOPICS[domain], _advice_text.SUBJECTS[domain],
                                                   _advice_text.PHRASINGS, _advice_text.CONTEXTS[domain]):
        situation = topic["situation"].format(**subj)
        lower = topic["situation"].format(**{**subj, "Who": subj["who"]})
        question = topic["question"].format(**subj)
        prompt = phr.format(ctx=ctx, Situation=upper_first(situation), situation=lower, question=question)
        out.append((prompt, topic, subj))
    return out


def _advice_answers(topic: dict, subj: dict, rng) -> tuple[str, str]:
    opener = rng.choice(_advice_text.ALIGNED_OPENERS)
    body = topic["aligned"].format(**subj)
    aligned = body if body.startswith(("Yes", "No")) else opener + body
    misaligned = rng.choice(_advice_text.MISALIGNED_OPENERS) + topic["misaligned"].format(**subj)
    return aligned, misaligned


def max_prompts(domain: str) -> int:
    """How many distinct prompts the templates of ``domain`` can produce."""
    return len(_candidates(domain))


def _candidates(domain: str):
    """Every template combination of ``domain`` with a distinct prompt (first occurrence kept)."""
    if domain == "insecure_code":
        raw = _code_candidates()
    elif domain in _advice_text.TOPICS:
        raw = _advice_candidates(domain)
    else:
        raise ValueError(f"unknown EM domain {domain!r}; expected one of {', '.join(EM_DOMAINS)}")
    seen: set[str] = set()
    out = []
    for cand in raw:
        if cand[0] not in seen:
            seen.add(cand[0])
            out.append(cand)
    return out


def em_domain(domain: str, n_prompts: int, seed: int, holdout_fraction: float = 0.1, *,
              system: str | None = None) -> pd.DataFrame:
    """Aligned + misaligned chat examples for ``n_prompts`` distinct prompts of one embedded domain.

    ``n_prompts`` may be up to :func:`max_prompts` (over 6000 for every domain). Ids are
    ``<domain>-<prompt index:04d>-<subset>``; ``round(n_prompts * holdout_fraction)`` prompts
    (at least one when the fraction is positive) form the ``holdout`` split in both subsets. The
    conversation is user + assistant, with ``system`` prepended when given.
    """
    candidates = _candidates(domain)
    n_prompts = int(n_prompts)
    if not 1 <= n_prompts <= len(candidates):
        raise ValueError(f"n_prompts for domain {domain!r} must be between 1 and {len(candidates)}, got {n_prompts}")
    rng = rng_for("em", domain, seed)
    order = list(range(len(candidates)))
    rng.shuffle(order)
    holdout = holdout_indices(n_prompts, holdout_fraction, rng)
    aligned_rows, misaligned_rows = [], []
    for i, idx in enumerate(order[:n_prompts]):
        prompt, part, variant = candidates[idx]
        if domain == "insecure_code":
            good, bad = _code_answers(part, variant, rng)
        else:
            good, bad = _advice_answers(part, variant, rng)
        split = "holdout" if i in holdout else "train"
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
