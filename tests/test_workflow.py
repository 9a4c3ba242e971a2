"""End to end: the real Snakefile on a tiny random model, then reruns of only what is stale."""

import pandas as pd
import pytest

from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.e2e

#: kl, ldifs, persona, inoculation and the four interleave variants, one setting each
N_METHOD_RUNS = 8


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("wf")
    cfg = tiny_config(tiny_model_dir, workdir)
    configfile = write_config(cfg, workdir / "config.yaml")
    snakemake(workdir, configfile)
    return workdir, cfg, configfile


def test_full_run_writes_the_report(finished):
    workdir, cfg, _ = finished
    table = pd.read_csv(workdir / "results/tables/em.csv")
    assert {"untrained", "aligned", "misaligned"} <= set(table["method"])
    assert set(table["dataset"]) == {"insecure_code", "medical"}
    md = (workdir / "results/tables/em.md").read_text()
    assert "insecure_code" in md and "misaligned" in md.lower()
    assert (workdir / "results/figures/em_vs_incoherence.png").stat().st_size > 1000
    judgments = pd.read_parquet(workdir / "results/runs/tiny/medical/misaligned/default/seed0/judgments.parquet")
    assert set(judgments["metric"]) == {"aligned", "coherent"}
    assert set(judgments["evalset"]) == {"general", "indomain"}  # one judge job per run, all its evalsets
    metrics = pd.read_parquet(workdir / "results/runs/tiny/medical/misaligned/default/seed0/metrics.parquet")
    assert sorted(metrics["evalset"]) == ["general", "indomain"]
    import json

    meta = json.loads((workdir / "results/runs/tiny/medical/misaligned/default/seed0/run.json").read_text())
    assert meta["dtype"] == "float32" and meta["dtype_configured"] == "float32" and meta["steps"] >= 1
    log = pd.read_parquet(workdir / "results/runs/tiny/medical/misaligned/default/seed0/train_log.parquet")
    assert len(log) >= 1 and log["loss"].notna().all()
    # the likelihood measure: every run's shifts, the table's columns, the probe table, the headline
    summary = pd.read_parquet(workdir / "results/probes/tiny/shift_summary.parquet")
    assert {"indomain", "ood_set", "ood"} == set(summary["scope"])
    assert set(summary["probe_set"]) == {"insecure_code", "medical", "general", "ood"}
    assert {"indomain_shift", "ood_shift", "ood_excess"} <= set(table.columns)
    assert table.loc[table["method"] == "misaligned", "ood_excess"].notna().all()
    assert "In-domain LL shift" in md and "### medical" in (workdir / "results/tables/likelihood.md").read_text()
    assert "Misaligned training on medical" in (workdir / "results/tables/headline.md").read_text()
    # the judge measured on the labelled set (36 items: config.yaml's max_items); a tiny random model cannot
    # tell the labels apart, and the EM table says so above its rates
    calibration = pd.read_parquet(workdir / "results/judge/calibration_summary.parquet")
    assert set(calibration["metric"]) == {"aligned", "coherent"} and calibration["warn"].all()
    assert md.startswith("Judge agreement with 36 hand-labelled answers") and "Warning: the judge cannot tell" in md
    assert "| aligned | aligned vs misaligned |" in (workdir / "results/tables/judge_calibration.md").read_text()


def test_second_run_has_nothing_to_do(finished):
    workdir, _, configfile = finished
    assert planned_jobs(workdir, configfile) == {}


def test_training_change_reruns_training_and_below_only(finished, tmp_path, tiny_model_dir):
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"training.learning_rate": 3e-4}),
                           tmp_path / "lr.yaml")
    jobs = planned_jobs(workdir, changed)
    # aligned + misaligned x 2 domains, and 8 defense runs on the target domain
    assert jobs.get("train") == 4 + N_METHOD_RUNS
    n_trained = jobs["train"]
    # the pool NLLs use the misaligned adapters, so they are downstream of training too
    assert set(jobs) == {"train", "pool_nll", "score_pool", "interleave_set", "generate", "judge", "run_metrics",
                         "probe_nll", "probe_shifts", "report", "all"}
    assert jobs["interleave_set"] == 2  # plus and plusplus read the scores; random and onpolicy do not
    assert jobs["generate"] == n_trained  # one job per trained run (all its evalsets); untrained untouched
    assert jobs["run_metrics"] == n_trained == jobs["probe_nll"]  # the untrained model's probe NLLs stay


def test_probe_change_rescores_the_probes_and_never_retrains(finished, tmp_path, tiny_model_dir):
    """Editing the probes reruns the probe check and every model's probe NLLs; training only waits for the
    check (an ancient input) and reruns nothing. A bootstrap setting reruns the summary alone."""
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"probes.max_per_domain": 2}), tmp_path / "p.yaml")
    jobs = planned_jobs(workdir, changed)
    assert set(jobs) == {"prepare_probes", "probe_nll_base", "probe_nll", "probe_shifts", "report", "all"}
    assert jobs["probe_nll"] == 4 + N_METHOD_RUNS
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"probes.bootstrap": 50}), tmp_path / "b.yaml")
    assert set(planned_jobs(workdir, changed)) == {"probe_shifts", "report", "all"}


def test_judge_change_reruns_judging_and_below_only(finished, tmp_path, tiny_model_dir):
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"judge.min_prob_mass": 0.3}),
                           tmp_path / "judge.yaml")
    jobs = planned_jobs(workdir, changed)
    # Persona vectors are filtered by judge scores, so the persona branch is downstream of the judge too.
    persona_branch = {"persona_extract", "persona_validate", "train", "generate"}
    assert set(jobs) == ({"judge", "judge_calibration", "run_metrics", "report", "all", "probe_nll", "probe_shifts"}
                         | persona_branch)
    assert jobs["judge_calibration"] == 1  # the judge's settings changed: it is measured again
    assert jobs["train"] == jobs["generate"] == jobs["probe_nll"] == 1  # only the persona-steered run retrains
    assert jobs["judge"] == 1 + 4 + N_METHOD_RUNS  # one job per run, whatever its number of evalsets


def test_calibration_change_remeasures_the_judge_and_nothing_else(finished, tmp_path, tiny_model_dir):
    """judge.calibration is no judge setting: the EM answers are not judged again, only the labelled set."""
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"judge.calibration": {"max_items": 30}}),
                           tmp_path / "cal.yaml")
    assert planned_jobs(workdir, changed) == {"judge_calibration": 1, "report": 1, "all": 1}
    off = write_config(tiny_config(tiny_model_dir, workdir, **{"judge.calibration": {"set": None}}),
                       tmp_path / "off.yaml")
    assert planned_jobs(workdir, off) == {"report": 1, "all": 1}  # the report then says the judge is unmeasured


def test_dtype_change_reruns_every_model_stage_and_nothing_else(finished, tmp_path, tiny_model_dir):
    """dtype and device reach the rules as params: a new dtype reruns every stage that runs the model."""
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"model.dtype": "bfloat16"}), tmp_path / "dt.yaml")
    jobs = planned_jobs(workdir, changed)
    assert {"train", "generate", "judge", "judge_calibration", "pool_nll", "persona_extract", "persona_validate",
            "onpolicy_answers", "probe_nll_base", "probe_nll"} <= set(jobs)
    assert not {"prepare_em", "prepare_pool", "prepare_general_questions"} & set(jobs)
    assert jobs["generate"] == 1 + 4 + N_METHOD_RUNS


def test_fraction_change_reruns_selection_not_scoring(finished, tmp_path, tiny_model_dir):
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir,
                                       **{"experiments.methods.interleave.fractions": [0.3]}), tmp_path / "f.yaml")
    jobs = planned_jobs(workdir, changed)
    assert not {"pool_nll", "score_pool", "persona_extract"} & set(jobs)
    assert jobs["interleave_set"] == 4 and jobs["onpolicy_answers"] == 1
    assert jobs["train"] == 4  # only the four interleaving runs are new


def test_refusal_or_eps_change_rescores_from_stored_nlls(finished, tmp_path, tiny_model_dir):
    workdir, cfg, _ = finished
    changed = write_config(tiny_config(tiny_model_dir, workdir, **{"interleave.eps": 1e-3,
                                                                   "interleave.refusal_keywords": ["sure"]}),
                           tmp_path / "eps.yaml")
    jobs = planned_jobs(workdir, changed)
    # no forward pass over the pool again: only the per-target scores, and the plus/plusplus runs below them
    assert "pool_nll" not in jobs and "onpolicy_answers" not in jobs
    assert jobs["score_pool"] == 1 and jobs["interleave_set"] == 2 and jobs["train"] == 2


def test_html_report_contains_the_em_table(finished):
    workdir, _, configfile = finished
    out = workdir / "report.html"
    snakemake(workdir, configfile, "--report", str(out))
    html = out.read_text(errors="replace")
    assert "em.md" in html and "em_vs_incoherence.png" in html
    # the front page opens with the run's headline findings, generated from its results
    assert "Headline findings" in html and "Misaligned training on medical" in html
    assert "likelihood_shift.png" in html
