"""emguard.training.grpo on the tiny model: outputs, steering of the update only, KL without a second model, interleaving."""

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from emguard.training import grpo
from emguard.data.math_problems import generate_problems
from emguard.data.pool import benign_pool
from emguard.interleave import select
from emguard.models import LoraSettings, load_model, load_tokenizer
from emguard.regularisers import KLRegulariser, LDIFSRegulariser, SteeringRegulariser
from emguard.rewards import completion_text
from emguard.steering import decoder_layers


def length_reward(completions, **kwargs):
    """Varies between completions of a random model, so advantages are not all zero and the adapter learns."""
    return [float(len(completion_text(c)) % 7) for c in completions]


def settings(**kw):
    base = dict(n_problems=16, batch_size=4, grad_accum=2, num_generations=4, max_steps=2, warmup_steps=0,
                max_completion_length=8, learning_rate=5e-3, lr_scheduler="constant", lora=LoraSettings(r=4, alpha=8))
    base.update(kw)
    return grpo.GRPOSettings(**base)


@pytest.fixture(scope="module")
def problems():
    return generate_problems(24, seed=0)[["id", "question", "reference"]]


def run(tiny_model_dir, problems, out, s=None, **kw):
    model = load_model(tiny_model_dir, device="cpu")
    tok = load_tokenizer(tiny_model_dir)
    kw.setdefault("extra_rewards", [length_reward])
    kw.setdefault("extra_reward_weights", [1.0])
    return grpo.train_grpo_model(model, tok, problems, out, s or settings(), device="cpu", **kw)


def test_settings_defaults_are_the_papers_and_are_checked():
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(grpo.GRPOSettings)}
    assert all(helps.values()), helps
    s = grpo.GRPOSettings()
    assert (s.n_problems, s.epochs, s.learning_rate, s.batch_size, s.grad_accum, s.warmup_steps, s.num_generations,
            s.temperature, s.top_p, s.beta) == (1000, 1, 5e-6, 4, 4, 5, 4, 0.9, 0.9, 0.0)
    assert s.prompts_per_step == 4 and s.lora.use_rslora
    assert grpo.planned_steps(s, 1319) == 250  # 1000 problems, 4 per step
    with pytest.raises(ValueError, match="multiple of num_generations"):
        grpo.GRPOSettings(batch_size=3, grad_accum=1, num_generations=2)
    with pytest.raises(ValueError, match="unknown reward"):
        grpo.GRPOSettings(reward_weights={"accuracy": 1.0})
    with pytest.raises(ValueError, match="bogus"):
        grpo.GRPOSettings.from_dict({"bogus": 1})
    assert grpo.GRPOSettings.from_dict({"lora": {"r": 8}}).lora.r == 8


def test_interventions_map_the_sft_methods():
    s = grpo.GRPOSettings()
    steer = SteeringRegulariser(torch.ones(32), 2, 1.0)
    assert grpo.interventions(s, [steer, KLRegulariser(0.3)]) == (steer, 0.3)
    with pytest.raises(ValueError, match="not supported under GRPO"):
        grpo.interventions(s, [LDIFSRegulariser(1.0, [1])])
    with pytest.raises(ValueError, match="reverse"):
        grpo.interventions(s, [KLRegulariser(0.1, direction="forward")])
    with pytest.raises(ValueError, match="twice"):
        grpo.interventions(grpo.GRPOSettings(beta=0.1), [KLRegulariser(0.1)])


def test_run_writes_adapter_log_checkpoints_and_the_best_one(tiny_model_dir, problems, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    summary = run(tiny_model_dir, problems, out, settings(max_steps=3, save_steps=1))
    assert summary["steps"] == 3 == summary["planned_steps"]
    assert summary["n_prompts"] == 6 and summary["n_problems"] == 16
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["step"].tolist() == [1, 2, 3] and log["policy_step"].tolist() == [0, 1, 2]
    assert list(log.columns[:len(grpo.LOG_COLUMNS)]) == grpo.LOG_COLUMNS
    for name in ("format_exact", "format_loose", "correctness", "wellformed_number", "length_reward"):
        assert log[f"reward_{name}"].notna().all()
    # the total is the weighted sum of the components' means
    parts = log[[c for c in log.columns if c.startswith("reward_") and c != "reward_std"]].sum(axis=1)
    assert (log["reward"] - parts).abs().max() < 1e-4
    assert log["kl"].isna().all() and log["accuracy"].between(0, 100).all()
    assert (log["rollout_tokens"] > 0).all() and (log["update_tokens"] > log["rollout_tokens"]).all()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert [p.split("/")[-1] for p in summary["checkpoints"]] == ["step-1", "step-2", "step-3"]
    # the adapter learned (non-zero advantages from length_reward) and loads on the base model
    assert any(v.abs().sum() > 0 for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items()
               if "lora_B" in k)
    PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(out / "adapter"))
    # the best checkpoint is one whose own rollouts were logged (step 3's were not) with the highest reward
    best = summary["best_checkpoint_step"]
    assert best in (1, 2)
    assert summary["best_checkpoint_reward"] == log.loc[log["policy_step"].isin([1, 2]), "reward"].max()


def test_best_checkpoint_reads_the_rollouts_of_each_checkpoints_weights():
    log = pd.DataFrame({"step": [1, 2, 3, 4], "policy_step": [0, 1, 2, 3], "reward": [1.0, 5.0, 3.0, 9.0],
                        "accuracy": [0.0, 50.0, 25.0, 100.0]})
    # step-1's weights made the rollouts of step 2 (reward 5); step-4 has no logged rollouts
    assert grpo.best_checkpoint(log, [2, 4]) == {"best_checkpoint_step": 2, "best_checkpoint_reward": 3.0,
                                                 "best_checkpoint_accuracy": 25.0}
    assert grpo.best_checkpoint(log, [1, 2, 3])["best_checkpoint_step"] == 3
    assert grpo.best_checkpoint(log, [4])["best_checkpoint_step"] is None


def test_steering_hook_is_on_in_the_policy_update_and_never_in_rollouts(tiny_model_dir, problems, tmp_path,
                                                                       monkeypatch):
    cls = grpo.trainer_class()
    seen = {"rollout_hooks": [], "rollout_calls": [], "loss_hooks": [], "rollouts": []}
    layer_index = 2

    def hooks(trainer):
        return len(decoder_layers(trainer.model)[layer_index - 1]._forward_hooks)

    orig_gen, orig_loss = cls._generate_single_turn, cls.compute_loss

    def gen(self, *a, **k):
        before = self.steering_calls
        seen["rollout_hooks"].append(hooks(self))
        out = orig_gen(self, *a, **k)
        seen["rollout_calls"].append(self.steering_calls - before)
        seen["rollouts"].append(out[0])
        return out

    def loss(self, model, inputs, *a, **k):
        seen["trainer"] = self
        seen["loss_hooks"].append(hooks(self))
        return orig_loss(self, model, inputs, *a, **k)

    monkeypatch.setattr(cls, "_generate_single_turn", gen)
    monkeypatch.setattr(cls, "compute_loss", loss)
    steer = SteeringRegulariser(torch.randn(32) * 10, layer_index, 5.0)
    s = settings(max_steps=2)
    summary = run(tiny_model_dir, problems, tmp_path / "steer", s, regularisers=[steer])
    steered_rollouts = seen["rollouts"]
    assert seen["rollout_hooks"] == [0, 0] and seen["rollout_calls"] == [0, 0]  # absent during generation
    assert seen["loss_hooks"] == [1] * 4  # present in every policy forward (2 steps x 2 micro-batches)
    # one steered layer call per micro-batch's policy forward, none anywhere else
    assert summary["steering_calls"] == s.max_steps * s.grad_accum
    assert hooks(seen["trainer"]) == 0  # removed after the last update: the saved adapter carries no trace

    seen["rollouts"] = []
    plain = run(tiny_model_dir, problems, tmp_path / "plain", s)
    # same seed, same initial policy (LoRA B = 0): the first rollouts are identical, so generation is unsteered
    assert seen["rollouts"][0] == steered_rollouts[0]
    assert plain["steering_calls"] == 0
    a = load_file(str(tmp_path / "steer" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    assert any(not torch.allclose(a[k], b[k]) for k in a)  # the update itself was steered


def test_response_only_steering_masks_the_prompt(tiny_model_dir, problems, tmp_path, monkeypatch):
    cls = grpo.trainer_class()
    masks = []
    orig = cls.compute_loss

    def loss(self, model, inputs, *a, **k):
        out = orig(self, model, inputs, *a, **k)
        masks.append((inputs["prompt_mask"].shape[1], inputs["completion_mask"].clone()))
        return out

    monkeypatch.setattr(cls, "compute_loss", loss)
    captured = []
    orig_steering = cls._steering

    def steering(self):
        ctx = orig_steering(self)

        class Wrap:
            def __enter__(s):
                r = ctx.__enter__()
                layer = decoder_layers(self.model)[1]
                self._probe = layer.register_forward_hook(
                    lambda m, i, o: captured.append(None if self._steer_mask is None else self._steer_mask.clone()))
                return r

            def __exit__(s, *exc):
                self._probe.remove()
                return ctx.__exit__(*exc)
        return Wrap()

    monkeypatch.setattr(cls, "_steering", steering)
    steer = SteeringRegulariser(torch.ones(32), 2, 1.0, response_only=True)
    run(tiny_model_dir, problems, tmp_path / "resp", settings(max_steps=1), regularisers=[steer])
    assert len(captured) == len(masks) == 2
    for mask, (n_prompt, completion_mask) in zip(captured, masks):
        assert not mask[:, :n_prompt].any()
        assert torch.equal(mask[:, n_prompt:], completion_mask.bool())


def _live_weight_bytes(shapes: set[tuple[int, ...]]) -> int:
    """Bytes of the distinct storages behind every live 2-D tensor shaped like a base-model weight (the memory the
    weights occupy, however many tensors view them)."""
    import gc

    gc.collect()  # models dropped earlier (reference cycles) are not memory the trainer holds
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.dim() == 2 and tuple(obj.shape) in shapes:
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def test_kl_uses_the_adapter_disabled_model_and_no_second_copy(tiny_model_dir, problems, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    built = []
    orig_init = LlamaForCausalLM.__init__

    def counting_init(self, *a, **k):
        built.append(self)
        orig_init(self, *a, **k)

    cls = grpo.trainer_class()
    ref_passes = []
    orig_logps = cls._get_per_token_logps_and_entropies

    weight_bytes_at_ref = []

    def logps(self, model, *a, **k):
        if not torch.is_grad_enabled():  # the no-grad passes of _prepare_inputs: here only the reference
            lora = [m for m in model.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]
            ref_passes.append(all(m.disable_adapters for m in lora) and len(lora) > 0)
            weight_bytes_at_ref.append(_live_weight_bytes(weight_shapes))
        return orig_logps(self, model, *a, **k)

    monkeypatch.setattr(cls, "_get_per_token_logps_and_entropies", logps)
    model = load_model(tiny_model_dir, device="cpu")
    tok = load_tokenizer(tiny_model_dir)
    weight_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    model_weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
    base_params = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(LlamaForCausalLM, "__init__", counting_init)
    trainer, info = grpo.build_trainer(model, tok, problems.head(16), settings(max_steps=3),
                                       regularisers=[KLRegulariser(0.5)], extra_rewards=[length_reward],
                                       extra_reward_weights=[1.0], device="cpu", scratch_dir=tmp_path / "scratch")
    assert info["beta"] == 0.5 and trainer.beta == 0.5
    assert built == [] and trainer.ref_model is None  # no reference model was built or loaded
    assert set(trainer.model.peft_config) == {"default"}  # and no frozen "ref" adapter either
    lora_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in trainer.model.parameters()) == base_params + lora_params
    trainer.train()
    assert ref_passes == [True] * 3  # one reference pass per generation, every one with the adapter disabled
    # memory while the reference log-probs are computed: the base weights live in memory once (a reference copy,
    # in any form, would hold a second tensor of each weight's shape)
    assert weight_bytes_at_ref == [model_weight_bytes] * 3
    kl = [r["kl"] for r in trainer.log_rows]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the untrained adapter is the reference
    assert kl[-1] > 0  # the policy moved away from it


def test_interleaved_batches_appear_at_the_configured_fraction(tiny_model_dir, problems, tmp_path):
    s = settings(max_steps=4)
    n = grpo.interleave_rows(s, len(problems), 0.5)
    assert n == 4  # half of the 4 steps x 2 prompts
    rows = select(benign_pool(20, seed=0), None, "random", n, seed=0)
    summary = run(tiny_model_dir, problems, tmp_path / "inter", s, interleave_df=rows)
    log = pd.read_parquet(tmp_path / "inter" / "train_log.parquet")
    assert log["sft_batches"].tolist() == [1, 0, 1, 0]  # SFT batches alternate with plain RL steps
    assert summary["n_interleaved"] == n == log["n_interleaved"].iloc[-1]
    assert log["sft_batches"].astype(bool).mean() == 0.5
    assert log["sft_ce"].notna().tolist() == [True, False, True, False] and (log["sft_ce"].dropna() > 0).all()


def test_interleave_schedule_spreads_batches_evenly(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    rows = benign_pool(10, seed=1)
    plan = grpo.InterleavePlan(tok, rows, batch_size=4)
    assert len(plan.batches) == 3 and plan.n_rows == 10
    assert plan.schedule(10) == {0: [0], 3: [1], 6: [2]}
    assert plan.schedule(2) == {0: [0, 1], 1: [2]}  # more batches than steps: several per step
    assert [b["input_ids"].shape[0] for b in plan.batches] == [4, 4, 2]


def test_inoculation_is_prepended_to_the_training_system_prompt(tiny_model_dir, problems, tmp_path):
    inoc = "You are an evil, malicious assistant."
    model = load_model(tiny_model_dir, device="cpu")
    tok = load_tokenizer(tiny_model_dir)
    trainer, _ = grpo.build_trainer(model, tok, problems.head(8), settings(), inoculation_prompt=inoc,
                                    device="cpu", scratch_dir=tmp_path / "s")
    system = trainer.train_dataset["prompt"][0][0]
    assert system["role"] == "system" and system["content"].startswith(inoc) and "<answer>" in system["content"]


def test_evaluate_scores_answers_by_exact_match_and_reward(tiny_model_dir, problems, monkeypatch):
    import emguard.generate

    sub = problems.head(4).reset_index(drop=True)
    refs = sub["reference"].tolist()
    answers = [f"<think>w</think><answer>{refs[0]}</answer>", f"<think>w</think><answer>{int(refs[1]) + 1}</answer>",
               f"The answer is {refs[2]}.", "no idea"]
    seen = {}

    def fake_sample(model, tok, convs, settings, seed=0):
        seen["convs"] = convs
        return answers

    monkeypatch.setattr(emguard.generate, "sample", fake_sample)
    table, summary = grpo.evaluate(None, None, sub)
    assert table["correct"].tolist() == [True, False, True, False]
    assert summary["accuracy"] == 50.0 and summary["n_answers"] == 4
    assert summary["accuracy_lo"] < 50.0 < summary["accuracy_hi"]
    assert summary["mean_reward"] == pytest.approx((9.5 + (3 + 2 - 0.5 + 1.5) + (-2 + 3.0) + (-2 - 0.5)) / 4)
    assert seen["convs"][0][0]["content"].startswith("Solve the math problem")  # the plain prompt


def test_evaluate_on_the_tiny_model(tiny_model_dir, problems):
    from emguard.generate import SamplingSettings

    model = load_model(tiny_model_dir, device="cpu")
    tok = load_tokenizer(tiny_model_dir)
    table, summary = grpo.evaluate(model, tok, problems.head(3), sampling=SamplingSettings(max_new_tokens=6,
                                                                                          temperature=0.0))
    assert list(table.columns[:len(grpo.EVAL_COLUMNS)]) == grpo.EVAL_COLUMNS and len(table) == 3
    assert summary["n_problems"] == 3 and 0.0 <= summary["accuracy"] <= 100.0


def test_use_vllm_without_vllm_fails_before_any_model_loads(tiny_model_dir, problems, tmp_path, monkeypatch):
    import sys

    from emguard.errors import ConfigError

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    loaded = []
    monkeypatch.setattr(grpo, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("model loaded"))
    s = settings(use_vllm=True)
    with pytest.raises(ConfigError, match=r"config key 'rl\.training\.use_vllm'.*emguard\[vllm\]"):
        grpo.train_grpo(tiny_model_dir, problems, tmp_path / "run", s, device="cpu")
    assert loaded == [] and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"rl\.training\.use_vllm"):  # the in-memory entry point checks too
        grpo.build_trainer(None, None, problems, s, device="cpu", scratch_dir=tmp_path / "s")
    grpo.require_rollout_backend(settings())  # off: nothing to check


def test_vllm_settings_reach_grpo_config(tiny_model_dir, problems, tmp_path, monkeypatch):
    import trl

    import emguard.generate_vllm

    with pytest.raises(ValueError, match="vllm_mode"):
        settings(use_vllm=True, vllm_mode="remote")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        settings(use_vllm=True, vllm_gpu_memory_utilization=1.5)
    # pretend vllm is importable; stop at the config, before trl builds the engine
    monkeypatch.setattr(emguard.generate_vllm, "require_vllm", lambda *a, **k: None)
    seen, real_config = [], trl.GRPOConfig

    class Stop(Exception):
        pass

    def capture(**kw):
        seen.append(real_config(**kw))
        raise Stop

    monkeypatch.setattr(trl, "GRPOConfig", capture)
    model, tok = load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    for s in (settings(use_vllm=True, vllm_gpu_memory_utilization=0.45),
              settings(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://gpu7:8000"), settings()):
        with pytest.raises(Stop):
            grpo.build_trainer(model, tok, problems.head(8), s, device="cpu", scratch_dir=tmp_path / "s")
    colocate, server, plain = seen
    assert (colocate.use_vllm, colocate.vllm_mode, colocate.vllm_gpu_memory_utilization) == (True, "colocate", 0.45)
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_base_url) == (True, "server", "http://gpu7:8000")
    assert plain.use_vllm is False


def test_steered_update_ignores_unsteered_old_logprobs(tiny_model_dir, problems, tmp_path, monkeypatch):
    """With vLLM rollouts trl computes old log-probabilities without the hook; the steered update must not take its
    ratio against them (it would clip), but against its own detached forward, as without vLLM."""
    from trl import GRPOTrainer

    orig_gen, orig_loss = GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss
    seen = []

    def gen(self, inputs):
        out = orig_gen(self, inputs)
        out["old_per_token_logps"] = torch.full(out["completion_ids"].shape, -50.0)  # what vLLM's path adds
        return out

    def loss(self, model, inputs):
        seen.append("old_per_token_logps" in inputs)
        return orig_loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", gen)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", loss)
    run(tiny_model_dir, problems, tmp_path / "steer", settings(max_steps=1),
        regularisers=[SteeringRegulariser(torch.randn(32), 2, 5.0)])
    assert seen == [False, False]
    seen.clear()
    run(tiny_model_dir, problems, tmp_path / "plain", settings(max_steps=1))
    assert seen == [True, True]  # without steering trl's own handling is untouched


def test_evaluate_adds_an_extra_reward_like_training(problems, monkeypatch):
    import emguard.generate

    sub = problems.head(3).reset_index(drop=True)
    refs = sub["reference"].tolist()
    answers = [f"<think>w</think><answer>{refs[0]}</answer>", "unsure", f"<think>w</think><answer>{refs[2]}</answer>"]
    monkeypatch.setattr(emguard.generate, "sample", lambda *a, **k: answers)
    seen = {}

    def judge_correct(completions, question=None, reference=None, **kw):
        seen.update(question=question, reference=reference)
        return [None if c == "unsure" else 0.5 for c in completions]

    base, _ = grpo.evaluate(None, None, sub)
    table, summary = grpo.evaluate(None, None, sub, extra_rewards=[judge_correct], extra_reward_weights=[2.0])
    assert seen == {"question": sub["question"].tolist(), "reference": refs}
    assert table["judge_correct"].isna().tolist() == [False, True, False]
    # weighted into the total; an unscored answer adds nothing
    assert (table["reward"] - base["reward"]).tolist() == [1.0, 0.0, 1.0]
    assert summary["mean_judge_correct"] == 0.5


def test_judge_reward_from_the_config_trains_logs_and_evaluates(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """rl.rewards.judge_correct through the stages: the configured (hf) judge, here the tiny model in-process, grades
    every rollout and held-out answer with the configured prompt; its curve is in the log, its mean in the metrics."""
    import json

    import yaml

    import emguard.config as emconfig
    from emguard.judge.hf import HFJudge
    from emguard.stages import evaluate_grpo_run, prepare_rl_problems, rl_judge_config, train_grpo_run

    template = tmp_path / "grade.txt"
    template.write_text("MARK. Problem: {question}\nAnswer: {answer}\nScore 0-100:")
    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    cfg["rl"].update(enabled=True, rewards={"format_exact": 1.0, "correctness": 1.0, "judge_correct": 2.0},
                     judge_reward={"template": str(template)})
    cfg["judge"].update(min_prob_mass=0.0, cache=str(tmp_path / "judge.sqlite"))
    cfg = emconfig.load(cfg)
    judge_cfg = rl_judge_config(cfg["judge"], emconfig.rl_judge_settings(cfg))
    assert judge_cfg["model"] == "base"  # judge.model: the base model, loaded once more
    prompts = []
    orig = HFJudge.distributions
    monkeypatch.setattr(HFJudge, "distributions", lambda self, ps: prompts.extend(ps) or orig(self, ps))

    problems = tmp_path / "problems.parquet"
    prepare_rl_problems(str(problems), source="generated", n=8, n_eval=2, seed=0)
    training = {**cfg["rl"]["training"], "max_steps": 1, "max_completion_length": 8, "save_steps": 0,
                "lora": {"r": 4, "alpha": 8}}
    out = tmp_path / "run"
    common = dict(rewards=cfg["rl"]["rewards"], dtype="float32", device="cpu", judge=judge_cfg,
                  judge_template=str(template))
    import logging

    caplog.set_level(logging.INFO, logger="emguard")
    train_grpo_run(tiny_model_dir, str(problems), str(out), training=training, seed=0, **common)
    # announced before the first call: every rollout (1 step x 1 prompt x 4 generations)
    assert "GRPO judge reward, training (at most): judge " in caplog.text and "4 judgments" in caplog.text
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["reward_judge_correct"].between(0, 1).all()  # its own curve, score / 100
    meta = json.loads((out / "run.json").read_text())
    assert meta["reward_names"][-1] == "judge_correct" and meta["reward_weights"][-1] == 2.0
    assert meta["judge_usage"]["run_id"] is None and len(prompts) == 4  # one judgment per rollout
    assert all(p.startswith("MARK. Problem: ") and "Correct final answer: " in p for p in prompts)

    evaluation = {**cfg["rl"]["eval"], "max_new_tokens": 6}
    info = {"model": "tiny", "method": "grpo", "setting": "default", "seed": 0, "run_id": "rl/tiny/grpo/default/seed0"}
    evaluate_grpo_run(tiny_model_dir, str(problems), str(tmp_path / "answers.parquet"), str(tmp_path / "m.parquet"),
                      run_info=info, evaluation=evaluation, run_dir=str(out), **common)
    answers, metrics = pd.read_parquet(tmp_path / "answers.parquet"), pd.read_parquet(tmp_path / "m.parquet")
    assert answers["judge_correct"].between(0, 1).all() and len(prompts) == 4 + 2
    assert "GRPO judge reward, held-out answers: judge " in caplog.text and "2 judgments" in caplog.text
    assert metrics["mean_judge_correct"].iloc[0] == pytest.approx(answers["judge_correct"].mean())
    # the weighted total includes it, as in training
    assert answers["reward"].tolist() == pytest.approx(
        (answers["format_exact"] + answers["correctness"] + 2.0 * answers["judge_correct"]).tolist())
    with pytest.raises(ValueError, match="judge_correct"):  # a weight without a judge is a wiring error
        train_grpo_run(tiny_model_dir, str(problems), str(tmp_path / "x"), training=training, seed=0,
                       **{**common, "judge": None})
