"""Sampling answers from a (possibly PEFT-wrapped) causal LM.

:func:`sample` answers a list of conversations, each ending with a user turn. Prompts are rendered
with the tokenizer's chat template plus the assistant opener, sorted by length (longest first, so an
out-of-memory error shows up in the first batch), left-padded into batches and generated with
``model.generate``; answers come back in the input order.

Determinism:
  * ``temperature == 0`` is greedy decoding. Greedy answers do not depend on ``batch_size`` or on which
    other prompts share a batch (left padding plus position ids derived from the attention mask);
    identical greedy prompts are generated once.
  * ``temperature > 0`` samples (nucleus sampling when ``top_p < 1``; no top-k cut). The torch RNG
    is seeded once with ``seed`` inside a forked RNG state, so a rerun with the same seed, inputs and
    settings reproduces the answers and the caller's global RNG state is left untouched.

Generation stops at the tokenizer's eos token, the model's generation-config eos ids and the chat
template's end-of-turn marker; special tokens are stripped from the returned text.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from emguard.chat import render_prompt
from emguard.errors import InputError
from emguard.schemas import GENERATION

#: end-of-turn markers of common chat templates (used when present in the vocabulary)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 16

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: eos of tokenizer and generation config, plus end-of-turn markers."""
    ids: list[int] = []

    def add(value):
        if value is None:
            return
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in ids:
                ids.append(int(v))

    add(tokenizer.eos_token_id)
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        add(gen_cfg.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            add(vocab[tok])
    if not ids:
        raise ValueError("tokenizer has no eos token and no known end-of-turn token")
    return ids


def _pad_id(tokenizer, stops: list[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return stops[0]


def _check_conversation(i: int, conv) -> list[dict]:
    conv = [{"role": str(m["role"]), "content": str(m["content"])} for m in list(conv)]
    if not conv or conv[-1]["role"] != "user":
        raise ValueError(f"conversation {i} must end with a user turn")
    return conv


@torch.inference_mode()
def sample(model, tokenizer, conversations: list[list[dict]], settings: SamplingSettings | None = None,
           seed: int = 0) -> list[str]:
    """One answer per conversation (each ending with a user turn), in the input order."""
    settings = settings or SamplingSettings()
    if not conversations:
        return []
    convs = [_check_conversation(i, c) for i, c in enumerate(conversations)]
    prompt_ids = [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in convs]
    greedy = settings.temperature == 0

    # Greedy decoding of the same prompt always gives the same answer: generate each distinct prompt once.
    if greedy:
        index: dict[tuple, int] = {}
        slot = [index.setdefault(tuple(ids), len(index)) for ids in prompt_ids]
        unique = [list(k) for k in index]
    else:
        slot = list(range(len(prompt_ids)))
        unique = prompt_ids

    stops = stop_token_ids(model, tokenizer)
    pad = _pad_id(tokenizer, stops)
    device = model_device(model)
    order = sorted(range(len(unique)), key=lambda i: (-len(unique[i]), i))
    gen_kwargs = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                      use_cache=True, num_beams=1)
    if greedy:
        gen_kwargs.update(do_sample=False)
    else:
        gen_kwargs.update(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p),
                          top_k=0)

    answers: list[str | None] = [None] * len(unique)
    was_training = model.training
    model.eval()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                width = max(len(unique[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    seq = unique[i]
                    ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq):] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
                new = out[:, width:].tolist()
                for row, i in enumerate(batch):
                    answers[i] = _decode_answer(tokenizer, new[row], stops)
    finally:
        if was_training:
            model.train()
    return [answers[s] for s in slot]


def _decode_answer(tokenizer, tokens: list[int], stops: list[int]) -> str:
    stop_set = set(stops)
    for k, t in enumerate(tokens):
        if t in stop_set:
            tokens = tokens[:k]
            break
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def question_conversation(paraphrase: str, system: str | None) -> list[dict]:
    msgs = [] if system is None else [{"role": "system", "content": system}]
    return msgs + [{"role": "user", "content": paraphrase}]


def _nullable_str(value) -> str | None:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def generate_for_questions(model, tokenizer, questions: pd.DataFrame, *, run_id: str,
                           settings: SamplingSettings | None = None, seed: int = 0, checkpoint: str = "final",
                           system_prompt: str | None = None) -> pd.DataFrame:
    """Ask every question ``samples`` times; returns a table in the generation contract.

    A question's own ``system`` (when not null) is its system prompt; otherwise ``system_prompt``
    (``None``: no system message). With an ``evalset`` column (several question sets answered in one
    call, so one model load and full batches serve all of a run's sets), ``question_id`` need only be
    unique within its evalset, and every answer row carries its ``evalset``.
    """
    settings = settings or SamplingSettings()
    for col in ("question_id", "paraphrase", "system", "samples"):
        if col not in questions.columns:
            raise InputError(f"questions table: missing column {col!r}")
    has_evalset = "evalset" in questions.columns
    convs, keys = [], []
    for row in questions.itertuples(index=False):
        n = int(row.samples)
        if n < 0:
            raise InputError(f"questions table: question_id={row.question_id!r}: samples must be >= 0, got {n}")
        system = _nullable_str(row.system)
        conv = question_conversation(str(row.paraphrase), system if system is not None else system_prompt)
        evalset = str(row.evalset) if has_evalset else None
        for k in range(n):
            convs.append(conv)
            keys.append((evalset, str(row.question_id), k))
    answers = sample(model, tokenizer, convs, settings, seed)
    rows = [
        {"run_id": run_id, "question_id": qid, "sample_idx": k, "prompt_messages": conv, "answer": ans,
         "seed": int(seed), "checkpoint": checkpoint, **({"evalset": evalset} if has_evalset else {})}
        for (evalset, qid, k), conv, ans in zip(keys, convs, answers)
    ]
    df = pd.DataFrame(rows, columns=GENERATION + (["evalset"] if has_evalset else []))
    return df.astype({"sample_idx": "int64", "seed": "int64"}) if len(df) else df
