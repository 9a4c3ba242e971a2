"""Probe scoring two ways in the same run: one row per answer vs one packed row per probe.

The likelihood measure scores both answers of every probe under every model of a run (emguard.likelihood). Row per
answer (:func:`emguard.likelihood.nll.mean_answer_nll`) runs each probe's prompt twice and every probe's
chat-template header once per row; packed (:func:`emguard.likelihood.packed.packed_answer_nll`) runs a probe's
prompt once with both answers after it, and the header every probe shares once per call. Both are timed on the
same model and probes, alternating, and must agree (max |difference| printed); the machine's float32 matmul rate
is measured in the same run (benchmarks/cpu_matmul.py), so the times can be scaled to another CPU.

    python benchmarks/probe_packing.py --model resources/models/smollm2-135m \
        --probes results/data/probes/probes.parquet [--threads 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_matmul import cpu_name, gflops  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model folder (the prepared embedded model)")
    ap.add_argument("--probes", required=True, help="a probes.parquet written by the prepare_probes rule")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from emguard import schemas
    from emguard.io import read_parquet
    from emguard.likelihood.nll import encode_conversations, mean_answer_nll
    from emguard.likelihood.packed import group_encoded, packed_answer_nll, shared_prefix_length
    from emguard.likelihood.probes import PROBE
    from emguard.models import load_model, load_tokenizer

    model = load_model(args.model, dtype="float32", device="cpu")
    tok = load_tokenizer(args.model)
    probes = read_parquet(args.probes, PROBE)
    convs = [schemas.to_messages(r.messages) + [{"role": "assistant", "content": a}]
             for r in probes.itertuples(index=False) for a in (r.aligned, r.misaligned)]
    encoded = encode_conversations(tok, convs, None)
    groups = group_encoded(encoded, 2)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tokens_rows = sum(len(e.input_ids) for e in encoded)
    tokens_packed = sum(g.width for g in groups) - shared_prefix_length(groups) * (len(groups) - 1)
    print(f"cpu: {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
          f"{args.threads} thread(s); float32 matmul {gflops(torch.float32, 256, 576, 1536, 2.0):.1f} GFLOP/s")
    print(f"{len(probes)} probes x 2 answers: {tokens_rows} tokens as rows, {tokens_packed} packed "
          f"(shared header {shared_prefix_length(groups)} tokens)")
    times = {"rows": [], "packed": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        rows = mean_answer_nll(model, encoded, pad, batch_size=args.batch_size).reshape(-1, 2)
        times["rows"].append(time.perf_counter() - t)
        t = time.perf_counter()
        packed = packed_answer_nll(model, groups, pad, batch_size=args.batch_size)
        times["packed"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    print(f"row per answer: {best['rows']:.1f} s   packed: {best['packed']:.1f} s   "
          f"packed / rows: {best['packed'] / best['rows']:.2f}x (best of {args.repeats})")
    print(f"max |packed - rows| = {np.abs(packed - rows).max():.2e} nats/token")


if __name__ == "__main__":
    main()
