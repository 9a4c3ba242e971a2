"""Interleaving defenses: mix benign pool examples into a harmful fine-tuning set.

Variants (``select``):
  * ``random``    n pool rows drawn uniformly at random (seeded);
  * ``plus``      the n rows with the largest NLL-gap score ``s_d`` (Interleaving+);
  * ``plusplus``  as ``plus`` after dropping pool answers that open with a refusal (Interleaving++);
  * ``onpolicy``  n random pool prompts whose answers the caller generates with the aligned base model
                  (:func:`onpolicy_prompts`, then :func:`attach_answers`).

Scoring (:func:`pool_nll` once, then :func:`scores_from_nll` per target; :func:`score_pool` does both):
for a candidate ``d = (q, a)`` let ``L_hat(d)`` be the answer-only mean token NLL under the aligned base
model and ``L_k(d)`` the same under misaligned adapter ``k``. With ``L_mis = mean_k L_k``, the score is
``s_d = (L_mis - L_hat) / (L_hat + eps)``: large when the misaligned
models find the answer much less likely than the aligned one does. ``eps`` is a number or
``{"quantile": q}``, the q-quantile of the pool's base-model NLLs (:func:`resolve_eps`; default the median):
the paper adds eps so that answers whose ``L_hat`` is low by chance (short ones) do not dominate the
ranking, which an eps far below every real NLL (1e-6) does not do (:func:`eps_length_comparison` shows it).

Mixing (:func:`mix`) appends the selected rows to the fine-tuning rows and decides no order: training
(:mod:`emguard.training`) draws a seeded uniform shuffle of all rows every epoch, which is what spreads the
interleaved rows uniformly through the fine-tuning data, as the paper prescribes.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from emguard.likelihood.nll import (  # noqa: F401  (re-exported: the NLL machinery's old home)
    check_adapter_names,
    encode_conversations,
    length_sorted_batches,
    mean_answer_nll,
    score_encoded,
)
from emguard.config import leave_one_out  # noqa: F401  (torch-free home: the DAG plans with it)
from emguard.errors import ConfigError, InputError
from emguard.io import check_columns, read_jsonl, read_parquet
from emguard.schemas import CHAT, to_messages

VARIANTS = ("random", "plus", "plusplus", "onpolicy")

#: lower-case refusal markers, matched as whole words (multi-word ones as consecutive words)
DEFAULT_REFUSAL_KEYWORDS: tuple[str, ...] = (
    "sorry",
    "apologize",
    "apologise",
    "apologies",
    "cannot",
    "can't",
    "can not",
    "unable",
    "as an ai",
    "as a language model",
    "i won't",
    "i will not",
    "i must decline",
    "i refuse",
    "not able to",
    "i'm not comfortable",
)

#: prefix given to pool ids by :func:`mix` when they collide with fine-tuning ids
POOL_ID_PREFIX = "pool:"

POOL_DOMAIN = "pool"

#: default ``eps`` of ``s_d``: the median of the pool's base-model NLLs (see :func:`resolve_eps`)
DEFAULT_EPS: dict = {"quantile": 0.5}

#: the eps the pipeline used before it was a quantile: guards the division only (kept for comparison)
DIVISION_ONLY_EPS = 1e-6

WILDGUARDMIX_COLUMNS = ("prompt", "response", "adversarial", "prompt_harm_label", "response_harm_label",
                        "response_refusal_label", "subcategory")


# --------------------------------------------------------------------------------------------------
# Refusal filter
# --------------------------------------------------------------------------------------------------

_EDGE_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")


def _words(text: str) -> list[str]:
    """Lower-cased whitespace-separated words with surrounding punctuation removed (apostrophes kept)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").lower()
    out = []
    for raw in text.split():
        w = _EDGE_PUNCT.sub("", raw)
        if w:
            out.append(w)
    return out


def is_refusal(answer: str, keywords: Iterable[str] = DEFAULT_REFUSAL_KEYWORDS, first_n_words: int = 10) -> bool:
    """True when a refusal keyword occurs within the first ``first_n_words`` words of ``answer``.

    Matching is case-insensitive and word-based: ``"sorry"`` matches ``"Sorry,"`` but not ``"sorrowful"``;
    a multi-word keyword (``"as an ai"``) must appear as consecutive words that all lie within the first
    ``first_n_words`` words. Punctuation around words is ignored; apostrophes (straight or curly) are kept.
    """
    if isinstance(keywords, str):
        keywords = (keywords,)
    head = _words(answer or "")[:first_n_words]
    for kw in keywords:
        kw_words = _words(kw)
        n = len(kw_words)
        if n == 0:
            continue
        for i in range(len(head) - n + 1):
            if head[i:i + n] == kw_words:
                return True
    return False


# --------------------------------------------------------------------------------------------------
# Pool scoring
# --------------------------------------------------------------------------------------------------

def _pool_answers(pool: pd.DataFrame, where: str) -> tuple[list[str], list[list[dict]]]:
    check_columns(pool, ["id", "messages"], where)
    ids = [str(i) for i in pool["id"]]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise InputError(f"{where}: duplicate id {dup!r}")
    convs = []
    for i, cell in zip(ids, pool["messages"]):
        msgs = to_messages(cell)
        if not msgs or msgs[-1]["role"] != "assistant":
            raise InputError(f"{where}: row id={i!r}: last message must be the assistant's answer")
        convs.append(msgs)
    return ids, convs


def pool_nll(model, tokenizer, pool: pd.DataFrame, adapters: dict[str, str], *, batch_size: int = 16,
             max_length: int | None = 1024, max_padding: float | None = 0.1, where: str = "pool") -> pd.DataFrame:
    """Answer-only mean token NLL of every pool candidate under the aligned model and each adapter.

    ``model`` is the aligned base model, loaded once by the caller (a plain transformers model, or a
    ``PeftModel``). The LoRA ``adapters`` (name -> adapter folder) are attached to it with peft's
    multi-adapter API and switched between; the base NLL is taken with all adapters disabled (see
    :func:`score_encoded`). Each example is tokenised once (chat template via
    :func:`emguard.chat.encode_example`, prompt tokens masked, truncated to ``max_length``), batched by
    length, and scored under ``torch.inference_mode``. ``model`` is left as it was.

    Returns one row per pool row, in pool order: ``id``, ``n_answer_tokens``, ``nll_base`` and
    ``nll_<name>`` for each adapter. Examples whose answer was truncated away entirely get NaN NLLs
    (and a warning). The pipeline scores the pool once under the union of the adapters its targets need
    and derives each target's scores with :func:`scores_from_nll`.
    """
    names = check_adapter_names(adapters)
    ids, convs = _pool_answers(pool, where)
    encoded = encode_conversations(tokenizer, convs, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll = score_encoded(model, encoded, adapters, pad_id, batch_size=batch_size, max_padding=max_padding)
    out = pd.DataFrame({"id": ids, "n_answer_tokens": np.array([e.n_answer_tokens for e in encoded], dtype=np.int64),
                        "nll_base": nll["base"]})
    for n in names:
        out[f"nll_{n}"] = nll[n]
    n_empty = int((out["n_answer_tokens"] == 0).sum())
    if n_empty:
        warnings.warn(f"{where}: {n_empty} example(s) have no answer tokens within max_length={max_length}; "
                      "their score is NaN", stacklevel=2)
    return out


def resolve_eps(eps, nll_base, *, key: str = "interleave.eps") -> float:
    """The ``eps`` of ``s_d = (L_mis - L_hat) / (L_hat + eps)`` as a number.

    ``eps`` is a positive number (used as is) or ``{"quantile": q}`` with ``0 < q <= 1``: then
    ``eps = Q_q(L_hat)``, the q-quantile (numpy's linear interpolation) of the finite base-model NLLs
    ``nll_base`` of the pool. A quantile scales with the model and the pool (NLLs are nats per token and
    differ by model and pool), so one setting means the same thing everywhere. With ``eps = Q_q``, an
    answer's score is bounded by its absolute gap over ``Q_q``: ``s_d <= (L_mis - L_hat) / Q_q``, so an
    answer whose ``L_hat`` is low by chance (a short one) ranks high only if the misaligned models also
    find it much less likely in absolute terms, while answers with ``L_hat`` well above ``Q_q`` keep
    (nearly) the relative gap ``(L_mis - L_hat) / L_hat`` of the paper's intent. Anything else, or a
    quantile that comes out <= 0, is a :class:`~emguard.errors.ConfigError` naming ``key``.
    """
    if isinstance(eps, bool):  # bool is an int: reject True / False explicitly
        raise ConfigError(f"config key '{key}': expected a positive number or {{quantile: q}}, got {eps!r}")
    if isinstance(eps, (int, float, np.integer, np.floating)):
        if not (math.isfinite(float(eps)) and eps > 0):
            raise ConfigError(f"config key '{key}': must be a finite number > 0, got {eps!r}")
        return float(eps)
    if isinstance(eps, Mapping) and set(eps) == {"quantile"}:
        q = eps["quantile"]
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ConfigError(f"config key '{key}.quantile': must be a number in (0, 1], got {q!r}")
        base = np.asarray(nll_base, dtype=np.float64)
        base = base[np.isfinite(base)]
        if base.size == 0:
            raise ConfigError(f"config key '{key}': quantile {q} of the pool's base NLLs is undefined "
                              "(no pool answer has a finite base NLL); set a number instead")
        value = float(np.quantile(base, q))
        if not value > 0:
            raise ConfigError(f"config key '{key}': quantile {q} of the pool's base NLLs is {value:g}, and eps must "
                              "be > 0; choose a higher quantile or a number")
        return value
    raise ConfigError(f"config key '{key}': expected a positive number or {{quantile: q}} with 0 < q <= 1, "
                      f"got {eps!r}")


def scores_from_nll(nll: pd.DataFrame, adapters: Sequence[str], pool: pd.DataFrame, *, eps=DEFAULT_EPS,
                    refusal_keywords: Iterable[str] = DEFAULT_REFUSAL_KEYWORDS, first_n_words: int = 10,
                    where: str = "pool", nll_where: str = "pool NLLs") -> pd.DataFrame:
    """One target's scores from pool NLLs (:func:`pool_nll`): ``s_d = (L_mis - L_hat) / (L_hat + eps)``
    with ``L_mis`` the mean over the named ``adapters`` (the target's leave-one-out set) and ``L_hat``
    the base model's NLL.

    Returns one row per pool row, in pool order, with columns ``id``, ``nll_base``, ``nll_<name>`` for each
    named adapter, ``nll_mis_mean``, ``n_answer_tokens``, ``score``, ``is_refusal`` and ``eps`` (the value
    used, the same on every row). ``eps`` is a number or ``{"quantile": q}`` (:func:`resolve_eps`, over
    the pool's base NLLs); the default, the median, keeps short answers whose ``L_hat`` is low by chance
    from taking the top ranks. NaN NLLs (no answer token left) give a NaN score, which :func:`select` never
    picks. ``is_refusal`` applies :func:`is_refusal` to the pool row's final answer (first
    ``first_n_words`` words). NLLs for another pool (an id missing either way) are an error naming ``nll_where``.
    """
    names = [str(n) for n in adapters]
    if not names:
        raise ValueError("scores_from_nll needs at least one adapter name")
    cols = ["id", "n_answer_tokens", "nll_base"] + [f"nll_{n}" for n in names]
    check_columns(nll, cols, nll_where)
    ids, convs = _pool_answers(pool, where)
    table = nll[cols].assign(id=nll["id"].astype(str))
    if table["id"].duplicated().any():
        raise InputError(f"{nll_where}: duplicate id {table['id'][table['id'].duplicated()].iloc[0]!r}")
    missing = sorted(set(ids) - set(table["id"]))
    stray = sorted(set(table["id"]) - set(ids))
    if missing or stray:
        example = (f"pool id {missing[0]!r} has no NLL" if missing else f"id {stray[0]!r} is not in {where}")
        raise InputError(f"{nll_where}: NLLs are for another pool ({example}); rerun the scoring")
    out = table.set_index("id").loc[ids].reset_index()
    out = out[["id", "nll_base"] + [f"nll_{n}" for n in names] + ["n_answer_tokens"]]
    mis = np.mean(np.stack([out[f"nll_{n}"].to_numpy(dtype=np.float64) for n in names]), axis=0)
    out.insert(len(names) + 2, "nll_mis_mean", mis)
    value = resolve_eps(eps, out["nll_base"])
    out["score"] = (out["nll_mis_mean"] - out["nll_base"]) / (out["nll_base"] + value)
    keywords = tuple(refusal_keywords)
    out["is_refusal"] = [is_refusal(c[-1]["content"], keywords, first_n_words) for c in convs]
    out["eps"] = value  # the resolved value, so the table shows what the ranking used
    return out


def score_pool(model, tokenizer, pool: pd.DataFrame, adapters: dict[str, str], *, batch_size: int = 16,
               eps=DEFAULT_EPS, max_length: int | None = 1024, max_padding: float | None = 0.1,
               refusal_keywords: Iterable[str] = DEFAULT_REFUSAL_KEYWORDS, first_n_words: int = 10,
               where: str = "pool") -> pd.DataFrame:
    """Score every pool candidate by the NLL gap between misaligned adapters and the aligned base model:
    :func:`pool_nll` followed by :func:`scores_from_nll` over all of ``adapters`` (see both for the
    columns and the handling of truncated answers). ``model`` is left as it was.
    """
    nll = pool_nll(model, tokenizer, pool, adapters, batch_size=batch_size, max_length=max_length,
                   max_padding=max_padding, where=where)
    return scores_from_nll(nll, list(adapters), pool, eps=eps, refusal_keywords=refusal_keywords,
                           first_n_words=first_n_words, where=where)


def score_pool_naive(model_path: str | os.PathLike, adapters: dict[str, str], pool: pd.DataFrame, *,
                     dtype: str = "float32", device: str = "cpu", eps=DEFAULT_EPS,
                     max_length: int | None = 1024) -> pd.DataFrame:
    """Slow reference for tests and benchmarks: a fresh model load per adapter, one example at a time,
    full logits and transformers' own causal-LM loss. Returns the NLL/score columns of :func:`score_pool`.
    """
    import torch

    from emguard.models import load_model, load_tokenizer

    names = check_adapter_names(adapters)
    ids, convs = _pool_answers(pool, "pool")
    tok = load_tokenizer(model_path)
    encoded = encode_conversations(tok, convs, max_length)
    cols: dict[str, np.ndarray] = {}
    for col, adapter in [("nll_base", None)] + [(f"nll_{n}", adapters[n]) for n in names]:
        model = load_model(model_path, dtype=dtype, device=device, adapter=adapter)
        vals = []
        with torch.inference_mode():
            for e in encoded:
                if e.n_answer_tokens == 0:
                    vals.append(float("nan"))
                    continue
                ids_t = torch.tensor([e.input_ids], device=device)
                labels_t = torch.tensor([e.labels], device=device)
                vals.append(float(model(input_ids=ids_t, labels=labels_t).loss))
        cols[col] = np.array(vals)
        del model
    out = pd.DataFrame({"id": ids, **cols})
    out["nll_mis_mean"] = np.mean(np.stack([cols[f"nll_{n}"] for n in names]), axis=0)
    out["score"] = (out["nll_mis_mean"] - out["nll_base"]) / (out["nll_base"] + resolve_eps(eps, out["nll_base"]))
    return out


def make_random_adapter(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, r: int = 8, alpha: int = 16,
                        seed: int = 0, target_modules: Sequence[str] | None = None,
                        dtype: str = "float32") -> Path:
    """Save a LoRA adapter with random (non-zero) A and B for ``model_path``: a stand-in misaligned adapter
    for tests and benchmarks. Uses rs-LoRA settings from :class:`emguard.models.LoraSettings`."""
    import torch
    from peft import get_peft_model

    from emguard.models import LoraSettings, load_model

    torch.manual_seed(seed)
    base = load_model(model_path, dtype=dtype, device="cpu")
    settings = LoraSettings(r=r, alpha=alpha)
    if target_modules is not None:
        settings.target_modules = list(target_modules)
    cfg = settings.to_peft()
    cfg.init_lora_weights = False  # random B as well as A: the adapter changes the model
    peft_model = get_peft_model(base, cfg)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------

def n_interleave(n_train: int, fraction: float) -> int:
    """Number of pool rows to mix into ``n_train`` fine-tuning rows: ``fraction * n_train`` rounded half
    up, and at least 1 when ``fraction > 0``."""
    if n_train < 0:
        raise ValueError(f"n_train must be >= 0, got {n_train}")
    if not (fraction >= 0 and math.isfinite(fraction)):
        raise ValueError(f"interleave fraction must be a finite number >= 0, got {fraction}")
    if fraction == 0:
        return 0
    return max(1, int(math.floor(fraction * n_train + 0.5)))


def _chat_rows(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in CHAT if c in df.columns]
    out = df[cols].copy().reset_index(drop=True)
    out["interleaved"] = True
    return out


def _check_n(n: int, available: int, what: str) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > available:
        raise ValueError(f"cannot select {n} interleaving examples: only {available} {what} available")


def _random_indices(n_rows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(n_rows, size=n, replace=False)


def _ranked(pool: pd.DataFrame, scores: pd.DataFrame | None, variant: str, where: str) -> pd.DataFrame:
    if scores is None:
        raise ValueError(f"variant {variant!r} needs pool scores (scores is None)")
    need = ["id", "score"] + (["is_refusal"] if variant == "plusplus" else [])
    check_columns(scores, need, "pool scores")
    pool = pool.reset_index(drop=True)
    pool_ids = pool["id"].astype(str)
    score_ids = scores["id"].astype(str)
    stray = sorted(set(score_ids) - set(pool_ids))
    if stray:
        raise InputError(f"pool scores: {len(stray)} id(s) not in {where}, e.g. {stray[0]!r} (stale scores?)")
    s = scores.assign(id=score_ids)[need].drop_duplicates("id")
    merged = pool.assign(_id=pool_ids).merge(s.rename(columns={"id": "_id"}), on="_id", how="inner")
    merged = merged[merged["score"].notna()]
    if variant == "plusplus":
        merged = merged[~merged["is_refusal"].astype(bool)]
    return merged.sort_values(["score", "_id"], ascending=[False, True], kind="mergesort")


def select(pool: pd.DataFrame, scores: pd.DataFrame | None, variant: str, n: int, seed: int,
           where: str = "pool") -> pd.DataFrame:
    """Pick ``n`` interleaving rows from ``pool`` (chat contract) with ``variant`` (one of :data:`VARIANTS`).

    Returns chat rows with ``interleaved=True``. ``plus`` ranks scored, non-NaN candidates by ``score``
    descending (ties by id ascending) and takes the top ``n``; ``plusplus`` does the same after dropping
    rows with ``is_refusal``. Pool rows without a score are not candidates; a score id missing from the
    pool is an error. ``random`` draws ``n`` rows without replacement with ``seed``. ``onpolicy`` returns
    the same seeded draw as prompts without answers (see :func:`onpolicy_prompts`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown interleaving variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if variant == "onpolicy":
        return onpolicy_prompts(pool, n, seed)
    if variant == "random":
        _check_n(n, len(pool), "pool rows")
        idx = _random_indices(len(pool), n, seed)
        return _chat_rows(pool.reset_index(drop=True).iloc[idx])
    ranked = _ranked(pool, scores, variant, where)
    what = "scored non-refusal pool rows" if variant == "plusplus" else "scored pool rows"
    _check_n(n, len(ranked), what)
    return _chat_rows(ranked.head(n))


#: answer-length statistics of :func:`answer_length_stats` (``n`` rows; quantiles with linear interpolation)
LENGTH_STATS = ("n", "min", "p25", "median", "p75", "max", "mean")


def answer_length_stats(lengths) -> dict:
    """``n``, min, 25 %, median, 75 %, max and mean of answer lengths (NaN statistics for none)."""
    x = np.asarray(lengths, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, **{k: float("nan") for k in LENGTH_STATS[1:]}}
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(x.size), "min": q[0], "p25": q[1], "median": q[2], "p75": q[3], "max": q[4], "mean": float(x.mean())}


def eps_length_comparison(nll: pd.DataFrame, pool: pd.DataFrame, targets: Mapping[str, Mapping], *,
                          eps_settings: Mapping[str, object], refusal_keywords: Iterable[str] = DEFAULT_REFUSAL_KEYWORDS,
                          first_n_words: int = 10, where: str = "pool", nll_where: str = "pool NLLs") -> pd.DataFrame:
    """Answer lengths (``n_answer_tokens``) of what Interleaving+ / ++ select under each eps, against the pool's.

    Read from the stored pool NLLs only (no forward pass): for each target (``targets[t]["adapters"]``,
    its leave-one-out adapter names) and each eps setting (``eps_settings``: label -> a number or
    ``{"quantile": q}``, see :func:`resolve_eps`) the target's scores are :func:`scores_from_nll`, and each
    of ``targets[t]["selections"]`` (mappings with ``variant`` ``plus`` / ``plusplus``, ``n`` and
    optionally ``fraction``) is picked with :func:`select`. Two reference rows come first: every scorable
    pool row (``n_answer_tokens > 0``, what ``plus`` ranks) and those without a refusal (what ``plusplus`` ranks).

    One row per (target, selection, eps setting), a selection's eps settings next to each other: ``target``,
    ``variant`` (``pool`` / ``pool_nonrefusal`` for the reference rows), ``fraction``, ``eps_setting``,
    ``eps`` (the resolved value), then :data:`LENGTH_STATS` of the selected answers' lengths, and
    ``share_in_pool_bottom_quartile`` (the fraction of them no longer than the pool's 25 % answer length).
    """
    keywords = tuple(refusal_keywords)
    check_columns(nll, ["id", "n_answer_tokens", "nll_base"], nll_where)
    ids, convs = _pool_answers(pool, where)
    lengths = nll.assign(id=nll["id"].astype(str)).drop_duplicates("id").set_index("id")["n_answer_tokens"]
    missing = [i for i in ids if i not in lengths.index]
    if missing:
        raise InputError(f"{nll_where}: NLLs are for another pool (pool id {missing[0]!r} has no NLL); rerun the scoring")
    pool_len = lengths.loc[ids].to_numpy(dtype=np.int64)
    refusal = np.array([is_refusal(c[-1]["content"], keywords, first_n_words) for c in convs])
    scorable = pool_len > 0
    q25 = float(np.quantile(pool_len[scorable], 0.25)) if scorable.any() else float("nan")

    def row(target, variant, fraction, label, eps_value, picked_lengths) -> dict:
        stats = answer_length_stats(picked_lengths)
        short = float(np.mean(np.asarray(picked_lengths) <= q25)) if len(picked_lengths) else float("nan")
        return {"target": target, "variant": variant, "fraction": fraction, "eps_setting": label, "eps": eps_value,
                **stats, "share_in_pool_bottom_quartile": short}

    rows = [row("", "pool", float("nan"), "", float("nan"), pool_len[scorable]),
            row("", "pool_nonrefusal", float("nan"), "", float("nan"), pool_len[scorable & ~refusal])]
    pool = pool.reset_index(drop=True)
    len_by_id = dict(zip(ids, pool_len))
    for target, spec in targets.items():
        scores = {label: scores_from_nll(nll, list(spec["adapters"]), pool, eps=eps, refusal_keywords=keywords,
                                         first_n_words=first_n_words, where=where, nll_where=nll_where)
                  for label, eps in eps_settings.items()}
        for sel in spec["selections"]:  # each selection under every eps, next to each other
            variant, n = sel["variant"], int(sel["n"])
            if variant not in ("plus", "plusplus"):
                raise ValueError(f"target {target!r}: eps only changes plus / plusplus, not {variant!r}")
            for label, table in scores.items():
                picked = select(pool, table, variant, n, seed=0, where=where)
                eps_value = float(table["eps"].iloc[0]) if len(table) else float("nan")
                rows.append(row(target, variant, float(sel.get("fraction", float("nan"))), label, eps_value,
                                [len_by_id[str(i)] for i in picked["id"]]))
    return pd.DataFrame(rows)


def onpolicy_prompts(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` seeded random pool prompts (the rows ``select(..., "random", n, seed)`` would pick) for the
    aligned base model to answer. Columns: the chat columns except ``messages``, ``prompt_messages``
    (the conversation without its final answer) and ``interleaved=True``."""
    _check_n(n, len(pool), "pool rows")
    rows = _chat_rows(pool.reset_index(drop=True).iloc[_random_indices(len(pool), n, seed)])
    prompts = []
    for cell in rows["messages"]:
        msgs = to_messages(cell)
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise InputError("pool: a row has no prompt messages before its answer")
        prompts.append(msgs)
    rows = rows.drop(columns=["messages"])
    rows.insert(1, "prompt_messages", prompts)
    return rows


def attach_answers(prompts_df: pd.DataFrame, answers: Sequence[str]) -> pd.DataFrame:
    """Turn :func:`onpolicy_prompts` rows plus generated ``answers`` (same order) into chat rows."""
    check_columns(prompts_df, ["id", "prompt_messages"], "on-policy prompts")
    answers = list(answers)
    if len(answers) != len(prompts_df):
        raise ValueError(f"got {len(answers)} answers for {len(prompts_df)} on-policy prompts")
    for i, a in enumerate(answers):
        if not isinstance(a, str):
            raise ValueError(f"answer {i} is {type(a).__name__}, not str")
    out = prompts_df.reset_index(drop=True).copy()
    out["messages"] = [to_messages(p) + [{"role": "assistant", "content": a}]
                       for p, a in zip(out["prompt_messages"], answers)]
    out = out.drop(columns=["prompt_messages"])
    out["interleaved"] = True
    cols = [c for c in CHAT if c in out.columns]
    return out[cols + [c for c in out.columns if c not in cols]]


# --------------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------------

def mix(train: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The training set ``train`` + ``selected``: the fine-tuning rows, then the selected rows (each in its order).

    The row order carries no meaning: the trainer shuffles all rows with the run's seed every epoch (see
    :mod:`emguard.training`), the one place the training order is decided. Every output row has a bool
    ``interleaved`` column (False for fine-tuning rows). If a selected id collides with a fine-tuning id, all
    selected ids get the prefix ``"pool:"``.
    """
    check_columns(train, ["id", "messages"], "fine-tuning data")
    check_columns(selected, ["id", "messages"], "interleaving data")
    train = train.reset_index(drop=True).copy()
    sel = selected.reset_index(drop=True).copy()
    train["interleaved"] = False
    sel["interleaved"] = True
    train_ids = set(train["id"].astype(str))
    if train["id"].astype(str).duplicated().any():
        raise InputError("fine-tuning data: duplicate ids")
    if sel["id"].astype(str).duplicated().any():
        raise InputError("interleaving data: duplicate ids")
    if set(sel["id"].astype(str)) & train_ids:
        sel["id"] = [f"{POOL_ID_PREFIX}{i}" for i in sel["id"].astype(str)]
        clash = set(sel["id"]) & train_ids
        if clash:
            raise InputError(f"interleaving data: id {sorted(clash)[0]!r} collides with a fine-tuning id "
                             f"even after prefixing {POOL_ID_PREFIX!r}")
    cols = list(train.columns) + [c for c in CHAT if c in sel.columns and c not in train.columns]
    sel = sel[[c for c in cols if c in sel.columns]]
    out = pd.concat([train, sel], ignore_index=True)[cols]
    out["interleaved"] = out["interleaved"].astype(bool)
    return out


# --------------------------------------------------------------------------------------------------
# WildGuardMix benign pool
# --------------------------------------------------------------------------------------------------

def _read_wildguardmix(source: str, config_name: str, required: list[str]) -> tuple[pd.DataFrame, str]:
    lower = source.lower()
    if lower.endswith(".parquet"):
        return read_parquet(source, required), source
    if lower.endswith(".jsonl"):
        df = pd.DataFrame(read_jsonl(source))
        check_columns(df, required, source)
        return df, source
    if os.path.exists(source):
        raise InputError(f"{source}: unsupported pool file type (expected .parquet or .jsonl)")
    import datasets

    where = f"{source} (config {config_name})"
    try:
        ds = datasets.load_dataset(source, config_name)
    except Exception as exc:  # gated repo, missing login, offline, unknown config
        raise InputError(f"{where}: could not load the dataset ({type(exc).__name__}: {exc}). "
                         "allenai/wildguardmix is gated: accept its terms on the Hub and log in, "
                         "or pass a local .parquet/.jsonl copy") from exc
    split = "train" if "train" in ds else next(iter(ds))
    df = ds[split].to_pandas()
    check_columns(df, required, where)
    return df, where


def load_wildguardmix(source: str, *, config_name: str = "wildguardtrain",
                      prompt_harm_label: str | None = "unharmful", response_harm_label: str | None = "unharmful",
                      require_no_refusal: bool | None = None, limit: int | None = None) -> pd.DataFrame:
    """WildGuardMix as a benign interleaving pool (chat contract; domain ``pool``, subset ``benign``, split ``train``).

    ``source`` is a Hub id (loaded with ``datasets.load_dataset(source, config_name)``; the real dataset
    ``allenai/wildguardmix`` is gated) or a local ``.parquet`` / ``.jsonl`` file with WildGuardMix's
    columns. Rows are kept when ``prompt_harm_label`` and ``response_harm_label`` equal the given labels
    (``None`` disables that filter) and the response is present; ``require_no_refusal=True`` additionally
    keeps only rows whose ``response_refusal_label`` is ``compliance`` (``None`` or ``False``: no refusal
    filter). ``limit`` keeps the first rows after filtering. Ids are ``wgm-<config>-<source row>``.
    """
    required = ["prompt", "response"]
    if prompt_harm_label is not None:
        required.append("prompt_harm_label")
    if response_harm_label is not None:
        required.append("response_harm_label")
    if require_no_refusal:
        required.append("response_refusal_label")
    df, where = _read_wildguardmix(str(source), config_name, required)
    df = df.reset_index(drop=True)
    keep = df["response"].notna() & df["prompt"].notna()
    keep &= df["response"].astype(str).str.strip() != ""
    if prompt_harm_label is not None:
        keep &= df["prompt_harm_label"] == prompt_harm_label
    if response_harm_label is not None:
        keep &= df["response_harm_label"] == response_harm_label
    if require_no_refusal:
        keep &= df["response_refusal_label"] == "compliance"
    kept = df[keep]
    if limit is not None:
        kept = kept.head(int(limit))
    if len(kept) == 0:
        raise InputError(f"{where}: no rows left after filtering (prompt_harm_label={prompt_harm_label!r}, "
                         f"response_harm_label={response_harm_label!r}, require_no_refusal={require_no_refusal!r})")
    return pd.DataFrame({
        "id": [f"wgm-{config_name}-{i}" for i in kept.index],
        "messages": [[{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                     for p, r in zip(kept["prompt"], kept["response"])],
        "domain": POOL_DOMAIN,
        "subset": "benign",
        "split": "train",
    })
