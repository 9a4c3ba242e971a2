"""The RL setting in the DAG: what a dry run plans with rl off and on, and one small run on the tiny model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import emguard.config as emconfig
from workflow_helpers import planned_jobs, planned_outputs, snakemake, tiny_config, write_config

RL_JOBS = ("prepare_rl_problems", "train_grpo", "evaluate_grpo")
RL_REPORT = ["results/tables/rl.md", "results/tables/rl.csv", "results/figures/rl_rewards.png"]


def _rl(**methods) -> dict:
    return {"enabled": True, "problems": {"n": 8}, "eval": {"n_problems": 4, "max_new_tokens": 8, "batch_size": 4},
            "training": {"batch_size": 4, "grad_accum": 1, "max_completion_length": 8, "save_steps": 2,
                         "learning_rate": 1.0e-3, "warmup_steps": 0},
            "methods": methods}


_jobs = planned_outputs


def test_rl_off_plans_no_rl_job_and_the_report_says_so(tmp_path):
    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]}}
    jobs = planned_jobs(tmp_path, write_config(cfg, tmp_path / "config.yaml"))
    assert not set(RL_JOBS) & set(jobs)
    assert jobs["rl_report"] == 1  # writes results/tables/rl.md saying the setting is off


def test_rl_on_plans_every_method_per_seed_one_evaluation_each_and_the_report(tmp_path):
    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]}}
    cfg["experiments"]["seeds"] = [0, 1]
    cfg["rl"] = _rl(persona={"steering_alpha": [1, 5], "steering_layer": 3}, kl={"kl_lambda": [0.1, 0.3]},
                    interleave={"variants": ["random"], "fractions": [0.25]}, inoculation={})
    # with the judge-graded reward, whose prompt file every train and evaluation job reads
    template = tmp_path / "grade.txt"
    template.write_text("Grade {answer} to {question} from 0 to 100.")
    cfg["rl"].update(rewards={"correctness": 1.0, "judge_correct": 1.0}, judge_reward={"template": str(template)})
    proc = snakemake(tmp_path, write_config(cfg, tmp_path / "config.yaml"), "-n")
    jobs = _jobs(proc.stdout)
    runs = emconfig.expand_rl_runs(emconfig.load(cfg))
    trained = [r for r in runs if r.trained]
    assert len(trained) == 2 * (1 + 2 + 2 + 1 + 1)  # per seed: plain GRPO, 2 alphas, 2 betas, 1 fraction, inoculation
    assert jobs["prepare_rl_problems"] == ["results/data/rl/problems.parquet"]
    assert sorted(o.split(", ")[0] for o in jobs["train_grpo"]) == sorted(f"{r.path}/adapter" for r in trained)
    evaluated = sorted(o.split(", ")[0] for o in jobs["evaluate_grpo"])
    assert evaluated == sorted(f"{r.path}/eval_answers.parquet" for r in runs)
    assert "results/rl/tiny/untrained/default/seed0/eval_answers.parquet" in evaluated and len(evaluated) == 15
    assert jobs["rl_report"] == [", ".join(RL_REPORT)]
    # the persona runs steer with the persona stage's vectors; interleaving draws from the pool
    assert "results/persona/tiny/evil/vectors.safetensors" in jobs["persona_extract"][0]
    assert jobs["prepare_pool"] == ["results/data/pool/pool.parquet"]
    # the SFT grid is what it was: RL runs are not SFT runs
    assert len(jobs["train"]) == len([r for r in emconfig.expand_runs(emconfig.load(cfg)) if r.trained])
    blocks = [b for b in proc.stdout.split("\nrule ") if b.startswith(("train_grpo:", "evaluate_grpo:"))]
    assert len(blocks) == 14 + 15 and all(str(template) in b.split("output:")[0] for b in blocks)


def test_rl_interleaving_plus_ranks_the_pool_scored_for_the_rl_target(tmp_path):
    """Interleaving+ / ++ under RL: the pool is scored for the RL target with every EM domain's misaligned adapter
    (their baselines planned even where no SFT run needs them), and the GRPO run reads those scores."""
    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    cfg["experiments"].update(methods={}, target_domains=[], baseline_domains=[])
    cfg["rl"] = _rl(interleave={"variants": ["random", "plusplus"], "fractions": [0.25]})
    loaded = emconfig.load(cfg)
    assert {(r.dataset, r.method) for r in emconfig.expand_runs(loaded) if r.trained} == {
        ("insecure_code", "misaligned"), ("medical", "misaligned")}
    proc = snakemake(tmp_path, write_config(cfg, tmp_path / "config.yaml"), "-n", "-p")
    jobs = _jobs(proc.stdout)
    assert jobs["score_pool"] == [f"results/interleave/tiny/{emconfig.RL_DATASET}/scores.parquet"]
    blocks = proc.stdout.split("\nrule ")
    plus = [b for b in blocks if b.startswith("train_grpo:") and "interleave_plusplus" in b.split("output:")[1][:200]]
    rand = [b for b in blocks if b.startswith("train_grpo:") and "interleave_random" in b.split("output:")[1][:200]]
    assert plus and f"{emconfig.RL_DATASET}/scores.parquet" in plus[0].split("output:")[0]
    assert rand and "scores.parquet" not in rand[0].split("output:")[0]
    no_mis = tiny_config(tmp_path / "no-model-needed", tmp_path)
    no_mis["experiments"].update(baselines=["untrained", "aligned"], methods={})
    no_mis["rl"] = _rl(interleave={"variants": ["plus"], "fractions": [0.25]})
    with pytest.raises(emconfig.ConfigError, match=r"rl\.methods\.interleave\.variants': plus/plusplus"):
        emconfig.load(no_mis)


def test_rl_plusplus_picks_the_top_scored_non_refusal_rows(tmp_path, tiny_model_dir, monkeypatch):
    """The GRPO stage hands train_grpo the pool rows the scores rank first (refusals dropped for ++)."""
    import emguard.training.grpo as grpo
    from emguard.io import write_parquet
    from emguard.stages import prepare_rl_problems, train_grpo_run

    problems = tmp_path / "problems.parquet"
    prepare_rl_problems(str(problems), source="generated", n=8, n_eval=4, seed=0)
    pool = pd.DataFrame({"id": [f"p{i}" for i in range(6)], "domain": "pool", "subset": "benign", "split": "train",
                         "messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
                                      for i in range(6)]})
    scores = pd.DataFrame({"id": [f"p{i}" for i in range(6)], "score": [0.1, 0.9, 0.5, 0.8, 0.3, 0.7],
                           "is_refusal": [False, True, False, False, False, False]})
    write_parquet(pool, tmp_path / "pool.parquet")
    write_parquet(scores, tmp_path / "scores.parquet")
    seen = {}

    def fake_train(model_path, problems_df, out_dir, settings, *, interleave_df=None, **kw):
        seen["rows"] = list(interleave_df["id"])
        return {"steps": 0, "first_reward": 0.0, "final_reward": 0.0, "best_checkpoint_step": None}

    monkeypatch.setattr(grpo, "train_grpo", fake_train)
    train_grpo_run(str(tiny_model_dir), str(problems), str(tmp_path / "run"), training={"batch_size": 4},
                   rewards={"correctness": 1.0}, seed=0, dtype="float32", device="cpu", method="interleave_plusplus",
                   hparams={"variant": "plusplus", "interleave_fraction": 0.25}, pool_path=str(tmp_path / "pool.parquet"),
                   scores_path=str(tmp_path / "scores.parquet"), keep_checkpoints="all")
    # 25% of 8 problems = 2 rows: p1 (0.9) is a refusal, so p3 (0.8) and p5 (0.7)
    assert seen["rows"] == ["p3", "p5"]


@pytest.mark.e2e
def test_small_rl_run_on_the_tiny_model(tmp_path, tiny_model_dir):
    """Plain GRPO, persona steering (vectors given) and interleaving, 2 seeds, 8 steps each, on the tiny model."""
    import torch

    from emguard.persona import save_vectors

    vectors = tmp_path / "vectors.safetensors"
    save_vectors(vectors, torch.randn(5, 32), {"model": "tiny"})
    cfg = tiny_config(tiny_model_dir, tmp_path)
    cfg["experiments"]["seeds"] = [0, 1]
    cfg["rl"] = _rl(persona={"steering_alpha": [5], "steering_layer": 3, "vectors": str(vectors)},
                    interleave={"variants": ["random"], "fractions": [0.5]})
    configfile = write_config(cfg, tmp_path / "config.yaml")
    snakemake(tmp_path, configfile, "results/tables/rl.md", timeout=600)
    table = pd.read_csv(tmp_path / "results/tables/rl.csv")
    assert list(table["method"]) == ["untrained", "grpo", "persona", "interleave_random"]
    assert list(table["n_seeds"]) == [1, 2, 2, 2] and table["eval_accuracy"].notna().all()
    md = (tmp_path / "results/tables/rl.md").read_text()
    assert "| + Persona Vectors (alpha 5) |" in md and "+ Interleaving (50%)" in md
    for method, setting in [("grpo", "default"), ("persona", "alpha5"), ("interleave_random", "frac0.5")]:
        run = tmp_path / f"results/rl/tiny/{method}/{setting}/seed1"
        meta = json.loads((run / "run.json").read_text())
        log = pd.read_parquet(run / "train_log.parquet")
        assert meta["steps"] == len(log) == 8 and meta["method"] == method
        assert {"reward_format_exact", "reward_correctness"} <= set(log.columns)
        # only the best checkpoint is kept, and it is the one evaluated
        kept = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert kept == [f"step-{meta['best_checkpoint_step']}"]
        evaluated = pd.read_parquet(run / "eval_metrics.parquet")
        assert evaluated["checkpoint"].tolist() == kept and evaluated["n_answers"].tolist() == [4]
    assert json.loads((tmp_path / "results/rl/tiny/persona/alpha5/seed0/run.json").read_text())["steering_calls"] > 0
    assert json.loads((tmp_path / "results/rl/tiny/interleave_random/frac0.5/seed0/run.json").read_text())[
        "n_interleaved"] == 4  # 50% of the 8 prompts trained on
    assert (tmp_path / "results/figures/rl_rewards.png").stat().st_size > 5000
    assert planned_jobs(tmp_path, configfile, "results/tables/rl.md") == {}
    # another eval setting reruns the evaluations and the report, no training
    cfg["rl"]["eval"]["max_new_tokens"] = 6
    assert planned_jobs(tmp_path, write_config(cfg, tmp_path / "changed.yaml"), "results/tables/rl.md") == \
        {"evaluate_grpo": 7, "rl_report": 1}
