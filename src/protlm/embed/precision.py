"""Precision by capability: which of fp32 / bf16 / fp16 / int8 an embedder may run in here, and how.

* **Probe** (:func:`bf16_capable`): a GPU says so itself (``torch.cuda.is_bf16_supported``); a CPU
  has fast bf16 matmuls only with the ``avx512_bf16`` (AMD Zen 4+, Intel Cooper Lake / Sapphire
  Rapids+) or ``amx_bf16`` (Intel Sapphire Rapids+) instructions — elsewhere torch emulates bf16
  and it runs slower than fp32. The flags come from ``/proc/cpuinfo`` (Linux) or, where there is
  none, from torch's own CPU probe.
* **Resolution** (:func:`resolve_dtype`): ``--dtype auto`` → bf16 where the device has it (and the
  backend measured it faster), else fp32; ``bf16`` on a CPU without the instructions and ``fp16``
  on any CPU are refused with one line (:class:`~protlm.errors.ConfigError` naming ``dtype`` as the
  user gave it: ``--dtype`` or the config field; exit 2); ``--int8``
  is its own precision and does not combine with bf16.
* **int8** (:func:`quantize_int8`): dynamic int8 of the ``nn.Linear`` layers with
  ``torch.ao.quantization.quantize_dynamic``. torch marks that API deprecated in favour of
  torchao; torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` was measured side by side on
  this project's CPU (benchmarks/bench_precision.py, docs/benchmarks.md "CPU precision") and ran
  slower than the old API — slower even than bf16 — so protlm keeps the old API while torch ships
  it, and filters exactly its two deprecation warnings around the call (the reason is
  documented in docs/embedding.md, "Precision"; nothing else is filtered).

How a backend applies bf16 on a CPU is its own (measured) choice: the Hugging Face backend runs
the fp32 model under bf16 autocast (matmuls in bf16; layer norms, softmax and the residual stream
in fp32), the UniRep backend runs its recurrent GEMMs in bf16 with fp32 states. Outputs are
float32 either way.
"""

from __future__ import annotations

import functools
import warnings

from protlm.errors import ConfigError

#: CPU flags (as /proc/cpuinfo names them) that make bf16 matmuls faster than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

NO_CPU_BF16 = ("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16); bf16 would run emulated, slower "
               "than fp32")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags: /proc/cpuinfo's ``flags`` line; without one (macOS, Windows), the
    bf16 flags torch's own probe reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    found = set()
    try:
        import torch

        probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
        for flag, name in probes.items():
            probe = getattr(torch.cpu, name, None)
            if probe is not None and probe():
                found.add(flag)
    except ImportError:
        pass
    return frozenset(found)


def cpu_bf16() -> tuple[bool, str]:
    """(True, "") where this CPU has fast bf16 matmuls, else (False, the reason)."""
    if cpu_flags() & set(CPU_BF16_FLAGS):
        return True, ""
    return False, NO_CPU_BF16


def bf16_capable(device: str) -> tuple[bool, str]:
    """Whether bf16 is fast on ``device`` ("cpu", "cuda", "cuda:N"), and the reason when it is not."""
    if str(device).startswith("cuda"):
        import torch

        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "" if ok else "this GPU has no bf16 support"
    return cpu_bf16()


def resolve_dtype(requested: str, device, *, int8: bool = False, auto_bf16: bool = True) -> str:
    """The precision an embedder runs in: "fp32", "bf16" or "fp16" for ``requested`` (fp32 | bf16 |
    fp16 | auto) on ``device`` (a torch.device or its name).

    ``auto``: bf16 where :func:`bf16_capable` says the device has it and the backend found it
    faster (``auto_bf16``; with ``int8`` the base stays fp32), else fp32. On a CPU, bf16 without
    the instructions and fp16 are refused; ``int8`` does not combine with bf16/fp16 on a CPU.
    GPUs keep every dtype (their support is the GPU's business, as before).
    """
    kind = getattr(device, "type", str(device).split(":")[0])
    if requested == "auto":
        if int8:
            return "fp32"
        return "bf16" if auto_bf16 and bf16_capable(str(device))[0] else "fp32"
    if requested == "fp32" or kind != "cpu":
        return requested
    if requested == "fp16":
        raise ConfigError("fp16 is for GPUs (CPUs have no fast fp16 matmuls); on a CPU use bf16 (CPUs with "
                          "avx512_bf16 / amx_bf16), fp32, auto, or int8 quantisation", option="dtype")
    if int8:
        raise ConfigError(f"{requested} and int8 are two precisions; choose one (dtype auto picks the fastest "
                          f"accurate precision of this machine)", option="dtype")
    ok, why = cpu_bf16()
    if not ok:
        raise ConfigError(f"{requested}: {why}; use fp32 (or auto, which picks the fastest accurate precision of "
                          f"this machine)", option="dtype")
    return requested


def quantize_int8(model):
    """``model`` with its ``nn.Linear`` layers dynamically quantised to int8 (weights per tensor,
    activations per batch): ``torch.ao.quantization.quantize_dynamic``, kept on purpose (see the
    module docstring); only its own deprecation warnings are filtered, by message."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
