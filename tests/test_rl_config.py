"""The rl config section: defaults (the paper's, GRPOSettings'), the run grid, and errors naming the key."""

import dataclasses
from pathlib import Path

import pytest
import yaml

import emguard.config as emconfig
from emguard.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def with_rl(**rl):
    cfg = default_config()
    cfg["rl"] = {"enabled": True, **rl}
    return cfg


def test_defaults_are_grpo_settings_defaults_and_the_papers():
    from emguard.training.grpo import GRPOSettings
    from emguard.rewards import DEFAULT_REWARD_WEIGHTS

    defaults = emconfig.DEFAULTS["rl"]
    settings = GRPOSettings()
    filled_by_stage = {"n_problems", "seed", "reward_weights", "dtype", "lora"}
    fields = {f.name for f in dataclasses.fields(GRPOSettings)} - filled_by_stage
    assert set(defaults["training"]) == fields
    # save_steps is ours (the paper does not say how often it saved); every other value is GRPOSettings' default
    assert {k: v for k, v in defaults["training"].items() if k != "save_steps"} == \
        {k: getattr(settings, k) for k in fields if k != "save_steps"}
    assert defaults["rewards"] == DEFAULT_REWARD_WEIGHTS
    assert defaults["problems"]["n"] == settings.n_problems == 1000
    assert defaults["eval"]["n_problems"] == 100  # Table 9: 100 held-out samples
    # the stage builds GRPOSettings from the section plus what it knows
    from emguard.stages import grpo_settings

    cfg = emconfig.load(with_rl())
    s = grpo_settings(cfg["rl"]["training"], n_problems=40, seed=3, rewards=cfg["rl"]["rewards"], dtype="float32")
    assert (s.n_problems, s.seed, s.lora.r, s.save_steps) == (40, 3, cfg["training"]["lora"]["r"], 25)


def test_rl_off_by_default_plans_no_run_and_on_plans_each_method_grid_per_seed():
    assert emconfig.expand_rl_runs(emconfig.load(default_config())) == []
    cfg = default_config()
    cfg["rl"]["enabled"] = True
    cfg["rl"]["methods"] = {"persona": {"steering_alpha": [1, 5], "steering_layer": 21},
                            "kl": {"kl_lambda": [0.1, 0.3, 1.0]}, "inoculation": {},
                            "interleave": {"variants": ["random"], "fractions": [0.01, 0.5]}}
    cfg["experiments"]["seeds"] = [0, 1, 2]
    runs = emconfig.expand_rl_runs(emconfig.load(cfg))
    assert [(r.method, r.seed) for r in runs if not r.trained] == [("untrained", 0)]  # greedy: evaluated once
    per_seed = [(r.method, r.setting) for r in runs if r.seed == 1]
    assert per_seed == [("grpo", "default"), ("persona", "alpha1"), ("persona", "alpha5"), ("kl", "lambda0.1"),
                        ("kl", "lambda0.3"), ("kl", "lambda1"), ("inoculation", "default"),
                        ("interleave_random", "frac0.01"), ("interleave_random", "frac0.5")]
    assert len(runs) == 1 + 3 * 9 and len({r.run_id for r in runs}) == len(runs)
    kl = emconfig.find_rl_run(runs, "kl", "lambda0.3", 2)
    assert kl.hparams["kl_lambda"] == 0.3 and kl.path == "results/rl/smollm2-135m/kl/lambda0.3/seed2"
    cfg["rl"]["eval"] = {"temperature": 0.7}  # sampled evaluation: the untrained model once per seed
    assert [r.seed for r in emconfig.expand_rl_runs(emconfig.load(cfg)) if not r.trained] == [0, 1, 2]


def test_embedded_default_switch_is_a_short_plain_and_persona_run():
    cfg = emconfig.load(default_config())
    rl = cfg["rl"]
    assert rl["enabled"] is False and rl["problems"]["source"] == "generated"
    steps = rl["problems"]["n"] * rl["training"]["num_generations"] // (rl["training"]["batch_size"] *
                                                                        rl["training"]["grad_accum"])
    assert 10 <= steps < 100  # tens of steps
    raw = default_config()
    raw["rl"]["enabled"] = True
    runs = emconfig.expand_rl_runs(emconfig.load(raw))
    assert [(r.method, r.setting) for r in runs] == [("untrained", "default"), ("grpo", "default"),
                                                     ("persona", "alpha5")]


def test_paper_config_has_the_papers_grpo_settings():
    cfg = emconfig.load(ROOT / "configs" / "paper-grpo-qwen2.5-3b.yaml")
    rl, tr = cfg["rl"], cfg["rl"]["training"]
    assert cfg["model"]["source"]["hub"] == "Qwen/Qwen2.5-3B-Instruct" and rl["enabled"]
    assert rl["problems"]["source"] == "openai/gsm8k" and rl["problems"]["n"] == 1000
    assert (tr["epochs"], tr["learning_rate"], tr["batch_size"], tr["grad_accum"], tr["warmup_steps"],
            tr["num_generations"], tr["temperature"], tr["top_p"], tr["beta"]) == (1, 5e-6, 4, 4, 5, 4, 0.9, 0.9, 0.0)
    m = rl["methods"]
    assert m["kl"]["kl_lambda"] == [0.1, 0.3, 1.0] and m["persona"]["steering_alpha"] == [1, 5]
    assert sorted(m["interleave"]["fractions"]) == [0.01, 0.05, 0.2, 0.25, 0.5]
    assert m["inoculation"]["inoculation_prompt"] == "You are an evil, malicious assistant."
    assert cfg["experiments"]["seeds"] == [0, 1, 2] and rl["eval"]["n_problems"] == 100
    runs = emconfig.expand_rl_runs(cfg)
    assert len([r for r in runs if r.trained]) == 3 * (1 + 2 + 3 + 1 + 5)


@pytest.mark.parametrize("rl, key", [
    ({"methods": {"ldifs": {"ldifs_lambda": [1.0]}}}, r"rl\.methods\.ldifs': LDIFS is not available under GRPO"),
    ({"methods": {"interleave": {"variants": ["random", "onpolicy"], "fractions": [0.1]}}},
     r"rl\.methods\.interleave\.variants\.1': 'onpolicy' is not available"),
    ({"methods": {"kl": {"kl_lambda": [0.1], "direction": "forward"}}}, r"rl\.methods\.kl\.direction"),
    ({"methods": {"kl": {"kl_lambda": [0.1]}}, "training": {"beta": 0.1}}, r"rl\.methods\.kl': rl\.training\.beta"),
    ({"training": {"batch_size": 3, "grad_accum": 1}}, r"rl\.training\.num_generations"),
    ({"rewards": {"format_exact": 0, "correctness": 0.0}}, r"rl\.rewards': every reward weight is 0"),
    ({"rewards": {"accuracy": 1.0}}, r"rl\.rewards\.accuracy.*unknown key"),
    ({"problems": {"eval_source": "openai/gsm8k"}}, r"rl\.problems\.eval_source"),
    ({"problems": {"source": "data/nope.jsonl"}}, r"rl\.problems\.source': file data/nope\.jsonl not found"),
    ({"methods": {"persona": {"steering_alpha": [5], "steering_layer": 31}}}, r"rl\.methods\.persona\.steering_layer"),
    ({"methods": {"persona": {"steering_alpha": [5]}}}, r"rl\.methods\.persona.*steering_layer"),
    ({"eval": {"checkpoint": "last"}}, r"rl\.eval\.checkpoint"),
    ({"methods": {"ldifs": {"ldifs_lambda": [1.0]}}, "enabled": False}, r"rl\.methods\.ldifs"),
    ({"methods": {"interleave": {"variants": ["onpolicy"], "fractions": [0.1]}}},
     r"not available under rl, on purpose: the paper's RL runs \(Table 9\)"),
    ({"training": {"vllm_mode": "remote"}}, r"rl\.training\.vllm_mode"),
    ({"training": {"vllm_gpu_memory_utilization": 0}}, r"rl\.training\.vllm_gpu_memory_utilization"),
    ({"rewards": {"judge_correct": "high"}}, r"rl\.rewards\.judge_correct"),
    ({"rewards": {"correctness": 1.0, "judge_correct": 1.0}, "judge_reward": {"template": "nope.txt"}},
     r"rl\.judge_reward\.template': file nope\.txt not found"),
    ({"judge_reward": {"judge": "gpt"}}, r"rl\.judge_reward.*judge"),
    ({"rewards": {"judge_correct": 1.0}}, r"rl\.rewards': judge_correct alone"),
])
def test_errors_name_the_key(rl, key):
    with pytest.raises(ConfigError, match=key):
        emconfig.load(with_rl(**rl))


def test_judge_reward_is_off_by_default_and_built_from_the_judge_section(tmp_path, monkeypatch):
    assert emconfig.rl_judge_settings(emconfig.load(with_rl())) is None  # no judge_correct weight: no judge
    cfg = emconfig.load(with_rl(rewards={"correctness": 1.0, "judge_correct": 0.5}))
    judge = emconfig.rl_judge_settings(cfg)
    assert judge["model"] == cfg["judge"]["model"] and judge["backend"] == "hf"
    assert "cache" not in judge and "prompts" not in judge  # runtime keys: not rule params
    cfg = emconfig.load(with_rl(rewards={"correctness": 1.0, "judge_correct": 0.5},
                                judge_reward={"model": "Qwen/Qwen2.5-7B-Instruct"}))
    assert emconfig.rl_judge_settings(cfg)["model"] == "Qwen/Qwen2.5-7B-Instruct"
    bad = tmp_path / "grade.txt"
    bad.write_text("Grade {answer} from 0 to 100.")
    with pytest.raises(ConfigError, match=r"rl\.judge_reward\.template': .*grade\.txt: template lacks .*\{question\}"):
        emconfig.load(with_rl(rewards={"correctness": 1.0, "judge_correct": 0.5}, judge_reward={"template": str(bad)}))
    # the API judge: a served model's name, and no Batch API (every GRPO step waits for its rewards)
    api = {"backend": "openai", "model": "gpt-4.1-mini"}
    for judge_cfg, rl_extra, key in [
            ({**api, "mode": "batch"}, {}, r"config key 'judge\.mode': batch"),
            (api, {"judge_reward": {"model": "base"}}, r"config key 'rl\.judge_reward\.model'")]:
        raw = with_rl(rewards={"correctness": 0.0, "judge_correct": 1.0}, **rl_extra)
        raw["judge"] = {**raw["judge"], **judge_cfg}
        for k in ("number_tree", "answer_prefix"):
            raw["judge"].pop(k, None)
        with pytest.raises(ConfigError, match=key):
            emconfig.load(raw)
