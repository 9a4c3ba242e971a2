"""model.dtype auto: bfloat16 only where the hardware runs it natively, float32 elsewhere."""

import pytest
import torch

from emguard.errors import ConfigError
from emguard.models import dtype_record, native_bf16_reason, resolve_dtype


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has (or lacks) AVX512-BF16 and AMX, as torch reports them."""
    def set_flags(avx512_bf16: bool, amx: bool, capability: str = "AVX512"):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    return set_flags


def test_auto_is_float32_on_a_cpu_without_native_bf16(cpu_flags):
    cpu_flags(avx512_bf16=False, amx=False)  # an AVX2-only CPU: bf16 matmuls are emulated there
    assert native_bf16_reason("cpu") is None
    assert resolve_dtype("auto", "cpu") == "float32"
    rec = dtype_record("auto", "cpu")
    assert rec["dtype"] == "float32" and rec["dtype_configured"] == "auto" and "no native bf16" in rec["dtype_reason"]


@pytest.mark.parametrize("avx512_bf16,amx,reason", [(True, False, "AVX512-BF16"), (False, True, "AMX"),
                                                      (True, True, "AMX")])
def test_auto_is_bfloat16_on_a_cpu_with_native_bf16(cpu_flags, avx512_bf16, amx, reason):
    cpu_flags(avx512_bf16=avx512_bf16, amx=amx)
    assert reason in native_bf16_reason("cpu")
    assert resolve_dtype("auto", "cpu") == "bfloat16"


def test_auto_is_float32_where_torch_runs_below_avx512(cpu_flags):
    """bf16 hardware, but torch's kernels held at AVX2 (ATEN_CPU_CAPABILITY=avx2): bf16 is emulated there."""
    cpu_flags(avx512_bf16=True, amx=True, capability="AVX2")
    assert resolve_dtype("auto", "cpu") == "float32"


def test_auto_on_a_gpu_takes_bf16_only_where_it_is_native(monkeypatch):
    """A pre-Ampere GPU 'supports' bf16 by emulation (torch's default check counts that): float32 there."""
    def supported(including_emulation: bool = True):
        return native or including_emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    native = False  # e.g. a V100 or T4
    assert resolve_dtype("auto", torch.device("cuda")) == "float32"
    native = True  # Ampere and later
    assert resolve_dtype("auto", torch.device("cuda")) == "bfloat16"


def test_an_explicit_dtype_is_kept_whatever_the_cpu(cpu_flags):
    cpu_flags(avx512_bf16=False, amx=False)
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"
    assert dtype_record("bfloat16", "cpu")["dtype_reason"] == "set in the config"


def test_a_bad_dtype_names_the_config_key():
    with pytest.raises(ConfigError, match=r"model\.dtype: 'fp8'"):
        resolve_dtype("fp8", "cpu")


def test_training_follows_auto(cpu_flags, tiny_model_dir):
    """The trainer's bf16 autocast follows the resolved dtype, not the literal string 'auto'."""
    import pandas as pd

    from emguard.models import load_model, load_tokenizer
    from emguard.training import TrainSettings, build_trainer

    rows = pd.DataFrame({"id": ["a"], "messages": [[{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello there"}]]})
    for flags, bf16 in (((False, False), False), ((True, False), True)):
        cpu_flags(*flags)
        model = load_model(tiny_model_dir, dtype="auto", device="cpu")
        assert model.dtype == (torch.bfloat16 if bf16 else torch.float32)
        trainer, _ = build_trainer(model, load_tokenizer(tiny_model_dir), rows,
                                   TrainSettings(dtype="auto", max_steps=1, batch_size=1, grad_accum=1), device="cpu")
        assert trainer.args.bf16 is bf16
