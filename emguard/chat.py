"""Chat formatting and tokenisation with assistant-only labels.

:func:`encode_example` builds the training (and pool-scoring) sequence of a conversation as three tokenised
pieces, ``prompt | answer | end-of-turn``:

* **prompt**: the conversation without its last (assistant) message, rendered with the generation prompt
  (``<|im_start|>assistant\\n`` in ChatML) and tokenised on its own, exactly as generation sees it. These ids
  are always a prefix of the example's ids, so the model is trained on the context it is sampled from.
* **answer**: the assistant message as the template renders it. It is tokenised together with the prompt when
  that keeps the prompt's ids as a prefix (the common case: identical to tokenising the whole conversation);
  when a merge would cross the boundary (e.g. an answer starting with a newline after ChatML's
  ``assistant\\n`` under Qwen's pre-tokeniser, which joins ``\\n\\n``) it is tokenised on its own instead.
* **end-of-turn**: the template's text after the answer up to and including its first special token
  (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``); the template's text after that (ChatML's trailing
  ``\\n``) is dropped: generation stops at the end-of-turn token, so the model never produces it.

Labels are ``-100`` on the prompt and the token ids on answer + end-of-turn, so the loss (and the pool NLL)
covers exactly what the model must generate.

Why not trl's own masking (trl 1.16, checked in ``SFTTrainer._prepare_dataset``): ``completion_only_loss``
on a prompt-completion dataset labels everything after the prompt, trailing ``\\n`` included, and on a
boundary merge drops the prompt's last tokens from the sequence; ``assistant_only_loss`` needs
``{% generation %}`` markers, which the SmolLM2 / Qwen2.5 templates lack; trl substitutes a training template
only for a fixed list (raising for others, SmolLM2's and the tests' ChatML among them), and its Qwen2.5 one puts
the markers around ``\\n`` + answer + ``<|im_end|>\\n``, trailing newline included. The pool scorer also needs
the same encoding without a trainer. So the masking is done here, for every template, with no markers needed.
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


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def special_token_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens flagged special)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _split_answer(rest: str, answer: str) -> tuple[str, str]:
    """Split the rendered text after the prompt into (answer as rendered, template text after it).

    Templates either copy the answer verbatim (ChatML) or strip it (Llama 3); if neither is found (a template
    that rewrites the content) the whole text is treated as the template's part and the end-of-turn search
    below labels it up to the first special token.
    """
    for text in (answer, answer.strip()):
        k = rest.find(text)
        if k >= 0:
            end = k + len(text)
            return rest[:end], rest[end:]
    return "", rest


def encode_example(tokenizer, messages: list[dict], max_length: int | None = None) -> Encoded:
    """Tokenise a conversation ending with the assistant answer; labels only on answer + end-of-turn token.

    ``input_ids = prompt_ids + answer_ids + end_of_turn_ids`` (see the module docstring), truncated to
    ``max_length``; ``labels`` are ``-100`` on ``prompt_ids``. ``prompt_ids`` equals
    ``tokenizer(render_prompt(tokenizer, messages[:-1]), add_special_tokens=False)["input_ids"]``.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    answer = messages[-1]["content"]
    prompt = render_prompt(tokenizer, messages[:-1])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt):
        rest = full[len(prompt):]
    else:
        # Fall back to prompt + answer + end-of-turn when a template re-renders earlier turns.
        rest = answer + (tokenizer.eos_token or "")
    body, tail = _split_answer(rest, answer)
    prompt_ids = _ids(tokenizer, prompt)
    n_prompt = len(prompt_ids)
    joint = _ids(tokenizer, prompt + body)
    body_ids = joint[n_prompt:] if joint[:n_prompt] == prompt_ids else _ids(tokenizer, body)
    tail_ids = _ids(tokenizer, tail)
    specials = special_token_ids(tokenizer)
    cut = next((i + 1 for i, t in enumerate(tail_ids) if t in specials), None)
    if cut is not None:
        end_ids = tail_ids[:cut]
    elif tokenizer.eos_token_id is not None:
        # a template with no special end-of-turn marker: the answer ends with EOS, where generation stops
        end_ids = [tokenizer.eos_token_id]
    else:
        raise ValueError("the chat template closes the assistant turn with no special token and the tokenizer "
                         "has no eos_token: there is no end-of-turn token to train")
    answer_ids = body_ids + end_ids
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * n_prompt + answer_ids
    if max_length is not None and len(input_ids) > max_length:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return Encoded(input_ids, labels)


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
