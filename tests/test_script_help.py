"""Every script in scripts/ and benchmarks/ explains itself and names a wrong argument.

``--help`` must say what the script writes and how long it takes (on 2 cores, where it depends on
the machine); a wrong argument must be one line that names it, not a usage block.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from stagerun import REPO

SCRIPTS = sorted(p for folder in ("scripts", "benchmarks") for p in (REPO / folder).glob("*.py")
                 if p.name != "serve_locustfile.py")  # Locust's users, run by serve_load.py


#: Runs one script twice in one interpreter (its imports load once): --help, then a wrong option.
_BOTH = """
import contextlib, io, json, runpy, sys
script, result = sys.argv[1], {}
sys.path.insert(0, script.rsplit("/", 1)[0])  # as `python script.py` would
for name, argv in (("help", ["--help"]), ("wrong", ["--no-such-option"])):
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    result[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(result))
"""


def _run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help_says_what_it_writes_and_how_long_and_errors_are_one_line(script: Path):
    done = subprocess.run([sys.executable, "-c", _BOTH, str(script)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    code, out, err = result["help"]
    assert code == 0, err[-500:]
    text = " ".join(out.split())
    assert re.search(r"\b[Ww]rites?\b", text), "--help does not say what it writes"
    assert re.search(r"2 cores|any machine|under a second", text), "--help gives no duration"

    code, _, err = result["wrong"]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-500:]
    assert lines[0].startswith(f"{script.name}: error:")
    assert "--no-such-option" in lines[0] or "required" in lines[0]


def test_the_locust_file_says_it_is_no_command():
    done = _run(REPO / "benchmarks/serve_locustfile.py", "--help")
    assert done.returncode == 1 and "not a command" in done.stderr
