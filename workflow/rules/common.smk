# Config validation, the experiment grid, and every input function: rule files stay declarative.

from pathlib import Path

import emguard.cluster as emcluster
import emguard.codeversion as emcodeversion
import emguard.config as emconfig

# Validate first: a wrong key or value stops here with a message naming it.
try:
    config = emconfig.load(config)
except emconfig.ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RUNS = emconfig.expand_runs(config)
# The base models by name, in the config's order: one (model) or several (models). Every rule with a {model}
# wildcard reads its model's settings through the functions below (model_path, model_dtype, ...), so each model's
# jobs get its own source, dtype, device and steering layer.
MODELS = {m["name"]: m for m in emconfig.models(config)}
# the judge's base model (judge.model: base, which emguard.config allows with one model only): the first
MODEL_FIRST = next(iter(MODELS))
DOMAINS = config["data"]["em"]["domains"]

# Jobs' environment: model sizes for the cluster profiles ($EMGUARD_MODEL_B, $EMGUARD_MODELS_B, ...) and this
# source tree on PYTHONPATH (for --sdm conda); see emguard/cluster.py.
emcluster.export_workflow_env(config, workflow.basedir)


def _model_pattern():
    import re

    return "|".join(re.escape(m) for m in MODELS)


wildcard_constraints:
    model=_model_pattern(),
    dataset=r"[^/]+",
    method=r"[^/]+",
    setting=r"[^/]+",
    seed=r"\d+",
    domain=r"[^/]+",
    variant=r"random|plus|plusplus|onpolicy",
    frac=r"[0-9.e-]+",
    step=r"\d+",


def code_version(*modules, script):
    """Hash of the code a rule runs, passed as a param: Snakemake tracks params, so editing it reruns that stage
    and everything downstream, and nothing above (emguard.codeversion.code_version: the emguard modules named, the
    shared io / schemas / errors, and of the stage modules only the stage functions the rule's script reaches)."""
    return emcodeversion.code_version(workflow.basedir, *modules, script=script)


def project_file(path):
    """A config path as given if it exists from the working directory, else relative to the project."""
    p = Path(path)
    return str(p) if p.is_absolute() or p.exists() else str(Path(workflow.basedir) / p)


def em_source_files(wildcards):
    """The local files an EM domain is read from (either source form), as inputs: editing one reruns the
    domain's preparation and everything after it. Hub ids (no such file) are not inputs."""
    entry = config["data"]["em"]["sources"].get(wildcards.domain) or {}
    paths = [entry[k] for k in ("aligned", "misaligned", "path") if entry.get(k)]
    return [project_file(p) for p in paths if Path(project_file(p)).exists()]


# Benign real tasks (tasks.smk): the task wildcard's values, and each selected task's local files as inputs.
TASK_PATTERN = "|".join(emconfig.BENIGN_TASKS)


def task_source(wildcards):
    """A benign task's data settings, its local files resolved like other config paths (hub ids as given)."""
    entry = dict(config["data"][wildcards.task])
    for key in ("source", "eval_source"):
        if entry[key] and Path(project_file(entry[key])).exists():
            entry[key] = project_file(entry[key])
    return entry


def task_source_files(wildcards):
    """The local files a task is read from: editing one reruns its preparation and everything after it."""
    entry = config["data"][wildcards.task]
    paths = [project_file(entry[k]) for k in ("source", "eval_source") if entry[k]]
    return list(dict.fromkeys(p for p in paths if Path(p).exists()))


JUDGE_PROMPTS = project_file(config["judge"]["prompts"])
# What changes a verdict: judging reruns when these change, not when the cache file moves, the API judge's
# retry, concurrency or price settings change (emconfig.JUDGE_RUNTIME_KEYS; the judge reads those from the
# config), nor when only the calibration settings do (they rerun judge_calibration alone).
JUDGE_PARAMS = {k: v for k, v in config["judge"].items() if k not in (*emconfig.JUDGE_RUNTIME_KEYS, "calibration")}

# The judge measured on labelled answers (calibration.smk): only when answers are judged and a set is configured.
CALIBRATION = config["judge"]["calibration"]
CALIBRATION_SET = project_file(CALIBRATION["set"]) if CALIBRATION["set"] else None
CALIBRATION_PARAMS = {k: v for k, v in CALIBRATION.items() if k != "set"}


def calibration_summary():
    """The judge's agreement summary the report states next to the EM tables (none: the report says so)."""
    if config["eval"]["judged"] and CALIBRATION_SET:
        return ["results/judge/calibration_summary.parquet"]
    return []


TRAIT_FILE = project_file(config["persona"]["trait"])
TRAIT = Path(TRAIT_FILE).stem
PERSONA_PARAMS = {k: v for k, v in config["persona"].items() if k != "trait"}
METHODS = config["experiments"]["methods"]


def steering_layer(model):
    """A model's persona steering layer (the monitor's persona projection, the steering check): its own
    steering_layer, else experiments.methods.persona's, else (no persona method) the layer at the paper's relative
    depth; None without num_layers."""
    layer = emconfig.model_steering_layer(MODELS[model], METHODS.get("persona"))
    if layer is not None:
        return layer
    from emguard.persona import comparable_layer

    return comparable_layer(MODELS[model]["num_layers"]) if MODELS[model].get("num_layers") else None


def _model_name(wc_or_name):
    return wc_or_name if isinstance(wc_or_name, str) else wc_or_name.model


def model_path(wc_or_name):
    """A base model's folder (prepared here for a GGUF package) or its hub id / local path; by name or a job's
    {model} wildcard (a rule param: ``model_path=model_path``)."""
    name = _model_name(wc_or_name)
    src = MODELS[name]["source"]
    if "gguf_package" in src:
        return f"resources/models/{name}"
    return src.get("path") or src["hub"]


def model_input(wc_or_name):
    """The prepared model folder as a DAG input where this workflow builds it, else nothing."""
    name = _model_name(wc_or_name)
    return [model_path(name)] if "gguf_package" in MODELS[name]["source"] else []


def model_dtype(wc):
    return MODELS[wc.model]["dtype"]


def model_device(wc):
    return MODELS[wc.model]["device"]


def run_of(wc):
    return emconfig.find_run(RUNS, wc.dataset, wc.method, wc.setting, wc.seed, model=wc.model)


def model_runs(model):
    return [r for r in RUNS if r.model == model]


def persona_vectors_file(model):
    """A model's persona vectors: experiments.methods.persona.vectors (one model only), else its extraction."""
    return METHODS.get("persona", {}).get("vectors") or f"results/persona/{model}/{TRAIT}/vectors.safetensors"


def is_interleave(method):
    return method.startswith("interleave_")


def train_inputs(wc):
    """The run's training set (the EM domain, or its interleaved mix) and, for steering, the vectors."""
    run = run_of(wc)
    inputs = {"data": f"results/data/em/{wc.dataset}.parquet"}
    if is_interleave(run.method):
        inputs["data"] = (f"results/interleave/{wc.model}/{wc.dataset}/{run.hparams['variant']}_"
                          f"frac{emconfig.fmt_value(run.hparams['interleave_fraction'])}_seed{wc.seed}.parquet")
    if run.method == "persona":
        inputs["persona_vectors"] = persona_vectors_file(wc.model)
    return inputs


# The training-time EM monitor (monitor.smk): its section without the calibration keys (margin and quantile only
# change the calibrated thresholds, which reach the runs through their file), None when off (no train job changes).
MONITOR = config["monitor"]
MONITOR_PARAMS = {k: v for k, v in MONITOR.items() if k not in ("margin", "quantile")} if MONITOR["enabled"] else None
MONITOR_THRESHOLDS = "results/monitor/{model}/thresholds.json"


def monitor_inputs(wc):
    """What the monitor of a run reads: the persona vectors (for persona_proj) and, when it stops at calibrated
    thresholds, their file, which the aligned runs (the calibration, never stopped) do not wait for."""
    if not MONITOR["enabled"]:
        return {}
    inputs = {}
    if MONITOR["persona"] and steering_layer(wc.model) is not None:
        inputs["monitor_vectors"] = persona_vectors_file(wc.model)
    if MONITOR["stop"] == "calibrated" and run_of(wc).method != "aligned":
        inputs["monitor_thresholds"] = MONITOR_THRESHOLDS.format(model=wc.model)
    return inputs


def monitor_persona_layer(wc):
    """The train rule's persona_layer param: the model's steering layer when the monitor is on, else None."""
    return steering_layer(wc.model) if MONITOR_PARAMS else None


def monitored_runs():
    """Every trained run, as the monitor rules' descriptors (the run's train_log.parquet and run.json)."""
    return [{"model": r.model, "dataset": r.dataset, "method": r.method, "setting": r.setting, "seed": r.seed,
             "path": f"{r.path}/train_log.parquet", "meta": f"{r.path}/run.json"} for r in RUNS if r.trained]


def calibration_logs(wc):
    """The aligned runs of a model whose logged signals calibrate its monitor thresholds (monitor_thresholds)."""
    return [r for r in monitored_runs() if r["method"] == "aligned" and r["model"] == wc.model]


def run_training(wc):
    """The training section with the run's learning rate (experiments.learning_rates): the config's own section
    for a run at training.learning_rate, so a single-rate config's train jobs keep their params."""
    return run_of(wc).training_settings(config["training"])


def train_subset(wc):
    """Which subset of the training file to use; an interleaved mix is used whole."""
    run = run_of(wc)
    return None if is_interleave(run.method) else run.train_subset


def leave_one_out_domains(dataset):
    """The misaligned adapters that score the pool for a target: every other EM domain (an OpSwap or benign
    task target is no EM domain: all of them)."""
    return emconfig.leave_one_out(DOMAINS, dataset)


def misaligned_adapter(model, domain):
    """A domain's misaligned baseline run of a model (first seed, first learning rate), reused as its scoring adapter,
    not trained again."""
    seed = config["experiments"]["seeds"][0]
    return f"results/runs/{model}/{domain}/misaligned/{baseline_setting()}/seed{seed}/adapter"


def baseline_setting():
    """The setting id of the first learning rate's baseline runs: ``default``, tagged with the rate when
    ``experiments.learning_rates`` has several (emguard.config.lr_setting)."""
    rates = emconfig.learning_rates(config)
    return emconfig.lr_setting("default", rates[0]) if len(rates) > 1 else "default"


# Targets with a perplexity-gap variant (plus / plusplus), and the union of their leave-one-out adapters:
# the pool is scored once under the base model and each of these, and every target's scores are read
# from that one table (K + 1 passes per target would repeat the base pass and shared adapters).
def is_scored(run):
    """An Interleaving+ / ++ run: its selection ranks the pool by the NLL gap."""
    return is_interleave(run.method) and run.hparams["variant"] in ("plus", "plusplus")


# the RL setting's Interleaving+ / ++ rank the pool for the RL target (emconfig.RL_DATASET) like an SFT target's
SFT_SCORED_TARGETS = sorted({r.dataset for r in RUNS if is_scored(r)})
SCORED_TARGETS = SFT_SCORED_TARGETS + ([emconfig.RL_DATASET] if emconfig.rl_scored(config) else [])
# the domains whose misaligned adapters score the pool: the ones expand_runs trains for it (emconfig.scoring_domains)
SCORING_DOMAINS = emconfig.scoring_domains(config)

# Scheduling: with few cores, Snakemake starts the ready job of highest priority first. The longest chain of a
# main job is pool-scoring adapter -> pool_nll -> score_pool / on-policy answers -> interleave_set -> the
# interleaving runs -> their probes and the report; left to chance its cheap links waited behind other work and
# the job ended on one busy core (~85 s of one idle core in a measured run of config.yaml). The persona vectors
# are on that level too (the persona run trains on them; with checkpoints.persona the untrained model's and the
# checkpoints' probe jobs read them). EARLY_PRIORITY: long jobs only the report waits for (the judge measured, the
# baselines' answers and judgments, the untrained model's probes), started when ready instead of left for last,
# so that the end of the job is short probe and metrics jobs on both cores. Priorities change the order only,
# never what runs.
CHAIN_PRIORITY = 2
EARLY_PRIORITY = 1


def train_priority(wc):
    """A training job's priority, by the work that waits on it: first the misaligned runs that score the pool and the
    checkpointed runs (each checkpoint's evaluation follows), then the interleaving runs (the end of the pool chain)
    and the runs that are answered and judged, then the rest (one probe job each)."""
    run = run_of(wc)
    if (run.method == "misaligned" and run.dataset in SCORING_DOMAINS) or run in CHECKPOINT_RUNS:
        return CHAIN_PRIORITY
    if is_interleave(run.method) or emconfig.is_judged(run, config):
        return EARLY_PRIORITY
    return 0


def eps_length_targets():
    """Each plus / plusplus target's leave-one-out adapters, EM file and (variant, fraction) selections: the
    answer-length table ranks the pool for them with eps = 1e-6 and with interleave.eps."""
    plan = {}
    for r in filter(is_scored, RUNS):
        spec = plan.setdefault(r.dataset, {"adapters": leave_one_out_domains(r.dataset),
                                           "em": f"results/data/em/{r.dataset}.parquet",
                                           "subset": emconfig.method_subset(r.dataset), "selections": set()})
        spec["selections"].add((r.hparams["variant"], r.hparams["interleave_fraction"]))
    return {t: {**spec, "selections": [list(s) for s in sorted(spec["selections"])]} for t, spec in plan.items()}


# interleave.* keys that change a pool NLL (rule pool_nll); the others (eps, refusal filter) only rerun score_pool
NLL_KEYS = ("batch_size", "max_length")


def scoring_adapters(wc):
    """Every adapter a model's pool is scored under (domain -> adapter folder)."""
    return {d: misaligned_adapter(wc.model, d) for d in SCORING_DOMAINS}


def interleave_subset(wc):
    """The train rows an interleaved mix is built from: misaligned (EM domain) or benign (OpSwap, FoQA, GSM8K)."""
    return emconfig.method_subset(wc.dataset)


def interleave_inputs(wc):
    if wc.variant in ("plus", "plusplus"):
        return {"scores": f"results/interleave/{wc.model}/{wc.dataset}/scores.parquet"}
    if wc.variant == "onpolicy":
        return {"answers": (f"results/interleave/{wc.model}/{wc.dataset}/onpolicy_answers_frac{wc.frac}_"
                            f"seed{wc.seed}.parquet")}
    return {}


def adapter_of(wc):
    run = run_of(wc)
    return [f"{run.path}/adapter"] if run.trained else []


def evalsets_of(wc):
    """A run's evaluation sets, in the order of question_files_of."""
    return emconfig.evalsets(run_of(wc), config)


def question_files_of(wc):
    return [f"results/data/questions/{emconfig.question_set(wc.dataset, e)}.parquet" for e in evalsets_of(wc)]


def adversarial_question_file():
    """The adversarial question file (eval.adversarial.source) as an input; none when off."""
    from emguard.data import question_source

    source = config["eval"]["adversarial"]["source"]
    return [str(question_source(source))] if source else []


def general_question_file():
    """The general question file (the expanded set or the configured file) as an input; none when embedded."""
    from emguard.data import question_source

    path = question_source(config["eval"]["general"]["source"])
    return [] if path is None else [str(path)]


def run_info(wc):
    run = run_of(wc)
    return {"model": run.model, "dataset": run.dataset, "method": run.method, "setting": run.setting,
            "seed": run.seed, "run_id": run.run_id}


def all_run_metrics():
    """Judged EM metrics of every run but the task ones (OpSwap, FoQA, GSM8K: scored by exact match,
    all_task_metrics) that eval.judged judges: every one (true), the baselines', or none (false: the likelihood
    measure only)."""
    return [f"{r.path}/metrics.parquet" for r in RUNS
            if not emconfig.is_task_dataset(r.dataset) and emconfig.is_judged(r, config)]


# The metrics keys the per-run rates depend on (rule run_metrics): not those only the report reads
# (metrics.em_threshold), so changing the EM threshold recomputes no rates.
RUN_METRIC_PARAMS = {k: v for k, v in config["metrics"].items() if k not in emconfig.REPORT_ONLY_METRIC_KEYS}


def consistency_runs():
    """Every EM run the consistency table lists, judged or not (task runs are scored by exact match, in their own
    tables): its descriptors, learning rate (None: untrained) and whether eval.judged judges it."""
    return [{"model": r.model, "dataset": r.dataset, "method": r.method, "setting": r.setting, "seed": r.seed,
             "lr": r.learning_rate, "judged": emconfig.is_judged(r, config)}
            for r in RUNS if not emconfig.is_task_dataset(r.dataset)]


def all_judge_usage():
    """Every judge-calling job's usage record (calls, cache hits, tokens, cost), for the report's judge usage table:
    the judge jobs (the judged checkpoints' too, checkpoints.smk), and persona extraction / validation (per model) and
    the judge calibration where the config runs them."""
    validated = set(persona_validation_input())
    persona = []
    for model in MODELS:
        folder = f"results/persona/{model}/{TRAIT}"
        persona += [f"{folder}/judge_usage_extract.json"] if persona_extraction_planned(model) else []
        persona += ([f"{folder}/judge_usage_validate.json"]
                    if f"{folder}/steering_validation.parquet" in validated else [])
    return ([m.replace("metrics.parquet", "judge_usage.json") for m in all_run_metrics()] + checkpoint_judge_usage()
            + persona + (["results/judge/calibration_usage.json"] if calibration_summary() else []))


def persona_extraction_planned(model):
    """Whether some job reads the vectors rule persona_extract makes for ``model`` (none given in the config): a
    persona run (SFT or RL) or the monitor's persona projection."""
    made = f"results/persona/{model}/{TRAIT}/vectors.safetensors"
    read = []
    if "persona" in METHODS:
        read.append(persona_vectors_file(model))
    if (MONITOR["enabled"] and MONITOR["persona"] and steering_layer(model) is not None
            and any(r.trained for r in model_runs(model))):
        read.append(persona_vectors_file(model))
    if any(r.method == "persona" and r.model == model for r in RL_RUNS):
        read.append(rl_persona_vectors(model))
    return made in read


def all_task_metrics():
    return [f"{r.path}/task_metrics.parquet" for r in RUNS if emconfig.is_task_dataset(r.dataset)]


def all_train_logs():
    return {r.run_id: f"{r.path}/train_log.parquet" for r in RUNS if r.trained}


def persona_validation_input():
    """The steering check of every model, when the config runs the persona method (and so extracts vectors)."""
    if "persona" in METHODS and not METHODS["persona"].get("vectors"):
        return [f"results/persona/{m}/{TRAIT}/steering_validation.parquet" for m in MODELS]
    return []


def get_final_output():
    return [
        "results/tables/em.md",
        "results/tables/em.csv",
        "results/tables/opswap.md",
        "results/tables/tasks.md",
        "results/figures/em_vs_incoherence.png",
        "results/figures/train_loss.png",
        "results/tables/headline.md",
        "results/tables/judge_calibration.md",
        "results/tables/likelihood.md",
        "results/tables/em_model_size.md",
        "results/figures/likelihood_shift.png",
        "results/tables/emergence.md",
    ] + (["results/tables/monitor.md"] if MONITOR["enabled"] else []) + (
        ["results/tables/adversarial.md"] if config["eval"]["adversarial"]["source"] else [])


# The judge-free EM measure (probes.smk): probe sets, their NLLs under every run, the shifts.
PROBES = config["probes"]
PROBES_GENERAL = project_file(PROBES["general"]) if PROBES["general"] else None
PROBE_FILE = "results/data/probes/probes.parquet"
# probes.* keys that change a probe NLL (rule probe_nll); bootstrap and seed only rerun probe_shifts
PROBE_NLL_KEYS = ("batch_size", "max_length")


def probe_training_files():
    """Tables whose train split some run trains on: the probe check reads them all."""
    opswap = [f"results/data/em/{emconfig.opswap_dataset(t)}.parquet" for t in config["data"]["opswap"]["tiers"]]
    tasks = [f"results/data/em/{t}.parquet" for t in config["data"]["tasks"]]
    return [f"results/data/em/{d}.parquet" for d in DOMAINS] + opswap + tasks


def probe_pool_files():
    """The interleaving pool, every row of which may be trained on, when some run interleaves."""
    return ["results/data/pool/pool.parquet"] if "interleave" in METHODS else []


def probe_nll_files(wc):
    """A model's NLLs of the probe answers: the untrained model's, then every trained run's."""
    return [f"results/probes/{wc.model}/base_nll.parquet"] + [f"{r.path}/probe_nll.parquet"
                                                               for r in model_runs(wc.model) if r.trained]


def probe_runs(wc):
    return [{"model": r.model, "dataset": r.dataset, "method": r.method, "setting": r.setting, "seed": r.seed,
             "run_id": r.run_id, "adapter": r.run_id if r.trained else None} for r in model_runs(wc.model)]


def shift_summaries():
    """Every model's likelihood-shift summary, for the report."""
    return [f"results/probes/{m}/shift_summary.parquet" for m in MODELS]


def model_sizes():
    """The report's model-size inputs (the size/EM correlation): each model's name, params_b, hub id and local
    folder (emguard.report.model_size)."""
    return [{"model": name, "params_b": m.get("params_b"), "hub": m["source"].get("hub"),
             "path": m["source"].get("path")} for name, m in MODELS.items()]


# Generation (generate.smk): the generation section as the rules' params, without the backend choice (selecting a
# backend reruns nothing the other backend wrote); with generation.backend vllm, one job per model serves every
# run whose answers something reads (judged EM runs, exact-match task runs).
GENERATION_PARAMS = {k: v for k, v in config["generation"].items() if k not in emconfig.GENERATION_BACKEND_KEYS}
# the vllm job's params: the engine settings too, but not where its cache lies
VLLM_GENERATION_PARAMS = {**config["generation"],
                          "vllm": {k: v for k, v in (config["generation"].get("vllm") or {}).items() if k != "cache"}}


def generated_runs():
    """Runs whose answers a later rule reads: every task run (exact match), and the EM runs eval.judged judges."""
    return [r for r in RUNS if emconfig.is_task_dataset(r.dataset) or emconfig.is_judged(r, config)]


VLLM_GENERATION = config["generation"]["backend"] == "vllm" and bool(generated_runs())


def _model_path_pattern(run):
    return run.path.replace(f"results/runs/{run.model}/", "results/runs/{model}/", 1)


def vllm_generation_outputs():
    """Every generated run's generations.parquet, with the {model} wildcard: the vllm job writes them all (every
    model plans the same runs, so the patterns are shared)."""
    return list(dict.fromkeys(f"{_model_path_pattern(r)}/generations.parquet" for r in generated_runs()))


def vllm_generation_runs(wc):
    """What the vllm job answers, run by run: id, question files by evalset, adapter (None: untrained), output."""
    plan = []
    for r in generated_runs():
        if r.model != wc.model:
            continue
        sets = emconfig.evalsets(r, config)
        plan.append({"run_id": r.run_id, "adapter": f"{r.path}/adapter" if r.trained else None,
                     "questions": {e: f"results/data/questions/{emconfig.question_set(r.dataset, e)}.parquet"
                                   for e in sets},
                     "out": f"{r.path}/generations.parquet"})
    return plan


def vllm_generation_adapters(wc):
    return [p["adapter"] for p in vllm_generation_runs(wc) if p["adapter"]]


def vllm_generation_question_files(wc):
    return sorted({f for p in vllm_generation_runs(wc) for f in p["questions"].values()})


# Evaluation over training checkpoints (checkpoints.smk, emguard.checkpoints): the runs checkpoints.runs selects and
# their intermediate steps (the final adapter is the last checkpoint, evaluated as the run itself). The section is
# off by default: no run, no step, no job.
import re

import emguard.checkpoints as emckpt

CHECKPOINTS = config["checkpoints"]
CHECKPOINT_RUNS = emckpt.checkpoint_runs(RUNS, config)
CHECKPOINT_STEPS = emckpt.planned_steps(CHECKPOINTS, config["training"]["max_steps"]) if CHECKPOINT_RUNS else []
# the analysis' settings: a change reruns the report only
EMERGENCE_PARAMS = {k: CHECKPOINTS[k] for k in ("convergence_tolerance", "onset_threshold")}


def checkpoint_judged(run):
    """Whether a run's checkpoints are answered and judged: an EM run eval.judged judges, unless checkpoints.judged
    is false (task runs are scored by exact match, as their final adapter is)."""
    return emckpt.judged_checkpoints(run, config)


def checkpoint_persona_layer(model):
    """The hidden-state index of a model's persona projection at its checkpoints (checkpoints.persona): its steering
    layer; None when off, when the model has none or when none of its runs is checkpointed."""
    if not CHECKPOINTS["persona"] or not any(r.model == model for r in CHECKPOINT_RUNS):
        return None
    return steering_layer(model)


def probe_persona(wc):
    """The persona projection a probe job adds (the untrained model's, a checkpointed run's final adapter's, a
    checkpoint's): the persona vectors as input; nothing for other jobs."""
    layer = checkpoint_persona_layer(wc.model)
    if layer is None or (getattr(wc, "method", None) is not None and not getattr(wc, "step", None)
                         and run_of(wc) not in CHECKPOINT_RUNS):
        return {}
    return {"persona_vectors": persona_vectors_file(wc.model)}


def probe_persona_layer(wc):
    return checkpoint_persona_layer(wc.model) if probe_persona(wc) else None


PROBE_CODE = code_version("likelihood", "kv_prefix", "models", "chat", script="probe_nll")
PROBE_PERSONA_CODE = code_version("likelihood", "kv_prefix", "models", "chat", "persona", "steering", script="probe_nll")


def probe_code(wc):
    """The probe job's code version: the persona module's too where it projects on the persona vector."""
    return PROBE_PERSONA_CODE if probe_persona(wc) else PROBE_CODE


def checkpoint_evals(run):
    """The evaluation folders of a run's intermediate checkpoints, in step order."""
    return [emckpt.eval_dir(run.path, s) for s in CHECKPOINT_STEPS]


def all_checkpoint_curves():
    return [f"{r.path}/checkpoint_curve.parquet" for r in CHECKPOINT_RUNS]


def checkpoint_judge_usage():
    return [f"{d}/judge_usage.json" for r in CHECKPOINT_RUNS if checkpoint_judged(r) for d in checkpoint_evals(r)]


def checkpoint_training():
    """The training section of a checkpointed run: the config's, saving the planned checkpoints too."""
    return {**config["training"], "checkpoint_steps": CHECKPOINT_STEPS}


def checkpoint_methods():
    """The methods whose runs are checkpointed, as a wildcard pattern (selection is by method)."""
    return "|".join(re.escape(m) for m in sorted({r.method for r in CHECKPOINT_RUNS}))


# the EM datasets of the checkpointed runs (their checkpoints' task metric is the holdout NLL, checkpoint_signals)
EM_CHECKPOINT_DATASETS = sorted({r.dataset for r in CHECKPOINT_RUNS if not emconfig.is_task_dataset(r.dataset)})
EM_CHECKPOINT_DATASETS_PATTERN = "|".join(map(re.escape, EM_CHECKPOINT_DATASETS))


def checkpoint_datasets():
    """The datasets of the checkpointed runs, as a wildcard pattern: with the methods' pattern it picks exactly the
    checkpointed runs (emguard.checkpoints.checkpoint_runs selects every chosen method on every chosen dataset)."""
    return "|".join(re.escape(d) for d in sorted({r.dataset for r in CHECKPOINT_RUNS}))


def checkpoint_question_files(wc):
    """A run's question files at a checkpoint: the general set with checkpoints.general_samples answers per
    question where set, the others as at the final adapter."""
    files = question_files_of(wc)
    if not CHECKPOINTS["general_samples"]:
        return files
    return [f.replace("questions/general.parquet", "questions/general_checkpoint.parquet") for f in files]


def checkpoint_curve_inputs(wc):
    """A run's files at each intermediate checkpoint, then at the final adapter: the task metric, the probe NLLs
    and, for a judged run, the metrics rows; run.json gives the final adapter's step."""
    run = run_of(wc)
    task = "task_metrics.parquet" if emconfig.is_task_dataset(run.dataset) else "task_nll.parquet"
    folders = checkpoint_evals(run) + [run.path]
    inputs = {"meta": f"{run.path}/run.json", "base_nll": f"results/probes/{run.model}/base_nll.parquet",
              "task": [f"{d}/{task}" for d in folders], "probes": [f"{d}/probe_nll.parquet" for d in folders]}
    if checkpoint_judged(run):
        inputs["metrics"] = [f"{d}/metrics.parquet" for d in folders]
    return inputs


# The RL setting (grpo.smk): GRPO runs per (method, setting, seed) of rl.methods plus plain GRPO, none when
# rl.enabled is false; its stages live in emguard/stages/rl.py.
RL = config["rl"]
RL_RUNS = emconfig.expand_rl_runs(config)
RL_PROBLEMS = "results/data/rl/problems.parquet"
# the judge-graded reward (rl.rewards.judge_correct): its judge's verdict-changing settings (None: off) and prompt file
RL_JUDGE = emconfig.rl_judge_settings(config)
RL_JUDGE_TEMPLATE = (project_file(RL["judge_reward"]["template"]) if RL_JUDGE and RL["judge_reward"]["template"]
                     else None)


def rl_run_of(wc):
    return emconfig.find_rl_run(RL_RUNS, wc.method, wc.setting, wc.seed, model=wc.model)


def rl_problem_files():
    """The local files the RL problems are read from (hub ids and generated problems are none)."""
    paths = [project_file(RL["problems"][k]) for k in ("source", "eval_source")
             if RL["problems"][k] and RL["problems"][k] != "generated"]
    return list(dict.fromkeys(p for p in paths if Path(p).exists()))


def rl_problem_params():
    """rl.problems with its local files resolved like other config paths."""
    entry = dict(RL["problems"])
    for key in ("source", "eval_source"):
        if entry[key] and entry[key] != "generated" and Path(project_file(entry[key])).exists():
            entry[key] = project_file(entry[key])
    return entry


def rl_persona_vectors(model):
    """The persona vectors a model's RL persona runs steer with: rl.methods.persona.vectors, else the SFT method's
    (experiments.methods.persona.vectors) or the persona stage's extraction."""
    return RL["methods"].get("persona", {}).get("vectors") or persona_vectors_file(model)


def rl_train_inputs(wc):
    run = rl_run_of(wc)
    inputs = {"problems": RL_PROBLEMS}
    if RL_JUDGE_TEMPLATE:
        inputs["judge_template"] = RL_JUDGE_TEMPLATE
    if run.method == "persona":
        inputs["persona_vectors"] = rl_persona_vectors(wc.model)
    if run.method.startswith("interleave_"):
        inputs["pool"] = "results/data/pool/pool.parquet"
        if run.hparams["variant"] in ("plus", "plusplus"):
            inputs["scores"] = f"results/interleave/{wc.model}/{emconfig.RL_DATASET}/scores.parquet"
    return inputs


def rl_eval_inputs(wc):
    """The problems and, for a trained run, its run record (the best checkpoint's step) and adapter."""
    run = rl_run_of(wc)
    inputs = {"problems": RL_PROBLEMS}
    if RL_JUDGE_TEMPLATE:
        inputs["judge_template"] = RL_JUDGE_TEMPLATE
    if run.trained:
        inputs.update(meta=f"{run.path}/run.json", adapter=f"{run.path}/adapter")
    return inputs


def rl_run_info(wc):
    run = rl_run_of(wc)
    return {"model": run.model, "method": run.method, "setting": run.setting, "seed": run.seed, "run_id": run.run_id}


def rl_eval_metrics():
    return [f"{r.path}/eval_metrics.parquet" for r in RL_RUNS]


def rl_trained_runs():
    """Every trained RL run's descriptors, train log and run record, for the RL report."""
    return [{"run_id": r.run_id, "model": r.model, "method": r.method, "setting": r.setting, "seed": r.seed,
             "log": f"{r.path}/train_log.parquet", "meta": f"{r.path}/run.json"} for r in RL_RUNS if r.trained]


def rl_final_output():
    """The RL table and figure: always written (saying so when rl.enabled is false)."""
    return ["results/tables/rl.md", "results/tables/rl.csv", "results/figures/rl_rewards.png"]
