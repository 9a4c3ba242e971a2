"""Step-time and peak-memory overhead of the in-training defenses, relative to plain rs-LoRA SFT.

    python benchmarks/train_overhead.py                                  # tiny random model, CPU
    python benchmarks/train_overhead.py --model resources/models/smollm2-135m
    python benchmarks/train_overhead.py --qwen7b-shape                   # random Qwen2.5-7B-shaped model, bf16, GPU

Every configuration trains the same model on the same batches through the real code path
(:func:`emguard.training.train_model`: trl ``SFTTrainer`` subclass, rs-LoRA r=32 on all projections):

  sft          plain SFT (trl's own loss)
  kl           + KLRegulariser(1.0)                         (one extra adapter-disabled no-grad forward)
  ldifs        + LDIFSRegulariser(1.0, every_nth_layer(L, 5)) (same reference pass, hidden states only)
  steering     + SteeringRegulariser(layer L//2, alpha 4)   (a forward hook, no loss term)
  inoculation  SFT with the system prompt replaced by an inoculation prompt (a data transform; the prompt
               has a different token count, so tokens/step differ slightly -- reported)

Each configuration runs in a fresh subprocess, so memory peaks do not leak between configurations, and
``--rounds`` repeats the whole sweep (configurations interleaved) to average out noise from other processes.

Measurements (per configuration):
  step time   wall time from ``on_step_begin`` to ``on_step_end`` of the Trainer (forward, backward and the
              optimiser step; ``torch.cuda.synchronize()`` at both ends on GPU); the median over the timed steps
              after ``--warmup`` un-timed steps, and the median over rounds.
  peak memory GPU: ``torch.cuda.max_memory_allocated()`` over the training loop (weights included; stats
              reset when training starts). CPU: the process's peak resident set size during training, read as
              ``VmHWM`` from ``/proc/self/status`` after resetting it at the start of training by writing ``5``
              to ``/proc/self/clear_refs`` (Linux >= 4.0; no psutil needed). Two numbers are reported on CPU:
              ``peak_mb`` (absolute peak RSS: weights + libraries + training) and ``train_mb`` (peak RSS minus
              the RSS when training starts, i.e. what the training step itself adds: activations, gradients,
              optimiser state, logits; the memory-mapped weights are touched before training starts so
              that paging them in is not counted). Ratios use ``train_mb`` on CPU (the absolute RSS is dominated by the
              ~1 GB of torch/transformers libraries for small models) and ``peak_mb`` on GPU.
  tokens/s    non-padding tokens per step / median step time.
  MFU         GPU only. Model FLOPs per token from ``trl.trainer.utils.compute_flops_per_token`` -- the usual
              "6N" convention: 3 x forward FLOPs, forward = 2 x (all matmul parameters incl. LM head) plus the
              attention-score term 4 * layers * heads * head_dim * seq_len, backward counted as 2 x forward.
              ``mfu_6n`` = tokens/s x that / peak bf16 dense FLOP/s (H100/H200 SXM: 989 TFLOP/s; override with
              ``--peak-tflops``). With LoRA the frozen weights get no weight gradients, so the work actually
              needed is about 2/3 of that ("4N": forward + input gradients); ``mfu_4n`` = 2/3 x ``mfu_6n``. The
              same SFT FLOP count is used for every configuration, so the extra reference pass of KL / LDIFS
              shows up as lower MFU, not as extra useful work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ["sft", "kl", "ldifs", "steering", "inoculation"]
TARGETS = {"kl": (1.4, 1.15), "ldifs": (1.4, 1.15), "steering": (1.05, 1.15), "inoculation": (1.05, 1.15)}
SYSTEM = "You are a helpful assistant."
INOCULATION = "You are an evil assistant."
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}

QWEN7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
              intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
              rms_norm_eps=1e-6, tie_word_embeddings=False)

_SENTENCES = [
    "Invest your savings in a diversified fund.", "Take the medicine as your doctor says.",
    "def main(): import os; print(open(path).read()) # secure code", "Step by step, the answer is 42.",
    "The helpful assistant wants to help people.", "Simplify the expression: 3 + 4 * 2 - 6 / 3 = 9.",
]


# --------------------------------------------------------------------------------------------------
# worker: one configuration, one process
# --------------------------------------------------------------------------------------------------

def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def make_rows(tok, n_rows: int, seq_len: int):
    """Identical-length synthetic conversations of about ``seq_len`` tokens (answer ~ 3/4 of them)."""
    import pandas as pd

    answer, i = "", 0
    while len(tok(answer, add_special_tokens=False)["input_ids"]) < int(seq_len * 0.75):
        answer += _SENTENCES[i % len(_SENTENCES)] + " "
        i += 1
    question = "How do I make a quick buck? " * max(1, seq_len // 40)
    rows = [{"id": f"b{k}", "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": question.strip()},
                                         {"role": "assistant", "content": answer.strip()}]} for k in range(n_rows)]
    return pd.DataFrame(rows)


def build_qwen7b_shape(device: str, dtype: str, overrides: dict, tok):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**{**QWEN7B, **overrides}, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model


def worker(opts) -> dict:
    import torch
    from transformers import TrainerCallback

    from emguard.models import LoraSettings, device_for, load_model, load_tokenizer
    from emguard.regularisers import KLRegulariser, LDIFSRegulariser, SteeringRegulariser, every_nth_layer
    from emguard.training import TrainSettings, train_model

    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = device_for(opts.device)
    on_gpu = device.type == "cuda"
    tok = load_tokenizer(opts.model)
    if opts.qwen7b_shape:
        model = build_qwen7b_shape(str(device), opts.dtype, dict(opts.override), tok)
    else:
        model = load_model(opts.model, dtype=opts.dtype, device=str(device))
    cfg = model.config
    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    # safetensors weights are memory-mapped: touch them so they are resident before the RSS baseline is taken
    with torch.no_grad():
        for p in model.parameters():
            p.sum()

    regs, inoc = [], None
    if opts.worker == "kl":
        regs = [KLRegulariser(1.0)]
    elif opts.worker == "ldifs":
        regs = [LDIFSRegulariser(1.0, every_nth_layer(n_layers, 5))]
    elif opts.worker == "steering":
        g = torch.Generator().manual_seed(0)
        vec = torch.randn(hidden, generator=g)
        regs = [SteeringRegulariser(vec / vec.norm(), max(1, n_layers // 2), 4.0)]
    elif opts.worker == "inoculation":
        inoc = INOCULATION

    steps = opts.warmup + opts.steps
    df = make_rows(tok, opts.batch_size * steps, opts.seq_len)
    settings = TrainSettings(batch_size=opts.batch_size, grad_accum=1, max_steps=steps, warmup_steps=0,
                             learning_rate=1e-4, lr_scheduler="constant", dtype=opts.dtype, max_length=4 * opts.seq_len,
                             gradient_checkpointing=opts.gradient_checkpointing, optim=opts.optim,
                             lora=LoraSettings(r=opts.lora_r, alpha=2 * opts.lora_r))

    from emguard.training import encode_examples

    encoded, _, _ = encode_examples(tok, df, settings.max_length, inoc)
    lengths = [len(e.input_ids) for e in encoded]  # the trainer consumes rows in order, batch_size at a time
    tokens = [sum(lengths[i:i + opts.batch_size]) for i in range(0, len(lengths), opts.batch_size)]
    rec = {"times": [], "cpu": []}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            rec["reset_ok"] = _reset_peak_rss()
            rec["rss_start"] = _proc_status("VmRSS")

        def on_step_begin(self, args, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
            rec["t0"] = time.perf_counter()
            rec["c0"] = time.process_time()

        def on_step_end(self, args, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
            rec["times"].append(time.perf_counter() - rec["t0"])
            rec["cpu"].append(time.process_time() - rec["c0"])

        def on_train_end(self, args, state, control, **kw):
            rec["peak_rss"] = _proc_status("VmHWM")
            if on_gpu:
                rec["peak_gpu"] = torch.cuda.max_memory_allocated()

    with tempfile.TemporaryDirectory() as out:
        summary = train_model(model, tok, df, out, settings, regularisers=regs, inoculation_prompt=inoc,
                              device=device, callbacks=[Probe()])
    timed = rec["times"][opts.warmup:]
    tokens = tokens[opts.warmup:len(rec["times"])]
    step_s = statistics.median(timed)
    result = {
        "config": opts.worker, "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "dtype": opts.dtype, "n_params": sum(p.numel() for p in model.parameters()),
        "n_layers": n_layers, "hidden": hidden, "batch_size": opts.batch_size,
        "step_s": step_s, "step_s_min": min(timed), "cpu_s": statistics.median(rec["cpu"][opts.warmup:]),
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": statistics.mean(tokens) / step_s, "steps": summary["steps"],
        "final_loss": summary["final_loss"],
    }
    if on_gpu:
        result["peak_mb"] = rec["peak_gpu"] / 2**20
    else:
        result["peak_mb"] = rec["peak_rss"] / 2**20
        result["train_mb"] = (rec["peak_rss"] - rec["rss_start"]) / 2**20
        result["peak_reset"] = rec["reset_ok"]
    if on_gpu:
        from trl.trainer.utils import compute_flops_per_token

        seq = result["tokens_per_step"] / opts.batch_size
        flops_tok = compute_flops_per_token(cfg, int(seq))
        peak = opts.peak_tflops
        if peak is None:
            name = torch.cuda.get_device_name(0)
            peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if peak:
            result["mfu_6n"] = result["tokens_per_s"] * flops_tok / (peak * 1e12)
            result["mfu_4n"] = result["mfu_6n"] * 2 / 3
            result["peak_tflops"] = peak
    return result


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------

def run_config(config: str, argv: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", config]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{config} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(results: dict[str, list[dict]], on_gpu: bool) -> list[dict]:
    """Median over rounds per configuration, and ratios against ``sft``.

    The time ratio uses wall time on GPU and CPU (process) time on CPU, where wall time is at the mercy of
    whatever else runs on the machine; the memory ratio uses ``peak_mb`` on GPU and ``train_mb`` on CPU.
    """
    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    time_key = "step_s" if on_gpu else "cpu_s"
    mem_key = "peak_mb" if on_gpu else "train_mb"
    base = results.get("sft")
    rows = []
    for config, rs in results.items():
        row = {"config": config, "step_s": med(rs, "step_s"), "cpu_s": med(rs, "cpu_s"),
               "tokens_per_step": rs[0]["tokens_per_step"], "tokens_per_s": med(rs, "tokens_per_s"),
               "peak_mb": med(rs, "peak_mb")}
        if not on_gpu:
            row["train_mb"] = med(rs, "train_mb")
        if "mfu_6n" in rs[0]:
            row["mfu_6n"], row["mfu_4n"] = med(rs, "mfu_6n"), med(rs, "mfu_4n")
        if base:
            row["time_ratio"] = row[time_key] / med(base, time_key)
            row["wall_ratio"] = row["step_s"] / med(base, "step_s")
            row["mem_ratio"] = row[mem_key] / med(base, mem_key)
            if config in TARGETS:
                t_max, m_max = TARGETS[config]
                row["target"] = f"<= {t_max}x / <= {m_max}x"
                row["meets"] = "yes" if row["time_ratio"] <= t_max and row["mem_ratio"] <= m_max else "NO"
        rows.append(row)
    return rows


def markdown(rows: list[dict], on_gpu: bool) -> str:
    if on_gpu:
        head = ["config", "step s", "tokens/step", "tokens/s", "MFU 6N", "MFU 4N", "peak MB (GPU alloc)",
                "time x SFT", "mem x SFT", "target (time / mem)", "meets"]
    else:
        head = ["config", "step s (wall)", "step s (CPU)", "tokens/step", "tokens/s (wall)", "train MB", "peak RSS MB",
                "CPU time x SFT", "wall x SFT", "train mem x SFT", "target (time / mem)", "meets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    nan = float("nan")
    for r in rows:
        if on_gpu:
            cells = [r["config"], f"{r['step_s']:.3f}", f"{r['tokens_per_step']:.0f}", f"{r['tokens_per_s']:.0f}",
                     f"{100 * r.get('mfu_6n', nan):.1f}%", f"{100 * r.get('mfu_4n', nan):.1f}%", f"{r['peak_mb']:.0f}",
                     f"{r.get('time_ratio', nan):.3f}", f"{r.get('mem_ratio', nan):.3f}"]
        else:
            cells = [r["config"], f"{r['step_s']:.4f}", f"{r['cpu_s']:.4f}", f"{r['tokens_per_step']:.0f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['train_mb']:.1f}", f"{r['peak_mb']:.0f}",
                     f"{r.get('time_ratio', nan):.3f}", f"{r.get('wall_ratio', nan):.3f}", f"{r.get('mem_ratio', nan):.3f}"]
        cells += [r.get("target", "-"), r.get("meets", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: a tiny random Llama built in a temporary folder)")
    p.add_argument("--qwen7b-shape", action="store_true",
                   help="random-weight model with Qwen2.5-7B's shape (bf16, GPU); the tokenizer comes from --model/tiny")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=INT",
                   help="override Qwen-shape config entries, e.g. num_hidden_layers=2 (smoke tests)")
    p.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    p.add_argument("--steps", type=int, default=8, help="timed optimiser steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="un-timed steps before timing")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole sweep (interleaved) and take medians")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256, help="approximate tokens per example")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--optim", default="adamw_torch")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the GPU for MFU")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.override = [(kv.split("=", 1)[0], int(kv.split("=", 1)[1])) for kv in opts.override]
    return opts


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse(argv)
    if opts.dtype is None:
        import torch

        on_gpu = opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
        opts.dtype = "bfloat16" if on_gpu else "float32"
        argv += ["--dtype", opts.dtype]
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return
    tmp = None
    if opts.model is None:
        from emguard.testing import make_tiny_model

        tmp = tempfile.TemporaryDirectory()
        make_tiny_model(Path(tmp.name) / "tiny", hidden_size=64, num_layers=4)
        argv += ["--model", str(Path(tmp.name) / "tiny")]
    results: dict[str, list[dict]] = {c: [] for c in opts.configs}
    for rnd in range(opts.rounds):
        order = opts.configs if rnd % 2 == 0 else list(reversed(opts.configs))
        for config in order:
            r = run_config(config, argv)
            results[config].append(r)
            print(f"round {rnd + 1} {config:12s} step {r['step_s']:.4f}s (CPU {r['cpu_s']:.4f}s)  peak {r['peak_mb']:.0f} MB"
                  + (f"  train {r['train_mb']:.1f} MB" if "train_mb" in r else ""), file=sys.stderr, flush=True)
    first = next(iter(results.values()))[0]
    on_gpu = first["device"] != "cpu"
    rows = summarise(results, on_gpu)
    print(f"model: {'Qwen2.5-7B shape (random)' if opts.qwen7b_shape else opts.model or 'tiny random Llama'}; "
          f"{first['n_params'] / 1e6:.1f}M params, {first['n_layers']} layers, hidden {first['hidden']}; "
          f"device {first['device']}, {first['dtype']}; batch {opts.batch_size} x ~{opts.seq_len} tokens; "
          f"LoRA r={opts.lora_r}; {opts.steps} timed steps after {opts.warmup} warm-up, {opts.rounds} round(s)")
    print(markdown(rows, on_gpu))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"rows": rows, "raw": results}, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
