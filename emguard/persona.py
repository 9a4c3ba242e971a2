"""Persona-vector extraction: a direction in the residual stream for one character trait.

The stage, run once per (base model, trait):

1. :func:`load_trait` reads a trait definition (YAML): contrasting system-prompt ``pairs``
   (``positive`` asks for the trait, ``negative`` for its opposite), extraction ``questions``, optional
   held-out ``validation_questions`` and a 0-100 ``judge_prompt``; or the persona-vectors JSON format
   (``instruction`` pairs ``{pos, neg}``, ``questions``, ``eval_prompt``), mapped to the same :class:`Trait`.
2. :func:`plan_rollouts` lays out every (pair, side, question, sample) rollout. Positive and negative
   rollouts of the same (pair, question, sample) share a ``key``; that key, never the row order, is what
   matches them later.
3. :func:`extract` samples an answer for each rollout, has the judge score the trait and coherence,
   keeps the matched pairs where the positive answer shows the trait, the negative does not and both
   are coherent (:func:`filter_pairs`), averages each layer's hidden states over the response tokens
   (:func:`response_hidden_means`) and takes the positive-minus-negative mean (:func:`persona_vectors`).
4. :func:`validate_steering` checks that the vector is causal: generating with ``-alpha``, ``0`` and
   ``+alpha`` times the vector added at the chosen layer should order the judged trait score.

Layer numbering follows ``docs/architecture.md``: index 0 is the embeddings and index ``l``
(1..n_layers) the output of decoder block ``l - 1``; vectors are ``[n_layers + 1, hidden]`` and
``vectors[l]`` is what :func:`emguard.steering.steer` adds at ``layer=l``. transformers returns the
*final-norm output* as the last ``output_hidden_states`` entry; :func:`response_hidden_means` replaces it
with the raw output of the last block so that every index means the same thing as in ``steer``.

Default steering layer
----------------------
:data:`DEFAULT_STEERING_LAYER` is 21 for the embedded SmolLM2-135M-Instruct (30 decoder layers). The
persona-vector paper steers Qwen2.5-7B-Instruct (28 layers) at layer 20, i.e. about 71% of the depth,
where their layer sweep found the trait most steerable. We keep the *relative* depth rather than the
absolute index because what a layer represents depends on where it sits in the stack: 20/28 x 30 =
21.4, rounded to 21 (:func:`comparable_layer`). Mid-depth (15) was the alternative; we did not take it
because in small, deep-and-narrow models the middle layers still carry mostly lexical/syntactic
features, while behavioural dispositions (tone, intent) become linearly readable in the upper-middle
layers, and the last few layers (27-30) mostly serve next-token prediction, so steering there tends
to break fluency before it changes attitude. Layer 21 also avoids the final index (30), whose
pre/post-norm ambiguity is explained above. This is a starting point, not a measurement on this
model: the validation report (:func:`validate_steering`) shows whether +alpha actually raises the
judged trait at the chosen layer, and ``steering_layer`` in the config overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from emguard.chat import IGNORE_INDEX, encode_example, render_prompt
from emguard.errors import EmguardError, InputError
from emguard.io import atomic_path, read_yaml

log = logging.getLogger(__name__)

SIDES = ("positive", "negative")
#: columns of the rollout plan
ROLLOUT = ["pair_idx", "side", "question_idx", "sample_idx", "system", "question", "key"]
#: reference point for the default layer: the persona-vector paper's layer 20 of 28 (Qwen2.5-7B)
REFERENCE_LAYER, REFERENCE_N_LAYERS = 20, 28
#: embedded default model (SmolLM2-135M-Instruct) has 30 decoder layers
DEFAULT_STEERING_LAYER = 21
LAYER_CONVENTION = ("hidden-state index: 0 = embeddings, l in 1..n_layers = output of decoder block l-1 "
                    "(pre final norm); shape [n_layers + 1, hidden]")
VECTOR_KEY = "vectors"
MIN_PAIRS_IN_FILE = 5
#: share of a persona-vectors JSON trait's ``questions`` held out for the steering check when it lists no
#: ``validation_questions`` (that format has none: its evaluation questions live in a separate file)
JSON_VALIDATION_FRACTION = 0.2
#: ``fallback`` values of :func:`extract`: None / "error" raise when too few pairs survive
FALLBACKS = (None, "error", "unfiltered")


class PersonaError(EmguardError):
    """Persona-vector extraction cannot produce a meaningful vector (e.g. no pair survives the filter)."""


def comparable_layer(n_layers: int, ref_layer: int = REFERENCE_LAYER, ref_n_layers: int = REFERENCE_N_LAYERS) -> int:
    """The hidden-state index at the same relative depth as ``ref_layer`` of ``ref_n_layers``."""
    return max(1, min(n_layers, int(math.floor(ref_layer / ref_n_layers * n_layers + 0.5))))


# --------------------------------------------------------------------------------------------------
# 1. Trait definitions
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraitPair:
    positive: str
    negative: str


@dataclass(frozen=True)
class Trait:
    name: str
    pairs: list[TraitPair]
    questions: list[str]
    judge_prompt: str
    validation_questions: list[str] = field(default_factory=list)
    description: str = ""
    path: str = ""


def _need_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _text_list(data: dict, key: str, path: str, *, min_len: int) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list):
        raise InputError(f"{path}: key '{key}': expected a list of strings, got {type(value).__name__}")
    if len(value) < min_len:
        raise InputError(f"{path}: key '{key}': needs at least {min_len} entries, has {len(value)}")
    items = [_need_text(v, f"{path}: key '{key}[{i}]'") for i, v in enumerate(value)]
    seen: dict[str, int] = {}
    for i, q in enumerate(items):
        if q in seen:
            raise InputError(f"{path}: key '{key}[{i}]': duplicate of '{key}[{seen[q]}]' ({q!r})")
        seen[q] = i
    return items


def check_template(template: str, where: str) -> str:
    """A judge template must contain the ``{question}`` and ``{answer}`` placeholders.

    They are substituted literally (:func:`emguard.judge.fill_template`), so other braces are allowed.
    """
    if not isinstance(template, str):
        raise InputError(f"{where}: expected a template string, got {type(template).__name__}")
    for slot in ("{question}", "{answer}"):
        if slot not in template:
            raise InputError(f"{where}: the template lacks the {slot} placeholder")
    return template


def _pairs(raw: Any, where: str, key: str, pos_key: str, neg_key: str, min_pairs: int) -> list[TraitPair]:
    """Contrasting system-prompt pairs from the list at ``key``; errors name the file, key and index."""
    if not isinstance(raw, list):
        raise InputError(f"{where}: key '{key}': expected a list of {{{pos_key}, {neg_key}}} mappings")
    if len(raw) < min_pairs:
        raise InputError(f"{where}: key '{key}': needs at least {min_pairs} contrasting pairs, has {len(raw)}")
    pairs = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise InputError(f"{where}: key '{key}[{i}]': expected a mapping with '{pos_key}' and '{neg_key}'")
        for side in (pos_key, neg_key):
            if side not in p:
                raise InputError(f"{where}: key '{key}[{i}].{side}': missing")
        pos = _need_text(p[pos_key], f"{where}: key '{key}[{i}].{pos_key}'")
        neg = _need_text(p[neg_key], f"{where}: key '{key}[{i}].{neg_key}'")
        if pos == neg:
            raise InputError(f"{where}: key '{key}[{i}]': positive and negative prompts are identical")
        pairs.append(TraitPair(pos, neg))
    return pairs


def _description(data: dict, where: str) -> str:
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise InputError(f"{where}: key 'description': expected a string")
    return description.strip()


def _disjoint(questions: list[str], validation: list[str], where: str) -> None:
    overlap = sorted(set(questions) & set(validation))
    if overlap:
        raise InputError(f"{where}: key 'validation_questions': repeats extraction question(s) {overlap[:3]}")


def load_trait(path: str | os.PathLike, *, min_pairs: int = MIN_PAIRS_IN_FILE,
               validation_fraction: float = JSON_VALIDATION_FRACTION, validation_seed: int = 0) -> Trait:
    """Read and validate a trait definition; errors name the file and the key (and index).

    A ``.json`` file is read in the persona-vectors format (:func:`_load_trait_json`, which uses
    ``validation_fraction`` and ``validation_seed``); anything else is our YAML format: ``name``, ``pairs``
    of ``{positive, negative}``, ``questions``, optional ``validation_questions``, ``judge_prompt``.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return _load_trait_json(path, min_pairs=min_pairs, validation_fraction=validation_fraction,
                                validation_seed=validation_seed)
    where = str(path)
    data = read_yaml(path, "trait definition")
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with keys name, pairs, questions, judge_prompt")
    for key in ("name", "pairs", "questions", "judge_prompt"):
        if key not in data:
            raise InputError(f"{where}: missing key '{key}'")
    name = _need_text(data["name"], f"{where}: key 'name'")
    pairs = _pairs(data["pairs"], where, "pairs", "positive", "negative", min_pairs)
    questions = _text_list(data, "questions", where, min_len=1)
    validation = _text_list(data, "validation_questions", where, min_len=1) if "validation_questions" in data else []
    _disjoint(questions, validation, where)
    judge_prompt = check_template(_need_text(data["judge_prompt"], f"{where}: key 'judge_prompt'"),
                                  f"{where}: key 'judge_prompt'")
    return Trait(name=name, pairs=pairs, questions=questions, judge_prompt=judge_prompt,
                 validation_questions=validation, description=_description(data, where), path=where)


def held_out_questions(questions: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ``questions`` into (extraction, validation), both in file order.

    ``round(n * fraction)`` questions are held out (at least one when there are two or more, never all):
    those with the smallest ``sha256(seed, question text)``, so the choice depends on the questions
    themselves, not on their order in the file, and is the same on every machine.
    """
    if not 0 <= float(fraction) < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}")
    n = len(questions)
    k = min(max(int(round(n * float(fraction))), 1 if fraction > 0 and n > 1 else 0), max(n - 1, 0))
    digest = {q: hashlib.sha256(f"{seed}\x1f{q}".encode("utf-8")).hexdigest() for q in questions}
    held = set(sorted(questions, key=digest.__getitem__)[:k])
    return [q for q in questions if q not in held], [q for q in questions if q in held]


def _load_trait_json(path: Path, *, min_pairs: int, validation_fraction: float, validation_seed: int) -> Trait:
    """A trait in the persona-vectors JSON format (Chen et al.), mapped to the same :class:`Trait`.

    Keys: ``instruction`` (a list of ``{"pos": ..., "neg": ...}`` system-instruction pairs -> ``pairs``),
    ``questions`` (a list of strings), ``eval_prompt`` (the 0-100 trait-judge template with ``{question}``
    and ``{answer}`` -> ``judge_prompt``). The name is the file's stem unless a ``name`` key gives one.
    Validation questions: a ``validation_questions`` list when the file has one (all ``questions`` are then
    extraction questions); otherwise a held-out share ``validation_fraction`` of ``questions``
    (:func:`held_out_questions` with ``validation_seed``), so the steering check never reuses an
    extraction question.
    """
    where = str(path)
    if not path.is_file():
        raise InputError(f"{where}: trait definition not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}:{exc.lineno}:{exc.colno}: malformed JSON in trait definition ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object with keys instruction, questions, eval_prompt")
    for key in ("instruction", "questions", "eval_prompt"):
        if key not in data:
            raise InputError(f"{where}: missing key '{key}'")
    name = _need_text(data["name"], f"{where}: key 'name'") if "name" in data else path.stem
    pairs = _pairs(data["instruction"], where, "instruction", "pos", "neg", min_pairs)
    questions = _text_list(data, "questions", where, min_len=1)
    if "validation_questions" in data:
        validation = _text_list(data, "validation_questions", where, min_len=1)
        _disjoint(questions, validation, where)
    else:
        questions, validation = held_out_questions(questions, validation_fraction, validation_seed)
    judge_prompt = check_template(_need_text(data["eval_prompt"], f"{where}: key 'eval_prompt'"),
                                  f"{where}: key 'eval_prompt'")
    return Trait(name=name, pairs=pairs, questions=questions, judge_prompt=judge_prompt,
                 validation_questions=validation, description=_description(data, where), path=where)


# --------------------------------------------------------------------------------------------------
# 2. Rollout plan
# --------------------------------------------------------------------------------------------------

def rollout_key(pair_idx: int, question_idx: int, sample_idx: int) -> str:
    """Stable key shared by the positive and negative rollout of one (pair, question, sample)."""
    return f"p{int(pair_idx):03d}-q{int(question_idx):03d}-s{int(sample_idx):03d}"


def plan_rollouts(trait: Trait, n_samples: int) -> pd.DataFrame:
    """One row per (pair, side, question, sample), ordered by pair, side, question, sample."""
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rows = []
    for p, pair in enumerate(trait.pairs):
        for side in SIDES:
            system = pair.positive if side == "positive" else pair.negative
            for q, question in enumerate(trait.questions):
                for s in range(int(n_samples)):
                    rows.append({"pair_idx": p, "side": side, "question_idx": q, "sample_idx": s,
                                 "system": system, "question": question, "key": rollout_key(p, q, s)})
    return pd.DataFrame(rows, columns=ROLLOUT)


def conversations_for(plan: pd.DataFrame) -> list[list[dict]]:
    """System prompt + user question for each plan row (no assistant turn)."""
    return [[{"role": "system", "content": str(r.system)}, {"role": "user", "content": str(r.question)}]
            for r in plan.itertuples(index=False)]


# --------------------------------------------------------------------------------------------------
# 3. Matched-pair filter
# --------------------------------------------------------------------------------------------------

def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def filter_pairs(judged: pd.DataFrame, *, trait_threshold: float = 50, coherence_threshold: float = 50,
                 trait_col: str = "trait_score", coherence_col: str = "coherent_score",
                 where: str = "judged rollouts") -> tuple[pd.DataFrame, dict]:
    """Keep the matched (positive, negative) rollouts that contrast on the trait and are both coherent.

    Rows are matched on ``key`` (never on row order). A pair is kept when the positive answer scores
    ``trait >= trait_threshold``, the negative ``trait < trait_threshold``, and both ``coherence >=
    coherence_threshold``. A pair with a missing score (None/NaN, e.g. a judge refusal) or a missing side
    is dropped and counted in ``dropped_missing``; a pair with an empty answer on either side is dropped
    too. Returns the kept rows (both sides, sorted by key then side, positive first) and the counts
    ``kept_pairs``, ``dropped_pairs`` (all dropped, including the missing ones) and ``dropped_missing``.
    """
    required = ["key", "side", trait_col, coherence_col]
    missing_cols = [c for c in required if c not in judged.columns]
    if missing_cols:
        raise InputError(f"{where}: missing column(s) {', '.join(missing_cols)}")
    bad_side = sorted(set(judged["side"]) - set(SIDES))
    if bad_side:
        raise InputError(f"{where}: side must be one of {SIDES}, found {bad_side}")
    dup = judged[judged.duplicated(["key", "side"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise InputError(f"{where}: key {r['key']!r} has more than one {r['side']} row")

    by = {side: judged[judged["side"] == side].set_index("key") for side in SIDES}
    keys = sorted(set(judged["key"]))
    kept, n_missing = [], 0
    for key in keys:
        if key not in by["positive"].index or key not in by["negative"].index:
            n_missing += 1
            continue
        pos, neg = by["positive"].loc[key], by["negative"].loc[key]
        scores = [pos[trait_col], neg[trait_col], pos[coherence_col], neg[coherence_col]]
        if any(_is_missing(v) for v in scores):
            n_missing += 1
            continue
        if "answer" in judged.columns and not (str(pos["answer"]).strip() and str(neg["answer"]).strip()):
            continue
        pt, nt, pc, nc = (float(v) for v in scores)
        if pt >= trait_threshold and nt < trait_threshold and pc >= coherence_threshold and nc >= coherence_threshold:
            kept.append(key)
    out = judged[judged["key"].isin(set(kept))].copy()
    out["_side_order"] = out["side"].map({"positive": 0, "negative": 1})
    out = out.sort_values(["key", "_side_order"], kind="stable").drop(columns="_side_order").reset_index(drop=True)
    counts = {"kept_pairs": len(kept), "dropped_pairs": len(keys) - len(kept), "dropped_missing": n_missing}
    return out, counts


def complete_pairs(judged: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The ``fallback="unfiltered"`` selection: every key with both sides present and non-empty answers."""
    sides = judged.groupby("key")["side"].apply(set)
    complete = set(sides[sides.apply(lambda s: set(SIDES) <= s)].index)
    ok = set(complete)
    if "answer" in judged.columns:
        ok -= set(judged.loc[judged["answer"].astype(str).str.strip() == "", "key"])
    out = judged[judged["key"].isin(ok)].copy()
    out["_side_order"] = out["side"].map({"positive": 0, "negative": 1})
    out = out.sort_values(["key", "_side_order"], kind="stable").drop(columns="_side_order").reset_index(drop=True)
    n_keys = judged["key"].nunique()
    return out, {"kept_pairs": len(ok), "dropped_pairs": n_keys - len(ok), "dropped_missing": n_keys - len(complete)}


# --------------------------------------------------------------------------------------------------
# 4. Per-layer means over response tokens
# --------------------------------------------------------------------------------------------------

def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


def _final_norm(model):
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(m, "model", m)
    return getattr(inner, "norm", None)


def _response_span(tokenizer, conversation: list[dict], answer: str, max_length: int | None):
    """Token ids of prompt+answer and the [start, end) span of the answer's own tokens.

    ``encode_example`` marks the answer *and* the template's closing tokens (e.g. ``<|im_end|>\\n``);
    only the answer text counts as the response here, so the span ends where ``prompt + answer`` ends.
    """
    messages = list(conversation) + [{"role": "assistant", "content": answer}]
    enc = encode_example(tokenizer, messages)
    start = next((i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX), len(enc.labels))
    prompt = render_prompt(tokenizer, list(conversation))
    n_answer = len(tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]) - start
    end = start + max(0, min(n_answer, enc.n_answer_tokens))
    ids = enc.input_ids
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        end = min(end, max_length)
    return ids, start, end


@torch.no_grad()
def response_hidden_means(model, tokenizer, conversations: Sequence[list[dict]], answers: Sequence[str], *,
                          batch_size: int = 8, max_length: int | None = None) -> torch.Tensor:
    """Mean hidden state over each answer's response tokens, per layer: ``[n, n_layers + 1, hidden]``.

    Each conversation (system/user turns, no assistant turn) is rendered with the chat template plus its
    answer. Batches of ``batch_size`` examples (grouped by length to limit padding) are right-padded and
    run in one forward pass with ``output_hidden_states``; prompt tokens, the template's closing tokens
    and padding are excluded from the average. Index ``n_layers`` is the last block's output before the
    final norm (see the module docstring). Returns float32 on the CPU.
    """
    if len(conversations) != len(answers):
        raise ValueError(f"{len(conversations)} conversations but {len(answers)} answers")
    n = len(answers)
    if n == 0:
        raise ValueError("response_hidden_means needs at least one example")
    spans = []
    for i, (conv, ans) in enumerate(zip(conversations, answers)):
        ids, start, end = _response_span(tokenizer, conv, str(ans), max_length)
        if end <= start:
            raise InputError(f"example {i}: the answer has no response tokens (empty answer, or cut off by "
                             f"max_length={max_length}); drop it before computing means")
        spans.append((ids, start, end))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _model_device(model)
    order = sorted(range(n), key=lambda i: len(spans[i][0]))
    result: torch.Tensor | None = None
    norm = _final_norm(model)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, n, max(1, int(batch_size))):
            idx = order[b:b + max(1, int(batch_size))]
            width = max(len(spans[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            resp = torch.zeros((len(idx), width), dtype=torch.float32)
            for row, i in enumerate(idx):
                toks, start, end = spans[i]
                ids[row, :len(toks)] = torch.tensor(toks)
                attn[row, :len(toks)] = 1
                resp[row, start:end] = 1.0
            captured: dict[str, torch.Tensor] = {}
            handle = None
            if norm is not None:
                handle = norm.register_forward_pre_hook(lambda _m, args: captured.__setitem__("pre_norm", args[0]))
            try:
                out = model(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True,
                            use_cache=False)
            finally:
                if handle is not None:
                    handle.remove()
            hidden = list(out.hidden_states)
            if "pre_norm" in captured:
                hidden[-1] = captured["pre_norm"]
            mask = resp.to(device)
            denom = mask.sum(1, keepdim=True)  # [b, 1]
            layers = [(h.float() * mask.unsqueeze(-1)).sum(1) / denom for h in hidden]  # each [b, hidden]
            means = torch.stack(layers, dim=1).cpu()  # [b, L+1, hidden]
            if result is None:
                result = torch.empty((n, means.shape[1], means.shape[2]), dtype=torch.float32)
            result[torch.tensor(idx)] = means
    finally:
        if was_training:
            model.train()
    return result


# --------------------------------------------------------------------------------------------------
# 5. Vectors and their file
# --------------------------------------------------------------------------------------------------

def persona_vectors(means: torch.Tensor, sides: Sequence[str]) -> torch.Tensor:
    """Mean over the positive examples minus mean over the negative ones: ``[n_layers + 1, hidden]``."""
    if means.dim() != 3:
        raise ValueError(f"means must be [n, n_layers + 1, hidden], got shape {tuple(means.shape)}")
    if len(sides) != means.shape[0]:
        raise ValueError(f"{means.shape[0]} rows of means but {len(sides)} sides")
    bad = sorted(set(sides) - set(SIDES))
    if bad:
        raise ValueError(f"sides must be 'positive' or 'negative', found {bad}")
    pos = torch.tensor([s == "positive" for s in sides])
    if not pos.any() or pos.all():
        raise PersonaError("persona_vectors needs at least one positive and one negative example")
    return means[pos].float().mean(0) - means[~pos].float().mean(0)


def save_vectors(path: str | os.PathLike, vectors: torch.Tensor, metadata: dict) -> None:
    """Write ``vectors`` ([n_layers + 1, hidden]) as safetensors with string metadata, atomically."""
    from safetensors.torch import save_file

    if vectors.dim() != 2:
        raise ValueError(f"vectors must be [n_layers + 1, hidden], got shape {tuple(vectors.shape)}")
    meta = {"layer_convention": LAYER_CONVENTION, "n_layers": str(vectors.shape[0] - 1),
            "hidden_size": str(vectors.shape[1])}
    for k, v in metadata.items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    with atomic_path(path) as tmp:
        save_file({VECTOR_KEY: vectors.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)


def load_vectors(path: str | os.PathLike, *, n_layers: int | None = None,
                 hidden_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """Read a persona-vector file; check the shape (and, if given, that it fits the model)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: persona-vector file not found (run the persona-vector stage first)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if VECTOR_KEY not in fh.keys():
                raise InputError(f"{path}: no tensor named {VECTOR_KEY!r} (found {sorted(fh.keys())})")
            vectors = fh.get_tensor(VECTOR_KEY)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if vectors.dim() != 2:
        raise InputError(f"{path}: persona vectors must be [n_layers + 1, hidden], got shape {tuple(vectors.shape)}")
    if n_layers is not None and vectors.shape[0] != n_layers + 1:
        raise InputError(f"{path}: has {vectors.shape[0]} layer rows, the model needs {n_layers + 1} "
                         f"(n_layers + 1, index 0 = embeddings); was it extracted from another model?")
    if hidden_size is not None and vectors.shape[1] != hidden_size:
        raise InputError(f"{path}: hidden size {vectors.shape[1]} does not match the model's {hidden_size}")
    return vectors, meta


def layer_vector(path: str | os.PathLike, layer: int, *, n_layers: int | None = None) -> torch.Tensor:
    """Row ``layer`` (hidden-state index, 1..n_layers) of a persona-vector file, float32: the direction the monitor
    and the checkpoint probes project on. Errors name the file."""
    vectors, _ = load_vectors(path, n_layers=n_layers)
    if not 1 <= int(layer) < vectors.shape[0]:
        raise InputError(f"{path}: persona layer {layer} outside 1..{vectors.shape[0] - 1}")
    vector = vectors[int(layer)].float()
    if not torch.isfinite(vector).all() or float(vector.norm()) == 0.0:
        raise InputError(f"{path}: the persona vector at layer {layer} is zero or not finite")
    return vector


# --------------------------------------------------------------------------------------------------
# 6. The end-to-end stage
# --------------------------------------------------------------------------------------------------

def _default_sample():
    from emguard.generate import sample

    return sample


def _default_score():
    from emguard.judge import score_texts

    return score_texts


def _announce(judge, batches, cache, what: str) -> None:
    """Before the stage's first judge call: how many calls it makes and, for an API judge, their estimated cost
    (:func:`emguard.judge.announce`; ``batches``: ``(metric, template, (question, answer) pairs)``)."""
    from emguard.judge import announce, fill_template

    filled = [(metric, None, [fill_template(template, q, a) for q, a in qa]) for metric, template, qa in batches]
    announce(judge, filled, cache, what)


def _score_columns(df: pd.DataFrame, results: list, prefix: str) -> None:
    df[f"{prefix}_score"] = [None if r.score is None else float(r.score) for r in results]
    df[f"{prefix}_label"] = [getattr(r, "label", None) for r in results]
    df[f"{prefix}_prob_mass"] = [getattr(r, "prob_mass", None) for r in results]


def _n_layers(model) -> int:
    from emguard.models import num_layers

    return num_layers(model)


def extract(model, tokenizer, trait: Trait, judge, *, cache, sampling, seed: int, n_samples: int,
            coherence_template: str, trait_threshold: float = 50, coherence_threshold: float = 50,
            min_pairs: int = 1, fallback: str | None = None, batch_size: int = 8, max_length: int | None = None,
            model_name: str = "", sample_fn: Callable | None = None,
            score_fn: Callable | None = None, judge_filter: bool = True) -> tuple[torch.Tensor, pd.DataFrame, dict]:
    """Plan, generate, judge, filter and average: returns ``(vectors, rollouts, meta)``.

    ``rollouts`` is the plan plus ``answer``, ``trait_*``/``coherent_*`` judge columns and ``kept``.
    If fewer than ``min_pairs`` matched pairs pass the filter, the stage raises :class:`PersonaError`
    (``fallback`` None or ``"error"``, the default) unless ``fallback="unfiltered"`` is set explicitly, in
    which case it uses every complete pair regardless of the judge scores, logs a warning and records
    ``fallback_used="unfiltered"`` in ``meta`` (which the caller saves as the vector file's metadata), so a
    weak vector is never produced silently. The trait is judged under metric ``trait_<name>``, coherence
    under ``coherent`` (shared cache entries with the EM evaluation when the template is the same).
    ``sample_fn`` / ``score_fn`` default to :func:`emguard.generate.sample` and
    :func:`emguard.judge.score_texts` (same signatures); tests pass stand-ins. ``judge_filter=False``: no judge
    call at all, every complete pair averaged (the unfiltered selection; ``meta["judge_filter"]`` false, the judge
    columns NaN), for a judge that cannot score the trait.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if int(min_pairs) < 1:
        raise ValueError(f"min_pairs must be >= 1, got {min_pairs}")
    check_template(coherence_template, "coherence_template")
    sample_fn = sample_fn or _default_sample()
    # the judge's calls are counted (and, for an API judge, priced) before the first one; a stand-in scorer's are not
    announce_calls = score_fn is None
    score_fn = score_fn or _default_score()

    rollouts = plan_rollouts(trait, n_samples)
    conversations = conversations_for(rollouts)
    answers = list(sample_fn(model, tokenizer, conversations, sampling, seed))
    if len(answers) != len(rollouts):
        raise PersonaError(f"the sampler returned {len(answers)} answers for {len(rollouts)} prompts")
    rollouts["answer"] = [str(a) for a in answers]
    if not judge_filter:
        kept, counts = complete_pairs(rollouts)
        if kept.empty:
            raise PersonaError(f"persona vectors for trait '{trait.name}': no complete pair with non-empty answers")
        for col in ("trait_score", "coherent_score"):
            rollouts[col] = float("nan")
        return _vectors(model, tokenizer, rollouts, kept, counts, "none", batch_size=batch_size, max_length=max_length,
                        meta={"model": model_name, "trait": trait.name, "n_samples": int(n_samples), "seed": int(seed),
                              "judge_filter": False, "judge": "none"})
    qa = list(zip(rollouts["question"], rollouts["answer"]))
    if announce_calls:
        _announce(judge, [(f"trait_{trait.name}", trait.judge_prompt, qa), ("coherent", coherence_template, qa)],
                  cache, "persona extraction")
    _score_columns(rollouts, score_fn(judge, trait.judge_prompt, qa, cache, f"trait_{trait.name}"), "trait")
    _score_columns(rollouts, score_fn(judge, coherence_template, qa, cache, "coherent"), "coherent")

    kept, counts = filter_pairs(rollouts, trait_threshold=trait_threshold, coherence_threshold=coherence_threshold)
    fallback_used = "none"
    if counts["kept_pairs"] < min_pairs:
        hint = (f"only {counts['kept_pairs']} of {counts['kept_pairs'] + counts['dropped_pairs']} matched "
                f"(pair, question, sample) rollouts passed the filter (positive trait >= {trait_threshold}, "
                f"negative trait < {trait_threshold}, both coherent >= {coherence_threshold}; "
                f"{counts['dropped_missing']} dropped for missing scores); need min_pairs={min_pairs}")
        if fallback != "unfiltered":
            raise PersonaError(f"persona vectors for trait '{trait.name}': {hint}. Lower the thresholds, raise "
                               "n_samples, use stronger system prompts, or set fallback: unfiltered in the config "
                               "to average all complete pairs without the judge filter.")
        kept, _ = complete_pairs(rollouts)
        if kept.empty:
            raise PersonaError(f"persona vectors for trait '{trait.name}': {hint}, and the unfiltered fallback "
                               "found no complete pair with non-empty answers either")
        fallback_used = "unfiltered"
        log.warning("persona vectors for trait %r: %s; fallback=unfiltered uses all %d complete pairs",
                    trait.name, hint, kept["key"].nunique())
    return _vectors(model, tokenizer, rollouts, kept, counts, fallback_used, batch_size=batch_size,
                    max_length=max_length,
                    meta={"model": model_name, "trait": trait.name, "n_samples": int(n_samples), "seed": int(seed),
                          "judge_filter": True, "trait_threshold": trait_threshold,
                          "coherence_threshold": coherence_threshold, "judge": str(getattr(judge, "name", judge))})


def _vectors(model, tokenizer, rollouts: pd.DataFrame, kept: pd.DataFrame, counts: dict, fallback_used: str, *,
             batch_size: int, max_length: int | None, meta: dict) -> tuple[torch.Tensor, pd.DataFrame, dict]:
    """The per-layer mean difference of the ``kept`` pairs, the rollouts marked ``kept`` and the vector file's
    metadata (``meta`` plus the counts, the fallback used and the vectors' shape)."""
    rollouts["kept"] = rollouts["key"].isin(set(kept["key"]))
    convs = conversations_for(kept)
    means = response_hidden_means(model, tokenizer, convs, list(kept["answer"]), batch_size=batch_size,
                                  max_length=max_length)
    vectors = persona_vectors(means, list(kept["side"]))
    meta = {**meta, **counts, "fallback_used": fallback_used, "pairs_used": int(kept["key"].nunique()),
            "n_rollouts": int(len(rollouts)), "n_layers": int(vectors.shape[0] - 1),
            "hidden_size": int(vectors.shape[1]), "layer_convention": LAYER_CONVENTION}
    return vectors, rollouts, meta


# --------------------------------------------------------------------------------------------------
# 7. Steering validation
# --------------------------------------------------------------------------------------------------

def pick_validation_questions(trait: Trait, n: int) -> list[str]:
    """The first ``n`` held-out ``validation_questions``; the extraction questions only if there are none.

    Falling back to the extraction questions is logged, since the check is then in-sample.
    """
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if trait.validation_questions:
        return list(trait.validation_questions[:int(n)])
    log.warning("trait %r has no validation_questions; validating steering on its extraction questions",
                trait.name)
    return list(trait.questions[:int(n)])


def _mean_and_n(values: Sequence) -> tuple[float, int]:
    vals = [float(v) for v in values if not _is_missing(v)]
    return (sum(vals) / len(vals) if vals else float("nan")), len(vals)


def validate_steering(model, tokenizer, vectors: torch.Tensor, layer: int, alpha: float, questions: Sequence[str],
                      judge, *, cache, sampling, seed: int, trait_template: str, coherence_template: str,
                      trait_name: str = "trait", sample_fn: Callable | None = None, score_fn: Callable | None = None,
                      return_answers: bool = False):
    """Judge answers generated with ``-alpha``, ``0`` and ``+alpha`` times ``vectors[layer]`` added at ``layer``.

    Steering applies at every position (prompt and generated tokens), through
    :func:`emguard.steering.steer`. All three settings use the same questions and seed, so only the
    steering differs. Returns one row per alpha: ``layer``, ``alpha``, ``n`` (answers), ``trait_mean``,
    ``trait_n`` (answers with a trait score), ``coherent_mean``, ``coherent_n``, ``trait_scores`` (the
    ``trait_n`` numeric trait scores, in question order). A working vector gives
    ``trait_mean`` increasing with alpha. With ``return_answers=True`` also returns the per-answer table.
    """
    from emguard.steering import steer

    if vectors.dim() != 2 or not 1 <= layer < vectors.shape[0]:
        raise ValueError(f"layer {layer} is not a steerable index of vectors with shape {tuple(vectors.shape)}")
    check_template(trait_template, "trait_template")
    check_template(coherence_template, "coherence_template")
    if not questions:
        raise ValueError("validate_steering needs at least one question")
    sample_fn = sample_fn or _default_sample()
    announce_calls = score_fn is None
    score_fn = score_fn or _default_score()
    conversations = [[{"role": "user", "content": str(q)}] for q in questions]
    vector = vectors[layer]
    alphas = (-float(alpha), 0.0, float(alpha))
    # every setting's answers first, so the judge calls (and, for an API judge, their cost) are known before any
    answered = {}
    for a in alphas:
        with steer(model, vector, layer, a):
            answered[a] = list(zip([str(q) for q in questions],
                                   [str(x) for x in sample_fn(model, tokenizer, conversations, sampling, seed)]))
    if announce_calls:
        every = [pair for a in alphas for pair in answered[a]]
        _announce(judge, [(f"trait_{trait_name}", trait_template, every), ("coherent", coherence_template, every)],
                  cache, "persona validation")
    summary, rows = [], []
    for a in alphas:
        qa = answered[a]
        answers = [ans for _, ans in qa]
        trait = score_fn(judge, trait_template, qa, cache, f"trait_{trait_name}")
        coherent = score_fn(judge, coherence_template, qa, cache, "coherent")
        t_scores = [r.score for r in trait]
        c_scores = [r.score for r in coherent]
        t_mean, t_n = _mean_and_n(t_scores)
        c_mean, c_n = _mean_and_n(c_scores)
        # the per-answer trait scores go with the summary: the report's verdict on the steering effect
        # needs their spread (an interval), not only the means
        summary.append({"layer": int(layer), "alpha": a, "n": len(answers), "trait_mean": t_mean, "trait_n": t_n,
                        "coherent_mean": c_mean, "coherent_n": c_n,
                        "trait_scores": [float(v) for v in t_scores if not _is_missing(v)]})
        for i, ((q, ans), ts, cs) in enumerate(zip(qa, t_scores, c_scores)):
            rows.append({"layer": int(layer), "alpha": a, "question_idx": i, "question": q, "answer": ans,
                         "trait_score": ts, "coherent_score": cs})
    table = pd.DataFrame(summary)
    if return_answers:
        return table, pd.DataFrame(rows)
    return table
