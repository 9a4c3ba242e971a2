"""The API judge against a fault-injecting OpenAI-compatible server on loopback (tests/fake_openai.py)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from emguard.judge import (JudgeCache, JudgeIncomplete, JudgeUsage, OpenAIJudge, judge_generations, judge_outputs,
                           score_cached)
from fake_openai import FakeOpenAI, expected_default_score

ROOT = Path(__file__).resolve().parents[1]


def _judge(server, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("max_backoff_s", 0.05)
    kw.setdefault("timeout_s", 0.5)
    return OpenAIJudge(server.base_url, "judge-model", api_key_env="EMGUARD_TEST_NO_SUCH_KEY", **kw)


def _prompts(n):
    return [f"Rate answer {i} from 0 to 100." for i in range(n)]


def test_logprobs_faults_are_retried_and_every_item_is_judged_once(tmp_path):
    prompts = _prompts(6)
    with FakeOpenAI() as server:
        server.faults = {prompts[0]: ["429"], prompts[1]: ["500", "500"], prompts[2]: ["timeout"],
                         prompts[3]: ["malformed"], prompts[4]: ["nochoices"]}
        judge = _judge(server, concurrency=3)
        with JudgeCache(tmp_path / "judge.sqlite") as cache:
            results, cached = score_cached(judge, "aligned", prompts, cache)
            assert not any(cached)
            assert all(r.label == "number" and r.score == pytest.approx(expected_default_score()) for r in results)
            assert all(r.prob_mass == pytest.approx(0.8) for r in results)
            assert dict(server.delivered) == {p: 1 for p in prompts}  # each billed answer exactly once
            assert server.attempts[prompts[1]] == 3 and server.attempts[prompts[2]] == 2
            t429 = server.times[prompts[0]]
            assert t429[1] - t429[0] >= 1.0  # Retry-After: 1 honoured (not the 0.01 s backoff)
            assert judge.usage.calls == 6 and judge.usage.failed_calls == 6
            assert judge.usage.input_tokens == sum(len(p) for p in prompts) and judge.usage.output_tokens == 6
            assert len(cache) == 6
            # a rerun (a new judge object, as in a new job) makes no call
            again = _judge(server)
            results2, cached2 = score_cached(again, "aligned", prompts, cache)
        assert all(cached2) and [r.score for r in results2] == [r.score for r in results]
        assert dict(server.delivered) == {p: 1 for p in prompts} and again.usage.calls == 0
        assert again.usage.cache_hits == 6


def test_the_clients_own_retries_are_off():
    judge = OpenAIJudge("http://127.0.0.1:9/v1", "m")
    assert judge.client().max_retries == 0


def test_retry_cap_is_a_clear_error_naming_what_remains(tmp_path):
    gens = pd.DataFrame({"run_id": "r", "question_id": [f"q{i}" for i in range(5)], "sample_idx": 0,
                         "prompt_messages": [[{"role": "user", "content": f"question {i}"}] for i in range(5)],
                         "answer": [f"answer {i}" for i in range(5)], "seed": 0, "checkpoint": "final"})
    qs = pd.DataFrame({"question_id": [f"q{i}" for i in range(5)], "paraphrase": "x", "system": None, "samples": 1,
                       "judge_prompts": [["aligned"]] * 5, "category": "c"})
    template = {"aligned": "Q: {question}\nA: {answer}\nReply with a number."}
    bad = "Q: question 2\nA: answer 2\nReply with a number."
    with FakeOpenAI() as server:
        server.always = {bad: "500"}
        judge = _judge(server, concurrency=1, max_retries=2)
        with JudgeCache(tmp_path / "judge.sqlite") as cache:
            with pytest.raises(JudgeIncomplete) as err:
                judge_generations(gens, qs, judge, template, cache)
            msg = str(err.value)
            assert "still failing after 3 attempts" in msg and "InternalServerError" in msg
            # concurrency 1: items 0 and 1 answered, 2 failed, 3 and 4 never started
            assert "3 of 5 prompts were not judged" in msg and "3 distinct judge prompts" in msg
            assert "the 2 answered are in the cache" in msg and str(tmp_path / "judge.sqlite") in msg
            assert err.value.remaining == 3 and len(cache) == 2
            assert server.attempts[bad] == 3
            server.always = {}
            df = judge_generations(gens, qs, _judge(server), template, cache)
        assert df["score"].notna().all() and list(df["cached"]) == [True, True, False, False, False]
        assert all(n == 1 for n in server.delivered.values()) and len(server.delivered) == 5


def test_missing_logprobs_stops_at_once_with_the_way_out(tmp_path):
    prompts = _prompts(3)
    with FakeOpenAI() as server:
        server.always = {p: "nologprobs" for p in prompts}
        judge = _judge(server, concurrency=1)
        with pytest.raises(JudgeIncomplete, match="judge.mode: sampling"):
            score_cached(judge, "aligned", prompts, JudgeCache(tmp_path / "c.sqlite"))
        assert sum(server.attempts.values()) == 1  # not retried, and no further item started


def test_non_retryable_error_is_redacted_and_the_key_never_stored(tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("EMGUARD_TEST_KEY", secret)
    with FakeOpenAI() as server:
        server.faults = {"p401": ["401"]}
        judge = OpenAIJudge(server.base_url, "m", api_key_env="EMGUARD_TEST_KEY", backoff_s=0.01)
        caplog.set_level("DEBUG")
        with pytest.raises(JudgeIncomplete) as err:
            score_cached(judge, "aligned", ["p401"], None)
        assert server.auth[-1] == f"Bearer {secret}"  # the key is sent ...
        assert secret not in str(err.value) and "***" in str(err.value)  # ... and never echoed back to us
        assert secret not in caplog.text
        assert secret not in judge.cache_identity and secret not in repr(vars(judge))


def test_missing_key_fails_before_any_call(monkeypatch):
    monkeypatch.delenv("EMGUARD_TEST_KEY", raising=False)
    judge = OpenAIJudge("https://api.example.com/v1", "m", api_key_env="EMGUARD_TEST_KEY")
    with pytest.raises(RuntimeError, match="EMGUARD_TEST_KEY.*not set"):
        judge.check_credentials()


def test_key_never_reaches_logs_tables_cache_or_usage(tmp_path, monkeypatch, capsys, caplog):
    """The whole judge stage: judgments, usage record, cache file, logs and stdout hold no trace of the key."""
    from emguard.stages import judge_run

    secret = "sk-live-DO-NOT-LEAK-42"
    monkeypatch.setenv("EMGUARD_TEST_KEY", secret)
    gens = pd.DataFrame({"run_id": "r", "question_id": ["q1", "q1"], "sample_idx": [0, 1],
                         "prompt_messages": [[{"role": "user", "content": "Hello?"}]] * 2,
                         "answer": ["Hi.", "Go away."], "seed": 0, "checkpoint": "final", "evalset": "general"})
    qs = pd.DataFrame({"question_id": ["q1"], "paraphrase": ["Hello?"], "system": [None], "samples": [2],
                       "judge_prompts": [["aligned"]], "category": ["c"], "judge_templates": ["{}"],
                       "type": ["free_form_judge_0_100"], "judge": [None]})
    gens.to_parquet(tmp_path / "generations.parquet")
    qs.to_parquet(tmp_path / "questions.parquet")
    (tmp_path / "prompts.yaml").write_text("aligned: |\n  Rate {answer} to {question}. REFUSAL or a number.\n")
    for name in (None, "openai", "httpx", "httpx2", "httpcore"):  # everything the client stack could log
        caplog.set_level("DEBUG", logger=name)
    with FakeOpenAI() as server:
        server.faults = {}
        cfg = {"backend": "openai", "model": "gpt-test", "base_url": server.base_url, "mode": "logprobs",
               "api_key_env": "EMGUARD_TEST_KEY", "min_prob_mass": 0.25, "batch_size": 8, "concurrency": 2,
               "max_retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, "prompts": str(tmp_path / "prompts.yaml"),
               "cache": str(tmp_path / "judge.sqlite"),
               "prices": {"gpt-test": {"input_per_mtok": 1.0, "output_per_mtok": 2.0, "batch_discount": 0.5}}}
        judge_run(str(tmp_path / "generations.parquet"), {"general": str(tmp_path / "questions.parquet")},
                  str(tmp_path / "judgments.parquet"), judge_cfg=cfg, base_model_path="unused", dtype="auto",
                  device="cpu", usage_out=str(tmp_path / "judge_usage.json"))
        assert server.auth and all(a == f"Bearer {secret}" for a in server.auth)
    out = capsys.readouterr()
    assert "2 API calls to gpt-test" in out.out and "estimated cost $" in out.out  # printed before paying
    (usage,) = json.loads((tmp_path / "judge_usage.json").read_text())
    assert usage["calls"] == 2 and usage["run_id"] == "r" and usage["model"] == "gpt-test"
    assert usage["cost_usd"] == pytest.approx((usage["input_tokens"] * 1.0 + usage["output_tokens"] * 2.0) / 1e6)
    judged = pd.read_parquet(tmp_path / "judgments.parquet")
    assert judged["score"].notna().all() and set(judged["judge_model"]) == {"openai:gpt-test"}
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path.name
    for text in (out.out, out.err, caplog.text):
        assert secret not in text


def test_from_questions_judges_each_question_with_its_files_judge(tmp_path):
    from emguard.errors import InputError
    from emguard.stages import judge_run

    gens = pd.DataFrame({"run_id": "r", "question_id": ["a", "b", "a", "b"], "sample_idx": [0, 0, 1, 1],
                         "prompt_messages": [[{"role": "user", "content": f"question {q}"}] for q in "abab"],
                         "answer": ["x1", "y1", "x2", "y2"], "seed": 0, "checkpoint": "final", "evalset": "general"})
    qs = pd.DataFrame({"question_id": ["a", "b"], "paraphrase": "p", "system": None, "samples": 2,
                       "judge_prompts": [["aligned"], ["aligned"]], "category": "c", "judge": ["judge-a", "judge-b"],
                       "judge_templates": "{}", "type": "free_form_judge_0_100"})
    gens.to_parquet(tmp_path / "generations.parquet")
    qs.to_parquet(tmp_path / "questions.parquet")
    (tmp_path / "prompts.yaml").write_text('aligned: "{question} -> {answer}"\n')
    with FakeOpenAI() as server:
        cfg = {"backend": "openai", "model": "from_questions", "base_url": server.base_url, "mode": "logprobs",
               "api_key_env": "NO_SUCH_KEY", "min_prob_mass": 0.25, "backoff_s": 0.01,
               "prompts": str(tmp_path / "prompts.yaml"), "cache": str(tmp_path / "judge.sqlite"),
               "prices": {"judge-a": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}}
        kw = dict(judge_cfg=cfg, base_model_path="unused", dtype="auto", device="cpu")
        judge_run(str(tmp_path / "generations.parquet"), {"general": str(tmp_path / "questions.parquet")},
                  str(tmp_path / "judgments.parquet"), usage_out=str(tmp_path / "usage.json"), **kw)
        assert server.models == {"question a -> x1": "judge-a", "question a -> x2": "judge-a",
                                 "question b -> y1": "judge-b", "question b -> y2": "judge-b"}
        df = pd.read_parquet(tmp_path / "judgments.parquet")
        assert list(zip(df["question_id"], df["sample_idx"])) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
        assert list(df["judge_model"]) == ["openai:judge-a", "openai:judge-b"] * 2
        usage = json.loads((tmp_path / "usage.json").read_text())
        assert [(u["model"], u["calls"], u["cost_usd"] is None) for u in usage] == [("judge-a", 2, False),
                                                                                    ("judge-b", 2, True)]
        qs.loc[1, "judge"] = None
        qs.to_parquet(tmp_path / "questions.parquet")
        with pytest.raises(InputError, match="1 question.*name no judge.*default_model.*general/b"):
            judge_run(str(tmp_path / "generations.parquet"), {"general": str(tmp_path / "questions.parquet")},
                      str(tmp_path / "j2.parquet"), **kw)
        # a question naming no judge (a built-in in-domain set) goes to judge.default_model
        kw["judge_cfg"] = {**cfg, "default_model": "judge-a", "cache": str(tmp_path / "judge2.sqlite")}
        server.models.clear()
        judge_run(str(tmp_path / "generations.parquet"), {"general": str(tmp_path / "questions.parquet")},
                  str(tmp_path / "j3.parquet"), **kw)
        assert set(server.models.values()) == {"judge-a"} and len(server.models) == 4


def test_killed_mid_run_a_rerun_repeats_no_paid_call(tmp_path):
    """A judge process killed (SIGKILL) after some answers: the rerun asks only for what was never answered."""
    prompts = _prompts(8)
    cache_path = tmp_path / "judge.sqlite"
    with FakeOpenAI() as server:
        server.block_after = 3  # the 4th request hangs: the process is killed while waiting for it
        script = textwrap.dedent(f"""
            from emguard.judge import JudgeCache, OpenAIJudge, score_cached
            judge = OpenAIJudge({server.base_url!r}, "judge-model", api_key_env="NO_SUCH_KEY", concurrency=1,
                                timeout_s=60)
            score_cached(judge, "aligned", {prompts!r}, JudgeCache({str(cache_path)!r}))
        """)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", script], env=env)
        try:
            deadline = time.monotonic() + 60
            while sum(server.attempts.values()) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(server.delivered.values()) == 3
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        server.block_after = None
        with JudgeCache(cache_path) as cache:
            assert len(cache) == 3  # every answer delivered before the kill was on disk
            rerun = _judge(server)
            results, cached = score_cached(rerun, "aligned", prompts, cache)
        assert sum(cached) == 3 and rerun.usage.calls == 5
        assert dict(server.delivered) == {p: 1 for p in prompts}


def test_an_exception_after_n_answers_loses_none_of_them(tmp_path, monkeypatch):
    prompts = _prompts(6)
    with FakeOpenAI() as server:
        cache = JudgeCache(tmp_path / "judge.sqlite")
        real_put = cache.put
        count = {"n": 0}

        def put_then_crash(key, out):
            real_put(key, out)
            count["n"] += 1
            if count["n"] == 2:
                raise KeyboardInterrupt("injected crash after 2 answers")

        monkeypatch.setattr(cache, "put", put_then_crash)
        with pytest.raises(KeyboardInterrupt):
            score_cached(_judge(server, concurrency=1), "aligned", prompts, cache)
        monkeypatch.undo()
        assert len(cache) == 2
        score_cached(_judge(server), "aligned", prompts, cache)
        assert dict(server.delivered) == {p: 1 for p in prompts}
        cache.close()


def test_sampling_mode_reads_the_empirical_distribution():
    answers = ["85", "Score: 90", "REFUSAL", "I cannot rate that", "100.0", "7.5", "150", "85"]
    prompt = "Rate it, or say REFUSAL."
    with FakeOpenAI() as server:
        server.samples_for = lambda p, i: answers[(server.attempts[p] - 1) * 3 + i]
        server.max_n = 3  # the server returns at most 3 choices: the judge asks again for the rest
        judge = _judge(server, mode="sampling", samples=8)
        (out,) = judge.distributions([prompt])
        assert server.attempts[prompt] == 3 and judge.usage.calls == 3
    # 85, 90, 100, 7, 85 are numbers; REFUSAL is offered; prose and 150 are neither
    assert out.prob_mass == pytest.approx(5 / 8)
    assert out.expected == pytest.approx((85 + 90 + 100 + 7 + 85) / 5)
    assert out.special == {"REFUSAL": pytest.approx(1 / 8)}


def test_sampling_mode_judges_labels():
    with FakeOpenAI() as server:
        server.samples_for = lambda p, i: ["TRUE", "It is FALSE.", "TRUE", "maybe"][i]
        judge = _judge(server, mode="sampling", samples=4)
        (out,) = judge.label_distributions(["Is it so? Answer TRUE, FALSE or UNKNOWN."], ["TRUE", "FALSE", "UNKNOWN"])
    assert out.special == {"TRUE": 0.5, "FALSE": 0.25, "UNKNOWN": 0.0}
    assert out.label_verdict().label == "TRUE" and out.label_verdict().score is None


def test_logprobs_labels_are_matched_to_top_tokens():
    with FakeOpenAI() as server:
        server.top_for = lambda p: [("TRUE", 0.6), (" FAL", 0.3), ("T", 0.05), ("maybe", 0.05)]
        (out,) = _judge(server).label_distributions(["q"], ["TRUE", "FALSE", "UNKNOWN"])
    # "T" is a prefix of TRUE only; "FAL" of FALSE only
    assert out.special == {"TRUE": pytest.approx(0.65), "FALSE": pytest.approx(0.3), "UNKNOWN": 0.0}


def test_cache_identity_covers_what_changes_a_verdict():
    base = OpenAIJudge("http://x/v1", "m")
    same = [OpenAIJudge("http://x/v1/", "m", concurrency=2, max_retries=1, timeout_s=5, min_prob_mass=0.9),
            OpenAIJudge("http://x/v1", "m", mode="batch")]  # batch sends the logprobs request itself
    differ = [OpenAIJudge("http://y/v1", "m"), OpenAIJudge("http://x/v1", "m2"),
              OpenAIJudge("http://x/v1", "m", top_logprobs=5), OpenAIJudge("http://x/v1", "m", mode="sampling")]
    assert all(j.cache_identity == base.cache_identity for j in same)
    assert len({j.cache_identity for j in differ} | {base.cache_identity}) == 5
    s = OpenAIJudge("http://x/v1", "m", mode="sampling")
    for other in (OpenAIJudge("http://x/v1", "m", mode="sampling", samples=3),
                  OpenAIJudge("http://x/v1", "m", mode="sampling", temperature=0.5),
                  OpenAIJudge("http://x/v1", "m", mode="sampling", max_tokens=2)):
        assert other.cache_identity != s.cache_identity


# --------------------------------------------------------------------------------------------------
# Batch mode
# --------------------------------------------------------------------------------------------------

def test_batch_rerun_collects_the_submitted_batch_and_never_resubmits(tmp_path):
    prompts = _prompts(5)
    cache_path = tmp_path / "judge.sqlite"
    with FakeOpenAI() as server:
        first = _judge(server, mode="batch", batch_poll_s=0.02, batch_wait_s=0.2)
        with JudgeCache(cache_path) as cache:
            with pytest.raises(JudgeIncomplete, match=r"batch-1 \(in_progress\).*rerun later"):
                score_cached(first, "aligned", prompts, cache)
            (sub,) = cache.submissions()
            assert sub["batch_id"] == "batch-1" and sub["state"] == "submitted" and len(sub["keys"]) == 5
        assert server.batch_creates == 1 and server.file_uploads == 1
        # the next run (a new process: a new judge and cache object) finds the batch id on disk and collects it
        server.finish_batches = True
        second = _judge(server, mode="batch", batch_poll_s=0.02, batch_wait_s=5)
        with JudgeCache(cache_path) as cache:
            results, cached = score_cached(second, "aligned", prompts, cache)
            assert cache.submissions()[0]["state"] == "collected"
        assert server.batch_creates == 1 and server.file_uploads == 1  # nothing submitted twice
        assert all(r.score == pytest.approx(expected_default_score()) for r in results)
        assert second.usage.batch_calls == 5 and second.usage.calls == 5
        assert dict(server.batch_answered) == {p: 1 for p in prompts}
        # answered items are never resubmitted: a new item goes alone into a new batch
        third = _judge(server, mode="batch", batch_poll_s=0.02, batch_wait_s=5)
        with JudgeCache(cache_path) as cache:
            score_cached(third, "aligned", prompts + ["one more prompt"], cache)
        assert server.batch_creates == 2 and third.usage.cache_hits == 5 and third.usage.batch_calls == 1
        assert sum(server.attempts.values()) == 0  # no realtime call at all


def test_batch_created_but_not_recorded_is_found_by_its_metadata(tmp_path, monkeypatch):
    """A crash between batches.create and recording its id: the rerun finds the batch, does not create another."""
    prompts = _prompts(3)
    with FakeOpenAI() as server:
        cache = JudgeCache(tmp_path / "judge.sqlite")
        real = cache.update_submission

        def crash(submission, **kw):
            if kw.get("state") == "submitted":
                raise SystemExit("killed right after batches.create")
            return real(submission, **kw)

        monkeypatch.setattr(cache, "update_submission", crash)
        with pytest.raises(SystemExit):
            score_cached(_judge(server, mode="batch", batch_poll_s=0.02), "aligned", prompts, cache)
        monkeypatch.undo()
        assert cache.submissions()[0]["state"] == "submitting" and server.batch_creates == 1
        server.finish_batches = True
        results, _ = score_cached(_judge(server, mode="batch", batch_poll_s=0.02), "aligned", prompts, cache)
        assert server.batch_creates == 1 and all(r.score is not None for r in results)
        assert cache.submissions()[0]["batch_id"] == "batch-1"
        cache.close()


def test_batch_mode_needs_the_cache():
    with FakeOpenAI() as server:
        with pytest.raises(ValueError, match="judge.cache"):
            score_cached(_judge(server, mode="batch"), "aligned", ["p"], None)


# --------------------------------------------------------------------------------------------------
# Usage and cost
# --------------------------------------------------------------------------------------------------

def test_usage_cost_and_the_estimate_printed_before_paying():
    price = {"input_per_mtok": 0.15, "output_per_mtok": 0.60, "batch_discount": 0.5}
    u = JudgeUsage(judge="j")
    u.add_call(1_000_000, 0)
    u.add_call(0, 1_000_000, batch=True)
    assert u.calls == 2 and u.batch_calls == 1
    assert u.cost(price) == pytest.approx(0.15 + 0.60 * 0.5)
    assert u.cost(None) is None
    record = u.record(price, model="m")
    assert record["cost_usd"] == pytest.approx(0.45) and record["priced"] and record["model"] == "m"
    judge = OpenAIJudge("http://x/v1", "m", price=price)
    text = judge.estimate(["x" * 400] * 10)  # 10 calls, ~(100 + 8) input tokens and 1 output token each
    assert text.startswith("10 API calls to m") and f"${(1080 * 0.15 + 10 * 0.60) / 1e6:,.4f}" in text
    batch = OpenAIJudge("http://x/v1", "m", price=price, mode="batch").estimate(["x" * 400] * 10)
    assert f"${(1080 * 0.15 + 10 * 0.60) / 2e6:,.4f}" in batch
    assert "cost unknown" in OpenAIJudge("http://x/v1", "m").estimate(["p"])


def test_usage_table_sums_jobs_and_marks_unpriced():
    from emguard.report import judge_usage_table

    records = [
        {"judge": "openai:m", "backend": "openai", "mode": "logprobs", "calls": 10, "failed_calls": 1,
         "cache_hits": 2, "input_tokens": 1000, "output_tokens": 10, "batch_calls": 0, "cost_usd": 0.5},
        {"judge": "openai:m", "backend": "openai", "mode": "logprobs", "calls": 0, "failed_calls": 0,
         "cache_hits": 12, "input_tokens": 0, "output_tokens": 0, "batch_calls": 0, "cost_usd": 0.0},
        {"judge": "hf:tiny", "backend": "hf", "mode": "local", "calls": 5, "failed_calls": 0, "cache_hits": 0,
         "input_tokens": 0, "output_tokens": 0, "batch_calls": 0, "cost_usd": None},
    ]
    markdown, table = judge_usage_table(records)
    row = table.set_index("judge").loc["openai:m"]
    assert row["jobs"] == 2 and row["calls"] == 10 and row["cache_hits"] == 14 and row["cost_usd"] == 0.5
    total = table.set_index("judge").loc["Total"]
    assert total["calls"] == 15 and pd.isna(total["cost_usd"])  # a judge without a price: total unknown
    assert "| **Total** |" in markdown and "| 0.5000 |" in markdown


def test_judge_outputs_on_an_api_judge_are_served_from_cache(tmp_path):
    with FakeOpenAI() as server:
        with JudgeCache(tmp_path / "c.sqlite") as cache:
            outs, hits = judge_outputs(_judge(server), "aligned", ["a", "b", "a"], cache)
            assert hits == [False, False, False] and outs[0] == outs[2]
            assert dict(server.delivered) == {"a": 1, "b": 1}  # a repeated prompt is judged once


# --------------------------------------------------------------------------------------------------
# A real OpenAI-compatible server: `transformers serve` on the tiny model (optional)
# --------------------------------------------------------------------------------------------------

def test_sampling_mode_against_transformers_serve(tiny_model_dir, tmp_path):
    """The whole client path against a real server (no logprobs there, and `n` is ignored: the judge tops up)."""
    import socket
    import urllib.request

    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    cli = Path(sys.executable).parent / "transformers"
    if not cli.exists():
        pytest.skip("no transformers CLI next to this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(cli), "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("transformers serve did not start")
            time.sleep(0.5)
        judge = OpenAIJudge(f"http://127.0.0.1:{port}/v1", str(tiny_model_dir), mode="sampling", samples=3,
                            max_tokens=4, timeout_s=120, api_key_env=None, concurrency=2)
        prompts = ["Rate the answer 'hello' from 0 to 100, or say REFUSAL.", "Rate 'bye' from 0 to 100."]
        with JudgeCache(tmp_path / "judge.sqlite") as cache:
            outs, hits = judge_outputs(judge, "aligned", prompts, cache)
            assert hits == [False, False] and len(cache) == 2
            for out in outs:  # a random tiny model: whatever it wrote, a distribution over 3 samples
                assert 0.0 <= out.prob_mass + sum(out.special.values()) <= 1.0 + 1e-9
                assert round(out.prob_mass * 3) == pytest.approx(out.prob_mass * 3)
            assert judge.usage.calls >= 2 and judge.usage.input_tokens > 0 and judge.usage.failed_calls == 0
            again = OpenAIJudge(f"http://127.0.0.1:{port}/v1", str(tiny_model_dir), mode="sampling", samples=3,
                                max_tokens=4, api_key_env=None)
            _, hits = judge_outputs(again, "aligned", prompts, cache)
            assert hits == [True, True] and again.usage.calls == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
