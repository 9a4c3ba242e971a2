"""The conda environments of envs/ (`snakemake --sdm conda`): every rule that runs a script names one, and,
where conda is installed, Snakemake builds one with --conda-create-envs-only. Without conda (e.g. a plain
pip/venv machine) the build test is skipped, saying so."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml

from workflow_helpers import ROOT, snakemake, tiny_config, write_config

CONDA = shutil.which("conda") or shutil.which("mamba")
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def rules_with(directive: str) -> dict[str, str]:
    """rule name -> the (first) value of ``directive`` in its body, for every rule of workflow/rules."""
    found = {}
    for path in RULE_FILES:
        for m in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", path.read_text(), re.M):
            body = m.group(2)
            d = re.search(rf"^    {directive}:\n\s+(.+)$", body, re.M)
            if d:
                found[m.group(1)] = d.group(1).strip().strip('"')
    return found


def test_env_files_pin_python_and_name_their_packages():
    assert {p.stem for p in ENVS} >= {"data", "eval", "train"}
    for path in ENVS:
        env = yaml.safe_load(path.read_text())
        deps = env["dependencies"]
        assert "conda-forge" in env["channels"], path
        assert any(isinstance(d, str) and d.startswith("python=") for d in deps), path


def test_every_script_rule_runs_in_an_env_of_envs():
    scripts = rules_with("script")
    envs = rules_with("conda")
    assert set(scripts) == set(envs), f"rules without conda: {sorted(set(scripts) - set(envs))}"
    for rule, env in envs.items():
        rule_file = next(p for p in RULE_FILES if re.search(rf"^rule {rule}:", p.read_text(), re.M))
        assert (rule_file.parent / env).resolve().is_file(), f"{rule}: {env}"
    # the GPU stages get torch; training gets trl
    torch_envs = {p.name for p in ENVS if "torch" in p.read_text()}
    for rule in ("train", "generate", "judge", "pool_nll", "persona_extract"):
        assert os.path.basename(envs[rule]) in torch_envs, rule
    assert "trl" in (ROOT / "envs" / os.path.basename(envs["train"])).read_text()


@pytest.mark.e2e
@pytest.mark.skipif(CONDA is None, reason="conda is not installed on this machine: building the envs/ "
                    "environments with `snakemake --sdm conda --conda-create-envs-only` is not checked here")
def test_conda_create_envs_only_builds_the_data_env(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    configfile = write_config(cfg, tmp_path / "config.yaml")
    prefix = tmp_path / "conda-envs"
    frontend = "mamba" if os.path.basename(CONDA) == "mamba" else "conda"
    # the in-domain questions need only prepare_em and prepare_indomain_questions: envs/data.yaml
    snakemake(tmp_path, configfile, "--sdm", "conda", "--conda-frontend", frontend, "--conda-create-envs-only",
              "--conda-prefix", str(prefix), "results/data/questions/indomain_medical.parquet")
    built = [p for p in prefix.iterdir() if p.is_dir() and (p / "bin" / "python").exists()]
    assert len(built) == 1
    if os.environ.get("EMGUARD_CONDA_ALL") == "1":  # the torch environments too (several GB)
        snakemake(tmp_path, configfile, "--sdm", "conda", "--conda-frontend", frontend,
                  "--conda-create-envs-only", "--conda-prefix", str(prefix))
        assert len([p for p in prefix.iterdir() if p.is_dir() and (p / "bin" / "python").exists()]) == 3
