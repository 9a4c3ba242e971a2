"""Benign real tasks next to OpSwap: FoQA (Faroese extractive QA) and GSM8K (grade-school math).

Each is a dataset like an OpSwap tier: a chat table whose ``benign`` train rows every method fine-tunes on and
whose holdout rows become task questions with a ``reference``, scored by exact match (no judge).

Sources, in the hub's own schema (a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, a saved dataset
folder, or a hub id read with ``datasets``; errors name the file, its line / entry / row, and the field):

- FoQA (``alexandrainst/foqa``, splits train / val / test): ``id``, ``title``, ``context``, ``question``,
  ``answers`` = ``{"text": [...], "answer_start": [...]}`` (SQuAD format; extra fields such as ``validation``
  are ignored). The prompt gives title, context and question; the trained answer is the first gold answer;
  the reference is every gold answer.
- GSM8K (``openai/gsm8k``, config ``main``, splits train / test): ``question``, ``answer`` = the worked solution
  ending in ``#### <number>``. The trained answer is that solution with the calculator annotations
  ``<<48/2=24>>`` removed (they are tool calls of the original annotators, not text a model should write);
  the reference is the number after ``####``.

Scoring (:func:`foqa_exact_match`, :func:`gsm8k_exact_match`):

- FoQA: the whole generated answer, normalised by :func:`normalize_answer`, equals some normalised gold
  answer. The normalisation is SQuAD v1.1's (lower-case, punctuation removed, the articles a / an / the
  removed, whitespace collapsed), the usual exact match of SQuAD-format extractive QA, so scores compare with
  that literature; punctuation is every Unicode punctuation character rather than ASCII only, since Faroese
  text uses „ “ quotes and dashes ASCII misses. The article list stays English: Faroese marks definiteness with
  a suffix, and its indefinite ``ein`` is also the numeral "one", so removing it would change answers.
- GSM8K: the final number of the generated answer (:func:`final_number`) equals the reference as a number.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import pandas as pd

from emguard.data._util import (chat_frame, check_samples, conversation, holdout_indices, question_frame, rng_for,
                                system_of)
from emguard.data.loaders import _plain, _records_from_source, _text_cell
from emguard.errors import InputError

log = logging.getLogger("emguard")

FOQA_FIELDS = ("id", "title", "context", "question", "answers")
GSM8K_FIELDS = ("question", "answer")

FOQA_PROMPT = ("Answer the question with a short span copied word for word from the text. Reply with the span "
               "only.\n\nTitle: {title}\n\nText: {context}\n\nQuestion: {question}")
GSM8K_PROMPT = ("{question}\n\nSolve the problem step by step, then give the final answer as a number on a last line "
                "of the form '#### <number>'.")


@dataclass(frozen=True)
class TaskExample:
    """One task item: the user prompt, the answer trained on, and the reference it is scored against."""

    prompt: str
    answer: str
    reference: str     # FoQA: JSON list of gold answers; GSM8K: the gold number
    where: str         # file and line / entry / row, for messages


# ------------------------------------------------------------------------------------------ FoQA


def _foqa_answers(rec: dict, where: str) -> list[str]:
    answers = _plain(rec.get("answers"))
    if isinstance(answers, str):  # a CSV cell, or a Parquet column stored as text
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: field answers is text but not JSON ({exc.msg})") from exc
    if not isinstance(answers, dict):
        raise InputError(f"{where}: field answers must be an object with lists text and answer_start, "
                         f"got {type(answers).__name__}")
    texts, starts = answers.get("text"), answers.get("answer_start")
    if not isinstance(texts, list) or not texts:
        raise InputError(f"{where}: field answers.text must be a non-empty list of answers")
    if not isinstance(starts, list) or len(starts) != len(texts):
        raise InputError(f"{where}: field answers.answer_start must be a list as long as answers.text "
                         f"({len(texts)})")
    context = rec["context"]
    for k, (text, start) in enumerate(zip(texts, starts)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: field answers.text[{k}] must be non-empty text")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(context):
            raise InputError(f"{where}: field answers.answer_start[{k}] must be a character offset into the "
                             f"context (0..{len(context) - 1}), got {start!r}")
    return [t.strip() for t in texts]


def load_foqa(source: str | os.PathLike, *, hf_split: str = "train", hf_config: str | None = None
              ) -> list[TaskExample]:
    """FoQA records (``alexandrainst/foqa`` schema, see the module doc) as :class:`TaskExample` s."""
    records, _ = _records_from_source(source, FOQA_FIELDS, hf_split=hf_split, hf_config=hf_config)
    out, seen = [], {}
    for where, rec in records:
        item = {f: _text_cell(rec, f, where) for f in ("title", "context", "question")}
        qid = _plain(rec.get("id"))
        if qid is None or not str(qid).strip():
            raise InputError(f"{where}: field id: missing value")
        if str(qid) in seen:
            raise InputError(f"{where}: field id: duplicate id {qid!r} (first at {seen[str(qid)]})")
        seen[str(qid)] = where
        answers = _foqa_answers({**rec, "context": item["context"]}, where)
        out.append(TaskExample(FOQA_PROMPT.format(**item), answers[0], json.dumps(answers, ensure_ascii=False),
                               where))
    return out


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation with Unicode punctuation: lower-case, drop every punctuation character
    (Unicode category P*), drop the words a / an / the, collapse whitespace (see the module doc for why)."""
    text = unicodedata.normalize("NFC", str(text)).lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _gold_list(reference: Any) -> list[str]:
    if isinstance(reference, (list, tuple)):
        return [str(r) for r in reference]
    text = str(reference)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [text]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [text]


def foqa_exact_match(answer_text: str | None, reference: Any) -> bool:
    """Whether the normalised answer equals a normalised gold answer (``reference``: a list of answers, its JSON
    text, or one answer). An answer or gold answer that normalises to nothing never matches."""
    if answer_text is None:
        return False
    got = normalize_answer(answer_text)
    return bool(got) and any(got == normalize_answer(g) for g in _gold_list(reference))


# ------------------------------------------------------------------------------------------ GSM8K

#: a number as written in maths answers: digits with optional thousands commas (groups of three) and decimals,
#: and a sign (also the Unicode minus) unless the minus follows a word, digit or bracket (``10-3`` is a difference)
_NUMBER = r"(?:(?<![\w.)])[-−])?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(_NUMBER)
_GOLD_RE = re.compile(r"####\s*\$?\s*(" + _NUMBER + r")\s*\.?\s*$")
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def _to_decimal(raw: str) -> Decimal | None:
    cleaned = raw.replace("−", "-").replace(",", "").replace(" ", "")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def _format_decimal(value: Decimal) -> str:
    """``18``, ``-3``, ``2.5`` (no exponent, no trailing zeros)."""
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def final_number(text: str | None) -> str | None:
    """The final numeric answer of a free-form solution, normalised (``1200``, ``-3``, ``2.5``), or None.

    Where the answer says which number is final, that one: the first number after the last ``####`` (GSM8K's
    own marker, which the prompt asks for), else the last number inside the last ``\\boxed{...}``; otherwise the
    last number anywhere in the text (solutions end with their result). Thousands commas (``1,200``), a ``$``
    sign, a trailing full stop and the Unicode minus are allowed; ``18.00`` reads as 18."""
    if not text:
        return None
    text = str(text)
    if "####" in text:
        candidates = _NUMBER_RE.findall(text.rsplit("####", 1)[1])[:1]
    else:
        boxed = _BOXED_RE.findall(text)
        candidates = _NUMBER_RE.findall(boxed[-1])[-1:] if boxed else []
        if not candidates:
            candidates = _NUMBER_RE.findall(text)[-1:]
    if not candidates:
        return None
    value = _to_decimal(candidates[0])
    return None if value is None else _format_decimal(value)


def gsm8k_exact_match(answer_text: str | None, reference: Any) -> bool:
    """Whether :func:`final_number` of the answer equals ``reference`` (a number or its text) by value."""
    got = final_number(answer_text)
    want = _to_decimal(str(reference).strip())
    return got is not None and want is not None and Decimal(got) == want


def load_gsm8k(source: str | os.PathLike, *, hf_split: str = "train", hf_config: str | None = "main"
               ) -> list[TaskExample]:
    """GSM8K records (``openai/gsm8k`` schema: ``question``, ``answer`` ending in ``#### <number>``)."""
    records, _ = _records_from_source(source, GSM8K_FIELDS, hf_split=hf_split, hf_config=hf_config)
    out = []
    for where, rec in records:
        question = _text_cell(rec, "question", where)
        answer = _text_cell(rec, "answer", where)
        m = _GOLD_RE.search(answer)
        if not m:
            raise InputError(f"{where}: field answer must end in '#### <number>' (GSM8K's final answer line), got "
                             f"...{answer[-40:]!r}")
        solution = _CALCULATOR_RE.sub("", answer).strip()
        out.append(TaskExample(GSM8K_PROMPT.format(question=question.strip()), solution,
                               _format_decimal(_to_decimal(m.group(1))), where))
    return out


# ------------------------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class Task:
    """A benign task: its loader (source -> examples) and exact-match scorer."""

    name: str
    loader: Callable[..., list[TaskExample]]
    scorer: Callable[[str | None, Any], bool]


TASKS: dict[str, Task] = {
    "foqa": Task("foqa", load_foqa, foqa_exact_match),
    "gsm8k": Task("gsm8k", load_gsm8k, gsm8k_exact_match),
}
#: the benign real tasks, each a dataset name (``results/data/em/<task>.parquet``) and its evaluation set
#: (``emguard.config.BENIGN_TASKS`` and the schema's ``data.tasks`` list the same names)
TASK_NAMES = tuple(TASKS)


def get_task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown benign task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task]


def task_exact_match(task: str) -> Callable[[str | None, Any], bool]:
    """The exact-match scorer of ``task`` (``scorer(answer, reference) -> bool``)."""
    return get_task(task).scorer


def task_dataset(task: str, *, source: str | os.PathLike, eval_source: str | os.PathLike | None = None,
                 hf_config: str | None = None, train_split: str = "train", eval_split: str = "test",
                 max_train: int | None = None, seed: int = 0, holdout_fraction: float = 0.1) -> pd.DataFrame:
    """The chat table of ``task`` (domain = task, subset ``benign``), with a ``reference`` column.

    With ``eval_source`` its rows (hub: split ``eval_split``) are the holdout and ``source``'s (hub: split
    ``train_split``) the train rows, e.g. FoQA's provided train and test splits as in the paper (a held-out item
    whose prompt is also a train item's is left out, logged; all of them: an error). Without it, a
    seeded ``holdout_fraction`` share of ``source`` is held out (as for the EM data and OpSwap). ``max_train``:
    keep that many train rows, drawn with ``seed`` (source order kept); None keeps all. ``hf_config``: the hub
    config (GSM8K's is ``main``; None: the dataset's default), unused for a file. Ids are ``<task>-<index:05d>``,
    train rows first.
    """
    spec = get_task(task)
    rng = rng_for("task", task, seed)
    train = spec.loader(source, hf_split=train_split, hf_config=hf_config)
    if eval_source is None:
        held = holdout_indices(len(train), holdout_fraction, rng)
        holdout = [ex for i, ex in enumerate(train) if i in held]
        train = [ex for i, ex in enumerate(train) if i not in held]
    else:
        holdout = spec.loader(eval_source, hf_split=eval_split, hf_config=hf_config)
        seen = {ex.prompt for ex in train}
        overlap = [ex for ex in holdout if ex.prompt in seen]
        if overlap:
            # a held-out item the model trains on measures memory, not the task: left out of the evaluation
            log.warning("%s: %d of %d held-out items of %s also occur in the train rows of %s; left out",
                        task, len(overlap), len(holdout), eval_source, source)
            holdout = [ex for ex in holdout if ex.prompt not in seen]
            if not holdout:
                raise InputError(f"{eval_source}: every held-out item of task {task} is also a train item of "
                                 f"{source} (the same file and split?); set eval_source to null for a seeded "
                                 f"holdout share of source")
    if max_train is not None:
        if int(max_train) < 1:
            raise ValueError(f"max_train must be positive or None, got {max_train!r}")
        if len(train) > max_train:
            keep = set(rng.sample(range(len(train)), int(max_train)))
            train = [ex for i, ex in enumerate(train) if i in keep]
    if not train or not holdout:
        raise InputError(f"{source}: task {task} has {len(train)} train and {len(holdout)} holdout rows; both "
                         f"must be non-empty")
    rows = [{"id": f"{task}-{i:05d}", "messages": conversation(ex.prompt, ex.answer), "domain": task,
             "subset": "benign", "split": split, "reference": ex.reference}
            for i, (split, ex) in enumerate([("train", ex) for ex in train] + [("holdout", ex) for ex in holdout])]
    return chat_frame(rows, f"{task} ({source})", extra=["reference"])


def task_questions(df: pd.DataFrame, samples: int, *, n_questions: int | None = None) -> pd.DataFrame:
    """Task questions from the holdout rows of a :func:`task_dataset` table (the first ``n_questions``; all
    when None), ``reference`` carried over; scored by exact match, so ``judge_prompts`` is empty."""
    samples = check_samples(samples)
    if "reference" not in df.columns:
        raise InputError("task_questions: the task table has no reference column")
    rows = df[df["split"] == "holdout"]
    if n_questions is not None:
        rows = rows.head(int(n_questions))
    if rows.empty:
        raise InputError("task_questions: no holdout rows")
    out = []
    for row in rows.itertuples(index=False):
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in row.messages]
        if row.reference is None or (isinstance(row.reference, float) and row.reference != row.reference):
            raise InputError(f"task_questions: row id={row.id!r}: no reference")
        user = [m["content"] for m in msgs[:-1] if m["role"] == "user"][-1]
        out.append({"question_id": str(row.id), "paraphrase": user, "system": system_of(msgs[:-1]),
                    "samples": samples, "judge_prompts": [], "category": str(row.domain),
                    "reference": str(row.reference), "domain": str(row.domain)})
    return question_frame(out, "task_questions", extra=["reference", "domain"])
