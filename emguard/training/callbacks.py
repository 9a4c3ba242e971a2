"""Training callbacks and adapter saving shared by SFT (:mod:`.sft`) and GRPO (:mod:`.grpo`): the adapter written
atomically, and checkpoints every N steps or at listed steps (the monitor, :mod:`.monitor`, is a callback too)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from emguard.io import atomic_path


def save_adapter(model, path: Path) -> None:
    """A peft model's adapter (safetensors) at ``path``, written under a temporary name then renamed."""
    with atomic_path(path, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)


def checkpoint_callback(out_dir: Path, save_steps: int, steps: Sequence[int] = ()):
    """A ``TrainerCallback`` writing ``out_dir/checkpoints/step-<N>/`` adapters (see the class)."""
    from transformers import TrainerCallback

    steps = frozenset(steps)

    class _Checkpoints(TrainerCallback):
        """Writes ``out_dir/checkpoints/step-<N>/`` (adapter only) every ``save_steps`` optimiser steps and at each
        of ``steps``; a listed step at or after the run's last one stops the run before its first step (the DAG
        expects that checkpoint, and the last step is the final adapter)."""

        def on_train_begin(self, args, state, control, **kwargs):
            late = sorted(s for s in steps if s >= state.max_steps)
            if late:
                raise ValueError(f"TrainSettings.checkpoint_steps (config checkpoints.steps): step(s) "
                                 f"{', '.join(map(str, late))} not before the run's last step ({state.max_steps}); "
                                 "the final adapter is the last checkpoint")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if (save_steps and state.global_step % save_steps == 0) or state.global_step in steps:
                save_adapter(model, out_dir / "checkpoints" / f"step-{state.global_step}")

    return _Checkpoints()


@contextlib.contextmanager
def run_folder(out_dir: str | os.PathLike, prefix: str):
    """A training run's folder, made ready: created, stale ``checkpoints/`` of an earlier run removed, and a scratch
    folder for the trainer's own files under it (yielded, then deleted whatever happens)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # stale checkpoints of an earlier run
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train_and_save(trainer, out_dir: Path):
    """``trainer.train()``, timed, then the adapter saved to ``out_dir/adapter``: ``(train result, seconds)``."""
    t0 = time.perf_counter()
    result = trainer.train()
    runtime = time.perf_counter() - t0
    save_adapter(trainer.accelerator.unwrap_model(trainer.model), out_dir / "adapter")
    return result, runtime
