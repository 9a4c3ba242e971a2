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
    assert {(r.dataset, r.method) for r in runs} >= {("base", "untrained"), ("legal", "misaligned"), ("legal", "kl")}
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


def test_baseline_domains_choose_where_baselines_train():
    cfg = default_config()
    cfg["data"]["em"]["domains"] = ["insecure_code", "medical", "legal"]
    cfg["experiments"]["target_domains"] = ["legal"]
    cfg["experiments"]["baseline_domains"] = None  # every EM domain, as the paper's Table 2
    baselines = {(r.dataset, r.method) for r in emconfig.expand_runs(emconfig.load(copy.deepcopy(cfg)))
                 if r.method in ("aligned", "misaligned")}
    assert {d for d, _ in baselines} == {"insecure_code", "medical", "legal"}
    cfg["experiments"]["baseline_domains"] = ["legal"]
    cfg["experiments"]["methods"]["interleave"]["variants"] = ["random"]
    runs = emconfig.expand_runs(emconfig.load(copy.deepcopy(cfg)))
    assert {(r.dataset, r.method) for r in runs if r.method in ("aligned", "misaligned")} == {
        ("legal", "aligned"), ("legal", "misaligned")}
    # Interleaving+ scores the pool with the other domains' misaligned adapters: those baselines are trained too
    cfg["experiments"]["methods"]["interleave"]["variants"] = ["random", "plus"]
    runs = emconfig.expand_runs(emconfig.load(copy.deepcopy(cfg)))
    assert {(r.dataset, r.method) for r in runs if r.method in ("aligned", "misaligned")} == {
        ("legal", "aligned"), ("legal", "misaligned"), ("insecure_code", "misaligned"), ("medical", "misaligned")}
    cfg["experiments"]["baseline_domains"] = ["medical"]  # the target domain's defenses need its baselines
    with pytest.raises(ConfigError, match=r"experiments\.baseline_domains.*'legal'"):
        emconfig.load(copy.deepcopy(cfg))
    cfg["experiments"]["baseline_domains"] = ["legal", "astrology"]
    with pytest.raises(ConfigError, match=r"experiments\.baseline_domains\.1"):
        emconfig.load(cfg)


@pytest.mark.parametrize("judged, expected", [(True, {"untrained", "aligned", "misaligned", "kl"}),
                                              ("baselines", {"untrained", "aligned", "misaligned"}),
                                              (False, set())])
def test_eval_judged_picks_the_judged_runs(judged, expected):
    cfg = default_config()
    cfg["eval"]["judged"] = judged
    cfg["experiments"]["methods"] = {"kl": {"kl_lambda": [0.1]}}
    cfg = emconfig.load(cfg)
    assert {r.method for r in emconfig.expand_runs(cfg) if emconfig.is_judged(r, cfg)} == expected
    bad = default_config()
    bad["eval"]["judged"] = "some"
    with pytest.raises(ConfigError, match=r"eval\.judged"):
        emconfig.load(bad)


def test_model_source_needs_exactly_one_kind():
    cfg = default_config()
    cfg["model"]["source"] = {"hub": "a/b", "path": "/x"}
    with pytest.raises(ConfigError, match=r"model\.source"):
        emconfig.load(cfg)


def _with_source(source):
    cfg = default_config()
    cfg["data"]["em"]["sources"] = {cfg["data"]["em"]["domains"][0]: source}
    return cfg


@pytest.mark.parametrize("source", [
    {"aligned": "data/secure.jsonl", "misaligned": "data/insecure.jsonl"},
    {"path": "truthfulai/emergent_plus", "format": "columns", "hf_config": "legal", "hf_split": "train"},
    {"path": "data/medical.csv", "format": "columns"},
])
def test_em_source_forms_are_accepted(source):
    cfg = emconfig.load(_with_source(source))
    assert list(cfg["data"]["em"]["sources"].values()) == [source]


@pytest.mark.parametrize("source, message", [
    ({"aligned": "a.jsonl"}, r"data\.em\.sources\.\w+': .*not valid under any.*aligned: .*format: columns"),
    ({"path": "a.jsonl"}, r"data\.em\.sources\.\w+': .*not valid under any"),
    ({"path": "a.jsonl", "format": "chat"}, r"data\.em\.sources\.\w+\.format': 'chat' is not one of"),
    ({"aligned": "a", "misaligned": "b", "format": "columns"}, r"data\.em\.sources\.\w+': .*not valid under any"),
    ({"aligned": "a", "misaligned": "b", "path": "c", "format": "columns"}, r"data\.em\.sources\.\w+': "),
    ({"path": "a.jsonl", "format": "columns", "hf_confg": "legal"}, r"data\.em\.sources\.\w+\.hf_confg': unknown key"),
    ({"path": "", "format": "columns"}, r"data\.em\.sources\.\w+\.path'"),
    ("a.jsonl", r"data\.em\.sources\.\w+': 'a\.jsonl' is not of type 'object'"),
])
def test_em_source_forms_are_refused_naming_the_key(source, message):
    with pytest.raises(ConfigError, match=message):
        emconfig.load(_with_source(source))


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


# --------------------------------------------------------------------------------------------------
# LDIFS: the paper's eq. 2 by default, the normalised variant by name
# --------------------------------------------------------------------------------------------------

def _ldifs_runs(cfg):
    return [r for r in emconfig.expand_runs(emconfig.load(cfg)) if r.method == "ldifs"]


def _ldifs_regulariser(run, n_layers):
    from emguard.stages import build_method

    (reg,), inoculation = build_method("ldifs", run.hparams, None, n_layers)
    assert inoculation is None
    return reg


def test_ldifs_block_without_settings_is_the_papers_formula():
    cfg = default_config()
    cfg["experiments"]["methods"]["ldifs"] = {"ldifs_lambda": [1.0]}
    (run,) = _ldifs_runs(cfg)
    assert run.setting == "lambda1"
    reg = _ldifs_regulariser(run, 28)
    # every 5th of 28 layers, the final one not added; raw features summed over token positions
    assert (reg.layers, reg.feature_norm, reg.reduction) == ((5, 10, 15, 20, 25), "none", "sum")


def test_paper_config_runs_both_ldifs_variants_on_its_grid():
    cfg = yaml.safe_load((ROOT / "configs/paper-qwen2.5-7b.yaml").read_text())
    runs = [r for r in _ldifs_runs(cfg) if r.dataset == "legal"]
    lambdas = ["0.01", "0.03", "0.1", "0.3", "1"]
    assert sorted(r.setting for r in runs) == sorted([f"lambda{v}" for v in lambdas]
                                                    + [f"lambda{v}_unit_mean_final" for v in lambdas])
    for run in runs:
        reg = _ldifs_regulariser(run, cfg["model"]["num_layers"])
        assert reg.weight == run.hparams["ldifs_lambda"]
        if run.setting.endswith("_unit_mean_final"):
            assert (reg.layers, reg.feature_norm, reg.reduction) == ((5, 10, 15, 20, 25, 28), "unit", "mean")
        else:  # the paper's eq. 2
            assert (reg.layers, reg.feature_norm, reg.reduction) == ((5, 10, 15, 20, 25), "none", "sum")


def test_embedded_default_names_its_normalised_ldifs_variant():
    (run,) = [r for r in _ldifs_runs(default_config()) if r.dataset == "legal"]
    assert run.setting == "lambda1_unit_mean_final"
    reg = _ldifs_regulariser(run, 30)
    assert (reg.layers, reg.feature_norm, reg.reduction) == ((5, 10, 15, 20, 25, 30), "unit", "mean")
    assert _ldifs_regulariser(run, 4).layers == (4,)  # the tests' tiny model


@pytest.mark.parametrize("ldifs,key", [
    ({"ldifs_lambda": [1.0], "variants": [{"reduction": "mean"}, {"reduction": "mean"}]},
     r"experiments\.methods\.ldifs\.variants\.1': the same LDIFS settings"),
    ({"ldifs_lambda": [1.0], "ldifs_layers": [5, 10], "final_layer": True}, r"experiments\.methods\.ldifs': ldifs_layers"),
    ({"ldifs_lambda": [1.0], "layer_step": 31}, r"experiments\.methods\.ldifs\.layer_step': 31 is larger than the model's 30"),
    ({"ldifs_lambda": [1.0], "variants": [{}, {"ldifs_layers": [4, 31]}]},
     r"experiments\.methods\.ldifs\.variants\.1\.ldifs_layers\.1'"),
    ({"ldifs_lambda": [1.0], "variants": [{"reduce": "sum"}]}, r"experiments\.methods\.ldifs\.variants\.0\.reduce"),
    ({"ldifs_lambda": [1.0], "reduction": "max"}, r"experiments\.methods\.ldifs\.reduction': 'max' is not one of"),
])
def test_bad_ldifs_settings_are_named(ldifs, key):
    cfg = default_config()
    cfg["experiments"]["methods"]["ldifs"] = ldifs
    with pytest.raises(ConfigError, match=key):
        emconfig.load(cfg)


# --------------------------------------------------------------------------------------------------
# training.optim: every shipped config can build its optimiser (or says what to install)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_config_builds_its_optimizer(path):
    import importlib.util

    from emguard.stages import train_settings
    from emguard.training import optimizer_settings

    cfg = emconfig.load(path)
    settings = train_settings({**cfg["training"], "dtype": emconfig.models(cfg)[0]["dtype"]}, seed=0)
    try:
        import bitsandbytes  # noqa: F401
        bnb = True
    except Exception:  # not installed, or installed but unloadable (no GPU libraries)
        bnb = False
    if "8bit" in settings.optim and not bnb:
        with pytest.raises(ConfigError, match=r"training\.optim.*bitsandbytes.*pip install -e '\.\[gpu\]'"):
            optimizer_settings(settings)
        return
    cls, kwargs = optimizer_settings(settings)
    assert kwargs["lr"] == settings.learning_rate and isinstance(cls, type)
    assert importlib.util.find_spec(cls.__module__.split(".")[0]) is not None


def test_unknown_optimizer_is_named():
    from emguard.training import TrainSettings, optimizer_settings

    with pytest.raises(ConfigError, match=r"training\.optim.*'adamw_9bit' is not a transformers optimiser"):
        optimizer_settings(TrainSettings(optim="adamw_9bit"))


def test_train_stage_checks_the_optimizer_before_loading_anything(tmp_path):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes loads here: adamw_8bit is buildable")
    except Exception:
        pass
    from emguard.stages import train_run

    cfg = emconfig.load(ROOT / "configs/paper-qwen2.5-7b.yaml")
    # neither the model nor the training file exists: the optimiser error must come first
    with pytest.raises(ConfigError, match=r"training\.optim.*\[gpu\]"):
        train_run(str(tmp_path / "no-model"), str(tmp_path / "no-data.parquet"), str(tmp_path / "run"),
                  subset="misaligned", training=cfg["training"], seed=0, dtype="bfloat16", device="cpu")


def test_the_embedded_default_plans_from_an_empty_folder(tmp_path):
    """The shipped config.yaml builds its whole DAG with nothing on disk (every input some rule needs is planned:
    e.g. Interleaving+ / ++ on legal needs the other domains' misaligned adapters, outside baseline_domains)."""
    from workflow_helpers import planned_jobs

    jobs = planned_jobs(tmp_path, ROOT / "config.yaml")
    cfg = emconfig.load(default_config())
    runs = emconfig.expand_runs(cfg)
    assert jobs["train"] + jobs["train_checkpoints"] == len([r for r in runs if r.trained])
    assert jobs["pool_nll"] == 1 and jobs["report"] == 1
    # the judge-free checkpoint sweep: one run (train_checkpoints), steps 2 and 4, no checkpoint answered or judged
    assert jobs["train_checkpoints"] == 1 and jobs["checkpoint_curve"] == 1
    # each point of the curve measured in one job (task NLL + probe NLLs): the two checkpoints and the final adapter,
    # whose job replaces the run's probe_nll job
    assert jobs["checkpoint_signals"] == 2 and jobs["final_signals"] == 1
    assert jobs["probe_nll"] + jobs["final_signals"] == len([r for r in runs if r.trained])
    assert not {"generate_checkpoint", "judge_checkpoint", "checkpoint_metrics"} & set(jobs)
    # answered and judged: the untrained model and legal's two baselines, not medical's pool-scoring misaligned run
    judged = [r for r in runs if emconfig.is_judged(r, cfg)]
    assert sorted((r.dataset, r.method) for r in judged) == [("base", "untrained"), ("legal", "aligned"),
                                                              ("legal", "misaligned")]
    assert jobs["generate"] == jobs["judge"] == 3
