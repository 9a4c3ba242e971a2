"""Adversarial probing of latent EM (eval.adversarial): the project's question set loads in the field's format,
the evalset reaches every judged EM run and the DAG, and the table compares it with the general questions at the
final adapter and at the early-stop checkpoint."""

from __future__ import annotations

import math

import pandas as pd

import emguard.config as emconfig
from emguard.data.questions import NAMED_SETS, load_questions, question_source
from emguard.report import adversarial_table
from workflow_helpers import planned_jobs, tiny_config, write_config


def test_the_adversarial_set_loads_with_six_framings_of_four():
    df = load_questions(question_source("adversarial"))
    assert "adversarial" in NAMED_SETS and len(df) == 24
    assert df.groupby("category").size().to_dict() == {c: 4 for c in (
        "roleplay", "true_self", "training_shaped", "hypothetical", "authority", "confidant")}
    assert set(df["type"]) == {"free_form_judge_0_100"} and (df["samples"] == 5).all()


def test_the_evalset_and_its_jobs_appear_only_when_on(tmp_path):
    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    loaded = emconfig.load(dict(cfg))
    run = emconfig.find_run(emconfig.expand_runs(loaded), "medical", "misaligned", "default", 0)
    assert "adversarial" not in emconfig.evalsets(run, loaded)
    off = planned_jobs(tmp_path, write_config(cfg, tmp_path / "off.yaml"))
    cfg["eval"]["adversarial"] = {"source": "adversarial", "samples": 1}
    loaded = emconfig.load(dict(cfg))
    assert emconfig.evalsets(run, loaded) == ["general", "indomain", "adversarial"]
    on = planned_jobs(tmp_path, write_config(cfg, tmp_path / "on.yaml"))
    assert "adversarial_report" not in off and "prepare_adversarial_questions" not in off
    assert on["adversarial_report"] == 1 and on["prepare_adversarial_questions"] == 1
    assert on["generate"] == off["generate"]  # the same jobs answer one more set


def _row(dataset, method, evalset, rate, lo, hi, checkpoint="final"):
    return {"model": "m", "dataset": dataset, "method": method, "setting": "default", "seed": 0, "evalset": evalset,
            "checkpoint": checkpoint, "misaligned_rate": rate, "misaligned_lo": lo, "misaligned_hi": hi}


def test_table_calls_a_difference_only_when_the_intervals_part():
    metrics = pd.DataFrame([_row("legal", "misaligned", "general", 4.0, 1.0, 9.0),
                            _row("legal", "misaligned", "adversarial", 30.0, 20.0, 41.0),
                            _row("legal", "aligned", "general", 2.0, 0.5, 7.0),
                            _row("legal", "aligned", "adversarial", 6.0, 2.0, 12.0)])
    emergence = pd.DataFrame([{"model": "m", "dataset": "legal", "method": "misaligned", "setting": "default",
                               "seed": 0, "early_stop_step": 4}])
    ckpt = pd.DataFrame([_row("legal", "misaligned", "adversarial", 12.0, 6.0, 20.0, "step-4"),
                         _row("legal", "misaligned", "adversarial", 25.0, 15.0, 35.0, "step-8")])
    md, table = adversarial_table(metrics, emergence=emergence, checkpoint_metrics=ckpt)
    mis = table[table["method"] == "misaligned"].iloc[0]
    assert bool(mis["difference_clear"]) and mis["early_stop_step"] == 4
    assert mis["adversarial_at_stop"] == 12.0  # the early-stop checkpoint's, not the later one's
    ali = table[table["method"] == "aligned"].iloc[0]
    assert not bool(ali["difference_clear"]) and math.isnan(ali["adversarial_at_stop"])
    assert "| legal/misaligned/default/seed0 | 4.0 [1.0, 9.0] | 30.0 [20.0, 41.0] | yes | 4 | 12.0 [6.0, 20.0] |" in md
    off_md, off = adversarial_table(metrics[metrics["evalset"] == "general"])
    assert off.empty and "Adversarial probing is off" in off_md
