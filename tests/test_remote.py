"""The DVC S3 remote configured in .dvc/config, against a real S3 server (moto) on loopback.

A small DVC repo in a temp dir gets the committed .dvc/config (remote ``storage``, the default)
and only the endpoint override a developer would put in the git-ignored .dvc/config.local.
Credentials come from the environment, as in production. The test pushes a tracked folder and a
pipeline stage's outputs, kills a push half-way, checks that the next push completes, then wipes
the cache and outputs, pulls, and compares every file and every object hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from configobj import ConfigObj

from emorec.serving import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N_RAW_FILES = 240  # enough objects that a one-job push is still running when it is killed

pytestmark = pytest.mark.slow

SUMMARIZE = """\
import hashlib, pathlib
raw = sorted(pathlib.Path("data/raw").rglob("*.bin"))
out = pathlib.Path("out")
out.mkdir(exist_ok=True)
lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.as_posix()}" for p in raw]
(out / "manifest.txt").write_text("\\n".join(lines) + "\\n")
(out / "joined.bin").write_bytes(b"".join(p.read_bytes()[::-1] for p in raw))
"""


def _remote_url() -> tuple[str, str]:
    """Bucket and prefix of the default remote in the committed .dvc/config."""
    config = ConfigObj(str(REPO / ".dvc" / "config"))
    name = config["core"]["remote"]
    url = config[f'remote "{name}"']["url"]
    assert url.startswith("s3://"), f".dvc/config: remote {name!r} is not on S3: {url}"
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Test credentials from the environment only; no user or system AWS/DVC config leaks in."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home),
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        DVC_NO_ANALYTICS="1", DVC_GLOBAL_CONFIG_DIR=str(home / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(home / "dvc-system"), DVC_SITE_CACHE_DIR=str(home / "dvc-site"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


@pytest.fixture(scope="module")
def s3(env) -> Iterator[tuple[str, object]]:
    """moto's standalone S3 server on a free loopback port, with the remote's bucket created."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:  # not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start on {endpoint}")
                time.sleep(0.2)
        client.create_bucket(Bucket=_remote_url()[0])
        yield endpoint, client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    run = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"dvc {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def tree_hashes(repo: Path, roots: list[str]) -> dict[str, str]:
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted((repo / root).rglob("*")) if p.is_file()}


def remote_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under the remote's prefix: key relative to the prefix -> content."""
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=f"{prefix}/") for obj in page.get("Contents", [])]
    return {k.removeprefix(f"{prefix}/"): client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in keys}


def count_remote(client, bucket: str, prefix: str) -> int:
    return sum(page.get("KeyCount", 0) for page in client.get_paginator("list_objects_v2")
               .paginate(Bucket=bucket, Prefix=f"{prefix}/"))


def cache_objects(repo: Path) -> set[str]:
    """Content-addressed objects of the local cache (the run-cache under runs/ stays local)."""
    cache = repo / ".dvc" / "cache"
    return {p.relative_to(cache).as_posix() for p in (cache / "files").rglob("*") if p.is_file()}


@pytest.fixture
def dvc_repo(tmp_path, env, s3) -> Path:
    """git + DVC repo: a `dvc add`-ed folder and a stage whose outputs come from `dvc repro`."""
    endpoint, _ = s3
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    dvc(repo, env, "init", "-q")
    shutil.copyfile(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the committed remote
    dvc(repo, env, "remote", "modify", "--local", "storage", "endpointurl", endpoint)

    raw = repo / "data" / "raw"
    for i in range(N_RAW_FILES):
        path = raw / f"part{i % 3}" / f"f{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha512(str(i).encode()).digest() * (1 + i % 40))
    dvc(repo, env, "add", "-q", "data/raw")
    (repo / "summarize.py").write_text(SUMMARIZE)
    dvc(repo, env, "stage", "add", "-q", "-n", "summarize", "-d", "summarize.py", "-d",
        "data/raw", "-o", "out", f"{sys.executable} summarize.py")
    dvc(repo, env, "repro", "-q")
    return repo


def test_committed_remote_config_has_no_credentials():
    config = ConfigObj(str(REPO / ".dvc" / "config"))
    assert config["core"]["remote"] == "storage"
    remote = config['remote "storage"']
    assert remote["url"].startswith("s3://")
    secret_keys = {"access_key_id", "secret_access_key", "session_token", "credentialpath"}
    assert not secret_keys & set(remote), "credentials must come from the environment"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO)
    assert ignored.returncode == 0, ".dvc/config.local must be git-ignored"


def test_push_survives_a_killed_push_and_pull_restores_everything(dvc_repo, env, s3):
    _, client = s3
    bucket, prefix = _remote_url()
    repo = dvc_repo
    expected_files = tree_hashes(repo, ["data/raw", "out"])
    assert len(expected_files) == N_RAW_FILES + 2
    local_objects = cache_objects(repo)
    assert len(local_objects) >= N_RAW_FILES + 3  # raw files, the folder's .dir, stage outputs

    # 1. A push killed without warning part-way (a crash, a closed laptop, CI timeout).
    push = subprocess.Popen([str(BIN / "dvc"), "push", "-j", "1"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while count_remote(client, bucket, prefix) < 10 and push.poll() is None:
        assert time.monotonic() < deadline, "push uploaded nothing within 60 s"
        time.sleep(0.05)
    os.killpg(push.pid, signal.SIGKILL)
    push.wait(timeout=10)
    assert push.returncode == -signal.SIGKILL, "push finished before it could be interrupted"
    partial = count_remote(client, bucket, prefix)
    assert 0 < partial < len(local_objects)
    missing = {line.split(":", 1)[1].strip()
               for line in dvc(repo, env, "status", "-c").splitlines()
               if line.strip().startswith("new:")}
    assert missing, "status -c must name what is not on the remote yet"
    assert all(any(f == m or f.startswith(f"{m}/") for f in expected_files) for m in missing)

    # 2. The next push uploads the rest, and only the rest.
    out = dvc(repo, env, "push")
    pushed = int(re.search(r"(\d+) files? pushed", out).group(1))
    assert 0 < pushed <= len(local_objects) - partial + 1  # +1: an upload cut off mid-request
    assert "in sync" in dvc(repo, env, "status", "-c")

    # 3. Every object on the remote is the local cache's, byte for byte (content md5 == key).
    remote = remote_objects(client, bucket, prefix)
    assert set(remote) == local_objects
    for key, body in remote.items():
        digest = key.removeprefix("files/md5/").replace("/", "").removesuffix(".dir")
        assert hashlib.md5(body).hexdigest() == digest, key

    # 4. Lose the cache and every output; pull brings all of them back identical.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / "out")
    dvc(repo, env, "pull")
    assert tree_hashes(repo, ["data/raw", "out"]) == expected_files
    assert cache_objects(repo) == local_objects
    status = dvc(repo, env, "status")
    assert "up to date" in status.lower(), status
