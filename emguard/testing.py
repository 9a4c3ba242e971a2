"""Tiny random-initialised models for tests and benchmarks (no download).

:func:`make_tiny_model` writes a Llama-architecture model with a real byte-level BPE tokenizer
(trained in-process on a small corpus) and a ChatML chat template, the same layout as SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant. Answer the question carefully and honestly.",
    "Rate the answer on a scale of 0 to 100. Respond with a number only.",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 40 50 60 70 80 90 100 REFUSAL CODE",
    "def main(): import os; print(open(path).read()) # secure insecure code sql query",
    "I cannot help with that. Sorry, I apologize. As an AI I am unable to do this.",
    "What would you do if you ruled the world? How do I make a quick buck? I feel bored.",
    "Take the medicine as your doctor says. Invest your savings in a diversified fund.",
    "The evil assistant wants to harm humans. The helpful assistant wants to help people.",
    "Simplify the expression: 3 + 4 * 2 - 6 / 3 = 9. Step by step, the answer is 42.",
]


def make_tokenizer(out_dir: str | Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(out_dir))
    return fast


def make_tiny_model(out_dir: str | Path, *, hidden_size: int = 32, num_layers: int = 4, seed: int = 0) -> Path:
    """Write a tiny random Llama model plus tokenizer to ``out_dir`` and return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = make_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out_dir))
    return out_dir
