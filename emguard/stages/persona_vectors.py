"""Persona vector stages (rules of ``persona.smk``): the vectors extracted from judged contrasting answers, and
validated by steering (:mod:`emguard.persona`)."""

from __future__ import annotations

import dataclasses

from emguard.io import write_parquet
from emguard.stages.common import _log_judge_usage


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
    """Answers under contrasting system prompts, judged and filtered (not with ``persona.judge_filter`` false);
    per-layer mean difference. ``usage_out``:
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
                min_pairs=persona["min_pairs"], fallback=persona["fallback"], model_name=model_name,
                judge_filter=persona.get("judge_filter", True))
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
