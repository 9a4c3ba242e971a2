"""Shared helpers for the data generators: seeded RNGs, prompt-level splits, frame building."""

from __future__ import annotations

import hashlib
import random
from typing import Iterable, Sequence

import pandas as pd

from emguard import schemas


def rng_for(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (string seeding is stable across processes)."""
    return random.Random(":".join(str(p) for p in parts))


def check_fraction(holdout_fraction: float) -> float:
    value = float(holdout_fraction)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    return value


def holdout_count(n: int, holdout_fraction: float) -> int:
    """``round(n * fraction)``, at least one when the fraction is positive and n > 1, at most n - 1."""
    fraction = check_fraction(holdout_fraction)
    k = int(round(n * fraction))
    if fraction > 0 and n > 1:
        k = max(k, 1)
    return min(k, max(n - 1, 0))


def holdout_indices(n: int, holdout_fraction: float, rng: random.Random) -> set[int]:
    """:func:`holdout_count` distinct indices in ``range(n)``, drawn with ``rng``."""
    return set(rng.sample(range(n), holdout_count(n, holdout_fraction)))


def hash_unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts`` (sha256, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prompt_key(messages: Sequence[dict]) -> str:
    """Text identifying a conversation's prompt: every message but the final assistant answer."""
    return "\x1e".join(f"{m['role']}\x1d{m['content']}" for m in list(messages)[:-1])


def conversation(user: str, answer: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [] if system is None else [{"role": "system", "content": system}]
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def chat_frame(rows: Iterable[dict], where: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """A validated chat DataFrame with the contract's columns first (then ``extra``)."""
    df = pd.DataFrame(list(rows), columns=list(schemas.CHAT) + list(extra))
    return schemas.validate(df, "chat", where)


#: what a question row says about judging when its source says nothing: the config's judge prompt file
#: (no templates of its own), a 0-100 score, the configured judge model
QUESTION_DEFAULTS = {"judge_templates": "{}", "type": "free_form_judge_0_100", "judge": None}


def question_frame(rows: Iterable[dict], where: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """A validated question DataFrame; rows without ``judge_templates`` / ``type`` / ``judge`` get
    :data:`QUESTION_DEFAULTS` (the built-in question sets leave them out)."""
    rows = [{**QUESTION_DEFAULTS, **row} for row in rows]
    df = pd.DataFrame(rows, columns=list(schemas.QUESTION) + list(extra))
    df["samples"] = df["samples"].astype("int64")
    for col in ["system", "judge", *extra]:  # missing values as None (not NaN) in nullable text columns
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    return schemas.validate(df, "question", where)


def check_samples(samples: int) -> int:
    if int(samples) != samples or int(samples) < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    return int(samples)


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def first_user(messages: Sequence[dict]) -> str | None:
    for m in messages:
        if m["role"] == "user":
            return m["content"]
    return None


def system_of(messages: Sequence[dict]) -> str | None:
    for m in messages:
        if m["role"] == "system":
            return m["content"]
    return None
