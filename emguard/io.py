"""Atomic file output and validated input.

Every writer goes through :func:`atomic_path`: the data is written to a temporary name in the
destination folder and renamed into place only once complete, so a crash never leaves a
half-written file that a later step (or a rerun) would consume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emguard.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to Parquet atomically (no index)."""
    with atomic_path(path) as tmp:
        table = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, required: Iterable[str] = (), *, allow_empty: bool = False) -> pd.DataFrame:
    """Read a Parquet file, checking that ``required`` columns exist and that it has rows."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    check_columns(df, required, str(path))
    if not allow_empty and len(df) == 0:
        raise InputError(f"{path}: dataset is empty (0 rows)")
    return df


def check_columns(df: pd.DataFrame, required: Iterable[str], where: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSON-lines file; a malformed line or a record missing a key names file and line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    required = list(required)
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise InputError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: dataset is empty (no JSON lines)")
    return rows


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_yaml(path: str | os.PathLike, what: str = "YAML file"):
    """Parse a YAML file; a missing file or a syntax error names the file (and line:column)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise InputError(f"{where}: malformed YAML in {what} ({getattr(exc, 'problem', None) or exc})") from exc
