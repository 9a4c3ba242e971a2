"""Evaluation stages: a run's answers (the hf backend one run per job, the vllm backend every run of a model in one
job), their judgments, the judge measured on the calibration set, and the metrics of the judgments (EM) and of task
answers (exact match)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet
from emguard.stages.common import _inference_model, _log_judge_usage, read_question_sets, sampling_settings

log = logging.getLogger("emguard")


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------------------------------

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
# Metrics
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
