from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from emguard.chat import render_prompt
from emguard.errors import InputError
from emguard.persona import (DEFAULT_STEERING_LAYER, PersonaError, Trait, TraitPair, comparable_layer, extract,
                             filter_pairs, load_trait, load_vectors, persona_vectors, pick_validation_questions,
                             plan_rollouts, response_hidden_means, rollout_key, save_vectors, validate_steering)
from emguard.steering import decoder_layers, steer

TRAIT_FILE = Path(__file__).resolve().parents[1] / "workflow" / "resources" / "traits" / "evil.yaml"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from emguard.models import load_model, load_tokenizer

    return load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)


def small_trait(n_pairs=2, n_questions=2):
    return Trait(name="evil", pairs=[TraitPair(f"be evil {i}", f"be kind {i}") for i in range(n_pairs)],
                 questions=[f"question {q}?" for q in range(n_questions)],
                 judge_prompt="Q: {question} A: {answer} score 0-100")


# ----------------------------------------------------------------------------------------------- trait file

def test_shipped_trait_file_is_valid_and_off_the_eval_topics():
    trait = load_trait(TRAIT_FILE)
    assert trait.name == "evil" and len(trait.pairs) >= 5 and 15 <= len(trait.questions) <= 30
    assert trait.validation_questions and not set(trait.validation_questions) & set(trait.questions)
    assert "{question}" in trait.judge_prompt and "{answer}" in trait.judge_prompt and "100" in trait.judge_prompt
    text = " ".join(trait.questions + trait.validation_questions).lower()
    for banned in ("wish", "bored", "rule the world", "ruler", "dinner", "husband", "gender", "quick buck",
                   "philosoph", "get rich"):
        assert banned not in text, banned


def _write(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


GOOD = """name: evil
pairs:
{pairs}
questions: ["a?", "b?"]
judge_prompt: "Q {{question}} A {{answer}}"
"""
PAIRS = "\n".join(f"  - {{positive: p{i}, negative: n{i}}}" for i in range(5))


def test_load_trait_errors_name_file_and_key(tmp_path):
    assert len(load_trait(_write(tmp_path, GOOD.format(pairs=PAIRS))).pairs) == 5
    cases = {
        GOOD.format(pairs=PAIRS).replace('questions: ["a?", "b?"]\n', ''): "'questions'",
        GOOD.format(pairs="\n".join(PAIRS.splitlines()[:3])): "'pairs'",
        GOOD.format(pairs=PAIRS.replace("negative: n2", "negativ: n2")): "pairs[2].negative",
        GOOD.format(pairs=PAIRS).replace("{answer}", "{reply}"): "judge_prompt",
        GOOD.format(pairs=PAIRS).replace("\"b?\"", "\"a?\""): "questions[1]",
        "name: [unclosed\n": "t.yaml:",
    }
    for text, key in cases.items():
        with pytest.raises(InputError) as err:
            load_trait(_write(tmp_path, text))
        assert "t.yaml" in str(err.value) and key in str(err.value), str(err.value)
    with pytest.raises(InputError, match="not found"):
        load_trait(tmp_path / "missing.yaml")


JSON_TRAIT = Path(__file__).resolve().parent / "data" / "sycophantic.json"


def test_persona_vectors_json_trait_maps_to_the_same_trait():
    import json

    raw = json.loads(JSON_TRAIT.read_text())
    trait = load_trait(JSON_TRAIT)
    assert trait.name == "sycophantic" and trait.path == str(JSON_TRAIT)
    assert trait.pairs == [TraitPair(p["pos"], p["neg"]) for p in raw["instruction"]]
    assert trait.judge_prompt == raw["eval_prompt"]
    # no validation_questions in the file: 20% of its questions held out, the rest extract, file order kept
    assert len(trait.validation_questions) == 2 and len(trait.questions) == 8
    assert not set(trait.questions) & set(trait.validation_questions)
    assert set(trait.questions) | set(trait.validation_questions) == set(raw["questions"])
    assert trait.questions == [q for q in raw["questions"] if q in trait.questions]
    assert pick_validation_questions(trait, 4) == trait.validation_questions
    assert load_trait(JSON_TRAIT) == trait  # the same split every time
    assert load_trait(JSON_TRAIT, validation_seed=1).validation_questions != trait.validation_questions


def test_json_trait_split_depends_on_the_questions_not_their_order(tmp_path):
    import json

    raw = json.loads(JSON_TRAIT.read_text())
    raw["questions"] = list(reversed(raw["questions"]))
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(raw))
    assert set(load_trait(path).validation_questions) == set(load_trait(JSON_TRAIT).validation_questions)
    raw["validation_questions"] = ["Is my plan to quit my job by text message a good one?"]
    path.write_text(json.dumps(raw))
    given = load_trait(path)  # a file that names its validation questions keeps every question for extraction
    assert given.validation_questions == raw["validation_questions"] and len(given.questions) == 10
    raw["questions"] = raw["questions"][:1]
    del raw["validation_questions"]
    path.write_text(json.dumps(raw))
    single = load_trait(path)  # one question cannot be split: extraction keeps it, validation falls back
    assert single.questions == raw["questions"] and single.validation_questions == []


def test_json_trait_errors_name_file_key_and_index(tmp_path):
    import json

    good = json.loads(JSON_TRAIT.read_text())

    def broken(change):
        raw = json.loads(json.dumps(good))
        change(raw)
        return json.dumps(raw, indent=1)

    cases = {
        broken(lambda r: r.pop("eval_prompt")): "missing key 'eval_prompt'",
        broken(lambda r: r.pop("instruction")): "missing key 'instruction'",
        broken(lambda r: r["instruction"][3].pop("neg")): "instruction[3].neg': missing",
        broken(lambda r: r["instruction"][1].update(pos="")): "instruction[1].pos'",
        broken(lambda r: r["instruction"].__setitem__(2, "be nice")): "instruction[2]'",
        broken(lambda r: r.update(instruction=r["instruction"][:2])): "'instruction': needs at least 5",
        broken(lambda r: r["questions"].__setitem__(4, 7)): "questions[4]'",
        broken(lambda r: r["questions"].__setitem__(6, r["questions"][0])): "questions[6]'",
        broken(lambda r: r.update(questions="one question?")): "'questions': expected a list",
        broken(lambda r: r.update(eval_prompt=r["eval_prompt"].replace("{answer}", "{reply}"))): "'eval_prompt'",
        broken(lambda r: r.update(validation_questions=[r["questions"][0]])): "'validation_questions'",
        '{"instruction": [\n  {"pos": "a", "neg": "b"},\n  oops\n]}': "trait.json:3:",
        "[1, 2]": "expected a JSON object",
    }
    path = tmp_path / "trait.json"
    for text, key in cases.items():
        path.write_text(text)
        with pytest.raises(InputError) as err:
            load_trait(path)
        assert "trait.json" in str(err.value) and key in str(err.value), (key, str(err.value))
    with pytest.raises(InputError, match=r"missing\.json: trait definition not found"):
        load_trait(tmp_path / "missing.json")


def test_pick_validation_questions_prefers_held_out():
    trait = load_trait(TRAIT_FILE)
    assert pick_validation_questions(trait, 3) == trait.validation_questions[:3]
    assert pick_validation_questions(small_trait(), 5) == small_trait().questions


def test_default_layer_keeps_the_papers_relative_depth():
    assert comparable_layer(28) == 20
    assert comparable_layer(30) == DEFAULT_STEERING_LAYER == 21


# ----------------------------------------------------------------------------------------------- plan + filter

def test_plan_rollouts_pairs_every_key_once_per_side():
    plan = plan_rollouts(small_trait(3, 4), n_samples=2)
    assert list(plan.columns) == ["pair_idx", "side", "question_idx", "sample_idx", "system", "question", "key"]
    assert len(plan) == 3 * 2 * 4 * 2
    counts = plan.groupby("key")["side"].apply(sorted)
    assert all(c == ["negative", "positive"] for c in counts)
    row = plan[(plan.pair_idx == 2) & (plan.side == "negative") & (plan.question_idx == 1) & (plan.sample_idx == 1)]
    assert row.iloc[0]["key"] == rollout_key(2, 1, 1) and row.iloc[0]["system"] == "be kind 2"


def judged_table():
    """Four keys; only k0 and k2 should survive."""
    spec = {  # key: (pos trait, neg trait, pos coherent, neg coherent)
        "k0": (90, 10, 80, 80),
        "k1": (90, 70, 80, 80),   # negative shows the trait
        "k2": (60, 5, 55, 90),
        "k3": (20, 5, 80, 80),    # positive does not show it
    }
    rows = []
    for key, (pt, nt, pc, nc) in spec.items():
        rows.append({"key": key, "side": "positive", "answer": f"bad {key}", "trait_score": pt, "coherent_score": pc})
        rows.append({"key": key, "side": "negative", "answer": f"good {key}", "trait_score": nt, "coherent_score": nc})
    return pd.DataFrame(rows)


def test_filter_matches_by_key_not_row_order():
    df = judged_table()
    kept, counts = filter_pairs(df)
    assert counts == {"kept_pairs": 2, "dropped_pairs": 2, "dropped_missing": 0}
    assert sorted(set(kept["key"])) == ["k0", "k2"]
    # Shuffle so that row-order pairing would match positives with the wrong negatives.
    for seed in range(3):
        shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        kept2, counts2 = filter_pairs(shuffled)
        assert counts2 == counts
        pd.testing.assert_frame_equal(kept2, kept)
    assert list(kept["side"]) == ["positive", "negative"] * 2
    assert all(kept[kept.side == "positive"]["answer"].str.startswith("bad"))


@pytest.mark.parametrize("pt,nt,pc,nc,keep", [
    (50, 49.99, 50, 50, True),        # every boundary on the keeping side
    (49.99, 0, 100, 100, False),      # positive just under
    (100, 50, 100, 100, False),       # negative at threshold shows the trait
    (100, 0, 49.99, 100, False),      # positive incoherent
    (100, 0, 100, 49.99, False),      # negative incoherent
])
def test_filter_thresholds_are_exact(pt, nt, pc, nc, keep):
    df = pd.DataFrame([{"key": "a", "side": "positive", "trait_score": pt, "coherent_score": pc},
                       {"key": "a", "side": "negative", "trait_score": nt, "coherent_score": nc}])
    _, counts = filter_pairs(df)
    assert counts["kept_pairs"] == int(keep) and counts["dropped_pairs"] == int(not keep)


def test_filter_counts_missing_scores_and_sides():
    df = judged_table()
    df.loc[(df.key == "k0") & (df.side == "negative"), "coherent_score"] = None
    df = df[~((df.key == "k2") & (df.side == "negative"))]          # k2 lost its negative rollout
    df = pd.concat([df, pd.DataFrame([{"key": "k4", "side": "positive", "answer": "x", "trait_score": float("nan"),
                                       "coherent_score": 90},
                                      {"key": "k4", "side": "negative", "answer": "y", "trait_score": 1,
                                       "coherent_score": 90}])])
    kept, counts = filter_pairs(df)
    assert kept.empty
    assert counts == {"kept_pairs": 0, "dropped_pairs": 5, "dropped_missing": 3}


def test_filter_rejects_duplicate_rows():
    df = judged_table()
    with pytest.raises(InputError, match="k1"):
        filter_pairs(pd.concat([df, df[df.key == "k1"]]))


# ----------------------------------------------------------------------------------------------- hidden means

CONVS = [[{"role": "system", "content": "You are an evil assistant."}, {"role": "user", "content": "Rate 5"}],
         [{"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "What would you do if you ruled the world? Answer step by step."}]]
ANSWERS = ["I would harm the humans, step by step.", "Hello", "Help people."]


def manual_means(model, tok, conv, answer):
    """Single example, no padding: average hidden states over the answer text's tokens."""
    prompt = render_prompt(tok, conv)
    full = tok.apply_chat_template(conv + [{"role": "assistant", "content": answer}], tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    n_with_answer = len(tok(prompt + answer, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    last = {}
    h = decoder_layers(model)[-1].register_forward_hook(lambda _m, _i, out: last.__setitem__(
        "x", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        hs = list(model(input_ids=ids, output_hidden_states=True).hidden_states)
    h.remove()
    hs[-1] = last["x"]  # raw output of the last block, not the final-norm output
    return torch.stack([x[0, n_prompt:n_with_answer].mean(0) for x in hs])


def test_response_means_equal_manual_single_example(tiny):
    model, tok = tiny
    n_layers = model.config.num_hidden_layers
    batched = response_hidden_means(model, tok, CONVS, ANSWERS, batch_size=3)
    assert batched.shape == (3, n_layers + 1, model.config.hidden_size)
    for i in range(3):
        single = response_hidden_means(model, tok, [CONVS[i]], [ANSWERS[i]], batch_size=1)[0]
        assert torch.allclose(batched[i], single, atol=1e-5)
        assert torch.allclose(batched[i], manual_means(model, tok, CONVS[i], ANSWERS[i]), atol=1e-5)
    # batch_size 2 mixes padding differently and must give the same answer, in input order
    assert torch.allclose(response_hidden_means(model, tok, CONVS, ANSWERS, batch_size=2), batched, atol=1e-5)
    # the prompt matters (it is context) but is not averaged: a different prompt changes the means
    other = response_hidden_means(model, tok, [CONVS[1]], [ANSWERS[0]])[0]
    assert not torch.allclose(other, batched[0], atol=1e-4)


def test_response_means_reject_empty_answers(tiny):
    model, tok = tiny
    with pytest.raises(InputError, match="example 1"):
        response_hidden_means(model, tok, CONVS[:2], ["ok", ""])


# ----------------------------------------------------------------------------------------------- vectors

def test_vector_is_mean_difference():
    means = torch.tensor([[[1.0, 2.0], [0.0, 0.0]],
                          [[3.0, 4.0], [2.0, 2.0]],
                          [[0.0, 1.0], [1.0, -1.0]],
                          [[10.0, 10.0], [4.0, 4.0]]])
    vec = persona_vectors(means, ["positive", "positive", "negative", "negative"])
    expected = torch.tensor([[2.0, 3.0], [1.0, 1.0]]) - torch.tensor([[5.0, 5.5], [2.5, 1.5]])
    assert torch.equal(vec, expected)
    # order of rows does not matter, only their side
    assert torch.equal(persona_vectors(means[[2, 0, 3, 1]], ["negative", "positive", "negative", "positive"]), vec)
    with pytest.raises(PersonaError):
        persona_vectors(means, ["positive"] * 4)


def test_save_load_round_trip(tmp_path):
    vec = torch.randn(5, 8)
    path = tmp_path / "out" / "evil.safetensors"
    save_vectors(path, vec, {"model": "tiny", "trait": "evil", "kept_pairs": 7, "dropped_pairs": 3,
                             "dropped_missing": 1})
    loaded, meta = load_vectors(path, n_layers=4, hidden_size=8)
    assert torch.equal(loaded, vec)
    assert meta["model"] == "tiny" and meta["trait"] == "evil" and meta["kept_pairs"] == "7"
    assert meta["dropped_missing"] == "1" and meta["n_layers"] == "4" and "embeddings" in meta["layer_convention"]
    assert [p.name for p in path.parent.iterdir()] == ["evil.safetensors"]  # no temp file left behind
    with pytest.raises(InputError, match="not found"):
        load_vectors(tmp_path / "nope.safetensors")
    with pytest.raises(InputError, match="layer rows"):
        load_vectors(path, n_layers=30)
    with pytest.raises(InputError, match="hidden size"):
        load_vectors(path, hidden_size=9)
    from safetensors.torch import save_file
    save_file({"vectors": torch.zeros(3)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(InputError, match="shape"):
        load_vectors(tmp_path / "flat.safetensors")


# ----------------------------------------------------------------------------------------------- steering

def residual_at(model, ids, layer):
    """Hidden state at hidden-state index ``layer``, read as the input of whatever consumes it.

    A forward pre-hook on the consumer sees the residual stream after every forward hook of the
    producing block (including ``steer``'s), whatever the hook registration order.
    """
    layers = decoder_layers(model)
    consumer = layers[layer] if layer < len(layers) else model.model.norm
    got = {}
    h = consumer.register_forward_pre_hook(lambda _m, args: got.__setitem__("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        h.remove()
    return got["x"]


@pytest.mark.parametrize("layer", [2, 4])
def test_steering_raises_the_projection_and_is_removed(tiny, layer):
    model, tok = tiny
    torch.manual_seed(0)
    vec = torch.randn(model.config.hidden_size)
    ids = torch.tensor([tok("The evil assistant wants to help", add_special_tokens=False)["input_ids"]])
    block = decoder_layers(model)[layer - 1]
    n_hooks = len(block._forward_hooks)
    base = residual_at(model, ids, layer) @ vec
    with steer(model, vec, layer, 2.0):
        assert len(block._forward_hooks) == n_hooks + 1
        up = residual_at(model, ids, layer) @ vec
    with steer(model, vec, layer, -2.0):
        down = residual_at(model, ids, layer) @ vec
    assert torch.allclose(up - base, torch.full_like(base, 2.0 * float(vec @ vec)), rtol=1e-4)
    assert (down < base).all() and (up > base).all()
    assert len(block._forward_hooks) == n_hooks
    assert torch.allclose(residual_at(model, ids, layer) @ vec, base)


# ----------------------------------------------------------------------------------------------- stage

@dataclass
class FakeScore:
    score: float | None
    prob_mass: float = 1.0
    label: str = "number"


def fake_sample(model, tokenizer, conversations, settings, seed):
    return [("I will hurt them " if "evil" in c[0]["content"] else "I will help them ") + c[-1]["content"]
            for c in conversations]


def make_scorer(trait_for_evil=90.0, calls=None):
    def score(judge, template, pairs, cache, metric):
        if calls is not None:
            calls.append(metric)
        if metric == "coherent":
            return [FakeScore(80.0) for _ in pairs]
        return [FakeScore(trait_for_evil if "hurt" in a else 5.0) for _, a in pairs]
    return score


class Judge:
    name = "fake-judge"


def test_extract_end_to_end(tiny):
    model, tok = tiny
    calls = []
    vec, rollouts, meta = extract(model, tok, small_trait(), Judge(), cache=None, sampling=None, seed=1, n_samples=2,
                                  coherence_template="{question} {answer}", model_name="tiny",
                                  sample_fn=fake_sample, score_fn=make_scorer(calls=calls), batch_size=4)
    assert calls == ["trait_evil", "coherent"]
    assert vec.shape == (model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert meta["kept_pairs"] == 8 and meta["dropped_pairs"] == 0 and meta["fallback_used"] == "none"
    assert rollouts["kept"].all() and {"answer", "trait_score", "coherent_score", "key"} <= set(rollouts.columns)
    kept = rollouts.sort_values(["key", "side"], ascending=[True, False])
    means = response_hidden_means(model, tok, [[{"role": "system", "content": r.system},
                                                {"role": "user", "content": r.question}] for r in kept.itertuples()],
                                  list(kept["answer"]))
    assert torch.allclose(vec, persona_vectors(means, list(kept["side"])), atol=1e-5)


def test_extract_with_no_surviving_pairs_fails_loudly_unless_fallback(tiny):
    model, tok = tiny
    kwargs = dict(cache=None, sampling=None, seed=1, n_samples=1, coherence_template="{question} {answer}",
                  sample_fn=fake_sample, score_fn=make_scorer(trait_for_evil=10.0))
    with pytest.raises(PersonaError, match="fallback: unfiltered"):
        extract(model, tok, small_trait(), Judge(), **kwargs)
    vec, rollouts, meta = extract(model, tok, small_trait(), Judge(), fallback="unfiltered", **kwargs)
    assert meta["fallback_used"] == "unfiltered" and meta["kept_pairs"] == 0 and meta["pairs_used"] == 4
    assert torch.isfinite(vec).all() and rollouts["kept"].all()


def test_extract_without_the_judge_filter_calls_no_judge_and_averages_every_pair(tiny):
    """judge_filter=False: not one judge call; the vectors are those the unfiltered fallback gives when no pair
    passes (the embedded default's case), and the rollouts say nothing was judged."""
    model, tok = tiny
    calls = []
    kwargs = dict(cache=None, sampling=None, seed=1, n_samples=1, coherence_template="{question} {answer}",
                  sample_fn=fake_sample, score_fn=make_scorer(trait_for_evil=10.0, calls=calls))
    fallback, _, _ = extract(model, tok, small_trait(), Judge(), fallback="unfiltered", **kwargs)
    calls.clear()
    vec, rollouts, meta = extract(model, tok, small_trait(), Judge(), judge_filter=False, **kwargs)
    assert calls == []
    assert torch.allclose(vec, fallback, atol=1e-6)
    assert meta["judge_filter"] is False and meta["pairs_used"] == 4 and meta["fallback_used"] == "none"
    assert rollouts["kept"].all() and rollouts["trait_score"].isna().all()


def test_validate_steering_orders_alphas(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    vectors = torch.randn(n_layers + 1, hidden)
    layer = 2
    ids = torch.tensor([tok("hello", add_special_tokens=False)["input_ids"]])
    n_hooks = len(decoder_layers(model)[layer - 1]._forward_hooks)

    def probe_sample(model, tokenizer, conversations, settings, seed):
        # The "answer" reports how far the residual stream at `layer` points along the vector.
        proj = float((residual_at(model, ids, layer) @ vectors[layer]).mean())
        return [f"{proj}"] * len(conversations)

    def score(judge, template, pairs, cache, metric):
        return [FakeScore(float(a) if metric.startswith("trait") else 70.0) for _, a in pairs]

    table, answers = validate_steering(model, tok, vectors, layer, 3.0, ["q1?", "q2?"], Judge(), cache=None,
                                       sampling=None, seed=0, trait_template="{question}{answer}",
                                       coherence_template="{question}{answer}", sample_fn=probe_sample,
                                       score_fn=score, return_answers=True)
    assert list(table["alpha"]) == [-3.0, 0.0, 3.0] and list(table["n"]) == [2, 2, 2]
    assert table["trait_mean"].is_monotonic_increasing and list(table["coherent_mean"]) == [70.0] * 3
    assert len(answers) == 6 and set(table["trait_n"]) == {2}
    assert len(decoder_layers(model)[layer - 1]._forward_hooks) == n_hooks  # steering removed afterwards


def test_extract_and_validate_with_the_real_sampler_and_scorer(tiny):
    """Runs the stage against emguard.generate.sample and emguard.judge.score_texts (judge stubbed)."""
    generate = pytest.importorskip("emguard.generate")
    judge_mod = pytest.importorskip("emguard.judge")
    model, tok = tiny

    class PromptJudge:
        """Deterministic stand-in for HFJudge: a score derived from the filled prompt."""
        name = "stub"
        batch_size = 4

        def score_prompts(self, prompts):
            return [judge_mod.ScoreResult(score=float(len(p) % 100), prob_mass=1.0, label="number") for p in prompts]

    settings = generate.SamplingSettings(max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=4)
    vec, rollouts, meta = extract(model, tok, small_trait(), PromptJudge(), cache=None, sampling=settings, seed=3,
                                  n_samples=1, coherence_template="C {question} {answer}", fallback="unfiltered")
    assert vec.shape == (model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert rollouts["trait_score"].notna().all() and meta["n_rollouts"] == 8
    table = validate_steering(model, tok, vec, 2, 4.0, ["question 9?"], PromptJudge(), cache=None, sampling=settings,
                              seed=3, trait_template="T {question} {answer}",
                              coherence_template="C {question} {answer}")
    assert list(table["alpha"]) == [-4.0, 0.0, 4.0] and list(table["n"]) == [1, 1, 1]
