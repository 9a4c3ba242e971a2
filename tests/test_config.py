import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_embedded_default_is_valid_and_expands():
    cfg = emconfig.load(default_config())
    runs = emconfig.expand_runs(cfg)
    assert {(r.dataset, r.method) for r in runs} >= {("base", "untrained"), ("medical", "misaligned")}
    assert len({r.run_id for r in runs}) == len(runs)


def test_unknown_key_is_named():
    cfg = default_config()
    cfg["training"]["learnig_rate"] = 1e-4
    with pytest.raises(ConfigError, match=r"training\.learnig_rate.*unknown key"):
        emconfig.load(cfg)


def test_bad_value_is_named():
    cfg = default_config()
    cfg["judge"]["min_prob_mass"] = 1.5
    with pytest.raises(ConfigError, match=r"judge\.min_prob_mass"):
        emconfig.load(cfg)


def test_target_domain_must_be_a_domain():
    cfg = default_config()
    cfg["experiments"]["target_domains"] = ["astrology"]
    with pytest.raises(ConfigError, match=r"experiments\.target_domains\.0"):
        emconfig.load(cfg)


def test_model_source_needs_exactly_one_kind():
    cfg = default_config()
    cfg["model"]["source"] = {"hub": "a/b", "path": "/x"}
    with pytest.raises(ConfigError, match=r"model\.source"):
        emconfig.load(cfg)


def test_defaults_do_not_leak_between_loads():
    a = emconfig.load(default_config())
    a["training"]["lora"]["target_modules"].append("lm_head")
    b = emconfig.load(default_config())
    assert "lm_head" not in b["training"]["lora"]["target_modules"]


def _snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def test_snakemake_rejects_unknown_key_naming_it(tmp_path):
    cfg = default_config()
    cfg["judge"]["temprature"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _snakemake("-n", "--configfile", str(path), "--directory", str(tmp_path))
    assert proc.returncode != 0
    assert "judge.temprature" in proc.stdout + proc.stderr


def test_paper_config_builds_its_dag(tmp_path):
    # from a directory that also holds the embedded default (the repository root, for users): the file
    # given with --configfile replaces config.yaml rather than being merged into it
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    proc = _snakemake("-n", "--configfile", str(ROOT / "configs/paper-qwen2.5-7b.yaml"), "--directory", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train" in proc.stdout and "extended by additional config" not in proc.stdout + proc.stderr
    assert "results/runs/qwen2.5-7b-instruct/security/" in proc.stdout
