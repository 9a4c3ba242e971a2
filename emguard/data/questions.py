"""Evaluation question files in the format of the emergent-misalignment literature.

A question file is a YAML list of items (a mapping with a ``questions`` list, JSON, JSON lines and
Parquet are read too)::

    - id: three_wishes
      type: free_form_judge_0_100        # or free_form_judge (a label), free_form (generate only)
      paraphrases: ["...", "..."]
      samples_per_paraphrase: 100
      system: "..."                      # optional
      judge: gpt-4o-mini                 # optional: the item's judge model
      judge_prompts:                     # metric -> template, or a list of metric names
        aligned: "... {question} ... {answer} ..."
      temperature: 1                     # optional sampling overrides (SAMPLING_FIELDS): temperature,
                                         # top_p, max_tokens (or max_new_tokens); else generation.*

YAML anchors and aliases (``&jp`` / ``*jp``, merge keys ``<<: *defaults``) share values between items;
PyYAML resolves them. Everything that can be checked is checked here, when the file is prepared and
before any answer is generated; every error is an :class:`~emguard.errors.InputError` naming the file
(with the item's line for YAML), the item (index and id) and the field.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from emguard import schemas
from emguard.data._util import question_frame
from emguard.data.loaders import _nonblank_lines, _plain
from emguard.errors import InputError
from emguard.io import check_columns, read_jsonl, read_parquet, read_yaml

log = logging.getLogger("emguard")

#: metrics judged when an item of a judged type names none
DEFAULT_JUDGE_PROMPTS = ("aligned", "coherent")
#: per-item sampling overrides (column -> the item fields that give it): the literature's files give
#: ``temperature`` (``Question(temperature=1)``); ``top_p`` and ``max_tokens`` follow the same idea. A question
#: table carries a column only when some item gives it; a null cell means the config's ``generation`` value.
SAMPLING_FIELDS = {"temperature": ("temperature",), "top_p": ("top_p",),
                   "max_new_tokens": ("max_new_tokens", "max_tokens")}
#: ``judge.model`` value meaning "each question's own ``judge``"
FROM_QUESTIONS = "from_questions"
#: question sets shipped with the project, by the name ``eval.general.source`` selects them with
NAMED_SETS = {"expanded": "workflow/resources/questions/general_expanded.yaml",
              "adversarial": "workflow/resources/questions/adversarial.yaml"}

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# a format-style placeholder: {name} or {} / {0}; literal braces such as JSON examples are not placeholders
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*|[0-9]*)\}")


# ------------------------------------------------------------------------------------------ templates


def template_problem(template: Any) -> str | None:
    """Why ``template`` cannot be a judge template (None when it can): it must be text holding both
    ``{question}`` and ``{answer}`` and no other ``{...}`` placeholder (it is filled in literally)."""
    if not isinstance(template, str) or not template.strip():
        return f"a template must be non-empty text, got {type(template).__name__}"
    missing = [p for p in schemas.PLACEHOLDERS if p not in template]
    if missing:
        return f"template lacks placeholder(s) {', '.join(missing)}"
    other = sorted({m.group(0) for m in _PLACEHOLDER.finditer(template)} - set(schemas.PLACEHOLDERS))
    if other:
        return f"template has placeholder(s) {', '.join(other)}; only {' and '.join(schemas.PLACEHOLDERS)} are filled in"
    return None


def load_template_file(path: str | os.PathLike) -> dict[str, str]:
    """A judge prompt file (YAML mapping metric -> template), every template checked."""
    path = Path(path)
    data = read_yaml(path, "judge prompt file")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a mapping of metric name -> template, got {type(data).__name__}")
    for metric, template in data.items():
        if not isinstance(metric, str) or not metric.strip():
            raise InputError(f"{path}: metric names must be non-empty strings, got {metric!r}")
        problem = template_problem(template)
        if problem:
            raise InputError(f"{path}: metric {metric!r}: {problem}")
    return {str(k): v for k, v in data.items()}


# ------------------------------------------------------------------------------------------ sources


def question_source(source: str | os.PathLike) -> Path | None:
    """The file behind ``eval.general.source``: None for ``embedded``, a :data:`NAMED_SETS` file of the
    project, else the path as given when it exists from the working directory, else under the project."""
    if str(source) == "embedded":
        return None
    if str(source) in NAMED_SETS:
        return _PROJECT_ROOT / NAMED_SETS[str(source)]
    path = Path(source)
    if path.is_absolute() or path.exists() or not (_PROJECT_ROOT / path).exists():
        return path
    return _PROJECT_ROOT / path


def _yaml_item_lines(text: str) -> list[int | None]:
    """1-based line of each item of a YAML question list (None where the list is not plain YAML nodes)."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        root = next((v for k, v in root.value if getattr(k, "value", None) == "questions"), None)
    if not isinstance(root, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in root.value]


def _records(path: Path) -> list[tuple[str, Any]]:
    """(place, record) pairs; place is ``file:line: item i`` (YAML, JSONL), ``file: item i`` or ``file: row i``."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path}: question file not found")
    if suffix in (".yaml", ".yml", ".json"):
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
            lines: list[int | None] = []
        else:
            data = read_yaml(path, "question file")
            lines = _yaml_item_lines(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("questions"), list):
            data = data["questions"]
        if data is None or data == []:
            raise InputError(f"{path}: question file is empty (no items)")
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a list of question items (or a mapping with a 'questions' list), "
                             f"got {type(data).__name__}")
        return [(f"{path}:{lines[i]}: item {i}" if i < len(lines) else f"{path}: item {i}", rec)
                for i, rec in enumerate(data)]
    if suffix == ".jsonl":
        rows = read_jsonl(path)
        if not rows:
            raise InputError(f"{path}: question file is empty (no items)")
        return [(f"{path}:{ln}: item {i}", row) for i, (ln, row) in enumerate(zip(_nonblank_lines(path), rows))]
    if suffix == ".parquet":
        df = read_parquet(path)
        if "paraphrase" not in df.columns and "paraphrases" not in df.columns:
            check_columns(df, ["paraphrase"], str(path))
        if "question_id" not in df.columns and "id" not in df.columns:
            check_columns(df, ["question_id"], str(path))
        return [(f"{path}: row {i}", {k: _plain(v) for k, v in rec.items()})
                for i, rec in enumerate(df.to_dict("records"))]
    raise InputError(f"{path}: unsupported question file type {suffix or '(none)'!r}; expected .yaml, .json, "
                     f".jsonl or .parquet")


# ------------------------------------------------------------------------------------------ items


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():  # Parquet int columns with gaps come back as floats
        number = int(value)
    else:
        return None
    return number if number >= 1 else None


class _Item:
    """One item of a question file being read; ``fail`` names file, item and field."""

    def __init__(self, where: str, rec: Any):
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a mapping, got {type(rec).__name__}")
        self.rec, self.where = rec, where
        key = "question_id" if "question_id" in rec else "id"
        qid = rec.get(key)
        if _is_missing(qid) or isinstance(qid, (dict, list)) or str(qid).strip() == "":
            raise InputError(f"{where}: field id: missing or empty (each item needs an id)")
        self.id = str(qid)
        self.where = f"{where} (id={self.id!r})"

    def get(self, *fields: str) -> tuple[str, Any]:
        """(field name, value) of the first of ``fields`` the item gives, else (``fields[0]``, None)."""
        for f in fields:
            if f in self.rec and not _is_missing(self.rec[f]):
                return f, self.rec[f]
        return fields[0], None

    def fail(self, field: str, problem: str) -> InputError:
        return InputError(f"{self.where}: field {field}: {problem}")


def _paraphrases(item: _Item) -> list[str]:
    field, value = item.get("paraphrases", "paraphrase")
    if value is None:
        raise item.fail("paraphrases", "missing (give a list of question texts, or one text as paraphrase)")
    texts = value if isinstance(value, list) else [value]
    if not texts:
        raise item.fail(field, "empty list")
    for k, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise item.fail(f"{field}[{k}]" if isinstance(value, list) else field,
                            f"must be non-empty text, got {text!r}")
    return texts


def _samples(item: _Item, default: int) -> int:
    given = [f for f in ("samples_per_paraphrase", "samples") if not _is_missing(item.rec.get(f))]
    if len(given) == 2 and item.rec["samples_per_paraphrase"] != item.rec["samples"]:
        raise item.fail("samples_per_paraphrase", f"differs from samples ({item.rec['samples_per_paraphrase']!r} vs "
                                                  f"{item.rec['samples']!r}); give one of them")
    if not given:
        return default
    value = _positive_int(item.rec[given[0]])
    if value is None:
        raise item.fail(given[0], f"must be a positive integer, got {item.rec[given[0]]!r}")
    return value


def _sampling(item: _Item) -> dict[str, float | int]:
    """The item's sampling overrides (:data:`SAMPLING_FIELDS`), checked: temperature >= 0, 0 < top_p <= 1,
    max_new_tokens a positive integer."""
    out: dict[str, float | int] = {}
    for column, fields in SAMPLING_FIELDS.items():
        given = [f for f in fields if not _is_missing(item.rec.get(f))]
        if len(given) > 1:
            raise item.fail(given[1], f"gives the same setting as {given[0]}; give one of them")
        if not given:
            continue
        field, value = given[0], item.rec[given[0]]
        if column == "max_new_tokens":
            number = _positive_int(value)
            if number is None:
                raise item.fail(field, f"must be a positive integer, got {value!r}")
            out[column] = number
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise item.fail(field, f"must be a number, got {value!r}")
        number = float(value)
        if column == "temperature" and number < 0:
            raise item.fail(field, f"must be >= 0 (0 = greedy), got {value!r}")
        if column == "top_p" and not 0 < number <= 1:
            raise item.fail(field, f"must be in (0, 1], got {value!r}")
        out[column] = number
    return out


def _templates(item: _Item) -> tuple[list[str] | None, dict[str, str]]:
    """(metric names or None when the item names none, the item's own templates)."""
    templates: dict[str, str] = {}
    field, stored = item.get("judge_templates")  # a prepared question table read back
    if stored is not None:
        try:
            stored = json.loads(stored) if isinstance(stored, str) else stored
        except json.JSONDecodeError as exc:
            raise item.fail(field, f"not a JSON object ({exc.msg})") from exc
        if not isinstance(stored, dict):
            raise item.fail(field, f"must map metric -> template, got {type(stored).__name__}")
        templates.update(stored)
    field, value = item.get("judge_prompts")
    if value is None:
        names = list(templates) or None
    elif isinstance(value, dict):
        templates.update(value)
        names = list(value)
    elif isinstance(value, str):
        names = [value]
    elif isinstance(value, list):
        names = value
    else:
        raise item.fail(field, f"must be a list of metric names or a mapping metric -> template, got "
                               f"{type(value).__name__}")
    for metric in list(names or []) + list(templates):
        if not isinstance(metric, str) or not metric.strip():
            raise item.fail(field, f"metric names must be non-empty text, got {metric!r}")
    for metric, template in templates.items():
        problem = template_problem(template)
        if problem:
            raise item.fail(f"{field}.{metric}", problem)
    if names is not None and len(set(names)) != len(names):
        raise item.fail(field, f"metric named twice in {names}")
    return names, templates


def load_questions(source: str | os.PathLike, *, default_samples: int = 100,
                   default_judge_prompts: Iterable[str] = DEFAULT_JUDGE_PROMPTS,
                   fallback_templates: Mapping[str, str] | None = None, fallback_source: str = "judge.prompts",
                   require_judge: bool = False) -> pd.DataFrame:
    """Evaluation questions from a question file, one row per paraphrase (ids ``<id>-<k>`` when an item
    has several; ``category`` defaults to the item's id).

    Per item: ``id`` (or ``question_id``); ``paraphrases`` (or one ``paraphrase``); ``type`` (default
    ``free_form_judge_0_100``); ``samples_per_paraphrase`` (or ``samples``; default ``default_samples``);
    optional ``system``, ``judge``, ``judge_prompts`` (names or metric -> template; default
    ``default_judge_prompts`` for judged types, none for ``free_form``; a ``free_form_judge`` item must name
    its own, since the default templates ask for a number), ``category``, ``reference``, ``domain``; sampling
    overrides ``temperature``, ``top_p``, ``max_tokens`` / ``max_new_tokens`` (:data:`SAMPLING_FIELDS`: columns
    only when some item gives one, null where an item gives none; both generation backends honour them).

    ``fallback_templates``: the config's judge prompts (from ``fallback_source``); when given, every metric
    an item names must have a template, its own or one of these. ``require_judge``: every judged item must
    name its ``judge`` (``judge.model: from_questions``).
    """
    path = Path(source)
    rows: list[dict] = []
    item_of: dict[str, str] = {}  # id and row id -> the item that claimed it
    for where, rec in _records(path):
        item = _Item(where, rec)
        if item.id in item_of:
            raise item.fail("id", f"{item.id!r} is already the id of {item_of[item.id]}")
        item_of[item.id] = where
        paraphrases = _paraphrases(item)
        field, qtype = item.get("type")
        qtype = "free_form_judge_0_100" if qtype is None else qtype
        if qtype not in schemas.QUESTION_TYPES:
            raise item.fail(field, f"{qtype!r} is not one of {', '.join(schemas.QUESTION_TYPES)}")
        samples = _samples(item, default_samples)
        names, templates = _templates(item)
        if names is None:
            if qtype == "free_form_judge":
                raise item.fail("judge_prompts", "a free_form_judge item must give its own judge_prompts (templates "
                                                 "asking for its labels)")
            names = [] if qtype == "free_form" else list(default_judge_prompts)
        if fallback_templates is not None:
            for metric in names:
                if metric not in templates and metric not in fallback_templates:
                    raise item.fail("judge_prompts", f"metric {metric!r} has no template: the item gives none and "
                                                     f"{fallback_source} has none (it has "
                                                     f"{', '.join(sorted(fallback_templates)) or 'none'})")
        field, judge = item.get("judge")
        if judge is not None and not (isinstance(judge, str) and judge.strip()):
            raise item.fail(field, f"must be a judge model name (text), got {judge!r}")
        if require_judge and judge is None and qtype != "free_form" and names:
            raise item.fail(field, f"missing: judge.model is {FROM_QUESTIONS}, so every judged item must name its "
                                   f"judge model")
        system = item.get("system")[1]
        category = item.get("category")[1]
        sampling = _sampling(item)
        for k, text in enumerate(paraphrases):
            qid = item.id if len(paraphrases) == 1 else f"{item.id}-{k}"
            if qid != item.id and qid in item_of:
                raise item.fail("id", f"paraphrase id {qid!r} clashes with {item_of[qid]}")
            item_of[qid] = where
            row = {"question_id": qid, "paraphrase": text, "system": None if system is None else str(system),
                   "samples": samples, "judge_prompts": [str(m) for m in names],
                   "category": item.id if category is None else str(category),
                   "judge_templates": json.dumps(templates, ensure_ascii=False, sort_keys=True), "type": qtype,
                   "judge": judge}
            for opt in ("reference", "domain"):
                if item.get(opt)[1] is not None:
                    row[opt] = str(item.rec[opt])
            row.update(sampling)
            rows.append(row)
    extra = [c for c in ("reference", "domain", *SAMPLING_FIELDS) if any(c in r for r in rows)]
    for r in rows:
        for c in extra:
            r.setdefault(c, None)
    return question_frame(rows, str(path), extra=extra)


def check_questions(df: pd.DataFrame, fallback_templates: Mapping[str, str], where: str, *,
                    fallback_source: str = "judge.prompts", require_judge: bool = False) -> None:
    """The checks of :func:`load_questions` on a question table (e.g. a built-in set): every metric of a row
    has a template (the row's ``judge_templates`` or ``fallback_templates``); with ``require_judge`` every
    judged row names its judge."""
    for row in df.itertuples(index=False):
        own = json.loads(row.judge_templates)
        metrics = [str(m) for m in list(row.judge_prompts)]
        for metric in metrics:
            if metric not in own and metric not in fallback_templates:
                raise InputError(f"{where}: question_id={row.question_id!r}: field judge_prompts: metric {metric!r} "
                                 f"has no template (none of its own, none in {fallback_source})")
        if require_judge and row.judge is None and row.type != "free_form" and metrics:
            raise InputError(f"{where}: question_id={row.question_id!r}: field judge: missing: judge.model is "
                             f"{FROM_QUESTIONS}, so every judged question must name its judge model")
