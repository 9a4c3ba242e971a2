"""Judge templates and table-level judging: which prompt each answer gets, and the judgment table.

A metric's template is the question's own (column ``judge_templates`` of the question table: a JSON
object metric -> template, as the EM literature's question files give them) when it has one, else the
config's prompt file's (:func:`load_judge_prompts`). The question's ``type`` says how it is judged:
``free_form_judge_0_100`` (a 0-100 score; the default for tables without the column),
``free_form_judge`` (a label judge: the labels are read from the template by
:func:`emguard.judge.core.template_labels`; the judgment records the label distribution and its most
likely label, with no score) or ``free_form`` (generated only, never judged).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import pandas as pd

from emguard.errors import InputError
from emguard.judge.cache import JudgeCache, cache_key, judge_identity
from emguard.judge.core import (PLACEHOLDERS, QUESTION_TYPES, Judge, JudgeIncomplete, JudgeOutput, ScoreResult,
                                template_labels)
from emguard.schemas import GENERATION, JUDGMENT, to_messages

log = logging.getLogger(__name__)

#: question type when the question table has no ``type`` column (older files)
DEFAULT_QUESTION_TYPE = "free_form_judge_0_100"


def load_judge_prompts(path: str | os.PathLike) -> dict[str, str]:
    """Read ``metric: template`` pairs, every template checked (:func:`emguard.data.questions.load_template_file`:
    ``{question}`` and ``{answer}``, no other placeholder)."""
    from emguard.data.questions import load_template_file

    return load_template_file(path)


def fill_template(template: str, question: str, answer: str) -> str:
    """Substitute the two placeholders literally (other braces in the template are left as they are)."""
    out = template.replace("{question}", "\x00Q\x00").replace("{answer}", "\x00A\x00")
    return out.replace("\x00Q\x00", question).replace("\x00A\x00", answer)


def metric_key(metric: str, labels: Sequence[str] | None = None) -> str:
    """The metric part of the cache key: a label judgment also names its labels (the same prompt asked for a
    score and for labels are different questions)."""
    return f"{metric}|labels={','.join(labels)}" if labels else metric


def pending_count(judge: Judge, metric: str, prompts: list[str], cache: JudgeCache | None,
                  labels: Sequence[str] | None = None) -> list[str]:
    """The distinct prompts of ``prompts`` that the cache does not answer (what judging them will call)."""
    ident = judge_identity(judge)
    keys = {cache_key(ident, metric_key(metric, labels), p): p for p in prompts}
    hits = cache.get_many(list(keys)) if cache is not None else {}
    return [p for k, p in keys.items() if k not in hits]


def judge_outputs(judge: Judge, metric: str, prompts: list[str], cache: JudgeCache | None, *,
                  labels: Sequence[str] | None = None) -> tuple[list[JudgeOutput], list[bool]]:
    """What the judge returned for each prompt (from the cache or judged now) and served-from-cache flags;
    every new output is committed as it is computed.

    A local judge is called ``batch_size`` prompts at a time, each batch committed before the next; a judge
    with ``judge_pending`` (the API judge) writes each answer to the cache itself as it arrives. ``labels``:
    a label judgment (``label_distributions``)."""
    ident = judge_identity(judge)
    keys = [cache_key(ident, metric_key(metric, labels), p) for p in prompts]
    hits = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, str] = {}
    for k, p in zip(keys, prompts):
        if k not in hits and k not in todo:
            todo[k] = p
    usage = getattr(judge, "usage", None)
    if usage is not None:
        usage.cache_hits += len(hits)
    todo_items = list(todo.items())
    if hasattr(judge, "judge_pending"):
        fresh = judge.judge_pending(todo_items, cache, labels=labels)
    else:
        fresh = {}
        step = max(1, int(getattr(judge, "batch_size", 8)))
        for start in range(0, len(todo_items), step):
            chunk = todo_items[start:start + step]
            texts = [p for _, p in chunk]
            results = judge.label_distributions(texts, list(labels)) if labels else judge.distributions(texts)
            if len(results) != len(chunk):
                raise RuntimeError(f"judge {judge.name} returned {len(results)} results for {len(chunk)} prompts")
            batch = list(zip([k for k, _ in chunk], results))
            if cache is not None:
                cache.put_many(batch)
            fresh.update(batch)
    return [hits[k] if k in hits else fresh[k] for k in keys], [k in hits for k in keys]


def score_cached(judge: Judge, metric: str, prompts: list[str], cache: JudgeCache | None, *,
                 min_prob_mass: float | None = None, labels: Sequence[str] | None = None
                 ) -> tuple[list[ScoreResult], list[bool]]:
    """Score ``prompts`` (results, served-from-cache flags) through :func:`judge_outputs`.

    The cache holds unthresholded :class:`JudgeOutput` rows; the verdict applies ``min_prob_mass``
    (default: the judge's own) when read, so a new threshold needs no model call. With ``labels`` the
    verdict is :meth:`JudgeOutput.label_verdict`.
    """
    if not hasattr(judge, "distributions"):
        # a stand-in that only returns verdicts: they are already thresholded, so they must not be cached
        if cache is not None:
            raise TypeError(f"judge {judge.name!r} has no distributions(); only such judges can use a JudgeCache")
        if labels:
            raise TypeError(f"judge {judge.name!r} has no label_distributions(); it cannot judge labels")
        return list(judge.score_prompts(list(prompts))), [False] * len(prompts)
    threshold = float(judge.min_prob_mass if min_prob_mass is None else min_prob_mass)
    outputs, cached = judge_outputs(judge, metric, prompts, cache, labels=labels)
    return [o.label_verdict() if labels else o.verdict(threshold) for o in outputs], cached


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


def _question_templates(row, i: int) -> dict[str, str]:
    """A question row's own templates (``judge_templates``: a JSON object, "{}" or missing: none)."""
    raw = getattr(row, "judge_templates", None)
    if raw is None or (isinstance(raw, float) and raw != raw) or raw == "":
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise InputError(f"questions table: row {i} (question_id={row.question_id!r}): judge_templates is not "
                         f"valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"questions table: row {i} (question_id={row.question_id!r}): judge_templates must be a "
                         f"JSON object of metric name -> template text")
    for metric, template in data.items():
        missing = [p for p in PLACEHOLDERS if p not in template]
        if missing:
            raise InputError(f"questions table: row {i} (question_id={row.question_id!r}): judge_templates "
                             f"{metric!r} lacks placeholder(s) {', '.join(missing)}")
    return data


def _question_type(row, i: int) -> str:
    qtype = getattr(row, "type", None)
    if qtype is None or (isinstance(qtype, float) and qtype != qtype):
        return DEFAULT_QUESTION_TYPE
    if qtype not in QUESTION_TYPES:
        raise InputError(f"questions table: row {i} (question_id={row.question_id!r}): type {qtype!r} is not one "
                         f"of {', '.join(QUESTION_TYPES)}")
    return str(qtype)


def announce(judge: Judge, batches: Sequence[tuple[str, Sequence[str] | None, Sequence[str]]],
             cache: JudgeCache | None, what: str = "") -> int:
    """Before any judge call: log (and print, for a paid judge: one with ``estimate``) how many judge calls
    ``batches`` (``(metric, labels or None, prompts)``) need after cache hits and repeats, and their estimated
    cost; returns the number of distinct prompts to judge. ``what`` names the stage (persona extraction, ...)."""
    pending = []
    total = 0
    for metric, labels, texts in batches:
        texts = list(texts)
        total += len(texts)
        pending += pending_count(judge, metric, texts, cache, labels)
    estimate = getattr(judge, "estimate", None)
    line = (f"{what + ': ' if what else ''}judge {judge.name}: {total} judgments, {total - len(pending)} answered by "
            f"the cache or repeated, {len(pending)} to judge")
    if estimate is not None:
        line += "; " + estimate(pending)
        print(line, flush=True)
    log.info(line)
    return len(pending)


def _announce(judge: Judge, groups: dict, cache: JudgeCache | None) -> int:
    return announce(judge, [(metric, labels, [t for _, t in items]) for (metric, labels), items in groups.items()],
                    cache)


def judge_generations(generations: pd.DataFrame, questions: pd.DataFrame, judge: Judge, prompts: dict[str, str],
                      cache: JudgeCache | None = None) -> pd.DataFrame:
    """Judge every answer on every metric of its question; a table in the judgment contract.

    The judge sees the question as asked (the last user turn of ``prompt_messages``) and the answer,
    through the question's own template for the metric when it has one, else ``prompts[metric]`` (see the
    module docstring; ``free_form`` questions are not judged). Row order: generations in input order, each
    followed by its metrics in the question's order. When both tables have an ``evalset`` column (a run's
    question sets judged in one call), questions are matched on (evalset, question_id) and the rows keep
    their ``evalset``. ``label_probs`` (JSON) holds the probabilities of the labels the template offers (a
    label judge's labels; REFUSAL / CODE for a 0-100 judge that offers them).

    When some items cannot be judged (an API judge out of retries), the answered ones are already in the
    cache and :class:`JudgeIncomplete` says how many of this table's judgments remain.
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

    spec_of = {}
    for i, r in enumerate(questions.itertuples(index=False)):
        spec_of[qkey(r)] = ([str(m) for m in list(r.judge_prompts)], _question_templates(r, i), _question_type(r, i))
    labels_of: dict[str, tuple[str, ...]] = {}
    records, groups = [], {}
    for i, row in enumerate(generations.itertuples(index=False)):
        key = qkey(row)
        qid = key[1]
        if key not in spec_of:
            where = f" of evalset {key[0]!r}" if by_set else ""
            raise InputError(f"generations table: row {i}: question_id {qid!r}{where} is not in the questions table")
        metrics, own, qtype = spec_of[key]
        if qtype == "free_form":
            continue
        try:
            question = _question_text(row.prompt_messages)
        except ValueError as exc:
            raise InputError(f"generations table: row {i} (question_id={qid!r}): {exc}") from exc
        for metric in metrics:
            template = own.get(metric, prompts.get(metric))
            if template is None:
                raise InputError(f"question {qid!r}: judge prompt {metric!r} is not defined by the question nor the "
                                 f"judge prompt file (known: {', '.join(sorted(prompts))})")
            labels = None
            if qtype == "free_form_judge":
                if template not in labels_of:
                    try:
                        labels_of[template] = tuple(template_labels(template))
                    except ValueError as exc:
                        raise InputError(f"question {qid!r}: judge prompt {metric!r}: {exc}") from exc
                labels = labels_of[template]
            text = fill_template(template, question, str(row.answer))
            groups.setdefault((metric, labels), []).append((len(records), text))
            base = {c: getattr(row, c) for c in GENERATION + extra}
            records.append({**base, "metric": metric})
    _announce(judge, groups, cache)
    order = list(groups.items())
    for n, ((metric, labels), items) in enumerate(order):
        texts = [t for _, t in items]
        try:
            if hasattr(judge, "distributions"):
                outputs, cached = judge_outputs(judge, metric, texts, cache, labels=labels)
                results = [o.label_verdict() if labels else o.verdict(judge.min_prob_mass) for o in outputs]
                probs = [json.dumps(o.special, sort_keys=True) for o in outputs]
            else:  # a stand-in returning verdicts only
                results, cached = score_cached(judge, metric, texts, cache)
                probs = ["{}"] * len(texts)
        except JudgeIncomplete as exc:
            later = sum(len(pending_count(judge, m, [t for _, t in its], cache, lab))
                        for (m, lab), its in order[n:])
            where = f" (cache {cache.path})" if cache is not None else ""
            raise JudgeIncomplete(f"{exc}\njudge {judge.name}: {later} distinct judge prompts of this table remain "
                                  f"unjudged; every answered one is in the cache{where}: rerun to judge only those",
                                  remaining=later, answered=exc.answered) from exc
        for (pos, _), res, hit, lp in zip(items, results, cached, probs):
            records[pos].update(score=res.score, label=res.label, prob_mass=res.prob_mass,
                                judge_model=judge.name, cached=bool(hit), label_probs=lp)
    df = pd.DataFrame(records, columns=JUDGMENT + extra)
    if len(df):
        df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
        df["prob_mass"] = df["prob_mass"].astype("float64")
        df["cached"] = df["cached"].astype(bool)
    return df
