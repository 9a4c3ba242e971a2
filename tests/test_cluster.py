"""What the workflow exports for the cluster profiles: model sizes from the config, the source tree on
PYTHONPATH; and that the profiles' resource expressions evaluate to what the docs say."""

from __future__ import annotations

import os

import pytest
import yaml

from emguard.cluster import DEFAULT_BILLIONS, export_workflow_env, params_billions, profile_env
from workflow_helpers import ROOT


@pytest.mark.parametrize("name, billions", [
    ("Qwen/Qwen2.5-7B-Instruct", 7), ("Qwen/Qwen2.5-32B-Instruct", 32), ("smollm2-135m", 0.135),
    ("qwen2.5-7b-instruct", 7), ("meta-llama/Llama-3.1-8B", 8), ("org/model-1.5B", 1.5), ("tiny-5m", 0.005),
    ("tiny", DEFAULT_BILLIONS), ("gpt-4o-mini", DEFAULT_BILLIONS), (None, DEFAULT_BILLIONS),
])
def test_params_billions_reads_the_size_in_a_name(name, billions):
    assert params_billions(name) == pytest.approx(billions)


def _cfg(**judge):
    return {"model": {"name": "qwen2.5-7b-instruct", "source": {"hub": "Qwen/Qwen2.5-7B-Instruct"}},
            "judge": {"backend": "hf", "model": "base", **judge}}


def test_profile_env_sizes_the_model_and_the_judge():
    assert profile_env(_cfg()) == {"EMGUARD_MODEL_B": "7", "EMGUARD_MODELS_B": "{'qwen2.5-7b-instruct': 7}",
                                   "EMGUARD_JUDGE_B": "7", "EMGUARD_JUDGE_GPUS": "1"}
    assert profile_env(_cfg(model="Qwen/Qwen2.5-32B-Instruct"))["EMGUARD_JUDGE_B"] == "32"
    assert profile_env(_cfg(backend="openai"))["EMGUARD_JUDGE_GPUS"] == "0"
    gguf = {"model": {"name": "smollm2-135m", "source": {"gguf_package": "x", "version": "1", "file": "f"}},
            "judge": {"backend": "hf"}}
    assert profile_env(gguf)["EMGUARD_MODEL_B"] == "0.135"


def test_export_keeps_a_value_the_user_set_and_puts_the_source_first_on_pythonpath(tmp_path):
    environ = {"EMGUARD_MODEL_B": "70", "PYTHONPATH": os.pathsep.join(["/a", str(tmp_path)])}
    got = export_workflow_env(_cfg(), tmp_path, environ)
    assert got["EMGUARD_MODEL_B"] == "70" and got["EMGUARD_JUDGE_B"] == "7"
    assert environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a"]


def _eval(expr: str, env: dict, attempt: int = 1, **wildcards):
    """A profile expression as Snakemake evaluates it: ``$VAR`` expanded (os.path.expandvars), then eval'd with the
    job's wildcards and attempt."""
    import re

    from snakemake.iocontainers import Wildcards

    expr = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), expr)
    return eval(expr, {"attempt": attempt, "max": max, "int": int, "wildcards": Wildcards(fromdict=wildcards)})


def test_slurm_profile_scales_memory_and_runtime_by_model_size_and_attempt():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    res = profile["set-resources"]
    gpu_rules = {"train", "generate", "generate_model", "judge", "pool_nll", "probe_nll", "probe_nll_base", "onpolicy_answers",
                 "persona_extract", "persona_validate", "judge_calibration", "train_grpo", "evaluate_grpo",
                 "train_checkpoints", "generate_checkpoint", "judge_checkpoint", "checkpoint_probe_nll",
                 "checkpoint_signals", "final_signals"}
    assert set(res) == gpu_rules
    env7 = profile_env(_cfg())
    env_small = profile_env({"model": {"name": "smollm2-135m", "source": {"path": "x"}}, "judge": {"backend": "hf"}})
    for rule in gpu_rules:
        assert res[rule]["slurm_partition"] == "gpu"
        mem7, mem_small = _eval(res[rule]["mem_mb"], env7), _eval(res[rule]["mem_mb"], env_small)
        assert mem7 > mem_small > 0
        assert _eval(res[rule]["mem_mb"], env7, attempt=2) == pytest.approx(2 * mem7, abs=1)
        assert _eval(res[rule]["runtime"], env7, attempt=2) > _eval(res[rule]["runtime"], env7)
    assert _eval(str(res["judge"]["gpu"]), env7) == 1
    assert _eval(str(res["judge"]["gpu"]), profile_env(_cfg(backend="openai"))) == 0
    assert res["judge_calibration"] == res["judge"]  # the calibration job is sized like a judge job
    # a 7B LoRA fine-tune fits the usual 80 GB GPU node's host memory on the first try
    assert 16_000 < _eval(res["train"]["mem_mb"], env7) < 64_000
    assert profile["retries"] >= 1 and profile["executor"] == "slurm"
    assert profile["groups"]["judge"] in profile["group-components"]


@pytest.mark.e2e
def test_paper_grid_plans_with_the_slurm_profile(tmp_path):
    """The whole paper grid as one DAG (docs/cluster.md gives these counts)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    from workflow_helpers import planned_jobs

    jobs = planned_jobs(tmp_path, ROOT / "configs" / "paper-qwen2.5-7b.yaml", "--profile",
                        str(ROOT / "profiles" / "slurm"))
    # 4 domains x (aligned, misaligned, KL x5, LDIFS 2 variants x5, persona x5, inoculation, interleave 4 x 4)
    # + untrained, and 4 OpSwap tiers x (SFT + the same 37 method settings), plus the untrained model answering each tier:
    # judged: no; scored by exact match
    assert jobs["train"] == 4 * 39 + 4 * 38 and jobs["run_metrics"] == 4 * 39 + 1
    # one generation and one judge job per run, whatever its number of evalsets
    assert jobs["judge"] == 4 * 39 + 1 and jobs["generate"] == jobs["judge"] + 4 * 39
    assert jobs["task_metrics"] == 4 * 39 and jobs["prepare_opswap"] == jobs["prepare_opswap_questions"] == 4
    assert jobs["interleave_set"] == 8 * 16 and jobs["onpolicy_answers"] == 8 * 4
    # the pool is scored once (base + 4 domain adapters); each target's scores are read from it
    assert jobs["pool_nll"] == 1 and jobs["score_pool"] == 8
    # the likelihood measure: one probe job per trained run, one for the untrained model, one check, one summary
    assert jobs["probe_nll"] == jobs["train"] and jobs["probe_nll_base"] == jobs["prepare_probes"] == 1
    assert jobs["probe_shifts"] == 1
    assert jobs["judge_calibration"] == 1  # the judge measured once, on the labelled set
    assert jobs["rl_report"] == 1  # the RL report says the setting is off (rl.enabled false)
    assert sum(jobs.values()) == 1282 + jobs["train"] + 3 + 1 + 1


def _two_models(**extra):
    return {"models": [{"name": "small-1.5b", "source": {"hub": "org/small-1.5B"}},
                       {"name": "big", "source": {"hub": "org/big"}, "params_b": 14, **extra}],
            "judge": {"backend": "openai", "model": "gpt-4o-mini"}}


def test_each_model_of_a_list_is_sized_by_its_own_parameters():
    env = profile_env(_two_models())
    # params_b wins over the name; the fallback for jobs of no one model is the largest
    assert env["EMGUARD_MODEL_B"] == "14" and env["EMGUARD_MODELS_B"] == "{'small-1.5b': 1.5, 'big': 14}"
    train = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]["train"]
    small, big = (_eval(train["mem_mb"], env, model=m) for m in ("small-1.5b", "big"))
    # each model's train job asks for what a config of that model alone would ask for
    alone = profile_env({"model": {"name": "x", "source": {"hub": "org/x-1.5B"}}, "judge": {"backend": "hf"}})
    assert small == _eval(train["mem_mb"], alone) and big == int((4 + 3 * 14) * 1024)
    assert _eval(train["runtime"], env, model="small-1.5b") < _eval(train["runtime"], env, model="big")
    assert _eval(train["mem_mb"], env) == big  # no {model} wildcard: the largest model


def test_a_size_the_user_exports_sizes_every_model(tmp_path):
    environ = {"EMGUARD_MODEL_B": "70"}
    got = export_workflow_env(_two_models(), tmp_path, environ)
    assert got["EMGUARD_MODEL_B"] == "70"
    assert {m: _eval("$EMGUARD_MODELS_B.get(wildcards.get('model'), 0)", got, model=m) for m in ("small-1.5b", "big")} \
        == {"small-1.5b": 70, "big": 70}
