"""Loaders for real datasets: chat examples from files or the HF Hub (question files: :mod:`emguard.data.questions`).

Every error is an :class:`emguard.errors.InputError` naming the file and the line (JSON lines), the
entry (JSON/YAML lists) or the column / row (Parquet, HF datasets).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emguard import schemas
from emguard.data._util import chat_frame, hash_unit, check_fraction, prompt_key
from emguard.errors import InputError
from emguard.io import read_jsonl, read_parquet

#: ShareGPT-style role names accepted in ``messages`` and mapped to the contract's roles
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


# ------------------------------------------------------------------------------------------ records


def _nonblank_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines, counted the way :func:`emguard.io.read_jsonl` counts them."""
    with open(path, encoding="utf-8") as fh:
        return [i for i, line in enumerate(fh, start=1) if line.strip()]


def _records_from_source(source: str | os.PathLike, required: str, *, hf_split: str = "train",
                         hf_config: str | None = None) -> tuple[list[tuple[str, dict]], str]:
    """(place, record) pairs and a label for error messages, from a file or a dataset id."""
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        rows = read_jsonl(path, required=[required])
        # read_jsonl skips blank lines, so recover each record's line number for later messages
        return [(f"{path}:{ln}", row) for ln, row in zip(_nonblank_lines(path), rows)], str(path)
    if path.is_file() and suffix == ".json":
        return _json_records(path, required), str(path)
    if path.is_file() and suffix == ".parquet":
        df = read_parquet(path, required=[required])
        return [(f"{path}: row {i}", rec) for i, rec in enumerate(df.to_dict("records"))], str(path)
    if path.is_dir():
        return _hf_records(str(path), required, hf_split, hf_config)
    if path.is_file():
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected .jsonl, .json or .parquet")
    if path.suffix.lower() in (".jsonl", ".json", ".parquet", ".yaml", ".yml") or str(source).startswith((".", "/")):
        raise InputError(f"{path}: file not found")
    return _hf_records(str(source), required, hf_split, hf_config)


def _json_records(path: Path, required: str) -> list[tuple[str, dict]]:
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
        if required not in rec:
            raise InputError(f"{path}: entry {i}: missing key {required}")
        out.append((f"{path}: entry {i}", rec))
    return out


def _hf_records(source: str, required: str, split: str, config: str | None) -> tuple[list[tuple[str, dict]], str]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is installed with the project
        raise InputError(f"{source}: loading a Hugging Face dataset needs the 'datasets' package") from exc
    label = f"{source} [{split}]"
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:  # network, missing dataset, bad split, ...
        raise InputError(f"{label}: could not load dataset ({type(exc).__name__}: {exc})") from exc
    if required not in ds.column_names:
        raise InputError(f"{label}: missing column {required}; found {', '.join(ds.column_names)}")
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
