"""Stale-only reruns beyond config changes (those are in test_workflow.py): a run killed mid-job resumes
with --rerun-incomplete without consuming a half-written file, and an edit inside the emguard package
reruns the stages that run the edited module, and everything downstream, nothing above.

The workflow runs from a copy of the repository (tracked and untracked-but-not-ignored files), so the test
can edit emguard/*.py there without touching the real tree."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from workflow_helpers import copy_repo, planned_jobs, snakemake, snakemake_command, tiny_config, write_config

pytestmark = pytest.mark.e2e

#: one judge job per run (all its evalsets): untrained, aligned and misaligned on one domain
N_JUDGE = 3


def slice_config(model_dir: Path, workdir: Path) -> dict:
    """One domain, the three baselines, no defense methods: every stage, few jobs."""
    return tiny_config(model_dir, workdir, **{"data.em.domains": ["medical"], "experiments.target_domains": [],
                                              "experiments.methods": {}})


def incomplete_outputs(workdir: Path) -> list[Path]:
    """The outputs Snakemake marked as being written when it was killed (.snakemake/incomplete/<b64 name>)."""
    marks = workdir / ".snakemake" / "incomplete"
    if not marks.is_dir():
        return []
    return [workdir / base64.b64decode(m.name.encode()).decode() for m in marks.iterdir() if m.is_file()]


def final_files(workdir: Path) -> list[Path]:
    """Every result file at a final path: atomic writes keep partial files under hidden .tmp- names."""
    return [p for p in (workdir / "results").rglob("*") if p.is_file() and ".tmp-" not in p.name
            and not any(part.startswith(".") for part in p.relative_to(workdir).parts)]


def kill_during_training(cmd: list[str], workdir: Path, timeout: float = 300) -> None:
    """Start the workflow in its own process group; once a training job has started its stage (its log has
    content), SIGKILL the whole group: Snakemake and the job die with no chance to clean up."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = workdir / "results" / "logs" / "train"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the workflow exited ({proc.returncode}) before a training job started")
            # the stage logs its first line before importing the training code: seconds of work are left
            if logs.is_dir() and any(f.stat().st_size > 0 for f in logs.rglob("*.log")):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no training job started in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_model_dir):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    workdir = tmp_path_factory.mktemp("wf")
    configfile = write_config(slice_config(tiny_model_dir, workdir), workdir / "config.yaml")
    snakefile = repo / "Snakefile"

    kill_during_training(snakemake_command(workdir, configfile, snakefile=snakefile), workdir)
    killed = {
        "incomplete": incomplete_outputs(workdir),
        "incomplete_present": [p for p in incomplete_outputs(workdir) if p.exists()],
        "files": final_files(workdir),
        "planned": planned_jobs(workdir, configfile, "--rerun-incomplete", snakefile=snakefile),
    }
    # a SIGKILLed Snakemake leaves its lock behind; --unlock is the documented way on
    snakemake(workdir, configfile, "--unlock", snakefile=snakefile)
    resumed = snakemake(workdir, configfile, "--rerun-incomplete", snakefile=snakefile)
    return repo, workdir, configfile, killed, resumed


def test_kill_leaves_no_half_written_file(killed_and_resumed):
    _, workdir, _, killed, _ = killed_and_resumed
    # the kill landed inside the training job, whose outputs Snakemake had marked incomplete ...
    train_outputs = [p for p in killed["incomplete"] if p.name in ("adapter", "train_log.parquet")]
    assert train_outputs, f"the kill did not land inside a training job: {killed['incomplete']}"
    # ... and it left nothing at their final paths: a stage writes under a hidden temporary name and renames
    # when done, so a later run can never read a half-written adapter or table
    for out in train_outputs:
        assert out not in killed["incomplete_present"], f"{out}: a killed job's output at its final path"
    # everything that is at a final path is whole
    for f in killed["files"]:
        if f.suffix == ".parquet":
            pq.read_table(f)


def test_rerun_incomplete_resumes_the_killed_job_and_below(killed_and_resumed):
    _, workdir, _, killed, resumed = killed_and_resumed
    planned = killed["planned"]
    # the killed training job again, and everything downstream of it ...
    assert planned.get("train", 0) >= 1 and planned["report"] == 1
    # ... but not what had finished before the kill: training had started, so its data was complete
    assert "prepare_em" not in planned
    table = pd.read_csv(workdir / "results/tables/em.csv")
    assert {"untrained", "aligned", "misaligned"} <= set(table["method"])
    for f in final_files(workdir):
        if f.suffix == ".parquet":
            pq.read_table(f)
    assert not incomplete_outputs(workdir)


def test_after_the_resume_nothing_is_left_to_do(killed_and_resumed):
    repo, workdir, configfile, _, _ = killed_and_resumed
    assert planned_jobs(workdir, configfile, snakefile=repo / "Snakefile") == {}


def planned_after_edit(repo: Path, workdir: Path, configfile: Path, module: str) -> dict[str, int]:
    """The dry-run plan with ``emguard/<module>.py`` (or a subpackage's ``__init__.py``) edited; the file is
    restored afterwards."""
    path = repo / "emguard" / f"{module}.py"
    if not path.exists():
        path = repo / "emguard" / module / "__init__.py"
    before = path.read_text()
    path.write_text(before + "\n# an edit: this module's code changed\n")
    try:
        return planned_jobs(workdir, configfile, snakefile=repo / "Snakefile")
    finally:
        path.write_text(before)


def test_judge_module_edit_reruns_judging_and_below_only(killed_and_resumed):
    repo, workdir, configfile, _, _ = killed_and_resumed
    jobs = planned_after_edit(repo, workdir, configfile, "judge")
    assert set(jobs) == {"judge", "judge_calibration", "run_metrics", "report", "all"}
    assert jobs["judge"] == N_JUDGE and jobs["run_metrics"] == 3 and jobs["judge_calibration"] == 1
    # restored: nothing to do again
    assert planned_jobs(workdir, configfile, snakefile=repo / "Snakefile") == {}


def test_training_module_edit_reruns_training_and_below_only(killed_and_resumed):
    repo, workdir, configfile, _, _ = killed_and_resumed
    jobs = planned_after_edit(repo, workdir, configfile, "training/sft")
    assert set(jobs) == {"train", "generate", "judge", "run_metrics", "probe_nll", "probe_shifts", "report", "all"}
    # one job per trained run; the untrained run's answers and probe NLLs stay
    assert jobs["train"] == jobs["generate"] == jobs["probe_nll"] == 2


def test_report_module_edit_reruns_only_the_report(killed_and_resumed):
    repo, workdir, configfile, _, _ = killed_and_resumed
    jobs = planned_after_edit(repo, workdir, configfile, "report")
    assert set(jobs) == {"report", "all"}


def stage_file(repo: Path, function: str) -> Path:
    """The module of the ``emguard/stages/`` package that defines ``function``."""
    found = [p for p in sorted((repo / "emguard" / "stages").glob("*.py")) if f"\ndef {function}(" in p.read_text()]
    assert len(found) == 1, f"{function} defined in {found}"
    return found[0]


def planned_after_stage_edit(repo: Path, workdir: Path, configfile: Path, function: str) -> dict[str, int]:
    """The dry-run plan with one stage function (in its module of ``emguard/stages/``) edited (a statement added at
    its top)."""
    path = stage_file(repo, function)
    before = path.read_text()
    head = f"\ndef {function}("
    start = before.index(head)
    body = before.index('"""', before.index('"""', start) + 3) + 3  # after the docstring
    path.write_text(before[:body] + "\n    _edited = True  # this stage's code changed" + before[body:])
    try:
        return planned_jobs(workdir, configfile, snakefile=repo / "Snakefile")
    finally:
        path.write_text(before)


def test_editing_one_stage_function_reruns_that_stage_only(killed_and_resumed):
    """The emguard/stages/ package holds every stage: an edit to one function reruns the rules whose scripts call it
    (and what is below them), not every rule, and a new stage function added for another rule reruns nothing,
    whether in a module other stages live in or in a new module re-exported by the package."""
    repo, workdir, configfile, _, _ = killed_and_resumed
    jobs = planned_after_stage_edit(repo, workdir, configfile, "report")
    assert set(jobs) == {"report", "all"}
    jobs = planned_after_stage_edit(repo, workdir, configfile, "train_run")
    assert "train" in jobs and "prepare_em" not in jobs and "judge_calibration" not in jobs
    path, init = stage_file(repo, "report"), repo / "emguard" / "stages" / "__init__.py"
    new_module = repo / "emguard" / "stages" / "a_new_family.py"
    before, init_before = path.read_text(), init.read_text()
    path.write_text(before + "\n\ndef a_new_stage(out: str) -> None:\n    \"\"\"A stage no rule calls yet.\"\"\"\n")
    new_module.write_text("def another_new_stage(out: str) -> None:\n    \"\"\"A stage no rule calls yet.\"\"\"\n")
    init.write_text(init_before + "from emguard.stages.a_new_family import another_new_stage  # noqa: F401\n")
    try:
        assert planned_jobs(workdir, configfile, snakefile=repo / "Snakefile") == {}
    finally:
        path.write_text(before)
        init.write_text(init_before)
        new_module.unlink()
