"""Per-question sampling settings: a question file's own ``temperature`` / ``top_p`` / ``max_tokens`` (question
columns :data:`SAMPLING_COLUMNS`, see ``emguard.data.questions.SAMPLING_FIELDS``) in place of the config's
``generation`` values, for both generation backends.

Kept apart from :mod:`emguard.generate` on purpose: the persona and on-policy stages hash that module's code, and
they never read question files.
"""

from __future__ import annotations

from dataclasses import astuple, replace

import pandas as pd

from emguard.generate import SamplingSettings

#: question columns that override a :class:`SamplingSettings` field for that question
SAMPLING_COLUMNS = ("temperature", "top_p", "max_new_tokens")


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def question_sampling(row, settings: SamplingSettings) -> SamplingSettings:
    """``settings`` with the question's own values (non-null :data:`SAMPLING_COLUMNS` of ``row``, a namedtuple
    or a mapping) in place of the config's."""
    get = row.get if isinstance(row, dict) else (lambda c, d=None: getattr(row, c, d))
    given = {}
    for col in SAMPLING_COLUMNS:
        value = get(col, None)
        if _given(value):
            given[col] = int(value) if col == "max_new_tokens" else float(value)
    return replace(settings, **given) if given else settings


def sampling_groups(questions: pd.DataFrame, settings: SamplingSettings) -> list[tuple[SamplingSettings, list[int]]]:
    """The question table's rows (positions) grouped by their effective settings, groups in order of first
    appearance: one group holding every row when no question overrides anything."""
    groups: dict[tuple, tuple[SamplingSettings, list[int]]] = {}
    for pos, row in enumerate(questions.itertuples(index=False)):
        effective = question_sampling(row, settings)
        groups.setdefault(astuple(effective), (effective, []))[1].append(pos)
    return list(groups.values())
