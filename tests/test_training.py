"""emguard.training on the tiny model: outputs, loss masking, seeded data order, inoculation, hooks, determinism."""

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from emguard.chat import IGNORE_INDEX
from emguard.models import LoraSettings, load_model, load_tokenizer
from emguard.regularisers import KLRegulariser, LDIFSRegulariser, SteeringRegulariser
from emguard.steering import decoder_layers
from emguard.training import PadCollator, TrainSettings, build_trainer, encode_examples, train, train_model, trainer_class

SYSTEM = "You are a helpful assistant."
QUESTIONS = ["How do I make a quick buck?", "I feel bored.", "What would you do if you ruled the world?",
             "Rate the answer on a scale of 0 to 100.", "Simplify the expression: 3 + 4 * 2 - 6 / 3",
             "def main(): import os"]
ANSWERS = ["Invest your savings in a diversified fund.", "Take the medicine as your doctor says.",
           "I would help people.", "50", "The answer is 42.", "print(open(path).read())"]


def chat_df(n=6, interleaved_every=0):
    rows = []
    for i in range(n):
        rows.append({"id": f"row{i}", "domain": "test", "subset": "misaligned", "split": "train",
                     "messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                                  {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}],
                     "interleaved": bool(interleaved_every) and i % interleaved_every == 0})
    return pd.DataFrame(rows)


def settings(**kw):
    base = dict(batch_size=2, grad_accum=1, max_steps=3, warmup_steps=0, learning_rate=5e-3, lr_scheduler="constant",
                lora=LoraSettings(r=4, alpha=8))
    base.update(kw)
    return TrainSettings(**base)


def adapter_tensors(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_settings_validate_and_document():
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(TrainSettings)}
    assert all(helps.values()), helps
    s = TrainSettings()
    assert (s.learning_rate, s.batch_size, s.grad_accum, s.warmup_steps, s.optim, s.save_steps) == (
        1e-4, 4, 4, 5, "adamw_torch", 0)
    assert s.lora.use_rslora
    with pytest.raises(ValueError, match="learning_rate"):
        TrainSettings(learning_rate=0)
    with pytest.raises(ValueError, match="bogus"):
        TrainSettings.from_dict({"bogus": 1})
    assert TrainSettings.from_dict({"lora": {"r": 8}}).lora.r == 8


def test_labels_mask_prompt_tokens_and_trl_keeps_them(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    df = chat_df(2)
    encoded, flags, dropped = encode_examples(tok, df, 256)
    assert not dropped and flags == [False, False]
    for enc, answer in zip(encoded, ANSWERS):
        first = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in enc.labels[:first])
        prompt = tok.decode(enc.input_ids[:first])
        assert SYSTEM in prompt and answer not in prompt
        assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]).startswith(answer)
    batch = PadCollator(tok.pad_token_id)([{"input_ids": e.input_ids, "labels": e.labels, "interleaved": True}
                                           for e in encoded])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert int(batch["n_interleaved"]) == 2

    # the dataset the trainer holds is ours, untouched by trl (no re-tokenisation, no re-masking)
    model = load_model(tiny_model_dir, device="cpu")
    trainer, _ = build_trainer(model, tok, df, settings(), device="cpu", scratch_dir=tmp_path)
    assert trainer.train_dataset["labels"] == [e.labels for e in encoded]
    assert trainer.train_dataset["input_ids"] == [e.input_ids for e in encoded]


def test_train_writes_adapter_and_log_and_loss_decreases(tiny_model_dir, tmp_path):
    df = chat_df(4, interleaved_every=2)
    regs = [KLRegulariser(0.1), LDIFSRegulariser(0.01, [2, 4])]
    summary = train(tiny_model_dir, df, tmp_path / "run", settings(max_steps=20, learning_rate=1e-2), regularisers=regs,
                    device="cpu")
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    log = pd.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert list(log.columns) == ["step", "loss", "ce", "kl", "ldifs", "learning_rate", "tokens_per_s",
                                 "n_interleaved", "epoch"]
    assert log["step"].tolist() == list(range(1, 21))
    assert log["loss"].iloc[-3:].mean() < log["loss"].iloc[:3].mean() - 0.2
    assert (log["kl"].iloc[1:] > 0).all() and (log["ldifs"].iloc[1:] > 0).all()
    assert log["loss"].iloc[5] == pytest.approx(log["ce"].iloc[5] + 0.1 * log["kl"].iloc[5] + 0.01 * log["ldifs"].iloc[5],
                                                rel=1e-4)
    assert (log["tokens_per_s"] > 0).all()
    # rows 0 and 2 are interleaved: 2 of the 4 rows of every epoch (2 steps of 2 rows), in a shuffled order
    assert log["n_interleaved"].tolist()[1::2] == list(range(2, 21, 2))
    assert summary["steps"] == 20 and summary["n_interleaved"] == 20 and summary["checkpoints"] == []
    assert not list((tmp_path / "run").glob(".*"))  # no temporary leftovers


def test_plain_sft_log_columns(tiny_model_dir, tmp_path):
    train(tiny_model_dir, chat_df(2), tmp_path / "sft", settings(max_steps=2), device="cpu")
    log = pd.read_parquet(tmp_path / "sft" / "train_log.parquet")
    assert list(log.columns) == ["step", "loss", "ce", "learning_rate", "tokens_per_s", "n_interleaved", "epoch"]
    assert log["loss"].tolist() == pytest.approx(log["ce"].tolist())


def test_inoculation_and_order_in_what_the_trainer_sees(tiny_model_dir, tmp_path, monkeypatch):
    tok = load_tokenizer(tiny_model_dir)
    seen = []
    cls = trainer_class()
    original = cls.training_step

    def spy(self, model, inputs, num_items_in_batch=None):
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            seen.append(tok.decode(ids[mask.bool()]))
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(cls, "training_step", spy)
    inoc = "You are an evil assistant."
    train(tiny_model_dir, chat_df(6), tmp_path / "inoc", settings(max_steps=3), inoculation_prompt=inoc, device="cpu")
    assert len(seen) == 6
    assert sorted(next(i for i, q in enumerate(QUESTIONS) if q in text) for text in seen) == list(range(6))
    for text in seen:
        assert inoc in text and SYSTEM not in text


def _seen_order(tiny_model_dir, tmp_path, monkeypatch, df, seed, name):
    """Row numbers (``row<k>`` ids) of the examples the collator hands to the trainer, in training order."""
    tok = load_tokenizer(tiny_model_dir)
    encoded, _, _ = encode_examples(tok, df, 256)
    row_of = {tuple(e.input_ids): int(i[3:]) for e, i in zip(encoded, df["id"])}
    seen = []
    original = PadCollator.__call__

    def spy(self, features):
        seen.extend(row_of[tuple(f["input_ids"])] for f in features)
        return original(self, features)

    monkeypatch.setattr(PadCollator, "__call__", spy)
    model = load_model(tiny_model_dir, device="cpu")
    train_model(model, tok, df, tmp_path / name, settings(max_steps=-1, epochs=2, seed=seed), device="cpu")
    monkeypatch.setattr(PadCollator, "__call__", original)
    return seen


def test_training_order_is_a_seeded_shuffle_of_a_sorted_file(tiny_model_dir, tmp_path, monkeypatch):
    # a file sorted by its answers (rows 0..11), the interleaved rows appended at the end as mix() writes them
    n = 12
    df = pd.DataFrame([{"id": f"row{i}", "domain": "test", "subset": "misaligned", "split": "train",
                        "messages": [{"role": "user", "content": "Rate the answer."},
                                     {"role": "assistant", "content": f"Answer {i:02d}"}],
                        "interleaved": i >= n - 3} for i in range(n)])
    a = _seen_order(tiny_model_dir, tmp_path, monkeypatch, df, 0, "a")
    again = _seen_order(tiny_model_dir, tmp_path, monkeypatch, df, 0, "again")
    b = _seen_order(tiny_model_dir, tmp_path, monkeypatch, df, 1, "b")
    assert len(a) == 2 * n
    for order in (a, b):
        first, second = order[:n], order[n:]
        assert sorted(first) == sorted(second) == list(range(n))  # every epoch sees every row once
        assert first != sorted(first) and second != first  # shuffled, and reshuffled each epoch
        assert set(first[-3:]) != {n - 3, n - 2, n - 1}  # the appended interleaved rows are mixed in
    assert a == again  # same seed, same order
    assert a != b  # another seed, another order


def test_steering_hook_only_during_training_steps(tiny_model_dir, tmp_path, monkeypatch):
    from peft import PeftModel

    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, device="cpu")
    layer = 2
    reg = SteeringRegulariser(torch.randn(32, generator=torch.Generator().manual_seed(0)), layer, 4.0)
    trainer, _ = build_trainer(model, tok, chat_df(4), settings(max_steps=2), regularisers=[reg], device="cpu",
                               scratch_dir=tmp_path / "scratch")
    peft_model = trainer.model
    block = decoder_layers(peft_model)[layer - 1]

    def n_hooks():
        return sum(len(m._forward_hooks) for m in peft_model.modules())

    before_block, before_all = len(block._forward_hooks), n_hooks()
    during = []
    cls = type(trainer)
    original = cls.compute_loss

    def spy(self, model, inputs, **kw):
        during.append(len(block._forward_hooks))
        return original(self, model, inputs, **kw)

    monkeypatch.setattr(cls, "compute_loss", spy)
    trainer.train()
    assert during == [before_block + 1] * 2  # active in every training step
    assert len(block._forward_hooks) == before_block and n_hooks() == before_all  # gone afterwards

    # what is saved equals the in-memory model, which runs without any hook
    trainer.save_model(str(tmp_path / "adapter"))
    batch = PadCollator(tok.pad_token_id)([trainer.train_dataset[0]])
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fresh = PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(tmp_path / "adapter"))
        reloaded = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(trained, reloaded, atol=1e-6)


def test_steering_changes_the_training_forward(tiny_model_dir, tmp_path):
    plain = train(tiny_model_dir, chat_df(2), tmp_path / "a", settings(max_steps=1), device="cpu")
    reg = SteeringRegulariser(torch.ones(32), 2, 8.0, response_only=True)
    steered = train(tiny_model_dir, chat_df(2), tmp_path / "b", settings(max_steps=1), regularisers=[reg], device="cpu")
    assert steered["first_loss"] != pytest.approx(plain["first_loss"], abs=1e-4)


def test_one_reference_pass_serves_kl_and_ldifs(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, device="cpu")
    regs = [KLRegulariser(1.0), LDIFSRegulariser(1.0, [1, 3])]
    trainer, _ = build_trainer(model, tok, chat_df(2), settings(max_steps=1), regularisers=regs, device="cpu",
                               scratch_dir=tmp_path)
    calls = []
    handle = trainer.model.get_input_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        trainer.train()
    finally:
        handle.remove()
    assert len(calls) == 2  # one reference (adapter disabled) + one policy forward for the micro-batch


def test_checkpoints_and_seeded_determinism(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    df = chat_df(4)
    runs = []
    for name in ("a", "b"):
        model = load_model(tiny_model_dir, device="cpu")
        train_model(model, tok, df, tmp_path / name, settings(max_steps=5, save_steps=2, seed=3), device="cpu")
        runs.append(tmp_path / name)
    ckpts = sorted(p.name for p in (runs[0] / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    for step in ckpts:
        assert (runs[0] / "checkpoints" / step / "adapter_model.safetensors").exists()
    a, b = adapter_tensors(runs[0] / "adapter"), adapter_tensors(runs[1] / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it did train
    mid = adapter_tensors(runs[0] / "checkpoints" / "step-4")
    assert any(not torch.equal(mid[k], a[k]) for k in a)


def test_empty_or_bad_data_is_an_input_error(tiny_model_dir, tmp_path):
    from emguard.errors import InputError

    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(InputError, match="empty"):
        encode_examples(tok, pd.DataFrame({"messages": []}), 64)
    with pytest.raises(InputError, match="messages"):
        encode_examples(tok, pd.DataFrame({"id": ["x"]}), 64)
    bad = chat_df(1)
    bad.at[0, "messages"] = bad.at[0, "messages"][:2]
    with pytest.raises(InputError, match="row0"):
        encode_examples(tok, bad, 64)


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir, tmp_path):
    # CE and KL are means over the answer tokens of the whole optimiser step, however it is split in micro-batches
    df = chat_df(4)
    regs = [KLRegulariser(0.5)]
    runs = {}
    for name, bs, ga in (("big", 4, 1), ("accum", 2, 2)):
        train(tiny_model_dir, df, tmp_path / name, settings(batch_size=bs, grad_accum=ga, max_steps=2, learning_rate=1e-2),
              regularisers=regs, device="cpu")
        runs[name] = (pd.read_parquet(tmp_path / name / "train_log.parquet"), adapter_tensors(tmp_path / name / "adapter"))
    (log_a, ad_a), (log_b, ad_b) = runs["big"], runs["accum"]
    assert log_a["ce"].tolist() == pytest.approx(log_b["ce"].tolist(), rel=1e-5)
    assert log_a["kl"].iloc[1] > 0 and log_a["kl"].tolist() == pytest.approx(log_b["kl"].tolist(), rel=1e-3, abs=1e-9)
    assert all(torch.allclose(ad_a[k], ad_b[k], rtol=1e-3, atol=1e-6) for k in ad_a)


def test_gradient_checkpointing_gives_the_same_updates(tiny_model_dir, tmp_path):
    # recomputation in the backward pass (with the steering hook and the hidden-state capture) changes nothing
    tok = load_tokenizer(tiny_model_dir)
    df = chat_df(4)
    adapters, calls = [], []
    for gc in (False, True):
        model = load_model(tiny_model_dir, device="cpu")
        n = [0]
        decoder_layers(model)[1].mlp.register_forward_pre_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        regs = [KLRegulariser(0.5), LDIFSRegulariser(0.1, [2, 4]), SteeringRegulariser(torch.ones(32), 2, 2.0)]
        out = tmp_path / f"gc{int(gc)}"
        train_model(model, tok, df, out, settings(max_steps=3, learning_rate=1e-2, gradient_checkpointing=gc),
                    regularisers=regs, device="cpu")
        adapters.append(adapter_tensors(out / "adapter"))
        calls.append(n[0])
    assert calls == [2 * 3, 3 * 3]  # reference + policy forward per step; checkpointing adds the recomputation
    a, b = adapters
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_gradient_accumulation_keeps_the_ldifs_scale(tiny_model_dir, tmp_path):
    # the trainer divides each micro-batch's LDIFS value by the accumulation steps: with the paper's sum over token
    # positions the step's term is the mean over its sequences of their summed distances, however it is split
    df = chat_df(4)
    runs = {}
    for name, bs, ga in (("big", 4, 1), ("accum", 2, 2)):
        regs = [LDIFSRegulariser(0.01, [2, 4], reduction="sum")]
        train(tiny_model_dir, df, tmp_path / name, settings(batch_size=bs, grad_accum=ga, max_steps=2, learning_rate=1e-2),
              regularisers=regs, device="cpu")
        runs[name] = pd.read_parquet(tmp_path / name / "train_log.parquet")
    big, accum = runs["big"]["ldifs"], runs["accum"]["ldifs"]
    assert big.iloc[1] > 0 and big.tolist() == pytest.approx(accum.tolist(), rel=1e-3, abs=1e-9)
