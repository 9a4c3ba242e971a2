"""judge.backend in the config: openai keys validated early, the paper configs, and load_judge."""

from pathlib import Path

import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**judge):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["judge"] = judge
    return cfg


def test_openai_backend_is_accepted_and_gets_its_defaults():
    cfg = emconfig.load(_cfg(backend="openai", model="gpt-4o-mini", mode="batch",
                             prices={"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}))
    judge = cfg["judge"]
    assert judge["mode"] == "batch" and judge["api_key_env"] == "OPENAI_API_KEY" and judge["top_logprobs"] == 20
    assert judge["base_url"] == "https://api.openai.com/v1" and judge["cache"]


def test_hf_config_gains_no_openai_keys():
    judge = emconfig.load(yaml.safe_load((ROOT / "config.yaml").read_text()))["judge"]
    assert judge["backend"] == "hf" and not set(judge) & set(emconfig.OPENAI_JUDGE_DEFAULTS)


@pytest.mark.parametrize("judge,match", [
    ({"backend": "hf", "mode": "logprobs"}, r"judge\.mode.*openai only"),
    ({"backend": "hf", "prices": {}}, r"judge\.prices.*openai only"),
    ({"backend": "openai"}, r"judge\.model.*served model's name"),
    ({"backend": "openai", "model": "m", "answer_prefix": "Score: "}, r"judge\.answer_prefix.*hf only"),
    ({"backend": "openai", "model": "m", "mode": "stream"}, r"judge\.mode"),
    ({"backend": "openai", "model": "m", "top_logprobs": 50}, r"judge\.top_logprobs"),
    ({"backend": "openai", "model": "m", "api_key_env": "sk-abc123"}, r"judge\.api_key_env"),
    ({"backend": "openai", "model": "m", "prices": {"m": {"input_per_mtok": 1}}}, r"judge\.prices\.m"),
    ({"backend": "openai", "model": "m", "prices": {"m": {"input_per_mtok": 1, "output_per_mtok": 1,
                                                          "batch_discount": 2}}}, r"judge\.prices\.m\.batch_discount"),
    ({"backend": "vllm", "model": "m"}, r"judge\.backend"),
])
def test_bad_judge_settings_name_the_key(judge, match):
    with pytest.raises(ConfigError, match=match):
        emconfig.load(_cfg(**judge))


def test_paper_config_judges_with_gpt_4o_mini_through_the_api():
    judge = emconfig.load(ROOT / "configs/paper-qwen2.5-7b.yaml")["judge"]
    assert (judge["backend"], judge["model"], judge["mode"], judge["top_logprobs"]) == (
        "openai", "gpt-4o-mini", "logprobs", 20)
    assert judge["api_key_env"] == "OPENAI_API_KEY" and "gpt-4o-mini" in judge["prices"]


def test_local_judge_config_is_the_paper_config_but_for_the_judge():
    paper = yaml.safe_load((ROOT / "configs/paper-qwen2.5-7b.yaml").read_text())
    local = yaml.safe_load((ROOT / "configs/paper-qwen2.5-7b-local-judge.yaml").read_text())
    assert local["judge"]["backend"] == "hf" and local["judge"]["model"] != "base"
    paper.pop("judge"), local.pop("judge")
    assert local == paper  # keep the two in step: only the judge differs
    emconfig.load(ROOT / "configs/paper-qwen2.5-7b-local-judge.yaml")


def test_judge_rule_params_leave_out_runtime_settings():
    """Changing retries, concurrency or prices must not rerun judging (they change no verdict)."""
    for key in ("prices", "concurrency", "max_retries", "timeout_s", "batch_wait_s", "cache", "prompts"):
        assert key in emconfig.JUDGE_RUNTIME_KEYS
    for key in ("model", "mode", "base_url", "top_logprobs", "samples", "temperature", "min_prob_mass"):
        assert key not in emconfig.JUDGE_RUNTIME_KEYS


def test_load_judge_builds_the_openai_backend(monkeypatch):
    from emguard.judge import OpenAIJudge
    from emguard.judge.build import load_judge

    cfg = emconfig.load(_cfg(backend="openai", model="gpt-x", mode="sampling", samples=5, api_key_env="EMG_KEY_T",
                             prices={"gpt-x": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}))["judge"]
    monkeypatch.delenv("EMG_KEY_T", raising=False)
    with pytest.raises(RuntimeError, match="EMG_KEY_T.*not set"):
        load_judge(cfg, "unused", "auto", "cpu")
    monkeypatch.setenv("EMG_KEY_T", "sk-x")
    judge = load_judge(cfg, "unused", "auto", "cpu")
    assert isinstance(judge, OpenAIJudge) and judge.mode == "sampling" and judge.samples == 5
    assert judge.price == {"input_per_mtok": 1.0, "output_per_mtok": 2.0} and judge.name == "openai:gpt-x"
    assert judge.max_retries == cfg["max_retries"] and judge.concurrency == cfg["concurrency"]
