"""The container files, checked without a container engine (`make container-test` runs the image).

The Dockerfile's promises (numeric user, exec-form entrypoint, state volume, a HEALTHCHECK that is
a no-op unless DUVO_EXPORTER_HEALTH_URL is set), the .dockerignore allowlist against what the
Dockerfile copies, the container test's config, and the helper that passes the host's pip
configuration to the build without leaking it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def only(name: str) -> str:
    found = [args for word, args in instructions() if word == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def test_every_stage_builds_from_python_3_11_slim() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)


def test_runtime_user_is_numeric_so_run_as_non_root_can_check_it() -> None:
    assert only("USER") == "10001:10001"


def test_entrypoint_is_exec_form_so_signals_reach_the_exporter() -> None:
    assert json.loads(only("ENTRYPOINT")) == ["duvo-exporter"]
    assert json.loads(only("CMD")) == ["run"]


def test_state_is_a_volume_and_the_config_path_is_set() -> None:
    assert json.loads(only("VOLUME")) == ["/var/lib/duvo-exporter"]
    env = " ".join(args for word, args in instructions() if word == "ENV")
    assert "DUVO_EXPORTER_CONFIG=/etc/duvo-exporter/config.yaml" in env
    assert 'DUVO_EXPORTER_HEALTH_URL=""' in env


def test_dockerignore_is_an_allowlist_of_exactly_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything else (.git, .venv, var/, local configs) must stay out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    assert copied == allowed
    assert not allowed & {".git", ".venv", "var", "config", "tests"}


# ---- the HEALTHCHECK command, run as the image runs it -----------------------------------------


def healthcheck_code() -> str:
    args = only("HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + len("CMD") :].strip())
    assert command[:2] == ["python", "-c"], "slim images have no curl: the check is Python's"
    return command[2]


def healthcheck(url: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "DUVO_EXPORTER_HEALTH_URL"}
    if url is not None:
        env["DUVO_EXPORTER_HEALTH_URL"] = url
    return subprocess.run(
        [sys.executable, "-c", healthcheck_code()], env=env, capture_output=True, timeout=30
    ).returncode


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_is_a_healthy_no_op_without_a_url() -> None:
    assert healthcheck(None) == 0
    assert healthcheck("") == 0


def test_healthcheck_follows_the_server_answer(health_server: str) -> None:
    assert healthcheck(f"{health_server}/healthz") == 0
    assert healthcheck(f"{health_server}/unhealthy") != 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert healthcheck(f"http://127.0.0.1:{port}/healthz") != 0


# ---- the container test's own files -------------------------------------------------------------


def test_container_test_config_is_valid_and_keeps_everything_on_the_volume() -> None:
    config = load_config(ROOT / "container" / "config.yaml", env={})
    assert config.state.path.startswith("/var/lib/duvo-exporter/")
    assert [sink.path for sink in config.sinks] == ["/var/lib/duvo-exporter/runs.jsonl"]


def test_pip_build_conf_mirrors_the_index_and_ca_and_leaves_out_host_paths(tmp_path: Path) -> None:
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    empty = tmp_path / "empty.conf"
    empty.write_text("", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=str(empty),
        PIP_INDEX_URL="https://builder:s3cret@pypi.example.invalid/simple",
        PIP_EXTRA_INDEX_URL="file:///opt/pypi/simple https://mirror.example.invalid/simple",
        PIP_FIND_LINKS="/opt/wheels",
        PIP_CERT=str(ca),
        PIP_DEFAULT_TIMEOUT="60",
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "container" / "pip_build_conf.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    conf = (out / "pip.conf").read_text(encoding="utf-8")
    assert "cert = /run/secrets/pip-ca.crt" in conf
    assert "index-url = https://builder:s3cret@pypi.example.invalid/simple" in conf
    assert "extra-index-url = https://mirror.example.invalid/simple" in conf
    assert "timeout = 60" in conf
    assert "file://" not in conf and "/opt/wheels" not in conf
    assert (out / "pip.conf").stat().st_mode & 0o077 == 0
    assert result.stdout.split() == [
        f"--secret=id=pip-ca.crt,src={ca.resolve()}",
        f"--secret=id=pip.conf,src={(out / 'pip.conf').resolve()}",
    ]
    assert "s3cret" not in result.stderr and "//***@pypi.example.invalid" in result.stderr
