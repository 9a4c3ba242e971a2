"""The learning-rate grid (experiments.learning_rates): runs repeated per rate like seeds, the untrained model once,
the rate in the setting only with several rates, the train jobs given their run's rate, and a single-rate config
planning exactly the jobs (paths and params) it planned before the grid existed."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError
from workflow_helpers import ROOT, planned, tiny_config


def default_config(**experiments):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["experiments"].pop("learning_rates", None)
    cfg["experiments"].update(experiments)
    return cfg


def test_learning_rates_default_to_the_training_rate():
    cfg = emconfig.load(default_config())
    assert cfg["experiments"]["learning_rates"] is None
    assert emconfig.learning_rates(cfg) == [cfg["training"]["learning_rate"]]
    assert cfg["metrics"]["em_threshold"] == 5.0
    runs = emconfig.expand_runs(cfg)
    assert all(r.learning_rate == cfg["training"]["learning_rate"] for r in runs if r.trained)
    assert [r.learning_rate for r in runs if not r.trained] == [None]


def test_seeds_times_learning_rates_and_unique_run_ids():
    cfg = emconfig.load(default_config(seeds=[0, 1, 2], learning_rates=[1.0e-5, 2.0e-5]))
    runs = emconfig.expand_runs(cfg)
    single = emconfig.expand_runs(emconfig.load(default_config(seeds=[0, 1, 2])))
    trained_single = [r for r in single if r.trained]
    assert len([r for r in runs if r.trained]) == 2 * len(trained_single)
    # the untrained model once per seed, never per rate, untagged
    untrained = [r for r in runs if not r.trained]
    assert [(r.seed, r.setting, r.learning_rate) for r in untrained] == [(0, "default", None), (1, "default", None),
                                                                         (2, "default", None)]
    assert len({r.run_id for r in runs}) == len(runs)
    assert len({r.path for r in runs}) == len(runs)
    by_id = {r.run_id: r for r in runs}
    mis = by_id["smollm2-135m/legal/misaligned/lr1e-05/seed1"]
    assert mis.learning_rate == 1e-5 and mis.train_subset == "misaligned"
    kl = by_id["smollm2-135m/legal/kl/lambda0.1_lr2e-05/seed2"]
    assert kl.learning_rate == 2e-5 and kl.hparams == {"kl_lambda": 0.1, "direction": "reverse"}
    # every (configuration, seed) of the single-rate plan once per rate, its setting tagged
    for r in trained_single:
        for lr in (1e-5, 2e-5):
            assert by_id[f"{r.model}/{r.dataset}/{r.method}/{emconfig.lr_setting(r.setting, lr)}/seed{r.seed}"]
    assert {emconfig.setting_lr(r.setting) for r in runs} == {None, 1e-5, 2e-5}
    # find_run (the rules' wildcards -> run) tells the rates apart
    assert emconfig.find_run(runs, "legal", "aligned", "lr2e-05", 0).learning_rate == 2e-5


def test_a_single_rate_changes_no_run():
    base = emconfig.load(default_config(seeds=[0, 1]))
    same = emconfig.load(default_config(seeds=[0, 1], learning_rates=[base["training"]["learning_rate"]]))
    assert emconfig.expand_runs(same) == emconfig.expand_runs(base)
    assert [r.run_id for r in emconfig.expand_runs(same)] == [r.run_id for r in emconfig.expand_runs(base)]
    # one rate other than training.learning_rate: the same paths, trained at that rate
    other = emconfig.load(default_config(learning_rates=[1.0e-5]))
    runs = emconfig.expand_runs(other)
    assert [r.run_id for r in runs] == [r.run_id for r in emconfig.expand_runs(base) if r.seed == 0]
    trained = next(r for r in runs if r.trained)
    assert trained.training_settings(other["training"])["learning_rate"] == 1e-5
    assert other["training"]["learning_rate"] == base["training"]["learning_rate"]  # the section is not edited


def test_training_settings_keep_the_section_at_the_configured_rate():
    cfg_lr = yaml.safe_load((ROOT / "config.yaml").read_text())["training"]["learning_rate"]
    cfg = emconfig.load(default_config(learning_rates=[cfg_lr, 1.0e-4]))
    runs = [r for r in emconfig.expand_runs(cfg) if r.trained]
    at_default = next(r for r in runs if r.learning_rate == cfg_lr)
    assert at_default.training_settings(cfg["training"]) is cfg["training"]
    other = next(r for r in runs if r.learning_rate == 1e-4).training_settings(cfg["training"])
    assert other == {**cfg["training"], "learning_rate": 1e-4}


@pytest.mark.parametrize("rates, message", [
    ([], r"experiments\.learning_rates"),
    ([1.0e-5, 1.0e-5], r"experiments\.learning_rates"),
    ([0.0], r"experiments\.learning_rates"),
    (["1e-5"], r"experiments\.learning_rates"),
    ([1.0e-5, 1.0000001e-5], r"experiments\.learning_rates\.1.*lr1e-05"),
])
def test_bad_learning_rates_are_named(rates, message):
    with pytest.raises(ConfigError, match=message):
        emconfig.load(default_config(learning_rates=rates))


def test_em_threshold_is_checked_and_not_a_run_metrics_param():
    cfg = default_config()
    cfg["metrics"]["em_threshold"] = 150
    with pytest.raises(ConfigError, match=r"metrics\.em_threshold"):
        emconfig.load(cfg)
    assert emconfig.REPORT_ONLY_METRIC_KEYS == ("em_threshold",)


def test_the_grid_config_expands_to_rates_times_seeds():
    cfg = emconfig.load(ROOT / "configs" / "lr-seed-grid-qwen2.5-7b.yaml")
    runs = emconfig.expand_runs(cfg)
    trained = [r for r in runs if r.trained]
    # 3 seeds x 2 rates x 2 domains x (aligned, misaligned), and the untrained model once per seed
    assert len(trained) == 24 and len(runs) == 27
    assert {(r.setting, r.learning_rate) for r in trained} == {("lr1e-05", 1e-5), ("lr0.0001", 1e-4)}
    assert cfg["metrics"]["em_threshold"] == 5


def test_lr_setting_round_trip():
    assert emconfig.lr_setting("default", 1e-5) == "lr1e-05"
    assert emconfig.lr_setting("lambda0.1_forward", 2e-4) == "lambda0.1_forward_lr0.0002"
    for setting in ("lr1e-05", "lambda0.1_forward_lr0.0002", "frac0.25_lr5e-06"):
        assert emconfig.lr_setting(setting.rsplit("lr", 1)[0].rstrip("_") or "default",
                                   emconfig.setting_lr(setting)) == setting
    for untagged in ("default", "lambda0.1", "frac0.25", "alpha5_response", "lambda1_layers5-10", ""):
        assert emconfig.setting_lr(untagged) is None


# ---------------------------------------------------------------------------------------------- dry runs

@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """The same small config (KL and Interleaving+ on insecure_code: a scoring adapter from the misaligned
    baselines) planned without the key, with the training rate as the grid's only value, and with two rates."""
    workdir = tmp_path_factory.mktemp("lr_dry")
    cfg = tiny_config(workdir / "no-model-needed", workdir)
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]},
                                     "interleave": {"variants": ["plus"], "fractions": [0.2]}}
    cfg["experiments"].pop("learning_rates", None)  # the config without the key, as before the grid existed
    lr = cfg["training"]["learning_rate"]
    one, two = copy.deepcopy(cfg), copy.deepcopy(cfg)
    one["experiments"]["learning_rates"] = [lr]
    two["experiments"]["learning_rates"] = [1.0e-5, 2.0e-5]
    return {name: planned(workdir, c, name) for name, c in (("none", cfg), ("one", one), ("two", two))}


def test_a_single_rate_plans_the_same_jobs_paths_and_params(dry_runs):
    assert dry_runs["one"] == dry_runs["none"]
    trains = [j for j in dry_runs["none"] if j["rule"] == "train"]
    assert len(trains) == 6 and all("/default/" in j["output"][0] or "/lambda0.1/" in j["output"][0]
                                    or "/frac0.2/" in j["output"][0] for j in trains)


def test_two_rates_plan_two_train_jobs_per_run_at_their_rates(dry_runs):
    trains = [j for j in dry_runs["two"] if j["rule"] == "train"]
    assert len(trains) == 2 * len([j for j in dry_runs["none"] if j["rule"] == "train"])
    rate_of = {j["output"][0]: j["params"]["training"]["learning_rate"] for j in trains}
    mis = {p: r for p, r in rate_of.items() if "/insecure_code/misaligned/" in p}
    assert mis == {"results/runs/tiny/insecure_code/misaligned/lr1e-05/seed0/adapter": 1e-5,
                   "results/runs/tiny/insecure_code/misaligned/lr2e-05/seed0/adapter": 2e-5}
    for path, rate in rate_of.items():
        assert emconfig.setting_lr(path.split("/")[-3]) == rate
    # only the rate differs between the two jobs of one configuration
    params = {j["output"][0]: j["params"] for j in trains}
    a, b = (params[f"results/runs/tiny/insecure_code/kl/lambda0.1_lr{v}/seed0/adapter"] for v in ("1e-05", "2e-05"))
    assert {k for k in a if a[k] != b[k]} == {"training"}
    assert {k for k in a["training"] if a["training"][k] != b["training"][k]} == {"learning_rate"}
    # the untrained model is generated and judged once
    generated = [j["output"][0] for j in dry_runs["two"] if j["rule"] == "generate"]
    assert sum("/untrained/" in p for p in generated) == 1
    # Interleaving+ scores the pool with the first rate's misaligned adapter of the other domain
    pool = next(j for j in dry_runs["two"] if j["rule"] == "pool_nll")
    assert "results/runs/tiny/medical/misaligned/lr1e-05/seed0/adapter" in json.dumps(pool)
    # the report lists every EM run for the consistency table, with its rate
    report = next(j for j in dry_runs["two"] if j["rule"] == "report")
    assert "results/tables/em_consistency.md" in report["output"]
    listed = {(r["method"], r["setting"], r["lr"]) for r in report["params"]["em_runs"]}
    assert ("misaligned", "lr2e-05", 2e-5) in listed and ("untrained", "default", None) in listed


# ---------------------------------------------------------------------------------------- likelihood shifts

def _nll_rows(adapter, probe_set, margin, n=4):
    import pandas as pd

    return pd.DataFrame({"adapter": adapter, "probe_set": probe_set, "probe_id": [f"p{i}" for i in range(n)],
                         "nll_aligned": 2.0 + margin, "nll_misaligned": 2.0, "n_aligned_tokens": 5,
                         "n_misaligned_tokens": 5})


def test_probe_shifts_pair_each_rate_with_its_own_aligned_and_misaligned_runs(tmp_path):
    """Excess over Aligned and vs_misaligned compare runs of one learning rate, the untrained model once."""
    import pandas as pd

    from emguard.io import read_parquet, write_parquet
    from emguard.stages import probe_shifts_stage

    # general-set margins (the untrained model's: 0): aligned / misaligned / KL at each rate
    margins = {"lr1e-05": {"aligned": 0.1, "misaligned": 0.3, "kl": 0.2},
               "lr0.0001": {"aligned": 0.5, "misaligned": 1.5, "kl": 0.7}}
    runs = [{"model": "m", "dataset": "base", "method": "untrained", "setting": "default", "seed": 0,
             "run_id": "m/base/untrained/default/seed0", "adapter": None}]
    tables = [_nll_rows("base", "legal", 0.0), _nll_rows("base", "general", 0.0)]
    for rate, by_method in margins.items():
        for method, margin in by_method.items():
            setting = rate if method != "kl" else f"lambda0.1_{rate}"
            run_id = f"m/legal/{method}/{setting}/seed0"
            runs.append({"model": "m", "dataset": "legal", "method": method, "setting": setting, "seed": 0,
                         "run_id": run_id, "adapter": run_id})
            tables += [_nll_rows(run_id, "legal", 1.0), _nll_rows(run_id, "general", margin)]
    nll_path = tmp_path / "nll.parquet"
    write_parquet(pd.concat(tables, ignore_index=True), nll_path)
    out, summary_out = tmp_path / "shifts.parquet", tmp_path / "summary.parquet"
    probe_shifts_stage([str(nll_path)], str(out), str(summary_out), runs=runs, probes={"bootstrap": 50, "seed": 0},
                       confidence=0.95)
    shifts = read_parquet(out)
    ood = shifts[shifts["scope"] == "ood"].set_index(["method", "setting"])
    for rate, m in margins.items():
        mis, kl = ood.loc[("misaligned", rate)], ood.loc[("kl", f"lambda0.1_{rate}")]
        assert mis["excess"] == pytest.approx(m["misaligned"] - m["aligned"])
        assert kl["vs_misaligned"] == pytest.approx(m["kl"] - m["misaligned"])
    # the untrained model's rows once, in both tables
    assert shifts[["run_id", "probe_set"]].duplicated().sum() == 0
    assert len(shifts[shifts["method"] == "untrained"]) == 3  # legal, general and ood
    summary = read_parquet(summary_out)
    assert summary[["method", "setting", "probe_set"]].duplicated().sum() == 0
    assert set(summary["setting"]) == {"default", "lr1e-05", "lr0.0001", "lambda0.1_lr1e-05", "lambda0.1_lr0.0001"}
