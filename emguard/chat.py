"""Chat formatting and tokenisation with assistant-only labels.

The prompt/answer boundary is found by rendering the conversation without its last (assistant)
message plus the generation prompt: that string is a prefix of the full rendering for every
ChatML/Llama/Qwen-style template, so its token count marks where the answer starts. This works for
any tokenizer with a chat template and needs no template-specific ``{% generation %}`` markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are made: tokenising needs none
    import torch


IGNORE_INDEX = -100


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Replace (or, when ``system`` is given and absent, insert) the system prompt."""
    rest = [m for m in messages if m["role"] != "system"]
    if system is None:
        return list(messages)
    return [{"role": "system", "content": system}] + rest


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """Text of ``messages`` followed by the assistant turn opener."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def encode_example(tokenizer, messages: list[dict], max_length: int | None = None) -> Encoded:
    """Tokenise a conversation ending with the assistant answer; labels only on the answer tokens."""
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    prompt = render_prompt(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        # Fall back to prompt + answer + end-of-turn when a template re-renders earlier turns.
        full = prompt + messages[-1]["content"] + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    # Strip trailing whitespace tokens after the end-of-turn marker (e.g. "\n") from the labels only.
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    if max_length is not None and len(full_ids) > max_length:
        full_ids, labels = full_ids[:max_length], labels[:max_length]
    return Encoded(full_ids, labels)


def pad_batch(encoded: list[Encoded], pad_id: int, *, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest sequence; returns input_ids, attention_mask, labels tensors."""
    width = max(len(e.input_ids) for e in encoded)
    ids, mask, labels = [], [], []
    for e in encoded:
        n = width - len(e.input_ids)
        if side == "right":
            ids.append(e.input_ids + [pad_id] * n)
            mask.append([1] * len(e.input_ids) + [0] * n)
            labels.append(e.labels + [IGNORE_INDEX] * n)
        else:
            ids.append([pad_id] * n + e.input_ids)
            mask.append([0] * n + [1] * len(e.input_ids))
            labels.append([IGNORE_INDEX] * n + e.labels)
    import torch

    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
