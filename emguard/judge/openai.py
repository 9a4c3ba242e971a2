"""The API judge: OpenAI or any OpenAI-compatible server, through the official ``openai`` client.

Modes (``judge.mode``):

* ``logprobs`` (the paper's): one chat completion per prompt with ``max_tokens=1``, ``temperature=0``,
  ``logprobs`` and ``top_logprobs=20``. A top token counts as integer ``n`` when its text, stripped of
  whitespace, is ``str(n)`` for n in 0..100 (the integers are single tokens in the vocabularies such services
  use), so ``P(n) = exp(logprob)`` and ``score = sum_n n P(n) / sum_n P(n)``; probability outside the
  returned top tokens is unknown and counts as non-numeric, so the score is missing when the integers' mass
  is below ``min_prob_mass``. ``REFUSAL`` / ``CODE`` (when the prompt offers them) are matched when a token
  is a non-empty prefix of the word. A label judge's labels are matched the same way (a token that is a
  prefix of several labels counts for none).
* ``sampling`` (servers without logprobs): ``samples`` completions per prompt (``n``, topped up by further
  requests when a server returns fewer), ``temperature`` and ``max_tokens`` from the config. From each
  completion the first integer (its whole part: "8.5" is 8) or offered special word is read; the empirical
  distribution over the samples is the :class:`~emguard.judge.core.JudgeOutput` (a completion with neither
  counts as non-numeric).
* ``batch``: the ``logprobs`` request through the provider's Batch API (:mod:`emguard.judge.batch`).

Calls are asynchronous (``AsyncOpenAI``) with at most ``concurrency`` in flight. The client's own retries
are off; ours are the one policy: HTTP 429 waits what ``Retry-After`` says (plus up to 10% jitter), HTTP
5xx / 408 / 409, timeouts, connection errors and malformed bodies wait ``min(max_backoff_s, backoff_s *
2**attempt)`` with equal jitter (half fixed, half random), at most ``max_retries`` times per item. When an
item runs out of retries no new item is started, the calls in flight finish (their answers are kept), and
:class:`~emguard.judge.core.JudgeIncomplete` says how many remain. Every answer is written to the cache the
moment it arrives, so a killed job loses at most the calls in flight.

The API key is read from the environment variable ``api_key_env`` when the client is built and handed only
to the client; it is never stored on the judge, logged, written to a table or a cache key, and any error
text that echoes it is redacted. A loopback ``base_url`` (a local server) may run without one.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import time
from typing import Any, Sequence
from urllib.parse import urlparse

import openai

from emguard.judge.core import (N_VALUES, JudgeIncomplete, JudgeOutput, JudgeUsage, ScoreResult, _identity,
                                offered_answers, parse_label, price_tokens)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODES = ("logprobs", "sampling", "batch")
#: a ``Retry-After`` longer than this is taken as this (a misconfigured server must not park a job for days)
MAX_RETRY_AFTER_S = 600.0
#: characters per token for the cost estimate printed before paid calls (English text, tiktoken-style vocabularies)
CHARS_PER_TOKEN = 4.0
#: tokens a chat request adds around the user message (role markers), for the estimate
CHAT_OVERHEAD_TOKENS = 8
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


class CallError(RuntimeError):
    """A judge call that failed for good (not retryable, or out of retries)."""


class _Retryable(RuntimeError):
    """A response that arrived but cannot be read (malformed body): retried like a server error."""


class MissingLogprobs(CallError):
    """The server answered without the logprobs asked for: retrying will not help."""


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after`` as seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, _Retryable, json.JSONDecodeError,
                        openai.APIResponseValidationError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


class RetryPolicy:
    """Exponential backoff with jitter, honouring ``Retry-After`` (see the module docstring)."""

    def __init__(self, max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 60.0, *, rng=None):
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.rng = rng or random.Random()

    def delay(self, attempt: int, exc: BaseException) -> float:
        asked = retry_after_s(exc)
        if asked is not None:
            asked = min(asked, MAX_RETRY_AFTER_S)
            return asked + self.rng.uniform(0.0, 0.1 * asked)
        step = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        return step / 2 + self.rng.uniform(0.0, step / 2)

    async def run(self, fn, *, what: str, usage: JudgeUsage | None = None, redact=lambda s: s):
        """``await fn()`` until it succeeds, a non-retryable error, or ``max_retries`` retries."""
        for attempt in range(self.max_retries + 1):
            try:
                return await fn()
            except CallError:
                if usage is not None:
                    usage.failed_calls += 1
                raise
            except Exception as exc:  # noqa: BLE001 - classified just below
                if usage is not None:
                    usage.failed_calls += 1
                if not is_retryable(exc):
                    raise CallError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
                if attempt == self.max_retries:
                    raise CallError(redact(f"{what}: still failing after {self.max_retries + 1} attempts "
                                           f"(last: {type(exc).__name__}: {exc})")) from None
                wait = self.delay(attempt, exc)
                log.info("%s", redact(f"{what}: {type(exc).__name__} ({str(exc)[:120]}); retry {attempt + 1}/"
                                      f"{self.max_retries} in {wait:.2f}s"))
                await asyncio.sleep(wait)


def _top_tokens(body: dict) -> list[tuple[str, float]]:
    """(token text, probability) of the first answer token's ``top_logprobs``; raises on a malformed body."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices, list):
        raise _Retryable(f"response without choices: {str(body)[:200]}")
    logprobs = choices[0].get("logprobs") if isinstance(choices[0], dict) else None
    content = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    if not content:
        raise MissingLogprobs("the server returned no logprobs for a request that asked for them; use "
                              "judge.mode: sampling for servers without logprobs")
    top = content[0].get("top_logprobs") if isinstance(content[0], dict) else None
    if not top:
        raise MissingLogprobs("the server returned no top_logprobs for a request that asked for them; use "
                              "judge.mode: sampling for servers without logprobs")
    try:
        return [(str(t["token"]), math.exp(float(t["logprob"]))) for t in top]
    except (KeyError, TypeError, ValueError) as exc:
        raise _Retryable(f"malformed top_logprobs: {str(top)[:200]}") from exc


def output_from_top_tokens(top: list[tuple[str, float]], prompt: str, labels: Sequence[str] | None = None
                           ) -> JudgeOutput:
    """A :class:`JudgeOutput` from the first token's top alternatives (matching rules: module docstring)."""
    if labels:
        probs = {lab: 0.0 for lab in labels}
        for token, p in top:
            text = token.strip()
            matches = [lab for lab in labels if text and lab.startswith(text)]
            if len(matches) == 1:
                probs[matches[0]] += p
        return JudgeOutput.from_labels(probs)
    values = [0.0] * N_VALUES
    offered = offered_answers(prompt)
    special = {s: 0.0 for s in offered}
    for token, p in top:
        text = token.strip()
        if text.isdigit() and text.isascii() and str(int(text)) == text and int(text) <= 100:
            values[int(text)] += p
        for s in offered:
            if text and s.startswith(text):
                special[s] += p
    return JudgeOutput.from_probs(values, special)


_ANSWER_TOKEN = re.compile(r"\d+(?:\.\d+)?|[A-Z]{2,}")


def output_from_samples(texts: Sequence[str], prompt: str, labels: Sequence[str] | None = None) -> JudgeOutput:
    """The empirical distribution of sampled answers (each counts ``1 / len(texts)``)."""
    w = 1.0 / len(texts)
    if labels:
        probs = {lab: 0.0 for lab in labels}
        for t in texts:
            lab = parse_label(t, labels)
            if lab is not None:
                probs[lab] += w
        return JudgeOutput.from_labels(probs)
    values = [0.0] * N_VALUES
    offered = offered_answers(prompt)
    special = {s: 0.0 for s in offered}
    for t in texts:
        for m in _ANSWER_TOKEN.finditer(t):
            word = m.group(0)
            if word[0].isdigit():
                n = int(float(word))
                if n <= 100:
                    values[n] += w
                break
            if word in special:
                special[word] += w
                break
    return JudgeOutput.from_probs(values, special)


def is_loopback(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "") in _LOOPBACK


class OpenAIJudge:
    """A judge behind the OpenAI chat-completions API (see the module docstring)."""

    def __init__(self, base_url: str, model: str, *, mode: str = "logprobs",
                 name: str | None = None, api_key_env: str | None = "OPENAI_API_KEY", top_logprobs: int = 20,
                 samples: int = 10, temperature: float = 1.0, max_tokens: int = 8, batch_size: int = 64,
                 concurrency: int = 8, min_prob_mass: float = 0.25, max_retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, timeout_s: float = 60.0, price: dict | None = None,
                 batch_poll_s: float = 30.0, batch_wait_s: float = 24 * 3600.0):
        if mode not in MODES:
            raise ValueError(f"judge.mode: {mode!r} is not one of {MODES}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.mode = mode
        self.name = name or model
        self.api_key_env = api_key_env
        self.top_logprobs = int(top_logprobs)
        self.samples = int(samples)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self.concurrency = max(1, int(concurrency))
        self.min_prob_mass = float(min_prob_mass)
        self.timeout_s = float(timeout_s)
        self.retry = RetryPolicy(max_retries, backoff_s, max_backoff_s)
        self.price = price
        self.batch_poll_s = float(batch_poll_s)
        self.batch_wait_s = float(batch_wait_s)
        self.usage = JudgeUsage(judge=self.name)

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries

    @property
    def cache_identity(self) -> str:
        """Settings that change the returned distribution: endpoint, model and the request. ``batch`` sends the
        ``logprobs`` request, so the two share cached answers. Never the key, the concurrency or the threshold."""
        if self.mode == "sampling":
            return _identity(backend="openai", url=self.url, model=self.model, request="sampling",
                             samples=self.samples, temperature=self.temperature, max_tokens=self.max_tokens)
        return _identity(backend="openai", url=self.url, model=self.model, top_logprobs=self.top_logprobs)

    # -- credentials -------------------------------------------------------------------------------
    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            return key
        if is_loopback(self.base_url):
            return "no-key-local-server"
        raise CallError(f"judge {self.name}: the environment variable {self.api_key_env or '(judge.api_key_env)'} "
                        f"holding the API key for {self.base_url} is not set")

    def check_credentials(self) -> None:
        """Fail before any work when the key the endpoint needs is missing."""
        self._api_key()

    def redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def client(self) -> "openai.AsyncOpenAI":
        """A fresh async client with the client's own retries off (ours are the policy)."""
        # the HTTP library logs every request at INFO: thousands of lines in a judge job's log; failures and
        # retries are logged here. A level someone set on purpose is left alone.
        for name in ("httpx", "httpx2"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        return openai.AsyncOpenAI(api_key=self._api_key(), base_url=self.base_url, max_retries=0,
                                  timeout=self.timeout_s)

    # -- requests ----------------------------------------------------------------------------------
    def request_body(self, prompt: str, n: int = 1) -> dict:
        messages = [{"role": "user", "content": prompt}]
        if self.mode == "sampling":
            return {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                    "temperature": self.temperature, "n": n}
        return {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True,
                "top_logprobs": self.top_logprobs, "seed": 0}

    def _count(self, body: dict, *, batch: bool = False) -> None:
        usage = body.get("usage") or {}
        self.usage.add_call(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, batch=batch)

    def output_from_body(self, body: dict, prompt: str, labels: Sequence[str] | None) -> JudgeOutput:
        """Read a logprobs response (a chat completion as a dict)."""
        return output_from_top_tokens(_top_tokens(body), prompt, labels)

    async def _create(self, client, body: dict) -> dict:
        resp = await client.chat.completions.create(**body)
        data = resp.model_dump() if hasattr(resp, "model_dump") else resp
        if not isinstance(data, dict):
            raise _Retryable(f"response is not a JSON object: {str(data)[:200]}")
        return data

    async def _judge_one(self, client, prompt: str, labels: Sequence[str] | None) -> JudgeOutput:
        what = f"judge {self.name} ({self.url})"
        if self.mode != "sampling":
            async def attempt():
                data = await self._create(client, self.request_body(prompt))
                if not data.get("choices"):
                    raise _Retryable(f"response without choices: {str(data)[:200]}")
                out = self.output_from_body(data, prompt, labels)
                self._count(data)
                return out
            return await self.retry.run(attempt, what=what, usage=self.usage, redact=self.redact)
        texts: list[str] = []
        while len(texts) < self.samples:
            async def attempt():
                data = await self._create(client, self.request_body(prompt, n=self.samples - len(texts)))
                choices = data.get("choices")
                if not choices:
                    raise _Retryable(f"response without choices: {str(data)[:200]}")
                self._count(data)
                return [str(((c or {}).get("message") or {}).get("content") or "") for c in choices]
            texts += (await self.retry.run(attempt, what=what, usage=self.usage, redact=self.redact))
        return output_from_samples(texts[:self.samples], prompt, labels)

    async def _realtime(self, items: list[tuple[str, str]], cache, labels) -> dict[str, JudgeOutput]:
        results: dict[str, JudgeOutput] = {}
        failures: list[BaseException] = []
        stop = asyncio.Event()
        gate = asyncio.Semaphore(self.concurrency)
        async with self.client() as client:
            async def one(key: str, prompt: str) -> None:
                async with gate:
                    if stop.is_set():
                        return
                    try:
                        out = await self._judge_one(client, prompt, labels)
                    except CallError as exc:
                        failures.append(exc)
                        stop.set()
                        return
                    if cache is not None:
                        cache.put(key, out)  # on disk before this slot starts another call
                    results[key] = out

            await asyncio.gather(*(one(k, p) for k, p in items))
        if failures:
            remaining = len(items) - len(results)
            where = f"; the {len(results)} answered are in the cache {cache.path}" if cache is not None else ""
            raise JudgeIncomplete(f"{failures[0]}\n{remaining} of {len(items)} prompts were not judged{where}",
                                  remaining=remaining, answered=len(results))
        return results

    def judge_pending(self, items: list[tuple[str, str]], cache, *, labels: Sequence[str] | None = None
                      ) -> dict[str, JudgeOutput]:
        """Judge (cache key, prompt) pairs the cache does not answer; each answer is committed as it arrives."""
        if not items:
            return {}
        self.check_credentials()
        if self.mode == "batch":
            from emguard.judge.batch import run_batch

            return run_batch(self, items, cache, labels)
        return asyncio.run(self._realtime(items, cache, labels))

    # -- the Judge interface -------------------------------------------------------------------------
    def distributions(self, prompts: list[str]) -> list[JudgeOutput]:
        found = self.judge_pending([(str(i), p) for i, p in enumerate(prompts)], None)
        return [found[str(i)] for i in range(len(prompts))]

    def label_distributions(self, prompts: list[str], labels: Sequence[str]) -> list[JudgeOutput]:
        found = self.judge_pending([(str(i), p) for i, p in enumerate(prompts)], None, labels=labels)
        return [found[str(i)] for i in range(len(prompts))]

    def score_prompts(self, prompts: list[str]) -> list[ScoreResult]:
        return [o.verdict(self.min_prob_mass) for o in self.distributions(prompts)]

    # -- cost ------------------------------------------------------------------------------------------
    def estimate(self, prompts: Sequence[str]) -> str:
        """The calls these prompts will make and their estimated cost (input tokens ~ characters / 4)."""
        n = len(prompts)
        tokens_in = sum(len(p) / CHARS_PER_TOKEN + CHAT_OVERHEAD_TOKENS for p in prompts)
        tokens_out = n * (self.samples * self.max_tokens if self.mode == "sampling" else 1)
        what = (f"{n} API calls to {self.model} ({self.mode}; ~{tokens_in:,.0f} input and at most "
                f"{tokens_out:,.0f} output tokens)")
        if not n:
            return what + ": nothing to pay"
        if not self.price:
            return what + f"; cost unknown (no judge.prices entry for {self.model})"
        dollars = price_tokens(self.price, tokens_in, tokens_out, batch=self.mode == "batch")
        return what + f"; estimated cost ${dollars:,.4f}"

    def usage_record(self) -> dict[str, Any]:
        """The job's usage with its cost, for ``judge_usage.json``."""
        return self.usage.record(self.price, backend="openai", model=self.model, mode=self.mode,
                                 base_url=self.base_url)
