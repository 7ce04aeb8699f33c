"""Running stage scripts (or any Python entry point) in a subprocess, as DVC runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"


def run_python(args: list[str], cwd: Path | None = None, timeout: float = 300, **env: str
               ) -> subprocess.CompletedProcess:
    """``python *args`` with captured text output; one OpenMP thread, no DVC analytics."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
