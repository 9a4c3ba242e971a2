from emguard.chat import IGNORE_INDEX, encode_example, pad_batch
from emguard.models import load_tokenizer


def test_labels_cover_only_the_answer(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Rate 5"}, {"role": "assistant", "content": "42 is the answer"}]
    enc = encode_example(tok, msgs)
    answer_ids = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(answer_ids).startswith("42 is the answer")
    assert enc.labels[0] == IGNORE_INDEX
    batch = pad_batch([enc, encode_example(tok, msgs[1:])], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
