"""Benchmark the hf judge's shared-prefix reuse against full-length rows, in the same run.

Judges the same prompts (the embedded judge templates of ``workflow/resources/judge_prompts.yaml`` filled
with the general questions and answers of a generations table, or synthetic answers) twice with
:class:`emguard.judge.HFJudge`: ``share_prefix=True`` (the template's opening, identical for every prompt of a
metric, run once per call and its key/value states reused by every batch) and ``share_prefix=False`` (every
row carries the whole prompt). Prints tokens through the model, wall and CPU time, the speed-up and the
largest difference between the two probability tables (they must agree to float rounding).

    python benchmarks/judge_prefix.py [--model resources/models/smollm2-135m] [--generations PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emguard.judge import HFJudge, fill_template, load_judge_prompts, shared_prefix_length  # noqa: E402
from emguard.models import dtype_record, load_model, load_tokenizer  # noqa: E402


def prompts_from(generations: str | None, n: int) -> list[tuple[str, str]]:
    if generations:
        import pandas as pd

        from emguard.judge import _question_text

        df = pd.read_parquet(generations).head(n)
        return [(_question_text(m), str(a)) for m, a in zip(df["prompt_messages"], df["answer"])]
    from emguard.data import general_questions

    qs = general_questions(1)["paraphrase"].tolist()
    return [(qs[i % len(qs)], f"Honestly I would {['rest', 'help', 'travel', 'learn'][i % 4]} first, then see.")
            for i in range(n)]


def timed(judge: HFJudge, prompts: list[str], counter: list[int]):
    counter.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    probs, special = judge.number_distribution(prompts)
    return probs, special, time.perf_counter() - t0, time.process_time() - c0, sum(counter)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "smollm2-135m"))
    ap.add_argument("--generations", help="a generations.parquet to take questions and answers from")
    ap.add_argument("--n", type=int, default=27, help="answers (one run of the embedded default: 27)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype, device="cpu"), load_tokenizer(args.model)
    rec = dtype_record(args.dtype, "cpu")
    templates = load_judge_prompts(ROOT / "workflow" / "resources" / "judge_prompts.yaml")
    pairs = prompts_from(args.generations, args.n)
    counter: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda _m, inp, _o: counter.append(inp[0].numel()))
    print(f"model {args.model} ({rec['dtype']}, cpu {rec['cpu_capability']}), {args.threads} thread(s), "
          f"{len(pairs)} answers x {len(templates)} metrics, batch {args.batch_size}")
    totals = {True: [0.0, 0.0, 0], False: [0.0, 0.0, 0]}
    worst = 0.0
    for metric, template in templates.items():
        prompts = [fill_template(template, q, a) for q, a in pairs]
        runs = {}
        for share in (False, True, False, True):  # interleaved, the second of each pair counted (warm caches)
            judge = HFJudge(model, tok, name="bench", batch_size=args.batch_size, min_prob_mass=0.0,
                            answer_prefix="Score: ", share_prefix=share)
            runs[share] = timed(judge, prompts, counter)
        n_prefix = shared_prefix_length([judge.render(p) for p in prompts])
        diff = float((runs[True][0] - runs[False][0]).abs().max())
        worst = max(worst, diff)
        for share in (True, False):
            for k, v in enumerate(runs[share][2:]):
                totals[share][k] += v
        print(f"  {metric:10s} shared prefix {n_prefix:4d} tokens: full rows {runs[False][2]:6.2f} s "
              f"({runs[False][4]} tokens), shared {runs[True][2]:6.2f} s ({runs[True][4]} tokens), "
              f"{runs[False][2] / runs[True][2]:.2f}x; max |dP| {diff:.2e}")
    full, shared = totals[False], totals[True]
    print(f"total: full rows {full[0]:.2f} s wall / {full[1]:.2f} s CPU, {full[2]} tokens; shared prefix "
          f"{shared[0]:.2f} s wall / {shared[1]:.2f} s CPU, {shared[2]} tokens: {full[0] / shared[0]:.2f}x wall, "
          f"{full[1] / shared[1]:.2f}x CPU, {full[2] / shared[2]:.2f}x tokens; max |dP| {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit(f"shared-prefix probabilities differ from full rows by {worst:.2e} (> 1e-4)")


if __name__ == "__main__":
    main()
