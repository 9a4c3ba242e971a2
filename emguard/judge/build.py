"""Building the configured judge(s) and judging a run's tables: what the judge stage, persona extraction and the
calibration stage share (the stages in :mod:`emguard.stages` only read and write files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from emguard.data.questions import FROM_QUESTIONS

log = logging.getLogger(__name__)

#: judge config keys handed to OpenAIJudge as they are
_OPENAI_KWARGS = ("mode", "api_key_env", "top_logprobs", "samples", "temperature", "max_tokens", "concurrency",
                  "max_retries", "backoff_s", "max_backoff_s", "timeout_s", "batch_poll_s", "batch_wait_s",
                  "batch_size", "min_prob_mass")


def load_judge(judge_cfg: dict, base_model_path: str, dtype: str, device: str, *, loaded=None):
    """The configured judge backend: ``hf`` runs a local model ('base' = the base model), ``openai`` calls
    OpenAI or a compatible server (its key from the environment variable ``judge.api_key_env``, checked here,
    before any work).

    ``loaded`` = (model, tokenizer) of the base model, reused when the judge is the base model."""
    if judge_cfg.get("model") == FROM_QUESTIONS:  # a stage judging items of its own: the fallback judge
        judge_cfg = {**judge_cfg, "model": _default_model(judge_cfg)}
    if judge_cfg.get("backend", "hf") == "openai":
        from emguard.judge.openai import DEFAULT_BASE_URL, OpenAIJudge

        model = judge_cfg["model"]
        judge = OpenAIJudge(judge_cfg.get("base_url", DEFAULT_BASE_URL), model, name=f"openai:{model}",
                            price=(judge_cfg.get("prices") or {}).get(model),
                            **{k: judge_cfg[k] for k in _OPENAI_KWARGS if k in judge_cfg})
        judge.check_credentials()
        return judge
    from emguard.judge import HFJudge
    from emguard.models import load_model, load_tokenizer

    is_base = judge_cfg["model"] == "base"
    path = base_model_path if is_base else judge_cfg["model"]
    if is_base and loaded is not None:
        model, tok = loaded
    else:
        model, tok = load_model(path, dtype=dtype, device=device), load_tokenizer(path)
    name = f"hf:{Path(path).name}" if is_base else f"hf:{judge_cfg['model']}"
    return HFJudge(model, tok, name=name, batch_size=judge_cfg["batch_size"], min_prob_mass=judge_cfg["min_prob_mass"],
                   answer_prefix=judge_cfg.get("answer_prefix", ""), number_tree=judge_cfg.get("number_tree", "full"))


#: ``stage`` of a usage record: the EM answers' judging (runs and checkpoints); the others are named by their stage
EVALUATION_STAGE = "evaluation"


def judge_usage_record(judge, run_id: str | None = None, stage: str = EVALUATION_STAGE) -> dict:
    """What a judge job used (calls, cache hits, tokens, cost), for ``judge_usage.json``; never the API key.
    ``stage``: which pipeline stage paid for it (``evaluation``, ``persona extraction``, ``persona validation``,
    ``judge calibration``)."""
    if hasattr(judge, "usage_record"):
        record = judge.usage_record()
    else:
        usage = getattr(judge, "usage", None)
        from emguard.judge.core import JudgeUsage

        record = (usage or JudgeUsage(judge=judge.name)).record(None, backend="hf", model=judge.name, mode="local")
    return {"run_id": run_id, "stage": stage, **record}




def _default_model(judge_cfg: dict) -> str:
    from emguard.errors import ConfigError

    name = judge_cfg.get("default_model")
    if not name:
        raise ConfigError(f"config key 'judge.default_model': needed with judge.model {FROM_QUESTIONS} for what "
                          "names no judge of its own")
    return str(name)


def with_judges(table: pd.DataFrame, judge_cfg: dict) -> pd.DataFrame:
    """``judge.model: from_questions``: the question table with every question's judge, ``judge.default_model``
    where the question names none (the built-in in-domain sets); without a default, a question naming none is an
    error listing them, raised before any judge is built or called."""
    from emguard.errors import InputError

    judges = table["judge"] if "judge" in table.columns else pd.Series(None, index=table.index, dtype=object)
    named = judges.map(lambda v: isinstance(v, str) and bool(v.strip()))
    if not named.all():
        if not judge_cfg.get("default_model"):
            missing = table.loc[~named, ["evalset", "question_id"]].drop_duplicates()
            listed = ", ".join(f"{e}/{q}" for e, q in missing.itertuples(index=False, name=None))
            raise InputError(f"judge.model is 'from_questions' but {len(missing)} question(s) name no judge and "
                             f"judge.default_model is not set: {listed}")
        judges = judges.where(named, judge_cfg["default_model"])
    return table.assign(judge=judges)


def judge_tables(gens: pd.DataFrame, table: pd.DataFrame, judge_cfg: dict, base_model_path: str, dtype: str,
                 device: str) -> tuple[pd.DataFrame, list[dict]]:
    """Every answer of ``gens`` judged on its question's metrics (``table``: the run's question sets); returns
    the judgment table and the usage records (one per judge, also logged, even when judging stops part-way).

    ``judge.model: from_questions`` judges each question with the judge its question file names (one judge per
    name, all of the config's other judge settings); the table keeps the generations' order."""
    from emguard.judge.cache import JudgeCache
    from emguard.judge.prompts import judge_generations, load_judge_prompts

    prompts = load_judge_prompts(judge_cfg["prompts"])
    if judge_cfg.get("model") == FROM_QUESTIONS:
        table = with_judges(table, judge_cfg)
        judges = {name: load_judge({**judge_cfg, "model": name}, base_model_path, dtype, device)
                  for name in sorted(table["judge"].unique())}
    else:
        judges = {None: load_judge(judge_cfg, base_model_path, dtype, device)}
    cache = JudgeCache(judge_cfg["cache"])
    run_id = str(gens["run_id"].iloc[0]) if len(gens) else None
    try:
        parts = []
        for name, judge in judges.items():
            qs = table if name is None else table[table["judge"] == name]
            keys = set(zip(qs["evalset"].astype(str), qs["question_id"].astype(str)))
            mine = gens if name is None else gens[[k in keys for k in zip(gens["evalset"].astype(str),
                                                                         gens["question_id"].astype(str))]]
            parts.append(judge_generations(mine, qs, judge, prompts, cache))
    finally:  # logged also when judging stops part-way (Snakemake keeps the log, not a failed job's outputs)
        cache.close()
        records = [judge_usage_record(judge, run_id) for judge in judges.values()]
        for record in records:
            log.info("judge usage (%s): %d calls answered, %d failed attempts, %d cache hits, %d input / %d output "
                     "tokens, cost %s", record["judge"], record["calls"], record["failed_calls"], record["cache_hits"],
                     record["input_tokens"], record["output_tokens"],
                     "unknown" if record["cost_usd"] is None else f"${record['cost_usd']:.4f}")
    df = parts[0] if len(parts) == 1 else in_generation_order(pd.concat(parts, ignore_index=True), gens)
    return df, records


def in_generation_order(judged: pd.DataFrame, gens: pd.DataFrame) -> pd.DataFrame:
    """Judgments of several judges, reordered as one judge would have written them (generations' order)."""
    cols = ["run_id", "evalset", "question_id", "sample_idx", "checkpoint"]
    position = {tuple(map(str, k)): i for i, k in enumerate(gens[cols].itertuples(index=False, name=None))}
    order = [position[tuple(map(str, k))] for k in judged[cols].itertuples(index=False, name=None)]
    return judged.assign(_pos=order).sort_values("_pos", kind="stable").drop(columns="_pos").reset_index(drop=True)
