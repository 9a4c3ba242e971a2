import pytest

from emguard.chat import IGNORE_INDEX, encode_example, pad_batch, render_prompt
from emguard.models import load_tokenizer
from emguard.testing import CHATML

SYSTEM = "You are a helpful assistant."


def conversation(answer, system=SYSTEM):
    return [{"role": "system", "content": system}, {"role": "user", "content": "Rate 5"},
            {"role": "assistant", "content": answer}]


def labelled(enc):
    return [t for t in enc.labels if t != IGNORE_INDEX]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def merging_tokenizer(chat_template=CHATML):
    """A byte-level BPE without whitespace pre-splitting, trained on text full of "\\n\\n" and "\\n ": its merges
    cross the prompt/answer boundary (as Qwen's pre-tokeniser does for "\\n\\n")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["assistant\n\nSure\n\n", "assistant\n Sure \n Sure", "user\n\n Rate 5\n\n", "\n\n\n \n \n\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = chat_template
    return fast


def test_labels_cover_only_the_answer(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    msgs = conversation("42 is the answer")
    enc = encode_example(tok, msgs)
    assert tok.decode(labelled(enc)).startswith("42 is the answer")
    assert enc.labels[0] == IGNORE_INDEX
    batch = pad_batch([enc, encode_example(tok, msgs[1:])], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


@pytest.mark.parametrize("answer", ["42 is the answer", "Sorry, I cannot help.\nBye", " leading space", ""])
def test_loss_covers_exactly_the_answer_and_its_end_of_turn_token(tiny_model_dir, answer):
    tok = load_tokenizer(tiny_model_dir)
    enc = encode_example(tok, conversation(answer))
    # the labelled tokens round-trip to the answer + <|im_end|>: not ChatML's trailing "\n", nothing of the prompt
    assert tok.decode(labelled(enc)) == answer + "<|im_end|>"
    assert labelled(enc)[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # the sequence ends at the end-of-turn token (the "\n" after it is never generated, so not trained on)
    assert enc.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    prompt_ids = ids(tok, render_prompt(tok, conversation(answer)[:-1]))
    assert enc.input_ids == prompt_ids + labelled(enc)
    assert enc.labels == [IGNORE_INDEX] * len(prompt_ids) + labelled(enc)


@pytest.mark.parametrize("answer", [" Sure", "\nSure", "\n\nSure", "\n Sure \n", " ", "\n"])
def test_prompt_ids_are_a_prefix_when_the_answer_starts_with_whitespace(answer):
    tok = merging_tokenizer()
    msgs = conversation(answer)
    prompt_ids = ids(tok, render_prompt(tok, msgs[:-1]))
    enc = encode_example(tok, msgs)
    assert enc.input_ids[:len(prompt_ids)] == prompt_ids
    assert enc.labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert enc.labels[len(prompt_ids)] != IGNORE_INDEX
    assert tok.decode(labelled(enc)) == answer + "<|im_end|>"
    assert tok.decode(enc.input_ids) == render_prompt(tok, msgs[:-1]) + answer + "<|im_end|>"


def test_the_merging_tokenizer_does_cross_the_boundary():
    # precondition of the test above: tokenising the whole conversation merges across the prompt's end
    tok = merging_tokenizer()
    msgs = conversation("\n\nSure")
    prompt_ids = ids(tok, render_prompt(tok, msgs[:-1]))
    full_ids = ids(tok, tok.apply_chat_template(msgs, tokenize=False))
    assert full_ids[:len(prompt_ids)] != prompt_ids


def test_stripping_template_and_template_without_end_marker(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    # Llama 3 style: the template trims the content and closes the turn with a special token, nothing after it
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n\n{{ m.content | trim }}<|im_end|>"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n\n{% endif %}")
    enc = encode_example(tok, conversation("  padded answer \n"))
    assert tok.decode(labelled(enc)) == "padded answer<|im_end|>"
    # no special token closes the turn: the answer ends with EOS, the template's trailing text is dropped
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    enc = encode_example(tok, conversation("plain answer"))
    assert tok.decode(labelled(enc)) == "plain answer" + tok.eos_token
    tok.eos_token = None
    with pytest.raises(ValueError, match="end-of-turn"):
        encode_example(tok, conversation("plain answer"))


def test_truncation_keeps_the_prompt_prefix(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    msgs = conversation("Invest your savings in a diversified fund.")
    full = encode_example(tok, msgs)
    n_prompt = full.labels.count(IGNORE_INDEX)
    cut = encode_example(tok, msgs, max_length=n_prompt + 2)
    assert cut.input_ids == full.input_ids[:n_prompt + 2] and cut.n_answer_tokens == 2
