"""What machine a figure was measured on: every speed report names its CPU and core count.

CPUs differ where it matters here: native bf16 (AMX, AVX512-BF16) decides whether mixed
precision helps or hurts (:mod:`emorec.precision`), and VNNI decides which int8 kernels
onnxruntime uses (:mod:`emorec.quantize`). A timing is only comparable with one from a CPU that
has the same flags.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

#: /proc/cpuinfo flags that change training or inference speed of this project's models.
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, set[str] | None]:
    """The CPU model name and its flags from Linux's /proc/cpuinfo (None, None elsewhere)."""
    if not path.is_file():
        return None, None
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields["flags"].split()) if "flags" in fields else None
    return fields.get("model name"), flags


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, cores torch uses and may use, and the speed-relevant flags (None = unknown)."""
    model, flags = read_cpuinfo(path)
    return {
        "model_name": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "flags": {f: (f in flags) if flags is not None else None for f in CPU_FLAGS},
    }


def describe(info: dict[str, Any]) -> str:
    """One line for READMEs and logs: ``AMD EPYC, 2 cores, avx512_bf16 avx512_vnni``."""
    present = [f for f, on in info["flags"].items() if on and f not in ("avx2", "avx512bw")]
    return f"{info['model_name']}, {info['logical_cores']} cores" + (
        f" ({' '.join(present)})" if present else "")
