"""The training-time EM monitor in the DAG (config monitor): off, nothing changes; on, every trained run logs its
signals, the aligned runs calibrate the stop thresholds that the other runs wait for, and monitor.md reports."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError
from workflow_helpers import ROOT, planned_jobs, snakemake, tiny_config, write_config


def _small(cfg, **monitor):
    """One trained domain (medical: aligned and misaligned), no defenses, no judging: the monitor alone."""
    cfg["experiments"].update(methods={}, target_domains=[], baseline_domains=["medical"])
    cfg["eval"]["judged"] = False
    cfg["monitor"] = {"enabled": True, "every_steps": 1, "batch_size": 8, "persona": False, "stop": None,
                      "margin": 0.0, "quantile": 1.0, **monitor}
    return cfg


def test_monitor_settings_are_checked_at_load():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert emconfig.load(copy.deepcopy(cfg))["monitor"]["enabled"] is False
    bad = copy.deepcopy(cfg)
    bad["monitor"] = {"stop": "calibrated"}
    with pytest.raises(ConfigError, match=r"monitor\.stop': needs monitor\.enabled"):
        emconfig.load(bad)
    bad["monitor"] = {"enabled": True, "stop": {"ll_shift": -0.1}}
    with pytest.raises(ConfigError, match=r"monitor\.stop"):
        emconfig.load(bad)
    bad["monitor"] = {"enabled": True, "stop": "calibrated"}
    bad["checkpoints"] = {"steps": [2]}
    bad["training"]["max_steps"] = 6
    with pytest.raises(ConfigError, match=r"monitor\.stop': a run the monitor stops has no checkpoints"):
        emconfig.load(bad)


def test_monitor_plans_calibration_before_the_runs_it_stops(tmp_path):
    off = tiny_config(tmp_path / "no-model-needed", tmp_path)
    jobs_off = planned_jobs(tmp_path, write_config(off, tmp_path / "off.yaml"))
    assert "monitor_thresholds" not in jobs_off and "monitor_report" not in jobs_off
    on = tiny_config(tmp_path / "no-model-needed", tmp_path)
    on["monitor"] = {"enabled": True, "stop": "calibrated"}
    jobs_on = planned_jobs(tmp_path, write_config(on, tmp_path / "on.yaml"))
    assert jobs_on["monitor_thresholds"] == 1 and jobs_on["monitor_report"] == 1
    assert jobs_on["train"] == jobs_off["train"]
    # the misaligned run waits for the thresholds, the aligned one (the calibration) does not
    proc = snakemake(tmp_path, tmp_path / "on.yaml", "-n", "-p")
    text = proc.stdout
    blocks = text.split("\nrule ")
    mis = [b for b in blocks if b.startswith("train:") and "medical/misaligned" in b]
    ali = [b for b in blocks if b.startswith("train:") and "medical/aligned" in b]
    assert mis and "results/monitor/tiny/thresholds.json" in mis[0].split("output:")[0]
    assert ali and "thresholds.json" not in ali[0].split("output:")[0]


@pytest.mark.e2e
def test_monitor_logs_calibrates_and_stops(tmp_path, tiny_model_dir):
    """Tiny model, medical aligned + misaligned, the monitor checking every step and stopping at calibrated
    thresholds (~1 min): every run logs ll_shift, the thresholds file holds the aligned run's maximum, and the
    report says where each run stopped or would have."""
    cfg = _small(tiny_config(tiny_model_dir, tmp_path), stop="calibrated")
    snakemake(tmp_path, write_config(cfg, tmp_path / "config.yaml"))
    runs = tmp_path / "results/runs/tiny/medical"
    aligned = pd.read_parquet(runs / "aligned/default/seed0/train_log.parquet")
    mis = pd.read_parquet(runs / "misaligned/default/seed0/train_log.parquet")
    assert aligned["ll_shift"].notna().sum() >= 3 and aligned.loc[aligned["step"] == 0, "ll_shift"].iloc[0] == 0.0
    thresholds = json.loads((tmp_path / "results/monitor/tiny/thresholds.json").read_text())
    assert thresholds["ll_shift"] == pytest.approx(max(0.0, aligned["ll_shift"].max()))
    meta = json.loads((runs / "misaligned/default/seed0/run.json").read_text())
    crossed = mis.loc[mis["ll_shift"] >= thresholds["ll_shift"], "step"] if thresholds["ll_shift"] > 0 else []
    if len(crossed):  # it stopped at the first crossing, and nothing was trained after it
        assert meta["monitor_stop_step"] == int(crossed.min()) == int(mis["step"].max())
    else:
        assert meta["monitor_stop_step"] is None
    md = (tmp_path / "results/tables/monitor.md").read_text()
    assert "## The training-time EM monitor" in md and "medical/misaligned/default/seed0 | ll_shift" in md
    assert (tmp_path / "results/figures/monitor.png").stat().st_size > 5000  # its record drawn
