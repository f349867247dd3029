"""Issue 4, security: secrets never leave the process except to their backend, TLS is verified
unless explicitly (and loudly) turned off, the state file is private, and the config is data.

The secret checks run the real CLI as subprocesses (a fresh process has registered no secret
yet, so nothing an earlier test did can mask a leak) at --log-level debug, with every secret a
recognisable marker passed through environment variables. Libraries log at debug too
(--library-log-level debug): urllib3's lines are where a header would show.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests.adapters

from exporter.config import ConfigError, parse_config
from exporter.simulator import Simulator, SimulatorOptions
from tests.conftest import ROOT, cli_in_process, sim_faults, terminal_ids, write_config
from tests.fakes.datadog import DatadogFake
from tests.fakes.loki import FakeLoki
from tests.fakes.splunk_hec import FakeSplunkHec, Fault

MARK = "SECRETMARK"
SECRETS = {
    "DUVO_API_KEY": f"dv_{MARK}_duvo_4b7e1c",
    "DD_API_KEY": f"{MARK}_dd_9c1f2a",
    "HEC_TOKEN": f"{MARK}-hec-6d3e8b",
    "LOKI_PASSWORD": f"{MARK}_lokipw_2a9f7c",
    "LOKI_BEARER": f"{MARK}_lokibearer_8e5d1b",
}
LOKI_USER = "loki-user"
DEBUG_EVERYWHERE = ("--log-level", "debug", "--library-log-level", "debug")
OTHER = "some-other-credential-000"  # what the "rejecting" fakes expect instead


def leaks(text: str | bytes) -> list[str]:
    """Every form in which one of the secrets could show up: as is, any case, base64 inside a
    Basic header, percent-encoded."""
    data = text.encode() if isinstance(text, str) else text
    forms = [MARK.encode(), MARK.lower().encode()]
    forms.append(base64.b64encode(f"{LOKI_USER}:{SECRETS['LOKI_PASSWORD']}".encode()))
    forms += [quote(value, safe="").encode() for value in SECRETS.values()]
    lowered = data.lower()
    return [form.decode() for form in forms if form.lower() in lowered]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **SECRETS, **extra}


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args, *DEBUG_EVERYWHERE],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def run_parallel(commands: Sequence[Sequence[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once: the interpreter start-up dominates each of them."""
    results: list[Any] = [None] * len(commands)

    def one(index: int) -> None:
        results[index] = run_cli(*commands[index], env=env)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(commands))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---- secrets in output and files -------------------------------------------------------------


@pytest.fixture
def marked_sim() -> Iterator[Simulator]:
    """A simulator for which the marker is the one valid Duvo API key."""
    options = SimulatorOptions(jobs_per_second=0.0, requests_per_minute=None, api_keys={SECRETS["DUVO_API_KEY"]: None})
    with Simulator(options).start() as simulator:
        yield simulator


class Backends:
    """For each backend one fake that accepts the marker secrets and one that refuses them."""

    def __init__(self) -> None:
        self.dd_ok = DatadogFake(api_key=SECRETS["DD_API_KEY"])
        self.dd_bad = DatadogFake(api_key=OTHER)
        self.hec_ok = FakeSplunkHec(token=SECRETS["HEC_TOKEN"])
        self.hec_bad = FakeSplunkHec(token=OTHER)
        self.loki_basic_ok = FakeLoki(basic_auth=(LOKI_USER, SECRETS["LOKI_PASSWORD"]))
        self.loki_bearer_ok = FakeLoki(bearer_token=SECRETS["LOKI_BEARER"])
        self.loki_basic_bad = FakeLoki(basic_auth=(LOKI_USER, OTHER))
        self.loki_bearer_bad = FakeLoki(bearer_token=OTHER)
        self.all = [value for value in vars(self).values() if hasattr(value, "start")]

    def start(self) -> Backends:
        for fake in self.all:
            fake.start()
        return self

    def stop(self) -> None:
        for fake in self.all:
            fake.stop()

    def sinks_yaml(self, tmp_path: Path) -> str:
        retry = "retry: {initial_backoff: 0.01, max_backoff: 0.05, max_attempts: 2}"
        batch = "batch: {flush_interval: 0}"
        text = f"- type: file\n  name: local\n  path: {tmp_path / 'out' / 'runs.jsonl'}\n  {batch}\n"
        for name, fake in (("dd_ok", self.dd_ok), ("dd_bad", self.dd_bad)):
            text += (
                f"- {{type: datadog, name: {name}, url: '{fake.url}', api_key: '${{DD_API_KEY}}', {retry}, {batch}}}\n"
            )
        for name, fake in (("hec_ok", self.hec_ok), ("hec_bad", self.hec_bad)):
            text += (
                f"- {{type: splunk_hec, name: {name}, url: '{fake.url}', token: '${{HEC_TOKEN}}', {retry}, {batch}}}\n"
            )
        for name, fake in (("loki_basic_ok", self.loki_basic_ok), ("loki_basic_bad", self.loki_basic_bad)):
            text += (
                f"- {{type: loki, name: {name}, url: '{fake.url}', {retry}, {batch},\n"
                f"   basic_auth: {{username: {LOKI_USER}, password: '${{LOKI_PASSWORD}}'}}}}\n"
            )
        for name, fake in (("loki_bearer_ok", self.loki_bearer_ok), ("loki_bearer_bad", self.loki_bearer_bad)):
            text += (
                f"- {{type: loki, name: {name}, url: '{fake.url}', bearer_token: '${{LOKI_BEARER}}', "
                f"{retry}, {batch}}}\n"
            )
        return text


@pytest.fixture
def backends() -> Iterator[Backends]:
    made = Backends().start()
    yield made
    made.stop()


def secret_config(tmp_path: Path, sim: Simulator, backends: Backends) -> Path:
    config = write_config(
        tmp_path,
        sim.url,
        sinks=backends.sinks_yaml(tmp_path),
        extra="schedule: {every: 1s}\n",
        max_attempts=2,
    )
    # write_config's key line has a default; this one must come from the environment only.
    text = config.read_text().replace("${DUVO_API_KEY:-dv_sim_key}", "${DUVO_API_KEY}")
    text = text.replace(f"path: {tmp_path / 'state.db'}", f"path: {tmp_path / 'state' / 'state.db'}")
    config.write_text(text)
    assert MARK not in text
    return config


def files_written(tmp_path: Path) -> dict[str, bytes]:
    return {str(path.relative_to(tmp_path)): path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}


def test_no_secret_in_any_output_or_file(marked_sim, backends, tmp_path):
    sim = marked_sim
    for index in range(12):
        sim.world.create_job(team_id="team-sim", status="completed" if index % 3 else "failed")
    config = secret_config(tmp_path, sim, backends)
    env = subprocess_env()
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}

    check, connect, once = run_parallel(
        [["check", "--config", str(config)], ["check", "--connect", "--config", str(config)],
         ["once", "--config", str(config)]],
        env,
    )  # fmt: skip
    outputs.update({"check": check, "check --connect": connect, "once": once})
    assert check.returncode == 0, check.stderr
    # The refusing fakes make their sinks fail: error paths print too.
    assert connect.returncode == 6, connect.stdout + connect.stderr
    failed = {line.split()[1].strip("(,") for line in connect.stdout.splitlines() if "FAILED" in line}
    assert failed == {"dd_bad", "hec_bad", "loki_basic_bad", "loki_bearer_bad"}, connect.stdout
    assert "duvo: OK" in connect.stdout
    assert once.returncode == 6, once.stderr
    expected = terminal_ids(sim)
    for fake in (backends.dd_ok, backends.hec_ok, backends.loki_basic_ok, backends.loki_bearer_ok):
        assert len(fake.stored) == len(expected)  # the secrets did their job where they belong
    assert backends.dd_ok.log_requests()[0].headers["dd-api-key"] == SECRETS["DD_API_KEY"]

    status_text, status_json = run_parallel(
        [["status", "--config", str(config)], ["status", "--json", "--config", str(config)]], env
    )
    outputs.update({"status": status_text, "status --json": status_json})
    assert status_text.returncode == 0 and status_json.returncode == 0
    stopped = {s["name"]: s["stopped"] for s in json.loads(status_json.stdout)["sinks"] if s["stopped"]}
    assert set(stopped) == {"dd_bad", "hec_bad", "loki_basic_bad", "loki_bearer_bad"}
    assert status_text.stdout.count("STOPPED") == 4

    # The daemon, briefly, with new Jobs to deliver, then SIGTERM.
    for _ in range(5):
        sim.world.create_job(team_id="team-sim", status="completed")
    log = tmp_path / "out" / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config), *DEBUG_EVERYWHERE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    try:
        assert wait_for(lambda: len(backends.loki_bearer_ok.stored) == len(terminal_ids(sim)), timeout=20)
    finally:
        daemon.send_signal(signal.SIGTERM)
        stdout, _ = daemon.communicate(timeout=15)
    assert daemon.returncode == 0
    outputs["run"] = subprocess.CompletedProcess(["run"], 0, stdout.decode(), log.read_text())
    assert '"stopped"' in outputs["run"].stderr

    # Duvo answers 5xx to the (valid) marker key: retries and the final error are printed.
    sim_faults(sim, error_rate=1.0, error_status=503)
    failing_once, failing_connect = run_parallel(
        [["once", "--config", str(config)], ["check", "--connect", "--config", str(config)]], env
    )
    outputs.update({"once (duvo 5xx)": failing_once, "check --connect (duvo 5xx)": failing_connect})
    assert failing_once.returncode == 5, failing_once.stderr
    assert "503" in failing_once.stderr
    assert "duvo: FAILED" in failing_connect.stdout
    sim_faults(sim, error_rate=0.0)

    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(
        config.read_text()
        + "  - {type: datadog, name: dd_site, api_key: '${DD_API_KEY}', site: nowhere.example}\n"
        + "  - {type: datadog, name: dd_list, api_key: ['${DD_API_KEY}']}\n"
        + f"  - {{type: loki, name: loki_url, url: 'http://{LOKI_USER}:${{LOKI_PASSWORD}}@127.0.0.1:1'}}\n"
        + "  - {type: splunk_hec, name: hec_index, url: 'http://127.0.0.1:1', token: '${HEC_TOKEN}', index: ''}\n"
    )
    invalid = run_cli("check", "--config", str(bad_config), env=env)
    outputs["invalid config"] = invalid
    assert invalid.returncode == 2
    problems = invalid.stderr.splitlines()
    assert any("sinks[9].site" in p for p in problems), invalid.stderr
    assert any("sinks[10].api_key" in p for p in problems), invalid.stderr
    assert any("sinks[11].url" in p for p in problems), invalid.stderr

    for name, result in outputs.items():
        assert leaks(result.stdout) == [], f"{name} stdout: {result.stdout}"
        assert leaks(result.stderr) == [], f"{name} stderr: {result.stderr}"
    # Debug level really was on (so the test saw the chattiest output there is). `check --connect`
    # asks Duvo before it builds the Datadog sinks, which mute urllib3's debug lines (see
    # test_debug_level_survives_building_a_datadog_sink).
    assert '"level": "debug"' in connect.stderr
    files = files_written(tmp_path)
    assert {"state/state.db", "out/runs.jsonl", "out/daemon.log"} <= set(files)
    for name, data in files.items():
        assert leaks(data) == [], f"{name} holds a secret"


def test_a_secret_in_the_wrong_shape_is_not_echoed_by_config_errors(tmp_path):
    """curl's `-u user:password` habit: basic_auth written as one string. The config is refused
    (exit 2, the path named) without quoting the value, which holds the password."""
    config = tmp_path / "exporter.yaml"
    config.write_text(
        "duvo: {api_key: '${DUVO_API_KEY}', team_id: t}\n"
        "sinks:\n"
        f"  - {{type: loki, name: loki, url: 'http://127.0.0.1:1', basic_auth: '{LOKI_USER}:${{LOKI_PASSWORD}}'}}\n"
    )
    result = run_cli("check", "--config", str(config), env=subprocess_env())
    assert result.returncode == 2
    assert "sinks[0].basic_auth" in result.stderr
    assert leaks(result.stdout + result.stderr) == []


def test_debug_level_survives_building_a_datadog_sink():
    from sinks.registry import build_sink

    urllib3_logger = logging.getLogger("urllib3")
    saved = urllib3_logger.level
    urllib3_logger.setLevel(logging.NOTSET)  # as the CLI leaves it: the root's level applies
    try:
        config = parse_config(
            "duvo: {api_key: k, team_id: t}\nsinks: [{type: datadog, name: dd, api_key: k, url: 'http://127.0.0.1:1'}]\n",
            env={},
        )
        build_sink(config.sinks[0]).close()
        # The library's own debug switch must stay off: it makes http.client print every request
        # header (DD-API-KEY included) to stdout, past any redaction.
        assert http.client.HTTPConnection.debuglevel == 0
        assert urllib3_logger.level == logging.NOTSET
    finally:
        urllib3_logger.setLevel(saved)



@pytest.mark.parametrize(
    "kind", [pytest.param("datadog"), pytest.param("splunk_hec"), "loki"]
)
def test_a_backend_echoing_the_secret_in_its_errors_does_not_put_it_on_disk(marked_sim, tmp_path, kind):
    """Gateways and proxies sometimes quote the request, headers included, in an error body. The
    reason is kept (dead letter, last error) and shown by `status`: never with the secret in it."""
    sim = marked_sim
    sim.world.create_job(team_id="team-sim", status="failed")
    retry = "retry: {initial_backoff: 0.01, max_backoff: 0.05, max_attempts: 3}"
    if kind == "datadog":
        secret = SECRETS["DD_API_KEY"]
        fake: Any = DatadogFake(api_key=secret)
        fake.script(503, body={"errors": [f"upstream down; DD-API-KEY was {secret}"]})
        fake.reject_run_ids(*[job["id"] for job in sim.world.jobs()], reason=f"bad log (key {secret})")
        sink = f"{{type: datadog, name: echo, url: '{{url}}', api_key: '${{DD_API_KEY}}', {retry}}}"
    elif kind == "splunk_hec":
        secret = SECRETS["HEC_TOKEN"]
        fake = FakeSplunkHec(token=secret)
        fake.script(Fault(503, {"text": f"Server is busy (token {secret})", "code": 9}))
        fake.reject(lambda envelope: True, text=f"Invalid data format (token {secret})")
        sink = f"{{type: splunk_hec, name: echo, url: '{{url}}', token: '${{HEC_TOKEN}}', {retry}}}"
    else:
        secret = SECRETS["LOKI_BEARER"]
        fake = FakeLoki(bearer_token=secret)
        fake.script(503, body=f"upstream down; Authorization was Bearer {secret}")
        fake.reject(lambda entry: True, body=f"refused entry (token {secret})")
        sink = f"{{type: loki, name: echo, url: '{{url}}', bearer_token: '${{LOKI_BEARER}}', {retry}}}"
    with fake:
        config = write_config(tmp_path, sim.url, sinks="- " + sink.replace("{url}", fake.url) + "\n")
        os.environ.update(SECRETS)
        try:
            once = cli_in_process("once", "--config", str(config))
            status = cli_in_process("status", "--json", "--config", str(config))
        finally:
            for name in SECRETS:
                os.environ.pop(name, None)
    assert once.returncode == 7, once.stderr  # its one event was dead-lettered
    echo = json.loads(status.stdout)["sinks"][0]
    assert echo["dead_letters"] == 1 and echo["delivered"] == 0 and echo["last_error"]
    for result in (once, status):
        assert leaks(result.stdout + result.stderr) == []
    for name, data in files_written(tmp_path).items():
        assert leaks(data) == [], f"{name} holds a secret"


# ---- the state file is private ---------------------------------------------------------------


def test_state_file_and_its_wal_are_created_0600_even_with_a_permissive_umask(sim, tmp_path):
    for _ in range(10):
        sim.world.create_job(team_id="team-sim", status="completed")
    config = write_config(tmp_path, sim.url, extra="schedule: {every: 1s}\n")
    text = config.read_text().replace(f"path: {tmp_path / 'state.db'}", f"path: {tmp_path / 'state' / 'state.db'}")
    config.write_text(text)
    state_dir = tmp_path / "state"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.umask(0),
    )
    try:
        # While the daemon runs, SQLite keeps its -wal and -shm files next to the database.
        assert wait_for(lambda: (state_dir / "state.db-wal").exists() and (tmp_path / "runs.jsonl").exists(), 20)
        assert wait_for(lambda: len((tmp_path / "runs.jsonl").read_text().splitlines()) == 10, 20)
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state_dir.iterdir()}
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, stderr
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600), {name: oct(mode) for name, mode in modes.items()}
    # And after the daemon is gone, whatever is left.
    assert {stat.S_IMODE(p.stat().st_mode) for p in state_dir.iterdir()} == {0o600}


# ---- TLS -------------------------------------------------------------------------------------


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target: tuple[str, int]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        skip = {"host", "connection", "keep-alive"}
        headers = {name: value for name, value in self.headers.items() if name.lower() not in skip}
        upstream = http.client.HTTPConnection(*self.target, timeout=10)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        skip = {"transfer-encoding", "connection", "content-length", "server", "date", "keep-alive"}
        for name, value in response.getheaders():
            if name.lower() not in skip:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _forward


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing the certificate is what some tests want


class TlsProxy:
    """HTTPS on 127.0.0.1 with the self-signed certificate, in front of a plain-HTTP server."""

    def __init__(self, target_url: str, cert: Path, key: Path) -> None:
        parts = urlsplit(target_url)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        handler = type("Forward", (_Forward,), {"target": (parts.hostname, parts.port)})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        # The handshake happens on the first read, in the request's own thread: a client that
        # refuses the certificate cannot stall the accept loop.
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}{parts.path}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class TlsWorld:
    """The simulator and one fake per backend, each reachable only over HTTPS through a TlsProxy."""

    def __init__(self, sim: Simulator, cert: Path, key: Path) -> None:
        self.sim = sim
        self.dd = DatadogFake(api_key="dd-key").start()
        self.hec = FakeSplunkHec(token="hec-token-1").start()
        self.loki = FakeLoki(bearer_token="loki-token").start()
        self.proxies = {
            name: TlsProxy(url, cert, key).__enter__()
            for name, url in (("duvo", sim.url), ("dd", self.dd.url), ("hec", self.hec.url), ("loki", self.loki.url))
        }

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.__exit__()
        for fake in (self.dd, self.hec, self.loki):
            fake.stop()

    def config(self, tmp_path: Path, tls: str, *, duvo_over_tls: bool = True) -> Path:
        """``tls`` is the YAML flow mapping given to duvo and every sink ("" = no tls key)."""
        tls_key = f", tls: {tls}" if tls else ""
        p = self.proxies
        sinks = (
            f"- type: file\n  name: local\n  path: {tmp_path / 'runs.jsonl'}\n  batch: {{flush_interval: 0}}\n"
            f"- {{type: datadog, name: dd, url: '{p['dd'].url}', api_key: dd-key, hostname: h{tls_key}, "
            "retry: {initial_backoff: 0.01, max_backoff: 0.02, max_attempts: 2}}\n"
            f"- {{type: splunk_hec, name: hec, url: '{p['hec'].url}', token: hec-token-1, host: h{tls_key}, "
            "retry: {initial_backoff: 0.01, max_backoff: 0.02, max_attempts: 2}}\n"
            f"- {{type: loki, name: loki, url: '{p['loki'].url}', bearer_token: loki-token{tls_key}, "
            "retry: {initial_backoff: 0.01, max_backoff: 0.02, max_attempts: 2}}\n"
        )
        base_url = p["duvo"].url if duvo_over_tls else self.sim.url
        config = write_config(tmp_path, base_url, sinks=sinks, max_attempts=1)
        if tls:
            text = config.read_text().replace("duvo:\n", f"duvo:\n  tls: {tls}\n", 1)
            config.write_text(text)
        return config


@pytest.fixture
def tls_world(sim, tls_cert, monkeypatch) -> Iterator[TlsWorld]:
    # requests lets these replace any `verify` it is not handed per request; the tests about the
    # configured TLS settings run without them (one test below runs with them on purpose).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    for index in range(6):
        sim.world.create_job(team_id="team-sim", status="completed" if index % 2 else "failed")
    world = TlsWorld(sim, *tls_cert)
    yield world
    world.close()


@pytest.fixture
def verify_seen(monkeypatch: pytest.MonkeyPatch) -> dict[int, set[Any]]:
    """port -> every `verify` value requests' transport was handed for it (after requests merged
    the session's, the request's and the environment's)."""
    seen: dict[int, set[Any]] = {}
    original = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.setdefault(urlsplit(request.url).port or 0, set()).add(kwargs.get("verify"))
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return seen


def _port(url: str) -> int:
    return urlsplit(url).port or 0


def _warnings(stderr: str) -> list[str]:
    events = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") == "warning":
            events.append(str(record.get("event")))
    return events


OFF_WARNINGS = {
    "duvo: TLS certificate verification is OFF",
    "sinks[1] (dd): TLS certificate verification is OFF",
    "sinks[2] (hec): TLS certificate verification is OFF",
    "sinks[3] (loki): TLS certificate verification is OFF",
}


@pytest.mark.parametrize("tls", ["", "{insecure_skip_verify: false}"], ids=["default", "explicit-false"])
def test_tls_is_verified_unless_turned_off(tls_world, tmp_path, verify_seen, tls):
    config = tls_world.config(tmp_path, tls)
    result = cli_in_process("check", "--connect", "--config", str(config))
    assert result.returncode != 0
    lines = {line.split(":")[0].split(" (")[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(lines) == {"duvo", "sinks[0]", "sinks[1]", "sinks[2]", "sinks[3]", "state.path"}, result.stdout
    for name in ("duvo", "sinks[1]", "sinks[2]", "sinks[3]"):
        assert "FAILED" in lines[name], lines[name]
    assert "certificate verify failed" in lines["duvo"].lower()
    assert not OFF_WARNINGS & set(_warnings(result.stderr))

    # Delivery over TLS refuses the self-signed certificate too; the events stay in the backlog.
    plain = tls_world.config(tmp_path, tls, duvo_over_tls=False)
    result = cli_in_process("once", "--config", str(plain))
    assert result.returncode == 6, result.stderr
    data = json.loads(cli_in_process("status", "--json", "--config", str(plain)).stdout)
    for sink in data["sinks"]:
        if sink["name"] != "local":
            assert sink["backlog"] == len(terminal_ids(tls_world.sim)) and sink["delivered"] == 0, sink
            assert "certificate verify failed" in sink["last_error"].lower(), sink
    assert tls_world.dd.stored == [] and tls_world.hec.stored == [] and tls_world.loki.entries == []
    p = tls_world.proxies
    for name in ("duvo", "hec", "loki"):  # the requests-based clients
        assert verify_seen[_port(p[name].url)] == {True}, name


@pytest.mark.parametrize("mode", ["insecure", "ca_file"])
def test_tls_with_insecure_skip_verify_or_ca_file_connects(tls_world, tls_cert, tmp_path, verify_seen, mode):
    cert = str(tls_cert[0])
    tls = "{insecure_skip_verify: true}" if mode == "insecure" else f"{{ca_file: '{cert}'}}"
    config = tls_world.config(tmp_path, tls)
    check = cli_in_process("check", "--connect", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    once = cli_in_process("once", "--config", str(config))
    assert once.returncode == 0, once.stderr
    expected = len(terminal_ids(tls_world.sim))
    assert len(tls_world.dd.stored) == len(tls_world.hec.stored) == len(tls_world.loki.entries) == expected
    p = tls_world.proxies
    wanted = False if mode == "insecure" else cert
    for name in ("duvo", "hec", "loki"):
        assert verify_seen[_port(p[name].url)] == {wanted}, name
    warned = set(_warnings(check.stderr)) & set(_warnings(once.stderr))
    if mode == "insecure":
        assert warned >= OFF_WARNINGS  # logged, at warning level, on every start
    else:
        assert not OFF_WARNINGS & warned


@pytest.mark.parametrize("mode", ["default", "insecure", "ca_file"])
def test_datadog_client_gets_the_tls_settings(tls_cert, mode):
    from sinks.registry import build_sink

    tls = {"default": {}, "insecure": {"insecure_skip_verify": True}, "ca_file": {"ca_file": str(tls_cert[0])}}[mode]
    config = parse_config(
        json.dumps(
            {
                "duvo": {"api_key": "k", "team_id": "t"},
                "sinks": [{"type": "datadog", "name": "dd", "api_key": "k", "url": "https://127.0.0.1:1", "tls": tls}],
            }
        ),
        env={},
    )
    sink: Any = build_sink(config.sinks[0])
    try:
        configuration = sink._client.configuration
        pool = sink._client.rest_client.pool_manager.connection_pool_kw
        assert configuration.verify_ssl is (mode != "insecure")
        assert pool["cert_reqs"] == (ssl.CERT_NONE if mode == "insecure" else ssl.CERT_REQUIRED)
        assert pool["ca_certs"] == (str(tls_cert[0]) if mode == "ca_file" else None)
    finally:
        sink.close()


@pytest.mark.parametrize("mode", ["insecure", "ca_file"])
def test_tls_settings_win_over_requests_ca_bundle_in_the_environment(tls_world, tls_cert, tmp_path, monkeypatch, mode):
    """REQUESTS_CA_BUNDLE (common in containers and corporate images) replaces any `verify` that
    requests is not handed per request: the configured TLS settings must still apply."""
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # real CAs, not our self-signed one
    cert = str(tls_cert[0])
    tls = "{insecure_skip_verify: true}" if mode == "insecure" else f"{{ca_file: '{cert}'}}"
    config = tls_world.config(tmp_path, tls)
    check = cli_in_process("check", "--connect", "--config", str(config))
    assert check.returncode == 0, check.stdout
    once = cli_in_process("once", "--config", str(config))
    assert once.returncode == 0, once.stderr


# ---- the config is data ----------------------------------------------------------------------


def test_interpolation_never_runs_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    text = f"""
duvo:
  api_key: "${{$(touch {marker})}}"
  team_id: "${{NOT_SET_ANYWHERE:-$(touch {marker})}}"
  base_url: "http://127.0.0.1:1/`touch {marker}`"
state: {{path: "$(touch {marker})"}}
sinks:
  - {{type: file, name: local, path: "${{NOT_SET_EITHER:-`touch {marker}`}}"}}
"""
    config = parse_config(text, env={})
    assert not marker.exists()
    # Nothing was run or substituted from a command: the text is kept as it is.
    assert config.duvo.api_key.get_secret_value() == f"${{$(touch {marker})}}"
    assert config.duvo.team_id == f"$(touch {marker})"
    assert config.duvo.base_url == f"http://127.0.0.1:1/`touch {marker}`"
    assert config.state.path == f"$(touch {marker})"
    assert config.sinks[0].path == f"`touch {marker}`"  # type: ignore[attr-defined]
    # The one form that is interpolated takes a variable name, and only from the environment.
    with pytest.raises(ConfigError) as raised:
        parse_config("duvo: {api_key: '${$(id)}x${UNSET_VAR_FOR_TEST}', team_id: t}\nsinks: []\n", env={})
    assert any("UNSET_VAR_FOR_TEST is not set" in p for p in raised.value.problems)
    assert not marker.exists()
