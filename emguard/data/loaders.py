"""Loaders for real datasets: chat examples from files or the HF Hub (question files: :mod:`emguard.data.questions`).

Every error is an :class:`emguard.errors.InputError` naming the file and the line (JSON lines), the
entry (JSON/YAML lists) or the column / row (Parquet, CSV, HF datasets; rows counted from 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from emguard import schemas
from emguard.data._util import chat_frame, hash_unit, check_fraction, prompt_key
from emguard.errors import ConfigError, InputError
from emguard.io import check_columns, read_jsonl, read_parquet

#: ShareGPT-style role names accepted in ``messages`` and mapped to the contract's roles
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


# ------------------------------------------------------------------------------------------ records


def _nonblank_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines, counted the way :func:`emguard.io.read_jsonl` counts them."""
    with open(path, encoding="utf-8") as fh:
        return [i for i, line in enumerate(fh, start=1) if line.strip()]


def _records_from_source(source: str | os.PathLike, required: str | Sequence[str], *, hf_split: str = "train",
                         hf_config: str | None = None) -> tuple[list[tuple[str, dict]], str]:
    """(place, record) pairs and a label for error messages, from a file or a dataset id."""
    required = [required] if isinstance(required, str) else list(required)
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        rows = read_jsonl(path, required=required)
        # read_jsonl skips blank lines, so recover each record's line number for later messages
        return [(f"{path}:{ln}", row) for ln, row in zip(_nonblank_lines(path), rows)], str(path)
    if path.is_file() and suffix == ".json":
        return _json_records(path, required), str(path)
    if path.is_file() and suffix == ".parquet":
        df = read_parquet(path, required=required)
        return [(f"{path}: row {i}", rec) for i, rec in enumerate(df.to_dict("records"))], str(path)
    if path.is_file() and suffix == ".csv":
        return _csv_records(path, required), str(path)
    if path.is_dir():
        return _hf_records(str(path), required, hf_split, hf_config)
    if path.is_file():
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected .jsonl, .json, .parquet "
                         f"or .csv")
    if suffix in (".jsonl", ".json", ".parquet", ".csv", ".yaml", ".yml") or str(source).startswith((".", "/")):
        raise InputError(f"{path}: file not found")
    return _hf_records(str(source), required, hf_split, hf_config)


def _csv_records(path: Path, required: Sequence[str]) -> list[tuple[str, dict]]:
    """Rows of a CSV file with a header line, every cell as text (an empty cell is ``""``, never NaN)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: dataset is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from exc
    check_columns(df, required, str(path))
    if len(df) == 0:
        raise InputError(f"{path}: dataset is empty (0 rows)")
    return [(f"{path}: row {i}", rec) for i, rec in enumerate(df.to_dict("records"))]


def _json_records(path: Path, required: Sequence[str]) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(f"{path}: expected a list of records (or an object holding exactly one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of records, got {type(data).__name__}")
    if not data:
        raise InputError(f"{path}: dataset is empty (no records)")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise InputError(f"{path}: entry {i}: expected an object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise InputError(f"{path}: entry {i}: missing key(s) {', '.join(missing)}")
        out.append((f"{path}: entry {i}", rec))
    return out


def _hf_records(source: str, required: Sequence[str], split: str,
                config: str | None) -> tuple[list[tuple[str, dict]], str]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is installed with the project
        raise InputError(f"{source}: loading a Hugging Face dataset needs the 'datasets' package") from exc
    label = f"{source} [{split}]" if config is None else f"{source} ({config}) [{split}]"
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:  # network, missing dataset, bad split, ...
        raise InputError(f"{label}: could not load dataset ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise InputError(f"{label}: missing column(s) {', '.join(missing)}; found {', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise InputError(f"{label}: dataset is empty (0 rows)")
    return [(f"{label}: row {i}", rec) for i, rec in enumerate(ds)], label


# ------------------------------------------------------------------------------------------ chat


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    value = _plain(value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: field {field} is a string but not JSON ({exc.msg})") from exc
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: field {field} must be a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict):
            raise InputError(f"{where}: {field}[{k}] is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = _ROLE_ALIASES.get(role, role)
        if role not in schemas.ROLES:
            raise InputError(f"{where}: {field}[{k}]: role {role!r} not one of {schemas.ROLES}")
        if not isinstance(content, str):
            raise InputError(f"{where}: {field}[{k}]: content must be text")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise InputError(f"{where}: {field}: the last message must be the assistant's answer")
    return out


def load_chat_dataset(source: str | os.PathLike, *, domain: str, subset: str, split_seed: int = 0,
                      holdout_fraction: float = 0.1, messages_field: str = "messages", hf_split: str = "train",
                      hf_config: str | None = None) -> pd.DataFrame:
    """Chat examples from a ``.jsonl`` / ``.json`` / ``.parquet`` file or a Hugging Face dataset id.

    Each record needs ``messages_field`` holding ``[{role, content}, ...]`` ending with the assistant
    answer (ShareGPT ``{from, value}`` is accepted too). A record's ``split`` (train/holdout) is kept
    when present; otherwise it is assigned from a hash of the *prompt* and ``split_seed``, so the same
    prompt lands in the same split in every file loaded with the same seed (e.g. the aligned and the
    misaligned variant of a dataset). Ids are ``<domain>-<index:05d>-<subset>``.
    """
    if subset not in schemas.SUBSETS:
        raise ValueError(f"subset must be one of {schemas.SUBSETS}, got {subset!r}")
    fraction = check_fraction(holdout_fraction)
    records, label = _records_from_source(source, messages_field, hf_split=hf_split, hf_config=hf_config)
    if not records:
        raise InputError(f"{label}: dataset is empty")
    rows = []
    for i, (where, rec) in enumerate(records):
        msgs = _messages(rec.get(messages_field), where, messages_field)
        split = rec.get("split")
        if split not in schemas.SPLITS:
            split = "holdout" if hash_unit("split", split_seed, prompt_key(msgs)) < fraction else "train"
        rows.append({"id": f"{domain}-{i:05d}-{subset}", "messages": msgs, "domain": domain, "subset": subset,
                     "split": split})
    return chat_frame(rows, label)


# ------------------------------------------------------------------------------------------ EM sources

#: the column format of Chua et al.'s EM data (hub ``truthfulai/emergent_plus``, configs legal / medical /
#: security): one prompt and both answers to it per record
EM_COLUMNS = ("prompt", "aligned", "misaligned")
#: optional columns of that format that must hold a number where they hold anything
EM_NUMERIC_COLUMNS = ("sneakiness",)
#: the values of ``format`` in a ``data.em.sources.<domain>`` entry that names one source for both subsets
EM_SOURCE_FORMATS = ("columns",)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _text_cell(rec: Mapping, column: str, where: str) -> str:
    value = _plain(rec.get(column))
    if _absent(value):
        raise InputError(f"{where}: column {column}: missing value")
    if not isinstance(value, str):
        raise InputError(f"{where}: column {column}: expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise InputError(f"{where}: column {column}: empty text")
    return value


def _number_cell(value: Any, column: str, where: str) -> float:
    """A finite number, or NaN where the cell is empty (None, NaN or blank text, as CSV gives it)."""
    value = _plain(value)
    if isinstance(value, np.generic):
        value = value.item()
    if _absent(value) or (isinstance(value, str) and not value.strip()):
        return float("nan")
    if isinstance(value, bool):
        raise InputError(f"{where}: column {column}: expected a number, got the boolean {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise InputError(f"{where}: column {column}: expected a number, got {value!r}") from None
    else:
        raise InputError(f"{where}: column {column}: expected a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(number):
        raise InputError(f"{where}: column {column}: expected a finite number, got {value!r}")
    return number


def _extra_cell(value: Any) -> Any:
    """A Parquet-safe scalar: numbers, text and booleans as they are, nested values as JSON text."""
    value = _plain(value)
    if isinstance(value, np.generic):
        value = value.item()
    if _absent(value):
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _extra_column_name(name: str) -> str:
    # a source column named like a contract column must not overwrite it
    return f"source_{name}" if name in schemas.CHAT else name


def load_em_columns(source: str | os.PathLike, *, domain: str, split_seed: int = 0, holdout_fraction: float = 0.1,
                    hf_split: str = "train", hf_config: str | None = None,
                    numeric_columns: Sequence[str] = EM_NUMERIC_COLUMNS) -> pd.DataFrame:
    """Both EM subsets from one source in the column format ``prompt`` / ``aligned`` / ``misaligned``.

    ``source`` is a ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file or a Hugging Face dataset id
    (``hf_config`` e.g. ``legal``, ``hf_split``). Record ``i`` gives two chat examples for its prompt (one
    user turn): ``<domain>-<i:05d>-aligned`` and ``<domain>-<i:05d>-misaligned``, in the same split: the
    record's ``split`` when it has one, else the prompt's hash with ``split_seed`` exactly as
    :func:`load_chat_dataset` assigns it (so the same prompt lands in the same split in either format).

    Every other column is kept on both rows (a name that clashes with a contract column gets the prefix
    ``source_``); ``numeric_columns`` (``sneakiness``) must hold numbers and are stored as float, empty = NaN.
    A CSV file has no types, so its other columns stay text.
    Errors name the file, the line (JSON lines) or entry / row, and the column.
    """
    fraction = check_fraction(holdout_fraction)
    records, label = _records_from_source(source, EM_COLUMNS, hf_split=hf_split, hf_config=hf_config)
    numeric = set(numeric_columns)
    extra: list[str] = []
    for _, rec in records:
        extra += [k for k in rec if k not in EM_COLUMNS and k != "split" and k not in extra]
    aligned_rows, misaligned_rows = [], []
    for i, (where, rec) in enumerate(records):
        prompt = _text_cell(rec, "prompt", where)
        answers = {subset: _text_cell(rec, subset, where) for subset in ("aligned", "misaligned")}
        split = _plain(rec.get("split"))
        if _absent(split) or split == "":
            key = prompt_key([{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}])
            split = "holdout" if hash_unit("split", split_seed, key) < fraction else "train"
        elif split not in schemas.SPLITS:
            raise InputError(f"{where}: column split: {split!r} is not one of {schemas.SPLITS}")
        kept = {_extra_column_name(str(c)): (_number_cell(rec.get(c), str(c), where) if c in numeric
                                             else _extra_cell(rec.get(c))) for c in extra}
        for subset, rows in (("aligned", aligned_rows), ("misaligned", misaligned_rows)):
            rows.append({"id": f"{domain}-{i:05d}-{subset}", "domain": domain, "subset": subset, "split": split,
                         "messages": [{"role": "user", "content": prompt},
                                      {"role": "assistant", "content": answers[subset]}], **kept})
    names = [_extra_column_name(str(c)) for c in extra]
    df = chat_frame(aligned_rows + misaligned_rows, label, extra=names)
    for name in names:
        if name in numeric:
            continue
        kinds = {"bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else "text"
                 for v in df[name] if not _absent(v)}
        if len(kinds) > 1:  # one Parquet type per column: mixed cells are kept as their text
            df[name] = pd.Series([None if _absent(v) else str(v) for v in df[name]], index=df.index, dtype=object)
        elif kinds != {"number"}:  # empty text / boolean cells as None (pandas may have made them NaN)
            df[name] = pd.Series([None if _absent(v) else v for v in df[name]], index=df.index, dtype=object)
    return df


def load_em_source(source: Mapping[str, Any], *, domain: str, split_seed: int = 0,
                   holdout_fraction: float = 0.1) -> pd.DataFrame:
    """One EM domain's aligned and misaligned subsets from a ``data.em.sources.<domain>`` entry.

    Either ``{aligned: <chat file or hub id>, misaligned: <chat file or hub id>}`` (one chat source per
    subset, :func:`load_chat_dataset`) or ``{path: <file or hub id>, format: columns, hf_config, hf_split}``
    (one source in the column format, :func:`load_em_columns`).
    """
    key = f"data.em.sources.{domain}"
    if "aligned" in source or "misaligned" in source:
        missing = [s for s in ("aligned", "misaligned") if not source.get(s)]
        if missing:
            raise ConfigError(f"config key '{key}.{missing[0]}': needed next to the other subset's source")
        parts = [load_chat_dataset(source[subset], domain=domain, subset=subset, split_seed=split_seed,
                                   holdout_fraction=holdout_fraction) for subset in ("aligned", "misaligned")]
        return pd.concat(parts, ignore_index=True)
    fmt = source.get("format")
    if fmt not in EM_SOURCE_FORMATS:
        raise ConfigError(f"config key '{key}.format': {fmt!r} is not one of {EM_SOURCE_FORMATS} "
                          f"(or give aligned: and misaligned: sources)")
    if not source.get("path"):
        raise ConfigError(f"config key '{key}.path': missing (the file or hub id of the {fmt} source)")
    return load_em_columns(source["path"], domain=domain, split_seed=split_seed, holdout_fraction=holdout_fraction,
                           hf_config=source.get("hf_config"), hf_split=source.get("hf_split") or "train")

