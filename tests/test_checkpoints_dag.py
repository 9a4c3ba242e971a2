"""Checkpoint evaluation in the DAG (dry runs): checkpoint jobs only for the steps and runs the config asks for,
none at all when the section is off, and the final adapter evaluated once (by the run's own jobs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import emguard.config as emconfig
from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

#: every rule checkpoints.smk defines
CHECKPOINT_RULES = {"train_checkpoints", "prepare_checkpoint_questions", "generate_checkpoint", "judge_checkpoint",
                    "checkpoint_metrics", "checkpoint_task_metrics", "checkpoint_probe_nll", "checkpoint_signals",
                    "final_signals", "checkpoint_curve"}


def _config(workdir: Path, checkpoints: dict | None, **overrides) -> dict:
    cfg = tiny_config(workdir / "no-model-needed", workdir, **overrides)
    # one regulariser keeps the plan small; an OpSwap tier adds exact-match task runs
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]}}
    if checkpoints is None:
        cfg.pop("checkpoints", None)
    else:
        cfg["checkpoints"] = checkpoints
    return cfg


def _jobs(out: str, what: str = "output") -> dict[str, list[list[str]]]:
    """Rule -> the outputs (or inputs) of each of its jobs in a dry run's listing."""
    found = re.findall(r"^rule (\w+):\n(?:    input: (.*)\n)?    output: (.*)$", out, flags=re.M)
    jobs: dict[str, list[list[str]]] = {}
    for rule, inputs, output in found:
        jobs.setdefault(rule, []).append((output if what == "output" else inputs).split(", "))
    return jobs


def _dry_run(workdir: Path, cfg: dict) -> str:
    return snakemake(workdir, write_config(cfg, workdir / "config.yaml"), "-n").stdout


def test_off_plans_exactly_the_jobs_of_a_config_without_the_section(tmp_path):
    absent = planned_jobs(tmp_path / "a", write_config(_config(tmp_path / "a", None), tmp_path / "a.yaml"))
    off = planned_jobs(tmp_path / "b", write_config(_config(tmp_path / "b", {"every": None, "steps": [],
                                                                              "runs": "all"}), tmp_path / "b.yaml"))
    assert off == absent and "train" in off and "report" in off
    assert not CHECKPOINT_RULES & set(off)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """steps [1, 3] (4 training steps) for the misaligned, kl and sft runs; only the baselines judged."""
    workdir = tmp_path_factory.mktemp("ckpt_dry")
    cfg = _config(workdir, {"steps": [3, 1], "runs": ["misaligned", "kl", "sft"], "general_samples": 1},
                  **{"training.max_steps": 4})
    cfg["eval"]["judged"] = "baselines"
    cfg["data"]["opswap"] = {"tiers": [1], "n": 20}
    out = _dry_run(workdir, cfg)
    return emconfig.load(cfg), _jobs(out), _jobs(out, "input")


def _runs(cfg, *methods):
    return [r for r in emconfig.expand_runs(cfg) if r.method in methods]


def test_checkpoints_only_at_the_steps_asked_for(planned):
    cfg, jobs, _ = planned
    selected = _runs(cfg, "misaligned", "kl", "sft")
    assert {r.dataset for r in selected} == {"insecure_code", "medical", "opswap_t1"}
    trained = {outs[0]: outs for outs in jobs["train_checkpoints"]}
    assert sorted(trained) == sorted(f"{r.path}/adapter" for r in selected)
    for r in selected:
        saved = [o for o in trained[f"{r.path}/adapter"] if "/checkpoints/" in o]
        assert saved == [f"{r.path}/checkpoints/step-1", f"{r.path}/checkpoints/step-3"]
    # the other runs train as before, saving nothing
    others = [r for r in emconfig.expand_runs(cfg) if r.trained and r not in selected]
    assert sorted(outs[0] for outs in jobs["train"]) == sorted(f"{r.path}/adapter" for r in others)
    assert not [o for outs in jobs["train"] for o in outs if "checkpoints" in o]
    every_checkpoint = [o for rule in CHECKPOINT_RULES - {"train_checkpoints", "prepare_checkpoint_questions"}
                        for outs in jobs.get(rule, []) for o in outs if "/checkpoint_eval/" in o]
    assert {re.search(r"/checkpoint_eval/(step-\d+)/", o).group(1) for o in every_checkpoint} == {"step-1", "step-3"}


def test_each_checkpoint_gets_the_final_adapters_evaluation(planned):
    cfg, jobs, _ = planned
    outputs = {rule: {o for outs in found for o in outs} for rule, found in jobs.items()}
    for r in _runs(cfg, "misaligned", "kl", "sft"):
        judged = not emconfig.is_task_dataset(r.dataset) and emconfig.is_judged(r, cfg)
        for step in (1, 3):
            d = f"{r.path}/checkpoint_eval/step-{step}"
            if emconfig.is_task_dataset(r.dataset):  # exact match on the task's held-out questions
                assert f"{d}/probe_nll.parquet" in outputs["checkpoint_probe_nll"]
                assert f"{d}/generations.parquet" in outputs["generate_checkpoint"]
                assert f"{d}/task_metrics.parquet" in outputs["checkpoint_task_metrics"]
                assert f"{d}/task_nll.parquet" not in outputs["checkpoint_signals"]
            else:  # holdout NLL of the run's own fine-tuning answers and the probe NLLs in one job; answers and
                # judge only where judged
                assert {f"{d}/task_nll.parquet", f"{d}/probe_nll.parquet"} <= outputs["checkpoint_signals"]
                assert f"{d}/probe_nll.parquet" not in outputs["checkpoint_probe_nll"]
                assert (f"{d}/generations.parquet" in outputs["generate_checkpoint"]) == judged
                assert (f"{d}/metrics.parquet" in outputs["checkpoint_metrics"]) == judged
        assert f"{r.path}/checkpoint_curve.parquet" in outputs["checkpoint_curve"]
    assert outputs["prepare_checkpoint_questions"] == {"results/data/questions/general_checkpoint.parquet"}
    assert [r.method for r in _runs(cfg, "misaligned") if emconfig.is_judged(r, cfg)]  # the judged case is covered
    assert _runs(cfg, "kl") and not any(emconfig.is_judged(r, cfg) for r in _runs(cfg, "kl")
                                        if not emconfig.is_task_dataset(r.dataset))


def test_the_final_adapter_is_evaluated_once(planned):
    """No checkpoint at the last step (4): the final adapter's answers, metrics and probe NLLs are the run's own
    jobs', and the curve reads those; for an EM run one job (final_signals) gives its holdout NLL with its probe NLLs,
    in place of the run's probe_nll job."""
    cfg, jobs, inputs = planned
    outputs = {rule: {o for outs in found for o in outs} for rule, found in jobs.items()}
    assert not [o for found in outputs.values() for o in found if "step-4" in o]
    for r in _runs(cfg, "misaligned", "kl", "sft"):
        if emconfig.is_task_dataset(r.dataset):
            assert f"{r.path}/probe_nll.parquet" in outputs["probe_nll"]
            assert f"{r.path}/generations.parquet" in outputs["generate"]
            assert f"{r.path}/task_nll.parquet" not in outputs["final_signals"]
        else:
            assert {f"{r.path}/task_nll.parquet", f"{r.path}/probe_nll.parquet"} <= outputs["final_signals"]
            assert f"{r.path}/probe_nll.parquet" not in outputs["probe_nll"]
    # the runs without checkpoints keep their probe_nll job
    others = [r for r in emconfig.expand_runs(cfg) if r.trained and r not in _runs(cfg, "misaligned", "kl", "sft")]
    assert others and all(f"{r.path}/probe_nll.parquet" in outputs["probe_nll"] for r in others)
    # every set of weights (a checkpoint's, or the final adapter) is answered, probed and scored once
    for rules in (("generate", "generate_checkpoint"), ("probe_nll", "checkpoint_probe_nll"),
                  ("final_signals", "checkpoint_signals")):
        read = [i for rule in rules for ins in inputs[rule] for i in ins
                if i.endswith("/adapter") or "/checkpoints/step-" in i]
        assert read and len(read) == len(set(read))
        assert not [i for ins in inputs[rules[1]] for i in ins if i.endswith("/adapter")]
    # each curve reads the final adapter's files from the run's own jobs, after the checkpoints' own
    curves = {outs[0]: ins for outs, ins in zip(jobs["checkpoint_curve"], inputs["checkpoint_curve"])}
    for r in _runs(cfg, "misaligned", "kl", "sft"):
        ins = curves[f"{r.path}/checkpoint_curve.parquet"]
        probes = [i for i in ins if i.endswith("probe_nll.parquet")]
        assert probes == [f"{r.path}/checkpoint_eval/step-1/probe_nll.parquet",
                          f"{r.path}/checkpoint_eval/step-3/probe_nll.parquet", f"{r.path}/probe_nll.parquet"]
        judged = not emconfig.is_task_dataset(r.dataset) and emconfig.is_judged(r, cfg)
        assert (f"{r.path}/metrics.parquet" in ins) == judged
        assert f"{r.path}/run.json" in ins


def test_every_n_steps_stops_before_the_last(tmp_path):
    cfg = _config(tmp_path, {"every": 2}, **{"training.max_steps": 5})
    cfg["experiments"]["methods"] = {}
    jobs = _jobs(_dry_run(tmp_path, cfg))
    steps = {re.search(r"/checkpoints/(step-\d+)$", o).group(1) for outs in jobs["train_checkpoints"] for o in outs
             if "/checkpoints/" in o}
    assert steps == {"step-2", "step-4"}
    # default runs: the aligned and misaligned baselines of both domains
    assert len(jobs["train_checkpoints"]) == 4 and len(jobs["checkpoint_curve"]) == 4
    assert "prepare_checkpoint_questions" not in jobs  # general_samples null: the final evaluation's question file


def _persona_inputs(inputs: dict, rule: str) -> dict[str, bool]:
    """Each job of ``rule``: its adapter (or checkpoint) input -> whether it reads the persona vectors."""
    out = {}
    for ins in inputs.get(rule, []):
        key = next((i for i in ins if i.endswith("/adapter") or "/checkpoints/step-" in i), "base")
        out[key] = any(i.endswith("vectors.safetensors") for i in ins)
    return out


def test_a_judge_free_sweep_of_one_dataset(tmp_path):
    """checkpoints.datasets narrows the method selection to one dataset; judged: false answers and judges no
    checkpoint, though the run itself is judged; the persona projection reads the vectors in exactly the probe jobs
    of the curve (the untrained model, the run's checkpoints and its final adapter)."""
    cfg = _config(tmp_path, {"steps": [1], "runs": ["misaligned"], "datasets": ["medical"], "judged": False},
                  **{"training.max_steps": 3})
    loaded = emconfig.load(cfg)
    out = _dry_run(tmp_path, cfg)
    jobs, inputs = _jobs(out), _jobs(out, "input")
    run = next(r for r in emconfig.expand_runs(loaded) if (r.dataset, r.method) == ("medical", "misaligned"))
    assert emconfig.is_judged(run, loaded)
    assert [outs[0] for outs in jobs["train_checkpoints"]] == [f"{run.path}/adapter"]
    assert f"results/runs/tiny/insecure_code/misaligned/default/seed0/adapter" in [o[0] for o in jobs["train"]]
    assert len(jobs["checkpoint_signals"]) == len(jobs["final_signals"]) == 1 and "checkpoint_probe_nll" not in jobs
    assert not {"generate_checkpoint", "judge_checkpoint", "checkpoint_metrics", "prepare_checkpoint_questions"} & set(jobs)
    curve_inputs = inputs["checkpoint_curve"][0]
    assert not [i for i in curve_inputs if i.endswith("metrics.parquet")]
    assert f"{run.path}/generations.parquet" in {o for outs in jobs["generate"] for o in outs}  # the run's own answers
    persona = {**_persona_inputs(inputs, "probe_nll_base"), **_persona_inputs(inputs, "probe_nll"),
               **_persona_inputs(inputs, "final_signals"), **_persona_inputs(inputs, "checkpoint_signals")}
    assert {k for k, v in persona.items() if v} == {"base", f"{run.path}/adapter", f"{run.path}/checkpoints/step-1"}
    assert len(persona) > 3  # the other runs' probe jobs exist and read no vectors

    cfg["checkpoints"]["persona"] = False
    off = _jobs(_dry_run(tmp_path, cfg), "input")
    assert not [i for rule in ("probe_nll_base", "probe_nll", "final_signals", "checkpoint_signals")
                for ins in off[rule] for i in ins if i.endswith("vectors.safetensors")]


@pytest.mark.parametrize("section, key", [
    ({"steps": [1], "datasets": ["legal"]}, "checkpoints.datasets.0"),          # no run trains on legal here
    ({"steps": [1], "runs": ["kl"], "datasets": ["medical"]}, "checkpoints.runs / checkpoints.datasets"),
])
def test_a_dataset_filter_that_selects_nothing_is_refused(tmp_path, section, key):
    cfg = _config(tmp_path, section, **{"training.max_steps": 3})
    cfg["experiments"]["target_domains"] = ["insecure_code"]
    with pytest.raises(emconfig.ConfigError, match=re.escape(f"'{key}'")):
        emconfig.load(cfg)
