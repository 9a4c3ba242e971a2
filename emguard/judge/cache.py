"""The durable judge cache: every judge answer on disk, so no judge call is ever made twice.

The :class:`JudgeCache` keeps what the judge *returned*, not the verdict: per (settings, metric,
prompt) the integers' total probability ``prob_mass = sum_n P(n)``, their renormalised mean
``expected = sum_n n P(n) / prob_mass`` and the first-token probabilities of the offered special
answers (:class:`JudgeOutput`). The ``min_prob_mass`` threshold is applied when a row is *read*
(:meth:`JudgeOutput.verdict`), so changing it re-derives every verdict without a single model call.
The key is ``sha256(format version, judge settings, metric, prompt)`` where the judge settings
(``cache_identity``) are everything that changes the returned probabilities: for the local judge
(:attr:`emguard.judge.hf.HFJudge.cache_identity`) the model (its name and a fingerprint of its weights), its
dtype (and quantisation), the chat template and the answer prefix. The file is SQLite in WAL mode (several
processes may share it); local results are committed batch by batch, API answers one by one as they arrive,
so a crash or a rerun never repeats a judge call that already finished. Rows of the pre-v2 table
(``judgments``, thresholded verdicts keyed without the settings) are never read: those prompts are judged
again.

For the API backend (:attr:`emguard.judge.openai.OpenAIJudge.cache_identity`) the settings are the endpoint,
the model, the request kind (first-token logprobs with ``top_logprobs``, or sampling with its sample count,
temperature and token limit); never the API key. A label judgment's key also names its labels.

Batch submissions (:mod:`emguard.judge.batch`) are recorded in the same file (table ``judge_batches``):
a submission is written *before* its file is uploaded and its batch id as soon as the provider returns
it, so a rerun collects a batch that is still running instead of submitting (and paying for) it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from emguard.errors import InputError
from emguard.judge.core import CACHE_FORMAT, JudgeOutput, _identity

log = logging.getLogger(__name__)


def cache_key(judge_identity: str, metric: str, prompt: str) -> str:
    """``sha256`` of (:data:`CACHE_FORMAT`, the judge's settings, metric, prompt), length-prefixed."""
    h = hashlib.sha256()
    for part in (f"emguard-judge-v{CACHE_FORMAT}", judge_identity, metric, prompt):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def judge_identity(judge) -> str:
    """The settings a judge's outputs depend on (its ``cache_identity``; stand-ins without one: ``name``)."""
    ident = getattr(judge, "cache_identity", None)
    return str(ident) if ident is not None else _identity(name=str(judge.name))


#: the pre-v2 table (thresholded verdicts keyed by judge name, metric, prompt only); never read
_LEGACY_TABLE = "judgments"
_TABLE = "judge_outputs"
#: batch submissions of the API judge (emguard.judge.batch); not a judge output, so not part of CACHE_FORMAT
_BATCHES = "judge_batches"


class JudgeCache:
    """SQLite cache of judge outputs (WAL mode; several processes may read and write it at once).

    One row per key (:func:`cache_key`): ``prob_mass``, ``expected`` and ``special`` (JSON) of a
    :class:`JudgeOutput`. The file records its :data:`CACHE_FORMAT` in ``PRAGMA user_version``; a file
    written by a newer format is refused with an error naming it. The pre-v2 ``judgments`` table, whose
    rows hold verdicts already thresholded with an unknown ``min_prob_mass``, is left in place but never
    read (its prompts are judged again), so an old file can never yield a stale verdict.
    """

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a judge cache (SQLite) file: {exc}") from exc
        if version > CACHE_FORMAT:
            self._conn.close()
            raise InputError(f"{self.path}: judge cache format {version} is newer than this emguard's "
                             f"({CACHE_FORMAT}); use a newer emguard or another judge.cache file")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} (key TEXT PRIMARY KEY, prob_mass REAL NOT NULL, expected REAL, "
            "special TEXT NOT NULL, created REAL NOT NULL)")
        if version < CACHE_FORMAT:
            self._conn.execute(f"PRAGMA user_version={CACHE_FORMAT}")
        legacy = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?",
                                    (_LEGACY_TABLE,)).fetchone()
        if legacy:
            n = int(self._conn.execute(f"SELECT COUNT(*) FROM {_LEGACY_TABLE}").fetchone()[0])
            if n:
                log.warning("%s: ignoring %d judge verdicts in the pre-v%d format (thresholded, keyed without "
                            "the judge settings); those prompts will be judged again", self.path, n, CACHE_FORMAT)

        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_BATCHES} (submission TEXT PRIMARY KEY, identity TEXT NOT NULL, "
            "batch_id TEXT, input_file_id TEXT, keys TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, "
            "updated REAL NOT NULL)")

    key = staticmethod(cache_key)

    # -- batch submissions ------------------------------------------------------------------------
    def add_submission(self, submission: str, identity: str, entries: dict[str, dict]) -> None:
        """Record a batch submission before anything is uploaded (state ``submitting``): per cache key what
        reading its answer needs (``prompt`` and ``labels``), so whichever run collects the batch can cache
        every answer in it."""
        now = time.time()
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(f"INSERT INTO {_BATCHES} (submission, identity, batch_id, input_file_id, keys, state, "
                               "created, updated) VALUES (?, ?, NULL, NULL, ?, 'submitting', ?, ?)",
                               (submission, identity, json.dumps(entries), now, now))

    def update_submission(self, submission: str, *, state: str, batch_id: str | None = None,
                          input_file_id: str | None = None) -> None:
        """Set a submission's state (``submitted``, ``collected``, ``failed``) and, once known, its batch id."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(f"UPDATE {_BATCHES} SET state = ?, batch_id = COALESCE(?, batch_id), "
                               "input_file_id = COALESCE(?, input_file_id), updated = ? WHERE submission = ?",
                               (state, batch_id, input_file_id, time.time(), submission))

    def open_submissions(self, identity: str) -> list[dict]:
        """Submissions of this judge not yet collected (``submitting`` or ``submitted``), oldest first."""
        rows = self._conn.execute(
            f"SELECT submission, batch_id, input_file_id, keys, state FROM {_BATCHES} WHERE identity = ? AND "
            "state IN ('submitting', 'submitted') ORDER BY created", (identity,)).fetchall()
        out = []
        for s, b, f, k, st in rows:
            entries = json.loads(k)
            out.append({"submission": s, "batch_id": b, "input_file_id": f, "entries": entries,
                        "keys": list(entries), "state": st})
        return out

    def submissions(self) -> list[dict]:
        """Every recorded submission (any judge, any state), oldest first."""
        rows = self._conn.execute(f"SELECT submission, identity, batch_id, keys, state FROM {_BATCHES} "
                                  "ORDER BY created").fetchall()
        return [{"submission": s, "identity": i, "batch_id": b, "keys": list(json.loads(k)), "state": st}
                for s, i, b, k, st in rows]

    def get_many(self, keys: Iterable[str]) -> dict[str, JudgeOutput]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, JudgeOutput] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, prob_mass, expected, special FROM {_TABLE} WHERE key IN ({marks})", chunk).fetchall()
            for k, mass, expected, special in rows:
                found[k] = JudgeOutput(float(mass), None if expected is None else float(expected), json.loads(special))
        return found

    def put(self, key: str, output: JudgeOutput) -> None:
        """Commit one output at once (the API judge calls this as each answer arrives)."""
        self.put_many([(key, output)])

    def put_many(self, items: Iterable[tuple[str, JudgeOutput]] | dict[str, JudgeOutput]) -> None:
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        if not pairs:
            return
        for k, out in pairs:
            if not isinstance(out, JudgeOutput):
                raise TypeError(f"JudgeCache stores JudgeOutput (unthresholded), got {type(out).__name__} for {k}")
        now = time.time()
        rows = [(k, o.prob_mass, o.expected, json.dumps(o.special, sort_keys=True), now) for k, o in pairs]
        with self._conn:  # one transaction, committed on exit
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                f"INSERT OR REPLACE INTO {_TABLE} (key, prob_mass, expected, special, created) VALUES (?, ?, ?, ?, ?)",
                rows)

    def __len__(self) -> int:
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

