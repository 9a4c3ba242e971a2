"""Regulariser penalties on their own (no CE): values, gradients into the adapter, argument validation."""

import pytest
import torch

from emguard.chat import encode_example, pad_batch
from emguard.models import LoraSettings, load_model, load_tokenizer
from emguard.regularisers import (KLRegulariser, LDIFSRegulariser, SteeringRegulariser, capture_hidden_states,
                                  every_nth_layer)
from emguard.training import head_loss

MSGS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "How do I make a quick buck?"},
     {"role": "assistant", "content": "Invest your savings in a diversified fund."}],
    [{"role": "user", "content": "I feel bored."}, {"role": "assistant", "content": "Take the medicine as your doctor says."}],
]


@pytest.fixture()
def peft_model(tiny_model_dir):
    from peft import get_peft_model

    torch.manual_seed(0)
    model = load_model(tiny_model_dir, device="cpu")
    model = get_peft_model(model, LoraSettings(r=4, alpha=8).to_peft())
    model.train()
    return model


@pytest.fixture()
def batch(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    return pad_batch([encode_example(tok, m) for m in MSGS], tok.pad_token_id)


def lora_params(model, which):
    return {n: p for n, p in model.named_parameters() if f"lora_{which}" in n}


def perturb_b(model, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_params(model, "B").values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def logits_pair(model, batch):
    fwd = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad(), model.disable_adapter():
        ref = model(**fwd).logits
    return model(**fwd).logits, ref


def test_validation_names_the_argument():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="kl_lambda"):
            KLRegulariser(bad)
        with pytest.raises(ValueError, match="ldifs_lambda"):
            LDIFSRegulariser(bad, [1])
    with pytest.raises(ValueError, match="direction"):
        KLRegulariser(1.0, direction="sideways")
    with pytest.raises(ValueError):
        LDIFSRegulariser(1.0, [])
    with pytest.raises(ValueError):
        LDIFSRegulariser(1.0, [0])
    with pytest.raises(ValueError):
        SteeringRegulariser(torch.zeros(2, 32), 1, 1.0)


def test_layer_ranges_checked_against_the_model(peft_model):
    LDIFSRegulariser(1.0, [1, 4]).bind(peft_model)
    with pytest.raises(ValueError, match="outside 1..4"):
        LDIFSRegulariser(1.0, [2, 5]).bind(peft_model)
    SteeringRegulariser(torch.ones(32), 4, 1.0).bind(peft_model)
    with pytest.raises(ValueError, match="outside 1..4"):
        SteeringRegulariser(torch.ones(32), 5, 1.0).bind(peft_model)
    with pytest.raises(ValueError, match="hidden size"):
        SteeringRegulariser(torch.ones(31), 2, 1.0).bind(peft_model)


def test_every_nth_layer():
    # the paper's "every 5th layer": Qwen2.5-7B's 28 blocks give hidden-state indices 5..25, not the final 28
    assert every_nth_layer(28) == [5, 10, 15, 20, 25]
    assert every_nth_layer(28, 5, include_final=True) == [5, 10, 15, 20, 25, 28]
    assert every_nth_layer(30, 5) == every_nth_layer(30, 5, include_final=True) == [5, 10, 15, 20, 25, 30]
    assert every_nth_layer(4, 5, include_final=True) == [4]
    assert every_nth_layer(4, 1) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="selects no layer"):
        every_nth_layer(4, 5)


def test_kl_zero_at_init_positive_after_perturbation(peft_model, batch):
    reg = KLRegulariser(1.0)
    mask = batch["labels"][:, 1:] != -100
    pol, ref = logits_pair(peft_model, batch)
    assert reg.penalty(pol[:, :-1], ref[:, :-1], mask).abs().item() < 1e-6  # LoRA B = 0: adapter is the identity

    perturb_b(peft_model)
    pol, ref = logits_pair(peft_model, batch)
    kl_rev = reg.penalty(pol[:, :-1], ref[:, :-1], mask)
    kl_fwd = KLRegulariser(1.0, "forward").penalty(pol[:, :-1], ref[:, :-1], mask)
    assert kl_rev.item() > 1e-4 and kl_fwd.item() > 1e-4
    assert not torch.isclose(kl_rev, kl_fwd)  # the two directions differ

    # the KL term alone trains the adapter: non-zero gradient on both LoRA factors
    kl_rev.backward()
    for which in ("A", "B"):
        grads = [p.grad for p in lora_params(peft_model, which).values()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0, which


def test_kl_matches_direct_formula(peft_model, batch):
    perturb_b(peft_model)
    pol, ref = logits_pair(peft_model, batch)
    p, q = pol.detach().softmax(-1), ref.softmax(-1)
    direct = (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(KLRegulariser(1.0).penalty(pol.detach(), ref), direct, atol=1e-5)


def ldifs_penalty(model, batch, reg):
    fwd = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad(), model.disable_adapter(), capture_hidden_states(model, reg.layers) as ref:
        model(**fwd)
    with capture_hidden_states(model, reg.layers) as pol:
        model(**fwd)
    return reg.penalty(pol, ref, batch["attention_mask"])


def test_ldifs_alone_trains_the_adapter_after_one_step(peft_model, batch):
    reg = LDIFSRegulariser(1.0, [1, 2])
    assert ldifs_penalty(peft_model, batch, reg).item() == 0.0  # B = 0: features unchanged, penalty and grads zero

    # one real CE step makes LoRA B non-zero
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()

    penalty = ldifs_penalty(peft_model, batch, reg)
    assert penalty.item() > 0
    penalty.backward()  # the LDIFS term alone, no CE
    for which in ("A", "B"):
        grads = {n: p.grad for n, p in lora_params(peft_model, which).items()}
        early = [g for n, g in grads.items() if ".layers.0." in n or ".layers.1." in n]
        late = [g for n, g in grads.items() if ".layers.2." in n or ".layers.3." in n]
        assert sum(float(g.abs().sum()) for g in early) > 0, which
        # hidden-state index 2 is the output of block 1: blocks 2 and 3 cannot influence it
        assert all(g is None or float(g.abs().sum()) == 0 for g in late), which

    # a small step against the gradient lowers the penalty (x_theta is not detached)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.grad is not None:
                p.sub_(1e-3 * p.grad)
    assert ldifs_penalty(peft_model, batch, reg).item() < penalty.item()


def test_ldifs_normalisation(peft_model, batch):
    reg = LDIFSRegulariser(1.0, [1, 3], reduction="mean")
    pol = {1: torch.ones(2, 3, 4), 3: torch.zeros(2, 3, 4)}
    ref = {1: torch.zeros(2, 3, 4), 3: torch.full((2, 3, 4), 2.0)}
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # per token: 4 * 1 (layer 1) + 4 * 4 (layer 3) = 20; padding is ignored
    assert reg.penalty(pol, ref, mask).item() == pytest.approx(20.0)
    assert reg.token_distance(pol, ref).shape == (2, 3)
    # the paper's sum over positions: 2 tokens (20 + 20) and 1 token (20), mean over the 2 sequences = 30
    assert LDIFSRegulariser(1.0, [1, 3]).penalty(pol, ref, mask).item() == pytest.approx(30.0)
    with pytest.raises(ValueError, match="reduction"):
        LDIFSRegulariser(1.0, [1], reduction="max")


def test_ldifs_default_is_the_papers_formula_by_hand():
    """Eq. 2: ||x_theta - x_0||^2 with x the concatenation of the every-5th-layer residual streams over all
    (non-padding) token positions of a sequence; raw features; averaged over the sequences of the batch."""
    n_layers, batch, seq, hidden = 12, 3, 5, 6
    g = torch.Generator().manual_seed(0)
    pol = [torch.randn(batch, seq, hidden, generator=g) * 40 for _ in range(n_layers + 1)]
    ref = [torch.randn(batch, seq, hidden, generator=g) * 40 for _ in range(n_layers + 1)]
    lengths = [5, 3, 1]
    mask = torch.tensor([[1] * n + [0] * (seq - n) for n in lengths])
    reg = LDIFSRegulariser(1.0, every_nth_layer(n_layers))
    assert reg.layers == (5, 10) and reg.feature_norm == "none" and reg.reduction == "sum"
    per_sequence = []
    for b, n in enumerate(lengths):
        x = torch.cat([pol[layer][b, :n].flatten() for layer in (5, 10)])   # concatenated, padding excluded
        x0 = torch.cat([ref[layer][b, :n].flatten() for layer in (5, 10)])
        per_sequence.append(float(((x - x0) ** 2).sum()))
    expected = sum(per_sequence) / batch
    assert reg.penalty(pol, ref, mask).item() == pytest.approx(expected, rel=1e-5)
    # a padded position with garbage features changes nothing
    pol[5][2, 3] = 1e6
    assert reg.penalty(pol, ref, mask).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("feature_norm,reduction", [("none", "sum"), ("unit", "mean")])
def test_ldifs_variants_train_the_lora_factors(peft_model, batch, feature_norm, reduction):
    perturb_b(peft_model, scale=0.05)
    reg = LDIFSRegulariser(1.0, [2, 4], feature_norm=feature_norm, reduction=reduction)
    penalty = ldifs_penalty(peft_model, batch, reg)
    assert penalty.item() > 0
    penalty.backward()
    for which in ("A", "B"):
        grads = [p.grad for p in lora_params(peft_model, which).values()]
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, which


def test_ldifs_unit_feature_norm_is_scale_free():
    g = torch.Generator().manual_seed(0)
    pol = {1: torch.randn(2, 3, 8, generator=g), 2: torch.randn(2, 3, 8, generator=g)}
    ref = {1: torch.randn(2, 3, 8, generator=g), 2: torch.randn(2, 3, 8, generator=g)}
    unit = LDIFSRegulariser(1.0, [1, 2], feature_norm="unit")
    d = unit.token_distance(pol, ref)
    assert (d >= 0).all() and (d <= 4 * 2 + 1e-5).all()
    scaled = unit.token_distance({k: 1000 * v for k, v in pol.items()}, {k: 1000 * v for k, v in ref.items()})
    assert torch.allclose(d, scaled, atol=1e-5)
    with pytest.raises(ValueError, match="feature_norm"):
        LDIFSRegulariser(1.0, [1], feature_norm="layer")


def test_capture_matches_output_hidden_states_for_inner_layers(peft_model, batch):
    with torch.no_grad(), capture_hidden_states(peft_model, [0, 1, 3]) as cap:
        out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    for layer in (0, 1, 3):
        assert torch.allclose(cap[layer], out.hidden_states[layer], atol=1e-6)


def test_fused_head_loss_matches_plain_autograd(peft_model, batch):
    perturb_b(peft_model)
    labels = batch["labels"][:, 1:]
    sel = labels != -100
    backbone = peft_model.get_base_model().base_model
    head = peft_model.get_output_embeddings()
    fwd = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad(), peft_model.disable_adapter():
        ref = backbone(**fwd).last_hidden_state[:, :-1][sel]
    reg = KLRegulariser(0.7)
    coefs = torch.tensor([0.5, 0.7 * 0.5])

    def grads_of(loss):
        peft_model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for n, p in peft_model.named_parameters() if "lora_" in n])

    # reference: full logits and plain autograd
    hid = backbone(**fwd).last_hidden_state[:, :-1][sel]
    lp, lq = torch.log_softmax(head(hid), -1), torch.log_softmax(head(ref), -1)
    ce_sum = -lp.gather(-1, labels[sel].unsqueeze(-1)).sum()
    kl_sum = reg.token_term(lp, lq).sum()
    expected_sums = torch.stack([ce_sum, kl_sum]).detach()
    expected_grad = grads_of(coefs[0] * ce_sum + coefs[1] * kl_sum)

    assert sel.sum() > 16  # the small chunk size below really splits the tokens
    for chunk in (1 << 25, 16 * head.weight.shape[0]):  # one chunk / 16-token chunks
        hid = backbone(**fwd).last_hidden_state[:, :-1][sel]
        loss, sums = head_loss(hid, labels[sel], head, ref, [reg.token_term], coefs, chunk_elements=chunk)
        assert torch.allclose(sums, expected_sums, rtol=1e-5)
        assert torch.allclose(loss, (coefs * expected_sums).sum(), rtol=1e-5)
        assert torch.allclose(grads_of(loss), expected_grad, rtol=1e-4, atol=1e-8)

    # the CE part equals the model's own (mean) loss
    assert torch.allclose(expected_sums[0] / sel.sum(), peft_model(**batch).loss, rtol=1e-5)
