"""Many base models (issue 12, section 6): config ``models`` (a list) next to the single ``model`` mapping, every run
planned once per model with that model's settings, errors naming the item; the report's EM consistency per model and
the correlation between model size and EM rate (Pearson r with a Fisher interval, undefined below 3 models); the
study config planning jobs for every model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError
from emguard.report import consistency_table, model_sizes, size_em_table
from emguard.report.model_size import fisher_interval, pearson_r, safetensors_parameters
from workflow_helpers import ROOT, planned

STUDY = ROOT / "configs" / "open-models-80gb-grid.yaml"


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def two_models(**second) -> dict:
    """The embedded default with a second base model (a hub id, 6 layers) and a judge that is not the base model."""
    cfg = default_config()
    first = cfg.pop("model")
    cfg["models"] = [first, {"name": "other-1.5b", "source": {"hub": "org/other-1.5B"}, "num_layers": 36, **second}]
    cfg["judge"]["model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    return cfg


# ------------------------------------------------------------------------------------------------ config

def test_a_list_of_one_model_plans_what_the_mapping_plans():
    single = emconfig.load(default_config())
    listed = default_config()
    listed["models"] = [listed.pop("model")]
    listed = emconfig.load(listed)
    assert emconfig.models(single) == emconfig.models(listed) == [single["model"]]
    a, b = emconfig.expand_runs(single), emconfig.expand_runs(listed)
    assert [(r.run_id, r.hparams, r.learning_rate) for r in a] == [(r.run_id, r.hparams, r.learning_rate) for r in b]


def test_every_run_is_planned_once_per_model_with_that_models_steering_layer():
    cfg = emconfig.load(two_models(steering_layer=25))
    runs = emconfig.expand_runs(cfg)
    first, second = [[r for r in runs if r.model == m] for m in ("smollm2-135m", "other-1.5b")]
    assert len(first) == len(second) == len(runs) // 2 and runs[:len(first)] == first  # model by model, in order
    assert [r.run_id.split("/", 1)[1] for r in first] == [r.run_id.split("/", 1)[1] for r in second]
    # persona: the model's own layer, else experiments.methods.persona.steering_layer (21 in config.yaml)
    layers = {r.model: r.hparams["steering_layer"] for r in runs if r.method == "persona"}
    assert layers == {"smollm2-135m": 21, "other-1.5b": 25}
    hit = emconfig.find_run(runs, "legal", "persona", "alpha5", 0, model="other-1.5b")
    assert hit.model == "other-1.5b" and hit.hparams["steering_layer"] == 25
    with pytest.raises(KeyError, match="no run nope/legal"):
        emconfig.find_run(runs, "legal", "persona", "alpha5", 0, model="nope")
    # every model's dtype and device defaults are filled in
    assert [(m["dtype"], m["device"]) for m in emconfig.models(cfg)] == [("auto", "auto")] * 2


def test_rl_runs_are_planned_per_model():
    cfg = two_models(steering_layer=25)
    cfg["rl"]["enabled"] = True
    runs = emconfig.expand_rl_runs(emconfig.load(cfg))
    assert {r.model for r in runs} == {"smollm2-135m", "other-1.5b"}
    persona = {r.model: r.hparams["steering_layer"] for r in runs if r.method == "persona"}
    assert persona == {"smollm2-135m": 21, "other-1.5b": 25}
    assert emconfig.find_rl_run(runs, "grpo", "default", 0, model="other-1.5b").model == "other-1.5b"


def _set(cfg, dotted, value):
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[leaf] = value
    return cfg


@pytest.mark.parametrize("edit, message", [
    (lambda c: _set(c, "models.1.name", "smollm2-135m"),
     r"models\.1\.name': 'smollm2-135m' is also the name of models\.0"),
    (lambda c: c["models"][1].pop("source") and c, r"models\.1': 'source' is a required property \(model 'other-1\.5b'\)"),
    (lambda c: _set(c, "models.1.dtype", "int8"), r"models\.1\.dtype': 'int8' is not one of .* \(model 'other-1\.5b'\)"),
    (lambda c: {**c, "model": c["models"][0]}, r"'model': give model \(one base model\) or models \(a list\), not both"),
    (lambda c: {k: v for k, v in c.items() if k != "models"}, r"'model': missing"),
    (lambda c: _set(c, "judge.model", "base"), r"judge\.model': 'base' is the base model judging its own answers"),
    (lambda c: _set(c, "models.1.steering_layer", 40), r"models\.1\.steering_layer': 40 is outside the model's layers 1\.\.36"),
    (lambda c: _set(c, "models.1.num_layers", 12),
     r"experiments\.methods\.persona\.steering_layer': 21 is outside the model's layers 1\.\.12 \(model 'other-1\.5b', models\.1\)"),
    (lambda c: _set(c, "experiments.methods.persona.vectors", "config.yaml"),
     r"experiments\.methods\.persona\.vectors': a vector file is one model's"),
])
def test_bad_model_lists_fail_before_any_work_naming_the_item(edit, message):
    with pytest.raises(ConfigError, match=message):
        emconfig.load(edit(two_models()))


def test_the_study_config_sets_up_its_grid_for_every_model():
    cfg = emconfig.load(STUDY)
    names = [m["name"] for m in emconfig.models(cfg)]
    assert len(names) == 6 and len(set(names)) == 6
    assert all(m["source"].get("hub") and m["num_layers"] and m["params_b"] <= 21 for m in emconfig.models(cfg))
    assert cfg["judge"]["model"] != "base" and cfg["eval"]["general"]["source"] == "expanded"
    runs = emconfig.expand_runs(cfg)
    trained = [r for r in runs if r.trained]
    # per model: 3 seeds x 2 rates x 2 domains x (aligned, misaligned), and the untrained model once per seed
    assert len(trained) == 6 * 24 and len(runs) == 6 * 27
    assert {r.model for r in trained} == set(names) and {r.dataset for r in trained} == {"insecure_code", "medical"}


# ------------------------------------------------------------------------------------------------ report

def test_pearson_r_and_fisher_interval_on_a_known_case():
    # x = 1..4, y = 1, 3, 2, 4: sum dx dy = 4, sum dx^2 = sum dy^2 = 5, r = 0.8
    assert pearson_r([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson_r([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # tanh(atanh(0.8) -+ 1.959964 / sqrt(4 - 3))
    assert fisher_interval(0.8, 4) == pytest.approx((-0.6970, 0.9956), abs=1e-4)
    lo, hi = fisher_interval(0.8, 40)
    assert -0.6970 < lo < 0.8 < hi < 0.9956  # more models: a narrower interval around r
    assert all(math.isnan(v) for v in fisher_interval(0.8, 3))  # needs n >= 4
    assert math.isnan(pearson_r([7, 7, 7], [1, 2, 3])) and math.isnan(pearson_r([1], [2]))


def consistency(rates: dict[str, float], method="misaligned", dataset="insecure_code") -> pd.DataFrame:
    """A consistency table's frame: one configuration, one row per model with its mean rate."""
    return pd.DataFrame([{"model": m, "dataset": dataset, "row": "Misaligned", "method": method, "setting": "default",
                          "lr": math.nan, "consistent": "yes" if not math.isnan(r) else "not judged", "rate_mean": r}
                         for m, r in rates.items()])


def sizes(**billions) -> pd.DataFrame:
    return model_sizes([{"model": m, "params_b": b} for m, b in billions.items()])


def test_size_em_table_gives_r_on_both_scales_with_a_fisher_interval():
    rates = consistency({"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0})
    md, table = size_em_table(rates, sizes(a=1, b=10, c=100, d=1000))
    by_scale = table.set_index("scale")
    # log10 sizes are 0..3: the known r = 0.8 and its interval
    assert by_scale.loc["log10_params_b", "r"] == pytest.approx(0.8)
    assert (by_scale.loc["log10_params_b", "r_lo"], by_scale.loc["log10_params_b", "r_hi"]) == \
        pytest.approx((-0.6970, 0.9956), abs=1e-4)
    assert by_scale.loc["params_b", "r"] == pytest.approx(np.corrcoef([1, 10, 100, 1000], [1, 3, 2, 4])[0, 1])
    assert set(table["interval"]) == {"fisher_z"} and set(table["n_models"]) == {4}
    assert "| insecure_code | Misaligned | – | log10 parameters | 4 | +0.80 | [-0.70, +1.00] |" in md
    assert "Fisher" in md and "Undefined" not in md


def test_size_em_table_says_when_r_or_its_interval_is_undefined():
    # one model in the config: the whole correlation is undefined, and the file says so
    md, table = size_em_table(consistency({"a": 3.0}), sizes(a=7))
    assert "**Undefined**: the config has 1 base model" in md and "needs 3" in table["note"].iloc[0]
    assert table["r"].isna().all()
    # three models: r without an interval
    md, table = size_em_table(consistency({"a": 1.0, "b": 2.0, "c": 4.0}), sizes(a=1, b=2, c=3))
    assert table["r"].notna().all() and table["r_lo"].isna().all()
    assert "no interval: the Fisher interval needs 4 models" in md
    # four models, but one not judged and one of unknown size: two points, undefined
    mixed = consistency({"a": 1.0, "b": 2.0, "c": math.nan, "d": 4.0})
    md, table = size_em_table(mixed, model_sizes([{"model": "a", "params_b": 1}, {"model": "b", "params_b": 2},
                                                  {"model": "c", "params_b": 3}, {"model": "d"}]))
    assert table["n_models"].tolist() == [2, 2] and table["r"].isna().all()
    assert "Size unknown, so left out of every r: d" in md and "undefined: 2 models" in md
    # every model the same size: no spread, no r
    md, table = size_em_table(consistency({"a": 1.0, "b": 2.0, "c": 4.0}), sizes(a=7, b=7, c=7))
    assert table["r"].isna().all() and "same size" in table["note"].iloc[0]
    # nothing judged at all
    md, table = size_em_table(consistency({"a": math.nan}), sizes(a=7))
    assert table.empty and "No configuration has a judged misaligned rate" in md


def test_model_sizes_come_from_the_config_the_safetensors_headers_or_the_name(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(5, dtype=np.float32)}, str(folder / "x.safetensors"))
    save_file({"c": np.zeros((2, 2, 2), dtype=np.float32)}, str(folder / "y.safetensors"))
    assert safetensors_parameters(folder) == 12 + 5 + 8 and safetensors_parameters(tmp_path) is None
    got = model_sizes([{"model": "cfg", "params_b": 8.03, "hub": "org/x-70B"}, {"model": "local", "path": str(folder)},
                       {"model": "named", "hub": "Qwen/Qwen2.5-14B-Instruct"}, {"model": "tiny"}]).set_index("model")
    assert got.loc["cfg"].tolist() == [8.03, "config"]
    assert got.loc["local", "params_b"] == pytest.approx(25 / 1e9) and got.loc["local", "size_source"] == "safetensors"
    assert got.loc["named"].tolist() == [14.0, "name"]
    assert math.isnan(got.loc["tiny", "params_b"]) and got.loc["tiny", "size_source"] == "unknown"


def metric_row(model, dataset, method, seed, rate, lo, hi):
    return {"model": model, "dataset": dataset, "method": method, "setting": "default", "seed": seed,
            "run_id": f"{model}/{dataset}/{method}/default/seed{seed}", "evalset": "general", "checkpoint": "final",
            "misaligned_rate": rate, "misaligned_lo": lo, "misaligned_hi": hi, "incoherent_rate": 1.0,
            "incoherent_lo": 0.5, "incoherent_hi": 2.0, "n_missing": 0, "confidence": 0.95}


def study_metrics() -> pd.DataFrame:
    """Three models with the same misaligned rates in both seeds; model big's untrained upper bound (17%) is above
    their lower bounds, the others' (1%) below."""
    rows = []
    for model, base_hi, rates in (("small", 1.0, (8.0, 10.0)), ("mid", 1.0, (12.0, 14.0)), ("big", 17.0, (20.0, 22.0))):
        for seed, rate in enumerate(rates):
            rows.append(metric_row(model, "base", "untrained", seed, 0.5, 0.1, base_hi))
            rows.append(metric_row(model, "insecure_code", "misaligned", seed, rate, rate - 4, rate + 4))
    return pd.DataFrame(rows)


def test_em_consistency_is_judged_per_model_against_its_own_untrained_model():
    _, table = consistency_table(study_metrics(), threshold=5.0)
    verdicts = table.set_index("model")["consistent"].to_dict()
    assert verdicts == {"small": "yes", "mid": "yes", "big": "no"}  # big's seed-0 lower bound (16) is not clear of its 17%
    assert table.set_index("model")["rate_mean"].to_dict() == {"small": 9.0, "mid": 13.0, "big": 21.0}


def test_report_stage_writes_the_size_table_and_reads_every_models_shifts(tmp_path):
    from emguard.report import SHIFT_COLUMNS
    from emguard.stages import report

    metrics = tmp_path / "metrics.parquet"
    study_metrics().to_parquet(metrics)
    shift_paths = []
    for model in ("small", "big"):
        row = {c: 0.1 for c in SHIFT_COLUMNS} | {"model": model, "dataset": "insecure_code", "method": "misaligned",
                                                  "setting": "default", "probe_set": "ood", "scope": "ood",
                                                  "n_seeds": 2, "n_triples": 8, "n_bootstrap": 100, "confidence": 0.95}
        shift_paths.append(str(tmp_path / f"{model}_shifts.parquet"))
        pd.DataFrame([row]).to_parquet(shift_paths[-1])
    out = tmp_path / "out"
    report([str(metrics)], {}, table_md=str(out / "em.md"), table_csv=str(out / "em.csv"),
           metrics_out=str(out / "all.parquet"), figure_em=str(out / "em.png"), figure_loss=str(out / "loss.png"),
           likelihood_md=str(out / "likelihood.md"), likelihood_csv=str(out / "likelihood.csv"), shifts_path=shift_paths,
           consistency_md=str(out / "em_consistency.md"), consistency_csv=str(out / "em_consistency.csv"),
           size_md=str(out / "em_model_size.md"), size_csv=str(out / "em_model_size.csv"),
           model_sizes=[{"model": "small", "params_b": 1.0}, {"model": "mid", "params_b": 10.0},
                        {"model": "big", "params_b": 100.0}])
    assert set(pd.read_csv(out / "likelihood.csv")["model"]) == {"small", "big"}
    size = pd.read_csv(out / "em_model_size.csv").set_index("scale")
    # rates 9, 13, 21 against log10 sizes 0, 1, 2
    assert size.loc["log10_params_b", "r"] == pytest.approx(pearson_r([0, 1, 2], [9, 13, 21]))
    assert size.loc["log10_params_b", "n_models"] == 3 and "Model | Parameters (B)" in (out / "em_model_size.md").read_text()


# ------------------------------------------------------------------------------------------------ DAG

def test_the_study_config_plans_jobs_for_every_model(tmp_path):
    """A dry run of the shipped study config, at one seed and one learning rate (the grid's other values repeat
    the same jobs): every model is trained, answered, judged and probed with its own hub id and dtype, and the report
    reads every model's shifts and sizes. Nothing is downloaded."""
    cfg = yaml.safe_load(STUDY.read_text())
    cfg["experiments"].update(seeds=[0], learning_rates=None)
    jobs = planned(tmp_path, cfg, "study")
    names = [m["name"] for m in cfg["models"]]
    hub = {m["name"]: m["source"]["hub"] for m in cfg["models"]}
    for rule, per_model in (("train", 4), ("generate", 5), ("judge", 5), ("probe_nll", 4), ("probe_nll_base", 1),
                            ("probe_shifts", 1)):
        got = [j for j in jobs if j["rule"] == rule]
        by_model = {n: [j for j in got if f"/{n}/" in j["output"][0]] for n in names}
        assert {n: len(v) for n, v in by_model.items()} == {n: per_model for n in names}, rule
        for n, model_jobs in by_model.items():
            for j in model_jobs:
                if "model_path" in j["params"]:
                    assert j["params"]["model_path"] == hub[n] and j["params"]["dtype"] == "bfloat16"
    report = next(j for j in jobs if j["rule"] == "report")
    assert {f"results/probes/{n}/shift_summary.parquet" for n in names} <= set(report["input"])
    assert [s["model"] for s in report["params"]["model_sizes"]] == names
    assert "results/tables/em_model_size.md" in report["output"]


def test_two_models_get_their_own_persona_vectors_pool_scores_and_monitor(tmp_path):
    """A tiny two-model plan with the persona method, Interleaving+ and the monitor: each model's runs read its own
    vectors, pool scores and thresholds, and steer and monitor at its own layer."""
    from workflow_helpers import tiny_config

    cfg = tiny_config(tmp_path / "m", tmp_path)
    first = cfg.pop("model")
    cfg["models"] = [first, {**first, "name": "tiny2", "source": {"path": str(tmp_path / "m2")}, "num_layers": 6,
                             "steering_layer": 5}]
    cfg["judge"]["model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    cfg["experiments"]["methods"] = {"persona": copy.deepcopy(cfg["experiments"]["methods"]["persona"]),
                                     "interleave": {"variants": ["plus"], "fractions": [0.2]}}
    cfg["monitor"] = {"enabled": True, "stop": "calibrated"}
    jobs = planned(tmp_path, cfg, "two")
    persona = {j["output"][0].split("/")[2]: j for j in jobs
               if j["rule"] == "train" and "/persona/" in j["output"][0]}
    assert {m: (j["params"]["hparams"]["steering_layer"], j["params"]["persona_layer"], j["params"]["model_path"])
            for m, j in persona.items()} == {"tiny": (3, 3, str(tmp_path / "m")), "tiny2": (5, 5, str(tmp_path / "m2"))}
    for m, j in persona.items():
        assert f"results/persona/{m}/evil/vectors.safetensors" in j["input"]
        assert f"results/monitor/{m}/thresholds.json" in j["input"]
    plus = {j["output"][0].split("/")[2]: j for j in jobs if j["rule"] == "interleave_set"}
    assert {m: j["input"] for m, j in plus.items()}["tiny2"][-1:] == \
        ["results/interleave/tiny2/insecure_code/scores.parquet"]
    pools = {j["output"][0]: j["params"]["adapters"] for j in jobs if j["rule"] == "pool_nll"}
    assert pools == {f"results/interleave/{m}/pool_nll.parquet":
                     {"medical": f"results/runs/{m}/medical/misaligned/default/seed0/adapter"} for m in ("tiny", "tiny2")}
    thresholds = {j["output"][0]: {r["model"] for r in j["params"]["logs"]} for j in jobs
                  if j["rule"] == "monitor_thresholds"}
    assert thresholds == {f"results/monitor/{m}/thresholds.json": {m} for m in ("tiny", "tiny2")}
    validate = {next(o for o in j["output"] if o.endswith(".parquet")): j["params"]["layer"] for j in jobs
                if j["rule"] == "persona_validate"}
    assert validate == {"results/persona/tiny/evil/steering_validation.parquet": 3,
                        "results/persona/tiny2/evil/steering_validation.parquet": 5}
