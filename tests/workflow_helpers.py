"""Running the real Snakefile on a tiny config, and reading what a dry run plans."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(model_dir: Path, workdir: Path, **overrides) -> dict:
    """The embedded default shrunk to seconds: a tiny random model, two domains, few questions."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["model"] = {"name": "tiny", "source": {"path": str(model_dir)}, "num_layers": 4, "dtype": "float32",
                    "device": "cpu"}
    cfg["data"]["em"].update(domains=["insecure_code", "medical"], n_prompts=10)
    cfg["data"]["pool"]["n"] = 40
    cfg["eval"] = {"general": {"samples": 1}, "indomain": {"n_questions": 2, "samples": 1}}
    cfg["generation"].update(max_new_tokens=6, batch_size=8)
    cfg["judge"].update(batch_size=8, cache=str(workdir / "results/cache/judge.sqlite"))
    cfg["training"].update(batch_size=4, max_length=192)
    cfg["training"]["lora"].update(r=4, alpha=8)
    cfg["experiments"]["methods"]["persona"]["steering_layer"] = 3
    # every interleaving variant (config.yaml leaves Interleaving+ out of the main job for time)
    cfg["experiments"]["methods"]["interleave"].update(variants=["random", "plus", "plusplus", "onpolicy"],
                                                       fractions=[0.2])
    # the tests' plan: every defense on insecure_code, both domains' baselines, every run judged (eval above)
    cfg["experiments"].update(target_domains=["insecure_code"], baseline_domains=None)
    # the judge filter on (config.yaml turns it off for its 135M judge): the tests' runs go through the judged path
    cfg["persona"].update(max_new_tokens=6, validation_questions=2, judge_filter=True)
    cfg["probes"].update(max_per_domain=3, general_per_category=None, bootstrap=200)
    # no checkpoint sweep unless a test asks for one (config.yaml sweeps legal, which the tiny plan has not)
    cfg["checkpoints"].update(steps=[], every=None, runs=["aligned", "misaligned"], datasets=None, judged=True)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake_command(workdir: Path, configfile: Path, *args: str, snakefile: Path | None = None) -> list[str]:
    """The command line :func:`snakemake` runs (``snakefile``: another copy of the workflow)."""
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile or ROOT / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(configfile), "--cores", "2", *args]


def snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True, snakefile: Path | None = None,
              env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = snakemake_command(workdir, configfile, *args, snakefile=snakefile)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, configfile: Path, *args: str, snakefile: Path | None = None) -> dict[str, int]:
    """Rule -> number of jobs a dry run would execute (empty when there is nothing to do)."""
    proc = snakemake(workdir, configfile, "-n", *args, snakefile=snakefile)
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    block = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def copy_repo(dest: Path) -> Path:
    """The project's files (tracked, and untracked but not ignored) copied to ``dest``: a workflow to edit
    (``emguard/judge/hf.py``, ...) without touching the real tree. Run it with ``snakefile=dest / "Snakefile"``."""
    import shutil

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs and caches
        top = {".git", ".venv", ".snakemake", "results", "resources", ".pytest_cache"}

        def skip(folder, names):
            return [n for n in names if n == "__pycache__" or (Path(folder) == ROOT and n in top)]

        shutil.copytree(ROOT, dest, ignore=skip, dirs_exist_ok=True)
        return dest
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def planned_outputs(out: str) -> dict[str, list[str]]:
    """Rule -> the output line of each of its jobs in a dry run's listing (``snakemake -n`` output)."""
    found = re.findall(r"^rule (\w+):\n(?:    input: .*\n)?    output: (.*)$", out, flags=re.M)
    jobs: dict[str, list[str]] = {}
    for rule, output in found:
        jobs.setdefault(rule, []).append(output)
    return jobs


#: a dry run through Snakemake's API: every planned job's rule, outputs and evaluated params, as JSON
_PLAN_SCRIPT = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings, StorageSettings

snakefile, workdir, configfile, out = sys.argv[1:5]
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                      config_settings=ConfigSettings(configfiles=[Path(configfile)]), snakefile=Path(snakefile),
                      workdir=Path(workdir))
    wf.dag(DAGSettings()).execute_workflow(executor="dryrun")
    jobs = [{"rule": job.rule.name, "input": sorted(str(i) for i in job.input),
             "output": sorted(str(o) for o in job.output), "params": dict(job.params.items())}
            for job in wf._workflow.dag.jobs]
Path(out).write_text(json.dumps(jobs, default=repr, sort_keys=True))
"""


def planned(workdir: Path, cfg: dict, name: str) -> list[dict]:
    """Every job a dry run of ``cfg`` plans (through Snakemake's API, in a subprocess), with its rule, inputs,
    outputs and evaluated params, sorted by rule and outputs."""
    configfile = write_config(cfg, workdir / f"{name}.yaml")
    out = workdir / f"{name}.json"
    proc = subprocess.run([sys.executable, "-c", _PLAN_SCRIPT, str(ROOT / "Snakefile"), str(workdir), str(configfile),
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return sorted(json.loads(out.read_text()), key=lambda j: (j["rule"], j["output"]))
