"""Which floating-point precision to compute in, decided once for training, evaluation and XAI.

bf16 autocast is only a win where the hardware multiplies bf16 natively. On a CPU without it
(no AMX, no AVX512-BF16) PyTorch emulates bf16 and the same training runs about 1.8x *slower*
than float32, so ``amp: auto`` (the default) picks:

* CUDA: bf16 where the GPU supports it, else fp16 (with a ``GradScaler`` in training);
* CPU with AMX or AVX512-BF16: bf16;
* any other CPU: float32.

``amp: true`` forces mixed precision (``amp_dtype``), ``amp: false`` forces float32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

#: CPU feature flags (``/proc/cpuinfo`` names) that mean native bf16 arithmetic.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU can do natively, as torch sees it (fake it in tests)."""

    avx512_bf16: bool
    amx: bool

    @classmethod
    def detect(cls) -> CpuFeatures:
        return cls(avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
                   amx=bool(torch.cpu._is_amx_tile_supported()))

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (``None`` = float32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def resolve_precision(amp: bool | str, amp_dtype: str, device: torch.device,
                      cpu: CpuFeatures | None = None) -> Precision:
    """The precision for ``device`` under the ``amp`` setting (``auto``, true or false)."""
    if amp is False or amp == "false":
        return Precision(None, "amp: false")
    if amp is True or amp == "true":
        if amp_dtype == "float16" and device.type != "cuda":
            return Precision(torch.bfloat16, "amp: true; float16 needs CUDA, bfloat16 instead")
        return Precision(getattr(torch, amp_dtype), "amp: true")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "amp: auto; the GPU has native bf16")
        return Precision(torch.float16, "amp: auto; fp16 with a GradScaler (no bf16 on this GPU)")
    cpu = cpu or CpuFeatures.detect()
    if cpu.native_bf16:
        kind = "AMX" if cpu.amx else "AVX512-BF16"
        return Precision(torch.bfloat16, f"amp: auto; the CPU has native bf16 ({kind})")
    return Precision(None, "amp: auto; the CPU has no native bf16 (no AMX, no AVX512-BF16), "
                           "where bf16 autocast is slower than float32")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``device``; ``dtype=None`` means full float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
