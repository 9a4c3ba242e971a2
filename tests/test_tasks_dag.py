"""The benign real tasks in the DAG: what a dry run plans when data.tasks selects FoQA and GSM8K (read from local
files in the hub's schema), and that none of it is planned when no task is selected."""

from __future__ import annotations

from pathlib import Path

import pytest

import emguard.config as emconfig
from workflow_helpers import ROOT, planned_jobs, planned_outputs, snakemake, tiny_config, write_config

SAMPLES = ROOT / "tests" / "data" / "tasks"
TASK_RULES = ("prepare_task", "prepare_task_questions")


def _config(workdir: Path, tasks: list[str]) -> dict:
    cfg = tiny_config(workdir / "no-model-needed", workdir)
    # two methods keep the plan small: one regulariser and one interleaving variant that scores the pool
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]},
                                     "interleave": {"variants": ["plus"], "fractions": [0.2]}}
    cfg["data"]["tasks"] = tasks
    cfg["data"]["foqa"] = {"source": str(SAMPLES / "foqa_sample.jsonl"), "eval_source": None}
    cfg["data"]["gsm8k"] = {"source": str(SAMPLES / "gsm8k_sample.jsonl"), "eval_source": None, "hf_config": None}
    cfg["eval"]["foqa"] = {"n_questions": 2, "samples": 10}
    return cfg


_jobs = planned_outputs


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tasks_dry")
    cfg = _config(workdir, ["foqa", "gsm8k"])
    proc = snakemake(workdir, write_config(cfg, workdir / "config.yaml"), "-n")
    return emconfig.load(cfg), _jobs(proc.stdout)


def test_dry_run_plans_each_selected_task_like_an_opswap_tier(selected):
    cfg, jobs = selected
    assert sorted(jobs["prepare_task"]) == ["results/data/em/foqa.parquet", "results/data/em/gsm8k.parquet"]
    assert sorted(jobs["prepare_task_questions"]) == ["results/data/questions/foqa.parquet",
                                                      "results/data/questions/gsm8k.parquet"]
    assert not [o for o in jobs["prepare_em"] if "foqa" in o or "gsm8k" in o]  # the task file is not an EM domain
    trained = {o.split(", ")[0] for o in jobs["train"]}
    generated, scored = set(jobs["generate"]), set(jobs["task_metrics"])
    for task in ("foqa", "gsm8k"):
        runs = [r for r in emconfig.expand_runs(cfg) if r.dataset == task]
        assert [r.method for r in runs] == ["untrained", "sft", "kl", "interleave_plus"]
        for r in runs:
            assert (f"{r.path}/adapter" in trained) == r.trained
            assert f"{r.path}/generations.parquet" in generated
            assert f"{r.path}/task_metrics.parquet" in scored
        # interleaving mixes the task's benign rows with the pool, ranked with every EM domain's adapter
        assert f"results/interleave/tiny/{task}/scores.parquet" in jobs["score_pool"]
    assert not [o for o in jobs["judge"] + jobs["run_metrics"] if "foqa" in o or "gsm8k" in o]  # exact match only
    assert "results/tables/tasks.md" in jobs["report"][0]


@pytest.mark.parametrize("tasks, planned", [([], set()), (["gsm8k"], {"gsm8k"})])
def test_task_jobs_only_for_selected_tasks(tmp_path, tasks, planned):
    cfg = _config(tmp_path, tasks)
    configfile = write_config(cfg, tmp_path / "config.yaml")
    counts = planned_jobs(tmp_path, configfile)
    assert counts.get("prepare_task", 0) == counts.get("prepare_task_questions", 0) == len(planned)
    # untrained, SFT, KL and Interleaving+ per task, scored by exact match (no OpSwap tier in this config)
    assert counts.get("task_metrics", 0) == 4 * len(planned)
    assert counts["report"] == 1  # the task table is written either way (saying no task was selected)
