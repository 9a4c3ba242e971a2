"""`snakemake --profile profiles/slurm` on a real SLURM: a single-node cluster started on this machine by
scripts/slurm_cluster.sh (munge, slurmctld, slurmd; a fake GPU so GPU requests are scheduled), a slice of
the DAG (train, generate, judge, report for one domain) submitted through sbatch, then the daemons stopped.

Needs root and the Debian packages slurmctld slurmd slurm-client munge (`scripts/slurm_cluster.sh install`,
which .ci/run does); skipped with the reason otherwise. A cluster already answering `sinfo` with a `gpu`
partition (e.g. brought up by hand with the script) is used and left running."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import ROOT, tiny_config, write_config

pytestmark = pytest.mark.e2e

SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _unavailable() -> str | None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[dev]')"
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "munged") if not shutil.which(b)]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found): run `scripts/slurm_cluster.sh install` "
                "as root (Debian/Ubuntu: apt-get install slurmctld slurmd slurm-client munge)")
    return None


def _sinfo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def cluster():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    already_up = _sinfo().returncode == 0
    if not already_up:
        if os.geteuid() != 0:
            pytest.skip("starting munged/slurmctld/slurmd needs root (or start the cluster by hand: "
                        "sudo scripts/slurm_cluster.sh start)")
        start = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, f"scripts/slurm_cluster.sh start failed:\n{start.stdout}\n{start.stderr}"
    if not _sinfo("-p", "gpu").stdout.strip():
        pytest.skip("a SLURM cluster is running without a `gpu` partition (not scripts/slurm_cluster.sh's)")
    yield
    if not already_up:
        stop = subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("slurm")
    # "5m" in the name: the workflow sizes jobs from it ($EMGUARD_MODEL_B = 0.005, a few GB each)
    cfg = tiny_config(tiny_model_dir, workdir, **{
        "model.name": "tiny-5m", "data.em.domains": ["medical"], "experiments.target_domains": [],
        "experiments.methods": {}, "experiments.baselines": ["misaligned"]})
    configfile = write_config(cfg, workdir / "config.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMGUARD_")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--profile", str(ROOT / "profiles" / "slurm"),
           "--profile", str(ROOT / "profiles" / "slurm-test")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed:\n{out[-8000:]}"
    return workdir, out


def test_slice_runs_to_the_report(slurm_run):
    workdir, _ = slurm_run
    table = pd.read_csv(workdir / "results/tables/em.csv")
    assert set(table["method"]) == {"misaligned"} and set(table["dataset"]) == {"medical"}


def submissions(workdir: Path, out: str) -> dict[str, list[str]]:
    """rule_<rule> / group_<group>_<rules> -> the SLURM job ids submitted for it, from Snakemake's output."""
    by_kind: dict[str, list[str]] = {}
    for jobid, log in SUBMITTED.findall(out):
        kind = Path(log).relative_to(workdir / ".snakemake" / "slurm_logs").parts[0]
        by_kind.setdefault(kind, []).append(jobid)
    return by_kind


def test_gpu_rules_went_through_sbatch(slurm_run):
    workdir, out = slurm_run
    by_kind = submissions(workdir, out)
    assert set(by_kind) == {"rule_train", "rule_generate", "group_judge_batch_judge", "rule_judge_calibration",
                            "rule_probe_nll_base", "group_probe_batch_probe_nll"}, by_kind
    assert len(by_kind["rule_train"]) == 1 and len(by_kind["rule_generate"]) == 1
    # the judge job (one per run, all its evalsets) went through the judge batch group: one sbatch job
    assert len(by_kind["group_judge_batch_judge"]) == 1
    # each SLURM log is named by its job id and holds that job's own Snakemake run
    for jobid, log in SUBMITTED.findall(out):
        assert Path(log).name == f"{jobid}.log", log
        text = Path(log).read_text()
        assert any(f"rule {r}:" in text for r in ("train", "generate", "judge", "judge_calibration", "probe_nll",
                                                  "probe_nll_base")), \
            text[-2000:]
    # the cheap steps ran in the Snakemake process (localrules), not in the queue
    assert "localrule report:" in out and "localrule prepare_em:" in out


def test_gpu_jobs_asked_for_a_gpu_sized_by_the_model(slurm_run):
    workdir, out = slurm_run
    train_job = submissions(workdir, out)["rule_train"][0]
    info = subprocess.run(["scontrol", "show", "job", train_job], capture_output=True, text=True).stdout
    assert "Partition=gpu" in info
    assert re.search(r"gres[:/]gpu[:=]1", info), info
    # (4 + 3 * 0.005) GB on the first attempt
    assert re.search(r"MinMemoryNode=4111M", info), info
    assert "JobState=COMPLETED" in info
