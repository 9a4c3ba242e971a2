"""Interleaving stages (rules of ``interleave.smk``): the pool's answer NLLs and scores, on-policy answers, and a
run's fine-tuning set with the selected pool rows mixed in."""

from __future__ import annotations

from emguard import schemas
from emguard.io import read_parquet, write_parquet
from emguard.stages.common import sampling_settings
from emguard.stages.prepare import training_rows


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
