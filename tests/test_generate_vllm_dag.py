"""generation.backend in the DAG (dry runs, no vllm needed): with vllm one generation job per model writes every
run's generations.parquet, which the judge and metrics rules read as before; with hf one job per run."""

from __future__ import annotations

import re

import pytest

import emguard.config as emconfig
from workflow_helpers import snakemake, tiny_config, write_config


def _config(workdir, backend):
    cfg = tiny_config(workdir / "no-model-needed", workdir)
    # a small plan: one regulariser on the target domain, and one OpSwap tier (exact match, not judged)
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]}}
    cfg["data"]["opswap"] = {"tiers": [1], "n": 20}
    cfg["generation"]["backend"] = backend
    return cfg


def _plan(workdir, cfg):
    proc = snakemake(workdir, write_config(cfg, workdir / "config.yaml"), "-n")
    out = proc.stdout + proc.stderr
    jobs = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    outputs = {rule: outs for rule, outs in re.findall(r"^rule (\w+):\n(?:    input: .*\n)?    output: (.*)$", out, re.M)}
    return jobs, outputs


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    found = {}
    for backend in ("hf", "vllm"):
        workdir = tmp_path_factory.mktemp(f"dag_{backend}")
        cfg = _config(workdir, backend)
        found[backend] = (emconfig.expand_runs(emconfig.load(cfg)), *_plan(workdir, cfg))
    return found


def test_vllm_plans_one_generation_job_per_model_writing_every_runs_answers(plans):
    runs, jobs, outputs = plans["vllm"]
    assert jobs["generate_model"] == 1 and "generate" not in jobs
    written = set(outputs["generate_model"].split(", "))
    assert written == {f"{r.path}/generations.parquet" for r in runs}  # every run, judged or exact-match
    judged = [r for r in runs if not emconfig.is_task_dataset(r.dataset)]
    assert jobs["judge"] == len(judged) and jobs["task_metrics"] == len(runs) - len(judged)


def test_hf_plans_one_generation_job_per_run(plans):
    runs, jobs, _ = plans["hf"]
    assert jobs["generate"] == len(runs) and "generate_model" not in jobs
    assert {k: v for k, v in jobs.items() if k not in ("generate", "generate_model", "total")} == \
        {k: v for k, v in plans["vllm"][1].items() if k not in ("generate", "generate_model", "total")}


def test_without_judged_runs_nothing_is_generated_for_em_runs(tmp_path):
    cfg = _config(tmp_path, "vllm")
    cfg["eval"]["judged"] = False
    runs = emconfig.expand_runs(emconfig.load(cfg))
    jobs, outputs = _plan(tmp_path, cfg)
    assert jobs["generate_model"] == 1
    assert set(outputs["generate_model"].split(", ")) == {f"{r.path}/generations.parquet" for r in runs
                                                          if emconfig.is_task_dataset(r.dataset)}


def test_the_vllm_rule_runs_in_its_own_env_with_the_extras_vllm():
    from workflow_helpers import ROOT

    rule = (ROOT / "workflow/rules/generate.smk").read_text().split("rule generate_model:", 1)[1]
    env = re.search(r"conda:\n\s+\"([^\"]+)\"", rule).group(1)
    text = (ROOT / "workflow/rules" / env).resolve().read_text()
    pin = re.search(r"vllm>=([\d.]+)", text).group(1)
    assert f'vllm = ["vllm>={pin}"]' in (ROOT / "pyproject.toml").read_text()  # env and extra agree
    assert "torch" not in text.split("pip:", 1)[1]  # vLLM brings the torch it was built for
