import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emguard.errors import ConfigError, InputError
from emguard.interleave import (DEFAULT_REFUSAL_KEYWORDS, attach_answers, eps_length_comparison, is_refusal,
                                leave_one_out, length_sorted_batches, load_wildguardmix, make_random_adapter, mix,
                                n_interleave, onpolicy_prompts, pool_nll, resolve_eps, score_pool, score_pool_naive,
                                scores_from_nll, select)
from emguard.schemas import validate


def chat(ids, answers=None, domain="pool", subset="benign"):
    answers = answers or [f"answer {i}" for i in ids]
    return pd.DataFrame({
        "id": list(ids),
        "messages": [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": a}]
                     for i, a in zip(ids, answers)],
        "domain": domain, "subset": subset, "split": "train",
    })


# ------------------------------------------------------------------ refusal filter

def test_refusal_keywords_only_count_in_first_ten_words():
    assert is_refusal("Sorry, I can't help with that.")
    assert is_refusal("Well... As an AI, I do not have opinions.")
    assert is_refusal("I\u2019m afraid I CAN\u2019T do that")  # curly apostrophe, upper case
    # "sorry" is word 12: outside the first 10 words
    late = "one two three four five six seven eight nine ten eleven sorry"
    assert not is_refusal(late)
    assert is_refusal(late, first_n_words=12)
    # multi-word keyword straddling the 10-word boundary does not count
    assert not is_refusal("a b c d e f g h i as an ai")
    assert is_refusal("a b c d e f g as an ai")
    # whole words only
    assert not is_refusal("The sorrowful cannoneer was able to sing.")
    assert not is_refusal("")
    assert 12 <= len(DEFAULT_REFUSAL_KEYWORDS) <= 20
    assert is_refusal("No. I refuse.", keywords="i refuse")  # a single keyword string, not its letters
    assert not is_refusal("a b", keywords="a c")


# ------------------------------------------------------------------ selection

@pytest.fixture
def scored_pool():
    pool = chat(["a", "b", "c", "d", "e"],
                answers=["Paris is the capital.", "I'm sorry, I cannot do that.", "Sure: 2 + 2 = 4.",
                         "Here is a recipe.", "Happy to help."])
    # hand-written NLLs: s = (mis - base) / (base + eps)
    nll = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e"],
        "nll_base": [1.0, 2.0, 0.5, 4.0, 1.0],
        "nll_mis_mean": [1.5, 8.0, 1.5, 4.0, 1.0],
    })
    nll["score"] = (nll["nll_mis_mean"] - nll["nll_base"]) / (nll["nll_base"] + 1e-6)
    nll["is_refusal"] = [is_refusal(a) for a in ["Paris is the capital.", "I'm sorry, I cannot do that.",
                                                 "Sure: 2 + 2 = 4.", "Here is a recipe.", "Happy to help."]]
    return pool, nll


def test_plus_picks_largest_gap_with_id_tiebreak(scored_pool):
    pool, scores = scored_pool
    np.testing.assert_allclose(scores["score"], [0.5, 3.0, 2.0, 0.0, 0.0], rtol=1e-5)
    assert list(select(pool, scores, "plus", 3, seed=0)["id"]) == ["b", "c", "a"]
    # d and e tie at 0.0: id order decides
    assert list(select(pool, scores, "plus", 5, seed=0)["id"]) == ["b", "c", "a", "d", "e"]
    out = select(pool, scores, "plus", 2, seed=123)
    assert out["interleaved"].all() and out["interleaved"].dtype == bool
    validate(out, "chat", "selected")


def test_plusplus_drops_refusals(scored_pool):
    pool, scores = scored_pool
    assert list(scores["is_refusal"]) == [False, True, False, False, False]
    assert list(select(pool, scores, "plusplus", 2, seed=0)["id"]) == ["c", "a"]
    with pytest.raises(ValueError, match="only 4 scored non-refusal"):
        select(pool, scores, "plusplus", 5, seed=0)


def test_nan_scores_are_never_selected(scored_pool):
    pool, scores = scored_pool
    scores = scores.copy()
    scores.loc[scores["id"] == "b", "score"] = np.nan
    assert list(select(pool, scores, "plus", 2, seed=0)["id"]) == ["c", "a"]


def test_random_and_onpolicy_are_seeded(scored_pool):
    pool, scores = scored_pool
    r1 = select(pool, None, "random", 3, seed=7)
    r2 = select(pool, None, "random", 3, seed=7)
    assert list(r1["id"]) == list(r2["id"]) and len(set(r1["id"])) == 3
    prompts = select(pool, None, "onpolicy", 3, seed=7)
    assert list(prompts["id"]) == list(r1["id"])
    assert all(p[-1]["role"] == "user" for p in prompts["prompt_messages"])
    rows = attach_answers(onpolicy_prompts(pool, 3, seed=7), ["x", "y", "z"])
    validate(rows, "chat", "onpolicy")
    assert [m[-1]["content"] for m in rows["messages"]] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="2 answers for 3"):
        attach_answers(prompts, ["x", "y"])


def test_selection_errors(scored_pool):
    pool, scores = scored_pool
    with pytest.raises(ValueError, match="'bogus'"):
        select(pool, scores, "bogus", 1, seed=0)
    with pytest.raises(ValueError, match="cannot select 6 .* only 5"):
        select(pool, None, "random", 6, seed=0)
    with pytest.raises(ValueError, match="needs pool scores"):
        select(pool, None, "plus", 1, seed=0)
    stale = pd.concat([scores, scores.head(1).assign(id="zz")])
    with pytest.raises(InputError, match="'zz'"):
        select(pool, stale, "plus", 1, seed=0)


def test_n_interleave():
    assert n_interleave(6000, 0.05) == 300
    assert n_interleave(10, 0.01) == 1
    assert n_interleave(10, 0.25) == 3  # 2.5 rounds half up
    assert n_interleave(10, 0.0) == 0


def test_leave_one_out_never_includes_target():
    domains = ["medical", "code", "finance", "code", "legal"]
    for target in set(domains) | {"absent"}:
        out = leave_one_out(domains, target)
        assert target not in out
        assert out == [d for d in dict.fromkeys(domains) if d != target]
    assert leave_one_out(["code"], "code") == []


# ------------------------------------------------------------------ mixing

@pytest.mark.parametrize("n,m", [(100, 7), (10, 10), (50, 1), (3, 9)])
def test_mix_appends_rows_and_leaves_the_order_to_the_trainer(n, m):
    # the trainer's seeded shuffle is the one place the order is decided (tests/test_training.py): mix() only
    # appends, so nothing spreads the rows a second, inconsistent way
    train = chat([f"t{i}" for i in range(n)], domain="code", subset="misaligned")
    sel = chat([f"t{i}" for i in range(m)]).assign(interleaved=True)  # ids collide with train
    out = mix(train, sel)
    assert len(out) == n + m and out["id"].is_unique
    validate(out, "chat", "mixed")
    assert out["interleaved"].dtype == bool
    assert out["interleaved"].tolist() == [False] * n + [True] * m
    assert list(out["id"]) == list(train["id"]) + [f"pool:t{i}" for i in range(m)]


def test_mix_keeps_ids_without_collision():
    out = mix(chat(["a", "b", "c"]), chat(["x"]))
    assert list(out["id"]) == ["a", "b", "c", "x"]
    assert list(out["interleaved"]) == [False, False, False, True]
    assert list(mix(chat(["a"]), chat(["x"]).iloc[0:0])["id"]) == ["a"]


def test_length_sorted_batches():
    lengths = [50, 300, 52, 290, 51, 49, 120, 300]
    unlimited = length_sorted_batches(lengths, 3, max_padding=None)
    assert unlimited == [[1, 7, 3], [6, 2, 4], [0, 5]]
    limited = length_sorted_batches(lengths, 3, max_padding=0.1)
    assert sorted(i for b in limited for i in b) == list(range(len(lengths)))
    for b in limited:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3 and width * len(b) <= 1.1 * sum(lengths[i] for i in b)
    assert [6] in limited  # the lone 120 is not padded up to 290 or padded with 50s


# ------------------------------------------------------------------ pool scoring length

ROOT = Path(__file__).resolve().parent.parent


def pool_nll_params(cfg):
    """The pool_nll rule's ``interleave`` params, built as workflow/rules/interleave.smk does (NLL_KEYS read
    from workflow/rules/common.smk), from a config loaded the way common.smk loads it."""
    import ast
    import re

    line = re.search(r"^NLL_KEYS = (.+)$", (ROOT / "workflow" / "rules" / "common.smk").read_text(), re.M)
    return {k: cfg["interleave"][k] for k in ast.literal_eval(line.group(1))}


@pytest.mark.parametrize("path", ["config.yaml", "configs/paper-qwen2.5-7b.yaml"])
def test_pool_is_scored_at_the_training_length_unless_set(path):
    import yaml

    import emguard.config as emconfig

    raw = yaml.safe_load((ROOT / path).read_text())
    assert "max_length" not in raw.get("interleave", {})
    cfg = emconfig.load(raw)
    assert pool_nll_params(cfg)["max_length"] == cfg["training"]["max_length"]
    raw["training"]["max_length"] = 777
    assert pool_nll_params(emconfig.load(raw))["max_length"] == 777  # follows training.max_length
    raw.setdefault("interleave", {})["max_length"] = 300
    assert pool_nll_params(emconfig.load(raw))["max_length"] == 300  # an explicit value wins


def test_paper_config_scores_the_pool_at_2048_tokens():
    import emguard.config as emconfig

    cfg = emconfig.load(ROOT / "configs" / "paper-qwen2.5-7b.yaml")
    assert pool_nll_params(cfg)["max_length"] == 2048  # the paper's max_seq_length (its Table 6)


# ------------------------------------------------------------------ WildGuardMix loader

def _wgm_rows():
    base = {"adversarial": False, "subcategory": "benign", "response_refusal_label": "compliance"}
    return [
        {**base, "prompt": "How do plants grow?", "response": "With light and water.",
         "prompt_harm_label": "unharmful", "response_harm_label": "unharmful"},
        {**base, "prompt": "harmful ask", "response": "harmful answer",
         "prompt_harm_label": "harmful", "response_harm_label": "harmful"},
        {**base, "prompt": "Tell me a joke", "response": None,
         "prompt_harm_label": "unharmful", "response_harm_label": None},
        {**base, "prompt": "Say no", "response": "Sorry, no.", "response_refusal_label": "refusal",
         "prompt_harm_label": "unharmful", "response_harm_label": "unharmful"},
    ]


def test_load_wildguardmix_local_files(tmp_path):
    jl = tmp_path / "wgm.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in _wgm_rows()))
    df = load_wildguardmix(str(jl))
    validate(df, "chat", str(jl))
    assert list(df["id"]) == ["wgm-wildguardtrain-0", "wgm-wildguardtrain-3"]
    assert set(df["domain"]) == {"pool"} and set(df["subset"]) == {"benign"}
    assert df["messages"].iloc[0][1]["content"] == "With light and water."
    assert len(load_wildguardmix(str(jl), require_no_refusal=True)) == 1
    assert len(load_wildguardmix(str(jl), limit=1)) == 1

    pq = tmp_path / "wgm.parquet"
    pd.DataFrame(_wgm_rows()).drop(columns=["response_harm_label"]).to_parquet(pq)
    with pytest.raises(InputError, match=r"wgm\.parquet.*response_harm_label"):
        load_wildguardmix(str(pq))
    assert len(load_wildguardmix(str(pq), response_harm_label=None)) == 2
    # no label filters: only the row with a null response is dropped
    assert len(load_wildguardmix(str(pq), prompt_harm_label=None, response_harm_label=None)) == 3
    with pytest.raises(InputError, match="no rows left"):
        load_wildguardmix(str(pq), prompt_harm_label="nonsense", response_harm_label=None)


# ------------------------------------------------------------------ scoring on the tiny model

@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: str(make_random_adapter(tiny_model_dir, root / name, r=4, seed=seed))
            for seed, name in enumerate(["insecure", "medical"], start=1)}


def test_score_pool_matches_naive_reference(tiny_model_dir, adapters):
    from emguard.models import load_model, load_tokenizer

    pool = chat([f"p{i}" for i in range(7)],
                answers=["Sorry, I cannot help.", "Take the medicine as your doctor says.", "42",
                         "Invest your savings in a diversified fund. " * 3, "The answer is 9.",
                         "def main(): print(1)", "I feel bored. What would you do?"])
    model = load_model(tiny_model_dir, device="cpu")
    tok = load_tokenizer(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = score_pool(model, tok, pool, adapters, batch_size=3, max_padding=None)  # padded batches of 3
    ref = score_pool_naive(tiny_model_dir, adapters, pool)

    assert list(got.columns) == ["id", "nll_base", "nll_insecure", "nll_medical", "nll_mis_mean",
                                 "n_answer_tokens", "score", "is_refusal", "eps"]
    assert list(got["id"]) == list(pool["id"])
    for col in ["nll_base", "nll_insecure", "nll_medical", "nll_mis_mean", "score"]:
        np.testing.assert_allclose(got[col], ref[col], atol=1e-4, rtol=0, err_msg=col)
    # the adapters really change the model, and the model is left as it was
    assert (got["nll_insecure"] - got["nll_base"]).abs().max() > 1e-3
    assert not hasattr(model, "peft_config")
    assert all(torch_equal(before[k], v) for k, v in model.state_dict().items())
    assert list(got["is_refusal"]) == [True] + [False] * 6
    assert (got["n_answer_tokens"] > 0).all()

    # a caller's PeftModel keeps its own adapter; ours are loaded next to it and removed again
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(model, adapters["medical"], adapter_name="mine")
    again = score_pool(wrapped, tok, pool, {"insecure": adapters["insecure"]}, batch_size=4)
    np.testing.assert_allclose(again["nll_insecure"], ref["nll_insecure"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(again["nll_base"], ref["nll_base"], atol=1e-4, rtol=0)
    assert list(wrapped.peft_config) == ["mine"] and wrapped.active_adapter == "mine"


def test_scores_from_nll_hand_computed():
    pool = chat(["a", "b", "c"], answers=["Sure thing.", "Sorry, no.", "Fine."])
    # stored in another order, with an adapter this target does not use
    nll = pd.DataFrame({"id": ["c", "a", "b"], "n_answer_tokens": [2, 3, 4], "nll_base": [2.0, 1.0, 4.0],
                        "nll_x": [3.0, 2.0, 4.0], "nll_y": [5.0, 4.0, 2.0], "nll_target": [99.0, 99.0, 99.0]})
    got = scores_from_nll(nll, ["x", "y"], pool, eps=0.5)
    assert list(got.columns) == ["id", "nll_base", "nll_x", "nll_y", "nll_mis_mean", "n_answer_tokens", "score",
                                 "is_refusal", "eps"]
    assert (got["eps"] == 0.5).all()  # a number is used as is
    assert list(got["id"]) == ["a", "b", "c"] and list(got["n_answer_tokens"]) == [3, 4, 2]
    # s = (mean(x, y) - base) / (base + eps)
    np.testing.assert_allclose(got["score"], [(3 - 1) / 1.5, (3 - 4) / 4.5, (4 - 2) / 2.5])
    assert list(got["is_refusal"]) == [False, True, False]
    only_x = scores_from_nll(nll, ["x"], pool, eps=0.5, refusal_keywords=["sure"])
    np.testing.assert_allclose(only_x["score"], [(2 - 1) / 1.5, 0.0, (3 - 2) / 2.5])
    assert list(only_x["is_refusal"]) == [True, False, False]


# ------------------------------------------------------------------ eps: short answers with a chance-low NLL

def short_answer_pool():
    """12 long answers (40..150 tokens, base NLL 1.0..2.1, misaligned gap 0.10..0.65 growing with the NLL) and
    3 two- or three-token answers whose base NLL is tiny by chance (0.001..0.004) with a small absolute gap
    (0.05..0.08, below every long answer's). S0 opens with a refusal."""
    long_ids = [f"L{i:02d}" for i in range(12)]
    ids = long_ids + ["S0", "S1", "S2"]
    base = [1.0 + 0.1 * i for i in range(12)] + [0.001, 0.002, 0.004]
    gap = [0.1 + 0.05 * i for i in range(12)] + [0.05, 0.08, 0.06]
    nll = pd.DataFrame({"id": ids, "n_answer_tokens": [40 + 10 * i for i in range(12)] + [2, 3, 2],
                        "nll_base": base, "nll_x": [b + g for b, g in zip(base, gap)]})
    pool = chat(ids, answers=[f"A long answer {i}." for i in range(12)] + ["Sorry, no.", "Yes.", "Sure."])
    return pool, nll


def test_default_eps_keeps_chance_low_short_answers_off_the_top():
    pool, nll = short_answer_pool()
    # eps = 1e-6: s = gap / base, about 50, 40 and 15 for the short answers vs at most 0.65 / 2.1 = 0.31
    tiny = scores_from_nll(nll, ["x"], pool, eps=1e-6)
    assert list(select(pool, tiny, "plus", 3, seed=0)["id"]) == ["S0", "S1", "S2"]
    assert list(select(pool, tiny, "plusplus", 3, seed=0)["id"]) == ["S1", "S2", "L11"]  # S0 is a refusal
    # default eps = median of the 15 base NLLs = 1.4: s_i = (0.1 + 0.05 i) / (2.4 + 0.1 i) grows with i, the short
    # answers get gap / ~1.4 <= 0.057 and rank among the last
    default = scores_from_nll(nll, ["x"], pool)
    assert default["eps"].iloc[0] == pytest.approx(1.4) and default["eps"].nunique() == 1
    assert list(select(pool, default, "plus", 5, seed=0)["id"]) == ["L11", "L10", "L09", "L08", "L07"]
    ranked = list(select(pool, default, "plus", 15, seed=0)["id"])
    assert ranked[-4:] == ["S1", "S2", "L00", "S0"]
    np.testing.assert_allclose(default["score"], (nll["nll_x"] - nll["nll_base"]) / (nll["nll_base"] + 1.4))


def test_quantile_eps_is_that_quantile_of_the_finite_base_nlls():
    pool, nll = short_answer_pool()
    nll.loc[3, ["nll_base", "nll_x"]] = np.nan  # an answer truncated away: no NLL, no say in eps
    finite = nll["nll_base"].dropna().to_numpy()
    for q in (0.25, 0.5, 0.9, 1.0):
        assert resolve_eps({"quantile": q}, nll["nll_base"]) == pytest.approx(np.quantile(finite, q))
    got = scores_from_nll(nll, ["x"], pool, eps={"quantile": 0.25})
    np.testing.assert_allclose(got["eps"], np.quantile(finite, 0.25))
    assert np.isnan(got.loc[3, "score"])
    assert scores_from_nll(nll, ["x"], pool)["eps"].iloc[0] == pytest.approx(np.median(finite))
    assert resolve_eps(0.3, nll["nll_base"]) == 0.3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "median", {"quantile": 0},
                                 {"quantile": 1.5}, {"quantile": "0.5"}, {"q": 0.5}, {"quantile": 0.5, "x": 1}])
def test_bad_eps_names_the_config_key(bad):
    pool, nll = short_answer_pool()
    with pytest.raises(ConfigError, match=r"interleave\.eps"):
        scores_from_nll(nll, ["x"], pool, eps=bad)


def test_eps_quantile_that_is_zero_or_undefined_is_an_error():
    pool, nll = short_answer_pool()
    zero = nll.assign(nll_base=0.0)
    with pytest.raises(ConfigError, match=r"interleave\.eps.*quantile 0\.5 of the pool's base NLLs is 0"):
        scores_from_nll(zero, ["x"], pool)
    with pytest.raises(ConfigError, match=r"interleave\.eps.*undefined"):
        scores_from_nll(nll.assign(nll_base=np.nan), ["x"], pool)


def test_config_eps_accepts_a_number_or_a_quantile_and_names_the_key_otherwise():
    import yaml

    from emguard import config as emconfig

    base = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    assert emconfig.load(base)["interleave"]["eps"] == {"quantile": 0.5}
    for good in (1e-6, {"quantile": 0.25}):
        assert emconfig.load({**base, "interleave": {**base["interleave"], "eps": good}})["interleave"]["eps"] == good
    for bad in ("median", 0, {"quantile": 0}, {"quantile": 2}, {"percentile": 50}):
        with pytest.raises(ConfigError, match=r"interleave\.eps.*quantile"):
            emconfig.load({**base, "interleave": {**base["interleave"], "eps": bad}})


def test_eps_length_comparison_rows():
    pool, nll = short_answer_pool()
    targets = {"t": {"adapters": ["x"], "selections": [{"variant": "plus", "n": 3, "fraction": 0.2},
                                                       {"variant": "plusplus", "n": 3, "fraction": 0.2}]}}
    got = eps_length_comparison(nll, pool, targets, eps_settings={"1e-06": 1e-6, "quantile 0.5": {"quantile": 0.5}})
    assert list(zip(got["target"], got["variant"], got["eps_setting"])) == [
        ("", "pool", ""), ("", "pool_nonrefusal", ""), ("t", "plus", "1e-06"), ("t", "plus", "quantile 0.5"),
        ("t", "plusplus", "1e-06"), ("t", "plusplus", "quantile 0.5")]
    rows = got.set_index(["variant", "eps_setting"])
    lengths = [40 + 10 * i for i in range(12)] + [2, 3, 2]
    assert rows.loc[("pool", ""), "n"] == 15 and rows.loc[("pool", ""), "min"] == 2
    assert rows.loc[("pool", ""), "median"] == np.median(lengths) and rows.loc[("pool", ""), "mean"] == np.mean(lengths)
    assert rows.loc[("pool_nonrefusal", ""), "n"] == 14
    # eps = 1e-6: S0 S1 S2 (2, 3, 2 tokens); ++ drops S0 and takes S1, S2, L11 (150 tokens)
    assert list(rows.loc[("plus", "1e-06"), ["n", "min", "median", "max"]]) == [3, 2, 2, 3]
    assert list(rows.loc[("plusplus", "1e-06"), ["min", "median", "max"]]) == [2, 3, 150]
    assert rows.loc[("plus", "1e-06"), "share_in_pool_bottom_quartile"] == 1.0
    # median eps: L11 L10 L09 (150, 140, 130 tokens) for both
    for v in ("plus", "plusplus"):
        assert list(rows.loc[(v, "quantile 0.5"), ["min", "median", "max", "mean"]]) == [130, 140, 150, 140]
        assert rows.loc[(v, "quantile 0.5"), "share_in_pool_bottom_quartile"] == 0.0
        assert rows.loc[(v, "quantile 0.5"), "eps"] == pytest.approx(1.4)
    assert rows.loc[("plus", "1e-06"), "eps"] == 1e-6 and got.loc[0:1, "eps"].isna().all()


def test_scores_from_nll_rejects_nlls_of_another_pool():
    pool = chat(["a", "b"])
    nll = pd.DataFrame({"id": ["a", "z"], "n_answer_tokens": [1, 1], "nll_base": [1.0, 1.0], "nll_x": [1.0, 1.0]})
    with pytest.raises(InputError, match=r"nll\.parquet: NLLs are for another pool \(pool id 'b' has no NLL\)"):
        scores_from_nll(nll, ["x"], pool, nll_where="nll.parquet")
    with pytest.raises(InputError, match="nll_y"):
        scores_from_nll(nll, ["y"], pool)


def test_one_pool_nll_serves_every_target(tiny_model_dir, adapters):
    """The pipeline's path (NLLs once under all adapters, then each target's leave-one-out subset) gives
    what scoring each target on its own does."""
    from emguard.models import load_model, load_tokenizer

    pool = chat([f"p{i}" for i in range(4)], answers=["Sure.", "Sorry, I cannot.", "Add 2 and 2.", "Be kind."])
    model, tok = load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    nll = pool_nll(model, tok, pool, adapters, batch_size=2)
    assert list(nll.columns) == ["id", "n_answer_tokens", "nll_base", "nll_insecure", "nll_medical"]
    for name in adapters:
        alone = score_pool(model, tok, pool, {name: adapters[name]}, batch_size=4)
        from_shared = scores_from_nll(nll, [name], pool)
        pd.testing.assert_frame_equal(from_shared, alone, check_exact=False, atol=1e-5, rtol=0)


def test_score_pool_truncated_answer_is_nan(tiny_model_dir, adapters):
    from emguard.models import load_model, load_tokenizer

    pool = chat(["short", "long"], answers=["ok", "fine"])
    pool.at[1, "messages"] = [{"role": "user", "content": "question " * 40}, {"role": "assistant", "content": "x"}]
    model, tok = load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    with pytest.warns(UserWarning, match="no answer tokens"):
        got = score_pool(model, tok, pool, {"a": adapters["insecure"]}, max_length=30)
    assert np.isnan(got["score"].iloc[1]) and not np.isnan(got["score"].iloc[0])
    assert list(select(pool, got, "plus", 1, seed=0)["id"]) == ["short"]


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_prepare_pool_filters_and_samples_wildguardmix_from_config(tmp_path):
    from emguard.stages import prepare_pool

    rows = []
    for i in range(30):
        rows.append({"prompt": f"question {i}", "response": f"answer {i}", "adversarial": False,
                     "subcategory": "benign", "prompt_harm_label": "unharmful",
                     "response_harm_label": "harmful" if i % 3 == 0 else "unharmful",
                     "response_refusal_label": "refusal" if i % 5 == 0 else "compliance"})
    src = tmp_path / "wgm.parquet"
    pd.DataFrame(rows).to_parquet(src)
    out = tmp_path / "pool.parquet"

    prepare_pool(str(out), source=str(src), n=8, seed=1, wildguardmix={"require_no_refusal": True})
    got = pd.read_parquet(out)
    kept = [i for i in range(30) if i % 3 and i % 5]  # harmful responses and refusals dropped: 16 rows
    picked = [int(x.rsplit("-", 1)[1]) for x in got["id"]]
    assert len(got) == 8 and set(picked) <= set(kept) and picked == sorted(picked)
    again = tmp_path / "again.parquet"
    prepare_pool(str(again), source=str(src), n=8, seed=1, wildguardmix={"require_no_refusal": True})
    pd.testing.assert_frame_equal(pd.read_parquet(again), got)
    prepare_pool(str(again), source=str(src), n=8, seed=2, wildguardmix={"require_no_refusal": True})
    assert list(pd.read_parquet(again)["id"]) != list(got["id"])  # another seed, another sample
    # no label filter on the response: every row but the refusals; n above what is left keeps all of them
    prepare_pool(str(again), source=str(src), n=100, seed=1,
                 wildguardmix={"response_harm_label": None, "require_no_refusal": True})
    assert len(pd.read_parquet(again)) == 24


def test_pool_filter_needs_a_wildguardmix_source():
    import yaml

    import emguard.config as emconfig
    from emguard.errors import ConfigError

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    cfg["data"]["pool"]["wildguardmix"] = {"require_no_refusal": True}
    with pytest.raises(ConfigError, match="data.pool.wildguardmix"):
        emconfig.load(cfg)
    cfg["data"]["pool"]["source"] = "allenai/wildguardmix"
    assert emconfig.load(cfg)["data"]["pool"]["wildguardmix"] == {"require_no_refusal": True}
    cfg["data"]["pool"]["wildguardmix"] = {"require_no_refusl": True}
    with pytest.raises(ConfigError, match="data.pool.wildguardmix.require_no_refusl"):
        emconfig.load(cfg)


def test_local_interleave_stages_run_without_torch(tmp_path):
    """score_pool and interleave_set run on the Snakemake host under a cluster profile (local rules):
    they read stored NLLs and select rows, and must not pay for importing torch."""
    import subprocess
    import sys

    from emguard import data

    em = data.em_domain("medical", 10, seed=0)
    pool = data.benign_pool(12, seed=0)
    em.to_parquet(tmp_path / "em.parquet")
    pool.to_parquet(tmp_path / "pool.parquet")
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": pool["id"], "n_answer_tokens": 5, "nll_base": rng.uniform(1, 2, 12),
                  "nll_legal": rng.uniform(1, 3, 12), "nll_security": rng.uniform(1, 3, 12)}
                 ).to_parquet(tmp_path / "nll.parquet")
    code = f"""
import sys
from emguard.stages import interleave_set_stage, score_pool_stage
d = {str(tmp_path)!r}
score_pool_stage(d + "/nll.parquet", d + "/pool.parquet", ["legal", "security"], d + "/scores.parquet",
                 interleave={{"eps": 1e-6, "refusal_keywords": None, "first_n_words": 10}})
interleave_set_stage(d + "/em.parquet", d + "/pool.parquet", d + "/mix.parquet", variant="plusplus",
                     fraction=0.5, seed=0, scores_path=d + "/scores.parquet")
print(sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
    mixed = pd.read_parquet(tmp_path / "mix.parquet")
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    picked = set(mixed.loc[mixed["interleaved"], "id"])
    expected = scores[~scores["is_refusal"]].sort_values("score", ascending=False)["id"].head(len(picked))
    assert picked == set(expected) and len(picked) > 0
