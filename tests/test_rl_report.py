"""The RL table and reward curves on synthetic logs, and the RL stages that need no model (problems, checkpoints)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from emguard.errors import InputError
from emguard.io import write_json, write_parquet
from emguard.report import rl as rr
from emguard.stages import eval_adapter, prepare_rl_problems, prune_checkpoints, rl_problems, rl_report

GSM8K_SAMPLE = "tests/data/tasks/gsm8k_sample.jsonl"


def log(rewards, accuracy=None, components=True):
    """A GRPO train log: row ``step = s + 1`` holds the rollouts of the weights after ``s`` updates."""
    n = len(rewards)
    df = pd.DataFrame({"step": range(1, n + 1), "policy_step": range(n), "loss": 0.0, "reward": rewards,
                       "accuracy": accuracy if accuracy is not None else [10.0 * r for r in rewards]})
    if components:
        df["reward_correctness"] = [r / 2 for r in rewards]
        df["reward_format_exact"] = 0.0
    return df


def descriptors(runs):
    return pd.DataFrame([{"run_id": f"rl/m/{m}/{s}/seed{seed}", "model": "m", "method": m, "setting": s, "seed": seed}
                         for m, s, seed in runs])


def test_train_point_is_the_rollouts_of_the_best_checkpoints_weights():
    # checkpoint step-2 = weights after 2 updates: its rollouts are the row with policy_step 2 (step 3), not the
    # row with step 2, and not the row with the highest reward overall (step 5, no checkpoint saved there)
    runs = descriptors([("grpo", "default", 0), ("kl", "lambda0.1", 0)])
    logs = {"rl/m/grpo/default/seed0": log([1.0, 2.0, 7.0, 3.0, 9.0]),
            "rl/m/kl/lambda0.1/seed0": log([1.0, 2.0, 3.0])}
    points = rr.train_points(runs, logs, {"rl/m/grpo/default/seed0": 2, "rl/m/kl/lambda0.1/seed0": None})
    grpo, kl = points.iloc[0], points.iloc[1]
    assert (grpo["train_reward"], grpo["train_accuracy"], grpo["train_checkpoint"]) == (7.0, 70.0, "step-2")
    # without a best checkpoint: the last step's rollouts, labelled so
    assert (kl["train_reward"], kl["train_checkpoint"]) == (3.0, "last step")


def evals(rows):
    return pd.DataFrame([{"model": "m", "method": m, "setting": s, "seed": seed, "run_id": f"rl/m/{m}/{s}/seed{seed}",
                          "checkpoint": "untrained" if m == "untrained" else "step-2", "accuracy": acc,
                          "mean_reward": rew, "n_answers": 100} for m, s, seed, acc, rew in rows])


def test_table_means_sds_emphasis_and_sentences_follow_the_intervals():
    rows = [("untrained", "default", 0, 64.0, 6.5)]
    for seed, (g, p, k) in enumerate([(90.0, 30.0, 89.0), (93.0, 40.0, 93.0), (91.0, 45.0, 88.0)]):
        rows += [("grpo", "default", seed, g, 9.0 + seed / 10), ("persona", "alpha5", seed, p, 4.0),
                 ("kl", "lambda0.1", seed, k, 8.5)]
    ev = evals(rows)
    runs = [(m, s, seed) for m, s, seed, *_ in rows if m != "untrained"]
    logs = {f"rl/m/{m}/{s}/seed{seed}": log([0.5, 1.0, 2.0 + seed]) for m, s, seed in runs}
    train = rr.train_points(descriptors(runs), logs, {k: 2 for k in logs})
    md, table = rr.rl_table(ev, train)
    assert list(table.columns) == rr.RL_TABLE_COLUMNS
    assert list(table["row"]) == ["No fine-tuning", "GRPO", "+ Persona Vectors (alpha 5)", "+ KL (beta 0.1)"]
    grpo = table.set_index("method").loc["grpo"]
    assert grpo["eval_accuracy"] == pytest.approx(np.mean([90, 93, 91]))
    assert grpo["eval_accuracy_sd"] == pytest.approx(np.std([90, 93, 91], ddof=1))
    assert grpo["train_reward"] == pytest.approx(3.0) and grpo["train_reward_sd"] == pytest.approx(1.0)
    assert grpo["train_checkpoints"] == "step-2, step-2, step-2" and grpo["n_seeds"] == 3
    untrained = table.set_index("method").loc["untrained"]
    assert math.isnan(untrained["train_accuracy"]) and math.isnan(untrained["eval_accuracy_sd"])
    assert table.set_index("method")["best_eval_accuracy"].to_dict() == {"untrained": False, "grpo": True,
                                                                       "persona": False, "kl": False}
    assert ("| GRPO | 30.0 ± 10.0 | 3.00 ± 1.00 | **91.3** ± 1.5 | **9.10** ± 0.10 | step-2, step-2, step-2 | 3 |"
            in md)
    # persona is far below GRPO (interval excludes 0); KL's seeds overlap GRPO's (no difference claimed)
    persona = table.set_index("method").loc["persona"]
    assert persona["vs_reference"] == "GRPO" and persona["vs_hi"] < 0
    assert "+ Persona Vectors (alpha 5): held-out accuracy 53.0 points lower than GRPO" in md
    kl = table.set_index("method").loc["kl"]
    assert kl["vs_lo"] < 0 < kl["vs_hi"]
    assert "+ KL (beta 0.1): no difference in held-out accuracy from GRPO was detected" in md
    # GRPO vs the untrained model, evaluated once: a t interval over GRPO's seeds
    assert grpo["vs_reference"] == "No fine-tuning" and grpo["vs_lo"] > 0
    assert "GRPO: held-out accuracy 27.3 points higher than No fine-tuning" in md and "reference evaluated once" in md


def test_one_seed_claims_nothing():
    ev = evals([("untrained", "default", 0, 5.0, -2.0), ("grpo", "default", 0, 50.0, 4.0),
                ("persona", "alpha5", 0, 0.0, -2.5)])
    md, table = rr.rl_table(ev, pd.DataFrame(columns=["run_id", "model", "method", "setting", "seed"]))
    assert table["vs_lo"].isna().all()
    assert md.count("too few seeds for an interval, so no difference is claimed") == 2
    assert "lower than" not in md and "higher than" not in md


def test_compare_intervals():
    w = rr.compare([1.0, 2.0, 3.0], [5.0, 6.0, 7.0])
    assert w["how"] == "Welch over seeds" and w["diff"] == pytest.approx(4.0) and w["lo"] > 0
    t = rr.compare([2.0], [5.0, 6.0, 7.0])
    assert t["diff"] == pytest.approx(4.0) and t["how"].startswith("t over seeds")
    assert math.isnan(rr.compare([2.0], [5.0])["lo"])


def test_row_labels():
    assert rr.row_label("interleave_random", "frac0.25") == "+ Interleaving (25%)"
    assert rr.row_label("persona", "alpha1_response") == "+ Persona Vectors (alpha 1, response only)"
    assert rr.row_label("inoculation", "default") == "+ Inoculation Prompt"
    assert rr.row_label("interleave_plusplus", "frac0.05") == "+ Interleaving++ (5%)"


def test_off_writes_both_files_saying_so(tmp_path):
    rl_report(str(tmp_path / "rl.md"), str(tmp_path / "rl.csv"), str(tmp_path / "rl.png"), enabled=False)
    assert "off (`rl.enabled: false`)" in (tmp_path / "rl.md").read_text()
    assert list(pd.read_csv(tmp_path / "rl.csv").columns) == rr.RL_TABLE_COLUMNS
    assert (tmp_path / "rl.png").stat().st_size > 1000


def test_report_stage_reads_run_records_and_draws_the_curves(tmp_path):
    metrics, runs = [], []
    for method, setting, best in [("grpo", "default", 1), ("persona", "alpha5", None)]:
        run = tmp_path / method
        write_parquet(log([1.0, 4.0, 2.0]), run / "train_log.parquet")
        write_json({"best_checkpoint_step": best}, run / "run.json")
        runs.append({"run_id": f"rl/m/{method}/{setting}/seed0", "model": "m", "method": method, "setting": setting,
                     "seed": 0, "log": str(run / "train_log.parquet"), "meta": str(run / "run.json")})
        write_parquet(evals([(method, setting, 0, 50.0, 3.0)]), run / "eval_metrics.parquet")
        metrics.append(str(run / "eval_metrics.parquet"))
    rl_report(str(tmp_path / "rl.md"), str(tmp_path / "rl.csv"), str(tmp_path / "rl.png"), enabled=True,
              metrics_paths=metrics, runs=runs)
    table = pd.read_csv(tmp_path / "rl.csv").set_index("method")
    assert table.loc["grpo", "train_reward"] == 4.0 and table.loc["grpo", "train_checkpoints"] == "step-1"
    assert table.loc["persona", "train_reward"] == 2.0 and table.loc["persona", "train_checkpoints"] == "last step"
    assert (tmp_path / "rl.png").stat().st_size > 5000
    write_json({"best_checkpoint_step": 1}, tmp_path / "bad" / "run.json")
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="bad/run.json: not a run record"):
        rl_report(str(tmp_path / "x.md"), str(tmp_path / "x.csv"), str(tmp_path / "x.png"), enabled=True,
                  metrics_paths=metrics, runs=[{**runs[0], "meta": str(tmp_path / "bad" / "run.json")}])


def test_generated_problems_split_train_and_holdout(tmp_path):
    out = tmp_path / "problems.parquet"
    prepare_rl_problems(str(out), source="generated", n=30, n_eval=10, seed=1)
    df = pd.read_parquet(out)
    assert (df["split"] == "train").sum() == 30 and (df["split"] == "holdout").sum() == 10
    assert df["id"].is_unique and not set(rl_problems(str(out), "train")["question"]) & \
        set(rl_problems(str(out), "holdout")["question"])


def test_a_local_gsm8k_file_is_split_with_a_seeded_holdout(tmp_path):
    out = tmp_path / "problems.parquet"
    prepare_rl_problems(str(out), source=GSM8K_SAMPLE, n=1000, n_eval=2, seed=0)
    df = pd.read_parquet(out)
    assert (df["split"] == "holdout").sum() == 2 and (df["split"] == "train").sum() == 4
    assert set(df["reference"]) >= {"42", "48"}
    # the same file as held-out source: every held-out question is a training one
    with pytest.raises(InputError, match="held-out question"):
        prepare_rl_problems(str(tmp_path / "x.parquet"), source=GSM8K_SAMPLE, eval_source=GSM8K_SAMPLE, n=10,
                            n_eval=2)


def test_best_checkpoint_is_evaluated_and_the_others_pruned(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (tmp_path / "adapter").mkdir()
    write_json({"best_checkpoint_step": 4}, tmp_path / "run.json")
    assert eval_adapter(str(tmp_path)) == (str(tmp_path / "checkpoints" / "step-4"), "step-4")
    assert eval_adapter(str(tmp_path), "final") == (str(tmp_path / "adapter"), "final")
    assert eval_adapter(None) == (None, "untrained")
    assert prune_checkpoints(str(tmp_path), 4) == [str(tmp_path / "checkpoints" / "step-4")]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-4"]
    (tmp_path / "run.json").write_text(json.dumps({"best_checkpoint_step": None}))
    assert eval_adapter(str(tmp_path)) == (str(tmp_path / "adapter"), "final")
