"""End to end on the tiny model: one domain, the three baselines, the misaligned run checkpointed at steps 1 and 2
of 3; the run's checkpoint curve (judged, with both judge-free signals) and the emergence table come out, and a
second run has nothing to do."""

import pandas as pd
import pytest

from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.e2e

RUN = "results/runs/tiny/medical/misaligned/default/seed0"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("ckpt_wf")
    cfg = tiny_config(tiny_model_dir, workdir, **{"data.em.domains": ["medical"], "experiments.target_domains": [],
                                                  "experiments.methods": {}, "training.max_steps": 3,
                                                  "judge.calibration": {"set": None}})
    cfg["checkpoints"] = {"steps": [1, 2], "runs": ["misaligned"], "general_samples": 1}
    configfile = write_config(cfg, workdir / "config.yaml")
    snakemake(workdir, configfile, timeout=600)
    return workdir, configfile


def test_checkpoint_curve_and_emergence_table(finished):
    workdir, _ = finished
    curve = pd.read_parquet(workdir / RUN / "checkpoint_curve.parquet")
    assert curve["step"].tolist() == [1, 2, 3] and curve["checkpoint"].tolist() == ["step-1", "step-2", "final"]
    assert curve["judged"].all() and curve["task_metric_name"].eq("holdout_nll").all()
    assert curve["task_metric"].notna().all() and curve["ll_shift"].notna().all()
    assert curve["n_answers"].gt(0).all()
    # the persona projection (checkpoints.persona, on by default) from the probe jobs, against the untrained model
    # (step 1 is still at the warm-up's learning rate 0: the weights, and so both signals, have not moved yet)
    assert curve["persona_proj"].notna().all() and curve["persona_proj"].iloc[-1] != 0
    gens = pd.read_parquet(workdir / RUN / "checkpoint_eval/step-1/generations.parquet")
    assert set(gens["checkpoint"]) == {"step-1"} and set(gens["evalset"]) == {"general", "indomain"}
    assert not (workdir / RUN / "checkpoint_eval/step-3").exists()  # the final adapter: the run's own evaluation
    md = (workdir / "results/tables/emergence.md").read_text()
    assert "| medical | misaligned | default | 0 | holdout_nll | 3 |" in md
    assert "## Judge-free signals at every checkpoint" in md and "| Persona projection |" in md
    assert "| medical | misaligned | default | 0 | 3 (final) |" in md
    table = pd.read_csv(workdir / "results/tables/emergence.csv")
    assert table["run_id"].tolist() == ["tiny/medical/misaligned/default/seed0"]
    assert (workdir / "results/figures/emergence.png").stat().st_size > 5000


def test_second_run_has_nothing_to_do(finished):
    workdir, configfile = finished
    assert planned_jobs(workdir, configfile) == {}
