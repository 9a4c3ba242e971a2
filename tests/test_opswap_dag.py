"""OpSwap in the DAG: the runs the config adds, what a dry run plans, interleaving on the benign rows, and
the Table 3 layout of the report."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard import data, schemas
from emguard.metrics import wilson_interval
from emguard.report import opswap_table
from emguard.stages import interleave_count, interleave_set_stage, prepare_opswap_questions, task_metrics_run
from workflow_helpers import ROOT, snakemake, tiny_config, write_config


def _config(**opswap):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["data"]["opswap"] = opswap
    return emconfig.load(cfg)


def test_no_opswap_runs_without_tiers():
    cfg = _config(tiers=[])
    assert cfg["eval"]["opswap"] == {"n_questions": 30, "samples": 10}
    assert not any(emconfig.is_opswap(r.dataset) for r in emconfig.expand_runs(cfg))


def test_each_tier_gets_untrained_sft_and_every_method_on_benign_rows():
    cfg = _config(tiers=[0, 2], n=50)
    runs = emconfig.expand_runs(cfg)
    target = cfg["experiments"]["target_domains"][0]
    em_methods = [(r.method, r.setting) for r in runs
                  if r.dataset == target and r.method not in ("aligned", "misaligned")]
    for tier in (0, 2):
        tier_runs = [r for r in runs if r.dataset == f"opswap_t{tier}"]
        assert [(r.method, r.setting) for r in tier_runs] == [("untrained", "default"), ("sft", "default")] + em_methods
        assert not tier_runs[0].trained and tier_runs[0].train_subset is None  # the base model: Table 3's baseline
        assert {r.train_subset for r in tier_runs[1:]} == {"benign"}
        assert all(emconfig.evalsets(r, cfg) == ["opswap"] for r in tier_runs)
    assert emconfig.question_set("opswap_t2", "opswap") == "opswap_t2"
    # EM runs are unchanged
    legal = emconfig.find_run(runs, "legal", "misaligned", "default", 0)
    assert legal.train_subset == "misaligned" and emconfig.evalsets(legal, cfg) == ["general", "indomain"]
    assert len({r.run_id for r in runs}) == len(runs)


def test_opswap_names_are_reserved_and_eval_keys_checked():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["data"]["em"]["domains"].append("opswap_t1")
    with pytest.raises(emconfig.ConfigError, match=r"data\.em\.domains\.\d+.*reserved"):
        emconfig.load(cfg)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["eval"]["opswap"] = {"n_questions": 0}
    with pytest.raises(emconfig.ConfigError, match=r"eval\.opswap\.n_questions"):
        emconfig.load(cfg)


def test_interleaving_and_scoring_on_the_benign_opswap_rows(tmp_path):
    em, pool, out = tmp_path / "opswap_t1.parquet", tmp_path / "pool.parquet", tmp_path / "mix.parquet"
    rows = data.opswap(1, 40, 0)
    rows.to_parquet(em)
    data.benign_pool(20, 0).to_parquet(pool)
    n_train = int(((rows["split"] == "train") & (rows["subset"] == "benign")).sum())
    assert interleave_count(str(em), 0.25, "benign") == round(0.25 * n_train)
    interleave_set_stage(str(em), str(pool), str(out), variant="random", fraction=0.25, seed=0, subset="benign")
    mix = pd.read_parquet(out)
    assert (~mix["interleaved"]).sum() == n_train and mix["interleaved"].sum() == round(0.25 * n_train)

    questions = tmp_path / "q.parquet"
    prepare_opswap_questions(str(em), str(questions), n_questions=3, samples=2)
    q = pd.read_parquet(questions)
    assert len(q) == 3 and (q["samples"] == 2).all() and q["reference"].notna().all()
    gens = pd.DataFrame({"run_id": "r", "question_id": list(q["question_id"]) * 2, "sample_idx": [0] * 3 + [1] * 3,
                         "prompt_messages": [[{"role": "user", "content": "x"}]] * 6,
                         "answer": [f"Answer: {r}" for r in q["reference"]] + ["Answer: nope"] * 3, "seed": 0,
                         "checkpoint": "final"})
    gens_path, metrics = tmp_path / "g.parquet", tmp_path / "m.parquet"
    gens.to_parquet(gens_path)
    info = {"model": "tiny", "dataset": "opswap_t1", "method": "sft", "setting": "default", "seed": 0,
            "run_id": "tiny/opswap_t1/sft/default/seed0"}
    task_metrics_run(str(gens_path), str(questions), str(metrics), run_info=info, evalset="opswap", confidence=0.95)
    m = pd.read_parquet(metrics).iloc[0]
    assert (m["tier"], m["n_scored"], m["n_correct"], m["accuracy"]) == (1, 6, 3, 50.0)


def test_opswap_table_layout_and_numbers():
    def row(method, setting, tier, seed, k, n):
        lo, hi = wilson_interval(k, n)
        return {"model": "m", "dataset": f"opswap_t{tier}", "method": method, "setting": setting, "seed": seed,
                "n_scored": n, "n_correct": k, "accuracy": 100 * k / n, "accuracy_lo": 100 * lo,
                "accuracy_hi": 100 * hi, "confidence": 0.95}

    tm = pd.DataFrame([
        row("kl", "lambda0.1", 0, 0, 5, 10),
        row("interleave_random", "frac0.05", 2, 0, 1, 10),
        row("sft", "default", 0, 0, 8, 10), row("sft", "default", 0, 1, 6, 10),
        row("sft", "default", 2, 0, 3, 10),
        row("kl", "lambda0.01", 0, 0, 2, 10), row("kl", "lambda0.01", 2, 0, 0, 10),
    ])
    md, table = opswap_table(tm)
    assert list(table["row"]) == ["SFT", "KL (lambda0.01)", "KL (lambda0.1)", "Interleaving (frac0.05)"]
    assert [c for c in table.columns if c.startswith("tier")] == [
        f"tier{t}_{c}" for t in (0, 2) for c in ("accuracy", "lo", "hi", "n_scored")]
    sft = table.iloc[0]
    assert sft["tier0_accuracy"] == pytest.approx(70.0) and sft["n_seeds"] == 2 and sft["tier0_n_scored"] == 20
    lo, hi = wilson_interval(14, 20)  # two seeds: Wilson interval of the pooled counts
    assert (sft["tier0_lo"], sft["tier0_hi"]) == pytest.approx((100 * lo, 100 * hi))
    assert sft["tier2_accuracy"] == pytest.approx(30.0)
    kl01 = table.iloc[2]
    assert kl01["tier0_accuracy"] == pytest.approx(50.0) and math.isnan(kl01["tier2_accuracy"])
    assert "| Method | Tier 0 | Tier 2 | Seeds |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| KL (lambda0.1) |"))
    assert line.split(" | ")[2].strip() == "–" and line.split(" | ")[1].startswith("50.00 [")
    assert opswap_table(tm.drop(columns="dataset").assign(tier=tm["dataset"].str[-1].astype(int)))[1].equals(table)


# ---------------------------------------------------------------------------------------------- dry run

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("opswap_dry")
    cfg = tiny_config(workdir / "no-model-needed", workdir)
    cfg["data"]["opswap"] = {"tiers": [1], "n": 20}
    configfile = write_config(cfg, workdir / "config.yaml")
    proc = snakemake(workdir, configfile, "-n")
    return emconfig.load(cfg), proc.stdout


def _jobs(out):
    """(rule, output line) of every job in a dry run's listing."""
    return re.findall(r"^rule (\w+):\n(?:    input: .*\n)?    output: (.*)$", out, flags=re.M)


def test_dry_run_plans_the_opswap_slice(dry_run):
    cfg, out = dry_run
    jobs = _jobs(out)
    outputs = {rule: [o for r, o in jobs if r == rule] for rule, _ in jobs}
    assert outputs["prepare_opswap"] == ["results/data/em/opswap_t1.parquet"]
    assert outputs["prepare_opswap_questions"] == ["results/data/questions/opswap_t1.parquet"]
    runs = [r for r in emconfig.expand_runs(cfg) if r.dataset == "opswap_t1"]
    assert len(runs) == 1 + 1 + 8  # untrained + SFT + kl, ldifs, persona, inoculation, 4 interleave variants
    trained = {o.split(", ")[0] for o in outputs["train"]}
    generated = set(outputs["generate"])
    scored = set(outputs["task_metrics"])
    for r in runs:
        assert (f"{r.path}/adapter" in trained) == r.trained
        assert f"{r.path}/generations.parquet" in generated
        assert f"{r.path}/task_metrics.parquet" in scored
    assert not [o for o in outputs["judge"] + outputs["run_metrics"] if "opswap" in o]
    assert not [o for o in generated if "opswap" in o and not o.endswith("/generations.parquet")]
    assert len(scored) == len(runs)
    # interleaving on OpSwap: the mixes of the tier file, scored with the misaligned adapters of every domain
    assert sum("results/interleave/tiny/opswap_t1/" in o for o in outputs["interleave_set"]) == 4
    assert "results/interleave/tiny/opswap_t1/scores.parquet" in outputs["score_pool"]
    assert "results/tables/opswap.md" in outputs["report"][0]


def test_report_declares_the_opswap_table_without_tiers(tmp_path):
    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    configfile = write_config(cfg, tmp_path / "config.yaml")
    out = snakemake(tmp_path, configfile, "-n", "results/tables/opswap.csv").stdout
    jobs = _jobs(out)
    assert not [o for _, o in jobs if "opswap_t" in o]
    assert any(r == "report" for r, _ in jobs)


# ---------------------------------------------------------------------------------------------- real run

@pytest.mark.e2e
def test_tiny_opswap_slice_runs(tmp_path, tiny_model_dir):
    """The untrained model, SFT, KL and interleaving on one OpSwap tier, scored by exact match, into the report
    (~1.5 min)."""
    cfg = tiny_config(tiny_model_dir, tmp_path)
    cfg["data"]["opswap"] = {"tiers": [1], "n": 20}
    cfg["eval"]["opswap"] = {"n_questions": 2, "samples": 2}
    cfg["training"]["max_length"] = 384  # the tiny tokenizer spends ~200 tokens on an OpSwap example
    cfg["experiments"].update(baselines=["untrained"], target_domains=[],
                              methods={"kl": {"kl_lambda": [0.1]},
                                       "interleave": {"variants": ["random"], "fractions": [0.2]}})
    snakemake(tmp_path, write_config(cfg, tmp_path / "config.yaml"))
    table = pd.read_csv(tmp_path / "results/tables/opswap.csv")
    assert list(table["row"]) == ["Untrained", "SFT", "KL (lambda0.1)", "Interleaving (frac0.2)"]
    assert (table["tier1_n_scored"] == 4).all() and table["tier1_accuracy"].between(0, 100).all()
    runs = tmp_path / "results/runs/tiny/opswap_t1"
    assert not list(runs.glob("*/*/seed0/judgments"))
    untrained = runs / "untrained/default/seed0"
    assert (untrained / "task_metrics.parquet").exists() and not (untrained / "adapter").exists()
    mix = pd.read_parquet(tmp_path / "results/interleave/tiny/opswap_t1/random_frac0.2_seed0.parquet")
    assert set(mix.loc[~mix["interleaved"], "domain"]) == {"opswap_t1"}
