"""The API judge through the provider's Batch API (``judge.mode: batch``): half the price, answers within a day.

One submission = one JSONL file of ``logprobs`` requests (``custom_id`` = the item's cache key) uploaded with
``files.create(purpose="batch")`` and a ``batches.create`` on ``/v1/chat/completions`` (24 h window). It is
made durable in the judge cache (:meth:`~emguard.judge.cache.JudgeCache.add_submission`) in two steps:

1. before the upload, the submission (a random id, the judge's settings and the item keys) is recorded as
   ``submitting``; the batch carries the submission id in its ``metadata``;
2. the batch id is recorded (``submitted``) as soon as ``batches.create`` returns, before any waiting.

A rerun (a new Snakemake job after a crash, a timeout or a deliberate stop) first takes up every open
submission of the same judge that holds one of its items: a ``submitted`` one is polled and collected; a
``submitting`` one is looked up among the provider's batches by its metadata (found: adopted; not found:
it never reached the provider and is dropped). Only items in no open submission are submitted, so an item is
never in two live batches and an answered one never again (every collected answer, including answers to
items another job asked for, goes to the cache). A job waits at most ``batch_wait_s`` for its batches, then
stops with :class:`~emguard.judge.core.JudgeIncomplete`; the batch keeps running and the next run collects it.
Items the provider failed (error lines, an expired batch's missing answers) are reported as remaining and
resubmitted by the next run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Sequence

from emguard.judge.core import JudgeIncomplete, JudgeOutput

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: metadata key naming the emguard submission a batch belongs to
META_KEY = "emguard_submission"


def run_batch(judge, items: list[tuple[str, str]], cache, labels: Sequence[str] | None) -> dict[str, JudgeOutput]:
    if cache is None:
        raise ValueError("judge.mode batch needs the judge cache (judge.cache): submitted batch ids are kept there "
                         "so that a rerun collects instead of paying again")
    return asyncio.run(_run(judge, items, cache, labels))


async def _find_by_metadata(judge, client, submission: str):
    async def search():
        async for batch in client.batches.list(limit=100):
            if (getattr(batch, "metadata", None) or {}).get(META_KEY) == submission:
                return batch
        return None
    return await judge.retry.run(search, what=f"judge {judge.name}: listing batches", usage=None,
                                 redact=judge.redact)


async def _submit(judge, client, items: list[tuple[str, str]], cache, labels) -> dict:
    submission = uuid.uuid4().hex
    keys = [k for k, _ in items]
    entries = {k: {"prompt": p, "labels": list(labels) if labels else None} for k, p in items}
    cache.add_submission(submission, judge.cache_identity, entries)
    lines = [json.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT, "body": judge.request_body(p)})
             for k, p in items]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    upload = await judge.retry.run(
        lambda: client.files.create(file=(f"emguard-judge-{submission}.jsonl", data), purpose="batch"),
        what=f"judge {judge.name}: uploading a batch file", usage=None, redact=judge.redact)

    async def create():
        # a create that timed out may still have created the batch: look for it before creating another
        if created["tried"]:
            found = await _find_by_metadata(judge, client, submission)
            if found is not None:
                return found
        created["tried"] = True
        return await client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h",
                                           metadata={META_KEY: submission})

    created = {"tried": False}
    batch = await judge.retry.run(create, what=f"judge {judge.name}: creating a batch", usage=None,
                                  redact=judge.redact)
    cache.update_submission(submission, state="submitted", batch_id=batch.id, input_file_id=upload.id)
    msg = (f"judge {judge.name}: submitted batch {batch.id} ({len(keys)} requests); its id is in the cache "
           f"{cache.path}, so a rerun collects it instead of submitting again")
    print(msg, flush=True)
    log.info(msg)
    return {"submission": submission, "batch_id": batch.id, "keys": keys, "entries": entries, "state": "submitted"}


async def _collect(judge, client, sub: dict, prompts: dict[str, str], cache, deadline: float
                   ) -> dict[str, JudgeOutput]:
    """Wait for one batch (until ``deadline``), then read every answer in it into the cache (also answers to
    items another run asked for: they are paid for); returns the answers to ``prompts``."""
    what = f"judge {judge.name}: batch {sub['batch_id']}"
    while True:
        batch = await judge.retry.run(lambda: client.batches.retrieve(sub["batch_id"]), what=what, usage=None,
                                      redact=judge.redact)
        if batch.status in TERMINAL:
            break
        if time.monotonic() >= deadline:
            raise _StillRunning(sub, batch.status)
        await asyncio.sleep(min(judge.batch_poll_s, max(0.0, deadline - time.monotonic())))
    found: dict[str, JudgeOutput] = {}
    errors = 0
    first_error = None
    if batch.output_file_id:
        content = await judge.retry.run(lambda: client.files.content(batch.output_file_id), what=what, usage=None,
                                        redact=judge.redact)
        for n, line in enumerate(content.text.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["custom_id"]
                response = row.get("response") or {}
                if response.get("status_code") != 200 or row.get("error"):
                    raise ValueError(f"status {response.get('status_code')}: {row.get('error')}")
                body = response["body"]
                entry = sub["entries"][key]  # the prompt decides which special answers it offered
                out = judge.output_from_body(body, entry["prompt"], entry["labels"])
            except Exception as exc:  # noqa: BLE001 - one bad line must not lose the others
                errors += 1
                first_error = first_error or f"output line {n + 1}: {type(exc).__name__}: {exc}"
                continue
            judge._count(body, batch=True)
            cache.put(key, out)
            if key in prompts:
                found[key] = out
    if batch.error_file_id:
        content = await judge.retry.run(lambda: client.files.content(batch.error_file_id), what=what, usage=None,
                                        redact=judge.redact)
        lines = [ln for ln in content.text.splitlines() if ln.strip()]
        errors += len(lines)
        first_error = first_error or (lines[0][:300] if lines else None)
    state = "collected" if batch.status == "completed" else "failed"
    cache.update_submission(sub["submission"], state=state)
    log.info("judge %s: batch %s %s: %d answers read, %d errors%s", judge.name, sub["batch_id"], batch.status,
             len(found), errors, f" (first: {judge.redact(str(first_error))})" if first_error else "")
    return found


class _StillRunning(Exception):
    def __init__(self, sub: dict, status: str):
        super().__init__(status)
        self.sub, self.status = sub, status


async def _run(judge, items: list[tuple[str, str]], cache, labels) -> dict[str, JudgeOutput]:
    prompts = dict(items)
    ident = judge.cache_identity
    results: dict[str, JudgeOutput] = {}
    deadline = time.monotonic() + judge.batch_wait_s
    async with judge.client() as client:
        waiting, covered = [], set()
        for sub in cache.open_submissions(ident):
            if not set(sub["keys"]) & set(prompts):
                continue  # another job's batch, nothing of ours in it
            if sub["state"] == "submitting":
                found = await _find_by_metadata(judge, client, sub["submission"])
                if found is None:  # recorded, never created: its items are submitted again below
                    cache.update_submission(sub["submission"], state="failed")
                    continue
                cache.update_submission(sub["submission"], state="submitted", batch_id=found.id)
                sub["batch_id"] = found.id
            log.info("judge %s: collecting batch %s submitted by an earlier run (%d requests)", judge.name,
                     sub["batch_id"], len(sub["keys"]))
            waiting.append(sub)
            covered |= set(sub["keys"])
        rest = [(k, p) for k, p in items if k not in covered]
        if rest:
            waiting.append(await _submit(judge, client, rest, cache, labels))
        running = []
        for sub in waiting:
            try:
                results.update(await _collect(judge, client, sub, prompts, cache, deadline))
            except _StillRunning as exc:
                running.append(exc)
    remaining = len(prompts) - len(results)
    if running:
        ids = ", ".join(f"{r.sub['batch_id']} ({r.status})" for r in running)
        raise JudgeIncomplete(f"judge {judge.name}: batch(es) {ids} not finished after judge.batch_wait_s = "
                              f"{judge.batch_wait_s:g}s; {remaining} of {len(prompts)} prompts are waiting for them. "
                              f"The ids are in the cache {cache.path}: rerun later to collect them (nothing is "
                              f"submitted twice)", remaining=remaining, answered=len(results))
    if remaining:
        raise JudgeIncomplete(f"judge {judge.name}: the provider answered {len(results)} of {len(prompts)} batch "
                              f"requests; {remaining} remain unjudged (a rerun submits only those)",
                              remaining=remaining, answered=len(results))
    return results
