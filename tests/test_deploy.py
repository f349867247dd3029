"""The deployment files in deploy/ agree with the image, the config schema and each other.

Kubernetes manifests, the systemd unit, the compose try-out and the Grafana dashboard are parsed
and checked against the Dockerfile as it is (USER, VOLUME, ENV DUVO_EXPORTER_CONFIG), against
`exporter.config.parse_config`, against the exit codes, against the metric names the exporter
serves and, for the dashboard's LogQL, against what the real Loki sink produces (the checker of
tests/test_doc_samples.py). Nothing here needs a cluster, a container engine or a network:
`systemd-analyze verify` runs when the machine has it, and the dashboard's LogQL runs against a
real Loki when DUVO_LOKI_BIN names a Loki 3.x binary.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from exporter import exitcodes
from exporter.config import Config, parse_config
from tests.test_doc_samples import Produced, check_logql, produced  # noqa: F401 (produced is a fixture)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "duvo-exporter.json"
UNIT = DEPLOY / "systemd" / "duvo-exporter.service"

SERVER_PORT = 9464
IMAGE = "duvo-exporter"
# The metrics the exporter serves on /metrics (issue 9), the only names a dashboard may use.
METRICS = {
    "duvo_exporter_passes_total",
    "duvo_exporter_pass_duration_seconds",
    "duvo_exporter_duvo_requests_total",
    "duvo_exporter_duvo_rate_limited_total",
    "duvo_exporter_rate_limit_wait_seconds_total",
    "duvo_exporter_jobs_extracted_total",
    "duvo_exporter_open_jobs",
    "duvo_exporter_checkpoint_lag_seconds",
    "duvo_exporter_sink_events_sent_total",
    "duvo_exporter_sink_events_retried_total",
    "duvo_exporter_sink_events_dead_lettered_total",
    "duvo_exporter_sink_backlog_events",
    "duvo_exporter_sink_oldest_undelivered_age_seconds",
    "duvo_exporter_sink_stopped",
    "duvo_exporter_webhooks_received_total",
    "duvo_exporter_webhooks_queued",
    # The Jobs' own metrics (exporter/insights), read from the state.
    "duvo_runs_total",
    "duvo_run_duration_seconds",
    "duvo_agent_failure_ratio",
}
HISTOGRAMS = {"duvo_exporter_pass_duration_seconds", "duvo_run_duration_seconds"}


# -- the Dockerfile, as it is --------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    uid: int
    gid: int | None  # None when the Dockerfile does not pin the group
    volumes: tuple[str, ...]
    env: dict[str, str]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    @property
    def state_dir(self) -> str:
        assert len(self.volumes) == 1, f"expected one VOLUME in the Dockerfile, found {self.volumes}"
        return self.volumes[0]

    @property
    def config_path(self) -> str:
        return self.env["DUVO_EXPORTER_CONFIG"]


def _instructions(text: str) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def _exec_form(value: str) -> tuple[str, ...]:
    value = value.strip()
    return tuple(json.loads(value)) if value.startswith("[") else tuple(shlex.split(value))


def _id_option(command: str, options: tuple[str, ...]) -> int | None:
    for option in options:
        match = re.search(rf"(?:^|\s){re.escape(option)}(?:=|\s+)(\d+)", command)
        if match:
            return int(match.group(1))
    return None


def parse_dockerfile(text: str) -> Image:
    env: dict[str, str] = {}
    volumes: list[str] = []
    user = ""
    runs: list[str] = []
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    args: dict[str, str] = {}  # ARG defaults, substituted as ${NAME} or $NAME

    def substitute(value: str) -> str:
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: args.get(m.group(1) or m.group(2), env.get(m.group(1) or m.group(2), m.group(0))),
            value,
        )

    for word, instruction in _instructions(text):
        rest = substitute(instruction) if word != "RUN" else instruction
        if word == "FROM":  # a later stage starts afresh
            env, volumes, user, runs, args = {}, [], "", [], {}
        elif word == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif word == "ENV":
            if "=" in rest.split()[0]:
                for pair in shlex.split(rest):
                    name, _, value = pair.partition("=")
                    env[name] = value
            else:
                name, _, value = rest.partition(" ")
                env[name] = value.strip()
        elif word == "VOLUME":
            volumes.extend(_exec_form(rest))
        elif word == "USER":
            user = rest
        elif word == "RUN":
            runs.append(rest)
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(rest)
        elif word == "CMD":
            cmd = _exec_form(rest)
    assert user, "the Dockerfile sets no USER: the image would run as root"
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
    else:  # a named user: its uid comes from the useradd that created it
        creating = [run for run in runs if re.search(rf"useradd\b[^&;|]*\s{re.escape(name)}\b", run)]
        assert creating, f"USER {name}: no useradd in the Dockerfile gives its uid"
        found = _id_option(creating[-1], ("--uid", "-u"))
        assert found is not None, f"USER {name}: its useradd sets no --uid"
        uid = found
    gid: int | None = None
    if group.isdigit():
        gid = int(group)
    elif not name.isdigit():  # pinned only by useradd --gid N or groupadd --gid N
        for run in runs:
            for command in re.findall(r"(?:useradd|groupadd)\b[^&;|]*", run):
                gid = _id_option(command, ("--gid", "-g")) or gid
    return Image(uid, gid, tuple(volumes), env, entrypoint, cmd)


@pytest.fixture(scope="module")
def image() -> Image:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.mark.parametrize(
    ("dockerfile", "uid", "gid"),
    [
        # Today's form: a named user created with a fixed uid.
        (
            "FROM python:3.11-slim\nENV A=1 \\\n    DUVO_EXPORTER_CONFIG=/etc/duvo-exporter/config.yaml\n"
            "RUN pip install . \\\n && useradd --system --uid 10001 --home-dir /var/lib/duvo-exporter duvo\n"
            'USER duvo\nVOLUME ["/var/lib/duvo-exporter"]\nENTRYPOINT ["duvo-exporter"]\nCMD ["run"]\n',
            10001,
            None,
        ),
        # The podman form: numeric uid:gid.
        (
            "FROM python:3.11-slim AS build\nUSER 0\nFROM python:3.11-slim\n"
            "ENV DUVO_EXPORTER_CONFIG /etc/duvo-exporter/config.yaml\nUSER 10001:10001\n"
            "VOLUME /var/lib/duvo-exporter\nENTRYPOINT duvo-exporter\nCMD run\n",
            10001,
            10001,
        ),
        # Ids and paths from build arguments.
        (
            "FROM python:3.11-slim\nARG UID=10001\nARG GID=10001\nARG STATE=/var/lib/duvo-exporter\n"
            'ENV DUVO_EXPORTER_CONFIG="/etc/duvo-exporter/config.yaml"\nUSER ${UID}:$GID\nVOLUME ["${STATE}"]\n'
            'ENTRYPOINT ["duvo-exporter"]\nCMD ["run"]\n',
            10001,
            10001,
        ),
    ],
)
def test_the_dockerfile_parser_reads_both_forms(dockerfile: str, uid: int, gid: int | None) -> None:
    parsed = parse_dockerfile(dockerfile)
    assert (parsed.uid, parsed.gid) == (uid, gid)
    assert parsed.state_dir == "/var/lib/duvo-exporter"
    assert parsed.config_path == "/etc/duvo-exporter/config.yaml"
    assert parsed.entrypoint == ("duvo-exporter",) and parsed.cmd == ("run",)


def test_the_image_is_what_the_deployment_files_assume(image: Image) -> None:
    assert [PurePosixPath(word).name for word in image.entrypoint] == ["duvo-exporter"]
    assert image.uid != 0
    assert PurePosixPath(image.config_path).name == "config.yaml"


# -- every file parses ---------------------------------------------------------------------------


def _deploy_files(*suffixes: str) -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*") if path.is_file() and path.suffix in suffixes)


def test_deploy_holds_what_the_readme_describes() -> None:
    names = {str(path.relative_to(DEPLOY)) for path in DEPLOY.rglob("*") if path.is_file()}
    assert {
        "kubernetes/pvc.yaml",
        "kubernetes/secret.example.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/cronjob.yaml",
        "systemd/duvo-exporter.service",
        "systemd/config.yaml",
        "systemd/env.example",
        "docker-compose.yml",
        "compose/exporter.yaml",
        "compose/loki.yaml",
        "compose/prometheus.yml",
        "grafana/provisioning/datasources/datasources.yaml",
        "grafana/provisioning/dashboards/dashboards.yaml",
        "grafana/dashboards/duvo-exporter.json",
    } <= names
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    for name in names:
        assert f"deploy/{name}" in section or name.startswith("grafana/provisioning/"), (
            f"README 'Deploying' does not mention deploy/{name}"
        )


@pytest.mark.parametrize("path", _deploy_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents and all(isinstance(doc, dict) for doc in documents)


@pytest.mark.parametrize("path", _deploy_files(".json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# -- configs -------------------------------------------------------------------------------------


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def _variables(text: str) -> set[str]:
    """The ${NAME}s a YAML config needs (in its values, not its comments; those without a default)."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    return {
        match.group(1)
        for value in strings(yaml.safe_load(text))
        for match in _VARIABLE.finditer(value)
        if ":-" not in match.group(0)
    }


def _placeholders(names: set[str]) -> dict[str, str]:
    return {name: f"placeholder-{name.lower()}-0123456789" for name in names}


def parse(text: str, env: dict[str, str], source: str) -> Config:
    config = parse_config(text, env, source)
    assert not [w for w in config.warnings if "OFF" in w], config.warnings
    return config


def _port(listen: str | None) -> int:
    assert listen is not None, "server.listen is not set"
    return int(listen.rpartition(":")[2])


def _under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


# -- Kubernetes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            for field in ("apiVersion", "kind", "metadata"):
                assert field in doc, f"{path.name}: a document without {field}"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} is defined twice"
            objects[key] = doc
    return objects


def _workloads(k8s: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(args, pod spec) of the Deployment and the CronJob."""
    deployment = k8s[("Deployment", "duvo-exporter")]["spec"]["template"]["spec"]
    cronjob = k8s[("CronJob", "duvo-exporter")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return [("run", deployment), ("once", cronjob)]


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def _mounts(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in _container(pod)["volumeMounts"]}


def _pod_config(k8s: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], image: Image) -> tuple[str, Config]:
    container = _container(pod)
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    config_path = env.get("DUVO_EXPORTER_CONFIG", image.config_path)
    assert config_path == image.config_path
    mounted = _mounts(pod)
    folder = str(PurePosixPath(config_path).parent)
    assert folder in mounted, f"nothing is mounted at {folder}"
    source = mounted[folder]["configMap"]
    items = {item["path"]: item["key"] for item in source.get("items", [])} or None
    key = items[PurePosixPath(config_path).name] if items else PurePosixPath(config_path).name
    text = k8s[("ConfigMap", source["name"])]["data"][key]
    secret = k8s[("Secret", "duvo-exporter")]["stringData"]
    missing = _variables(text) - set(secret)
    assert not missing, f"the config needs {missing}, which the Secret example does not have"
    return text, parse(text, dict(secret), f"ConfigMap {source['name']}")


def test_the_secret_example_carries_valid_placeholders(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    secret = k8s[("Secret", "duvo-exporter")]
    assert secret["type"] == "Opaque"
    assert {"DUVO_API_KEY", "DUVO_WEBHOOK_TOKEN"} <= set(secret["stringData"])
    assert len(secret["stringData"]["DUVO_WEBHOOK_TOKEN"]) >= 16


def test_the_state_claim_is_read_write_once(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    claim = k8s[("PersistentVolumeClaim", "duvo-exporter-state")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_the_deployment_is_one_replica_recreated(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    spec = k8s[("Deployment", "duvo-exporter")]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("command", ["run", "once"])
def test_the_pods_run_the_image_sandboxed(
    command: str, k8s: dict[tuple[str, str], dict[str, Any]], image: Image
) -> None:
    pod = dict(_workloads(k8s))[command]
    container = _container(pod)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"].rsplit("/", 1)[-1] == f"{IMAGE}:{version}"
    assert container.get("command") is None, "the image's ENTRYPOINT runs duvo-exporter"
    assert container["args"] == [command]
    assert pod["terminationGracePeriodSeconds"] >= 15  # it stops within 10 s on SIGTERM
    assert pod["automountServiceAccountToken"] is False

    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image.uid == 10001
    assert security["runAsGroup"] == 10001 and security["fsGroup"] == 10001
    if image.gid is not None:
        assert security["runAsGroup"] == image.gid
    container_security = container["securityContext"]
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    limit = resources["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) >= 2 * 55  # ~55 MB RSS, with room

    mounted = _mounts(pod)
    assert mounted[image.state_dir]["persistentVolumeClaim"]["claimName"] == "duvo-exporter-state"
    assert "emptyDir" in mounted["/tmp"]  # a writable /tmp beside the read-only root
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == ["duvo-exporter"]


@pytest.mark.parametrize("command", ["run", "once"])
def test_the_mounted_config_is_valid_and_keeps_state_on_the_claim(
    command: str, k8s: dict[tuple[str, str], dict[str, Any]], image: Image
) -> None:
    pod = dict(_workloads(k8s))[command]
    _, config = _pod_config(k8s, pod, image)
    assert config.state.path == f"{image.state_dir}/state.db"
    for sink in config.sinks:
        if sink.type == "file":
            assert sink.path == "-" or _under(sink.path, image.state_dir)
    if command == "once":
        assert config.server.listen is None and config.webhooks is None


def test_the_deployment_serves_probes_and_metrics_on_the_configured_port(
    k8s: dict[tuple[str, str], dict[str, Any]], image: Image
) -> None:
    pod = dict(_workloads(k8s))["run"]
    container = _container(pod)
    _, config = _pod_config(k8s, pod, image)
    assert config.server.listen == f"0.0.0.0:{SERVER_PORT}"
    assert config.webhooks is not None
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": _port(config.server.listen)}

    def resolve(port: int | str) -> int:
        return ports[port] if isinstance(port, str) else port

    probes = {name: container[name]["httpGet"] for name in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {resolve(probe["port"]) for probe in probes.values()} == {SERVER_PORT}

    annotations = k8s[("Deployment", "duvo-exporter")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == SERVER_PORT
    assert annotations["prometheus.io/path"] == "/metrics"

    service = k8s[("Service", "duvo-exporter")]["spec"]
    labels = k8s[("Deployment", "duvo-exporter")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    [port] = service["ports"]
    assert port["name"] == "http" and port["port"] == SERVER_PORT
    assert resolve(port["targetPort"]) == SERVER_PORT


def test_the_cronjob_runs_once_without_overlap_on_the_same_state(
    k8s: dict[tuple[str, str], dict[str, Any]],
) -> None:
    cronjob = k8s[("CronJob", "duvo-exporter")]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    job = cronjob["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    [rule] = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "In"
    assert rule["onExitCodes"]["containerName"] == _container(pod)["name"]
    # What a retry cannot fix fails the Job at once; an unavailable API or sink is retried.
    assert set(rule["onExitCodes"]["values"]) == {
        exitcodes.CONFIG,
        exitcodes.STATE,
        exitcodes.DUVO_AUTH,
        exitcodes.DEAD_LETTERS,
    }
    deployment_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in dict(_workloads(k8s))["run"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    cron_claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert deployment_claims == cron_claims == {"duvo-exporter-state"}


# -- systemd -------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"a setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, str]:
    """[Service] settings; a key set twice keeps its last value."""
    sections = parse_unit(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(sections)
    return dict(sections["Service"])


def test_the_unit_runs_the_daemon_with_its_config(unit: dict[str, str], image: Image) -> None:
    assert unit["ExecStart"] == f"/usr/local/bin/duvo-exporter run --config {image.config_path}"
    assert unit["EnvironmentFile"] == str(PurePosixPath(image.config_path).parent / "env")
    sections = parse_unit(UNIT.read_text())
    assert ("WantedBy", "multi-user.target") in sections["Install"]


def test_the_unit_is_sandboxed(unit: dict[str, str]) -> None:
    expected = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "CapabilityBoundingSet": "",
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert set(unit["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # Config, state and auth errors do not heal by restarting.
    assert {int(code) for code in unit["RestartPreventExitStatus"].split()} == {
        exitcodes.CONFIG,
        exitcodes.STATE,
        exitcodes.DUVO_AUTH,
    }
    timeout = unit["TimeoutStopSec"]
    assert timeout.isdigit() and int(timeout) >= 15  # it stops within 10 s


def test_the_unit_state_directory_holds_the_configs_state(unit: dict[str, str]) -> None:
    state_dir = f"/var/lib/{unit['StateDirectory']}"
    text = (DEPLOY / "systemd" / "config.yaml").read_text()
    env_keys = {
        line.split("=", 1)[0].strip()
        for line in (DEPLOY / "systemd" / "env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert _variables(text) <= env_keys, "env.example lacks a variable the config needs"
    config = parse(text, _placeholders(env_keys), "deploy/systemd/config.yaml")
    assert config.state.path == f"{state_dir}/state.db"
    assert unit["WorkingDirectory"] == state_dir
    for sink in config.sinks:  # ProtectSystem=strict: the state directory is the only writable place
        if sink.type == "file":
            assert sink.path == "-" or _under(sink.path, state_dir)
    assert config.server.listen is not None and config.server.listen.startswith("127.0.0.1:")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this checkout's command.
    program = shutil.which("duvo-exporter") or str(Path(sys.executable).parent / "duvo-exporter")
    assert Path(program).exists(), "no duvo-exporter command to stand in for /usr/local/bin/duvo-exporter"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/duvo-exporter", program))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr


# -- compose -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source: host paths resolved from deploy/, named volumes as they are."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        resolved = str((DEPLOY / source).resolve()) if source.startswith(".") else source
        found[target] = resolved
    return found


@pytest.fixture(scope="module")
def compose_config(compose: dict[str, Any], image: Image) -> Config:
    exporter = compose["services"]["exporter"]
    mounts = _bind_mounts(exporter)
    source = Path(mounts[image.config_path])
    assert source.is_file() and source.parent == DEPLOY / "compose"
    environment = exporter["environment"]
    assert environment.get("DUVO_EXPORTER_CONFIG", image.config_path) == image.config_path
    text = source.read_text()
    assert _variables(text) <= set(environment)
    return parse(text, {key: str(value) for key, value in environment.items()}, str(source))


def test_compose_builds_the_image_and_keeps_state_on_a_volume(compose: dict[str, Any], image: Image) -> None:
    services = compose["services"]
    assert {"exporter", "simulator", "loki", "prometheus", "grafana"} <= set(services)
    exporter = services["exporter"]
    assert (DEPLOY / exporter["build"]).resolve() == ROOT and (ROOT / "Dockerfile").is_file()
    assert exporter["image"] == IMAGE
    assert exporter["command"] == list(image.cmd) == ["run"]
    volume = _bind_mounts(exporter)[image.state_dir]
    assert volume in compose["volumes"], "the state should be on a named volume"


def test_compose_config_is_valid_and_reaches_the_simulator_loki_and_a_file(
    compose: dict[str, Any], compose_config: Config, image: Image
) -> None:
    services = compose["services"]
    assert compose_config.state.path == f"{image.state_dir}/state.db"
    port = _port(compose_config.server.listen)
    assert compose_config.server.listen == f"0.0.0.0:{port}" and port == SERVER_PORT
    assert f"{port}:{port}" in services["exporter"]["ports"]

    # The simulator binds 127.0.0.1 only: it shares the exporter's network namespace.
    simulator = services["simulator"]
    assert simulator["network_mode"] == "service:exporter"
    assert simulator["image"] == IMAGE
    command = simulator["command"]
    assert command[0] == "simulate"
    duvo = urlsplit(compose_config.duvo.base_url)
    assert duvo.hostname == "127.0.0.1" and str(duvo.port) == command[command.index("--port") + 1]
    assert compose_config.duvo.api_key.get_secret_value() == "dv_sim_key"
    assert compose_config.duvo.team_id == "team-sim"

    kinds = {sink.type: sink for sink in compose_config.sinks}
    assert set(kinds) == {"loki", "file"}
    loki = urlsplit(kinds["loki"].url)
    loki_config = yaml.safe_load((DEPLOY / "compose" / "loki.yaml").read_text())
    assert loki.hostname == "loki" and loki.port == loki_config["server"]["http_listen_port"]
    assert kinds["loki"].labels == {"service": "duvo"}
    assert _under(kinds["file"].path, image.state_dir)


def test_compose_loki_is_3_4_with_structured_metadata(compose: dict[str, Any]) -> None:
    loki = compose["services"]["loki"]
    assert re.fullmatch(r"grafana/loki:3\.4\.\d+", loki["image"])
    config_path = loki["command"][0].split("=", 1)[1]
    assert Path(_bind_mounts(loki)[config_path]) == DEPLOY / "compose" / "loki.yaml"
    config = yaml.safe_load((DEPLOY / "compose" / "loki.yaml").read_text())
    assert [entry["schema"] for entry in config["schema_config"]["configs"]] == ["v13"]
    assert config["schema_config"]["configs"][0]["store"] == "tsdb"
    assert config.get("limits_config", {}).get("allow_structured_metadata", True) is True


def test_compose_prometheus_scrapes_the_exporter(compose: dict[str, Any], compose_config: Config) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    source = Path(_bind_mounts(prometheus)[config_path])
    scrape = yaml.safe_load(source.read_text())["scrape_configs"]
    targets = [target for job in scrape for static in job["static_configs"] for target in static["targets"]]
    assert targets == [f"exporter:{_port(compose_config.server.listen)}"]
    assert scrape[0].get("metrics_path", "/metrics") == "/metrics"


# -- Grafana -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    return {source["uid"]: source for source in provisioned["datasources"]}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets(dashboard: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    """(panel title, expr) of every query on a datasource of this type."""
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel["datasource"]
            if source["type"] == kind:
                found.append((panel["title"], target["expr"]))
    return found


def test_grafana_is_provisioned_by_compose(compose: dict[str, Any], datasources: dict[str, dict[str, Any]]) -> None:
    grafana = _bind_mounts(compose["services"]["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]) == GRAFANA / "provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    [provider] = providers["providers"]
    assert Path(grafana[provider["options"]["path"]]) == DASHBOARD.parent
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home) == PurePosixPath(provider["options"]["path"]) / DASHBOARD.name
    # Each datasource points at its compose service and port.
    services = compose["services"]
    urls = {source["type"]: urlsplit(source["url"]) for source in datasources.values()}
    assert set(urls) == {"loki", "prometheus"}
    assert urls["loki"].hostname == "loki" and urls["loki"].port == 3100 and "loki" in services
    assert urls["prometheus"].hostname == "prometheus" and "prometheus" in services
    assert f"{urls['prometheus'].port}:{urls['prometheus'].port}" in services["prometheus"]["ports"]


def test_every_panel_uses_a_provisioned_datasource(
    dashboard: dict[str, Any], datasources: dict[str, dict[str, Any]]
) -> None:
    checked = 0
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        for target in [panel, *panel.get("targets", [])]:
            source = target.get("datasource")
            if source is None:
                continue
            assert source["uid"] in datasources, f"{panel['title']}: unknown datasource uid {source['uid']}"
            assert source["type"] == datasources[source["uid"]]["type"], panel["title"]
            checked += 1
        assert panel.get("targets"), f"{panel['title']}: no query"
    assert checked > 20


def test_the_dashboard_has_the_panels_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in _panels(dashboard)}
    assert {
        "Jobs by status",
        "Failure rate per Assignment",
        "Job duration percentiles",
        "Sink backlog",
        "Checkpoint lag",
        "Oldest undelivered event age",
        "Passes by outcome",
        "Rate limit",
    } <= titles
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "duvo-exporter"


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "le", "inf",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges, groupings and
    function calls removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {
        name
        for name, call in re.findall(r"([A-Za-z_:][\w:]*)\s*(\()?", expr)
        if not call and name.lower() not in _PROMQL_WORDS
    }


def _base_metric(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def test_promql_metrics_reader() -> None:
    assert promql_metrics(
        'histogram_quantile(0.95, sum by (le) (rate(duvo_exporter_pass_duration_seconds_bucket{job="x"}[5m])))'
    ) == {"duvo_exporter_pass_duration_seconds_bucket"}
    assert promql_metrics("sum by (sink) (up) / on (sink) group_left foo_total") == {"up", "foo_total"}


def test_every_metric_the_dashboard_reads_is_one_the_exporter_serves(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for title, expr in _targets(dashboard, "prometheus"):
        names = {_base_metric(name) for name in promql_metrics(expr)}
        assert names, f"{title}: no metric in {expr}"
        assert names <= METRICS, f"{title}: {names - METRICS} is not a metric the exporter serves"
        used |= names
    # Backlog, lag, oldest undelivered age, passes, rate-limit waits at least.
    assert {
        "duvo_exporter_sink_backlog_events",
        "duvo_exporter_checkpoint_lag_seconds",
        "duvo_exporter_sink_oldest_undelivered_age_seconds",
        "duvo_exporter_passes_total",
        "duvo_exporter_rate_limit_wait_seconds_total",
    } <= used


# -- LogQL ---------------------------------------------------------------------------------------

# Grafana's variables, as a query would carry them once Grafana expanded them.
GRAFANA_VARIABLES = {"$__interval": "5m", "$__range": "1h", "$__auto": "5m", "$__rate_interval": "5m"}


def expand(expr: str, dashboard: dict[str, Any]) -> str:
    for variable in dashboard["templating"]["list"]:
        expr = expr.replace(f"${variable['name']}", variable["current"]["value"])
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"an unknown variable in {expr}"
    return expr


def _balanced(expr: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    quote = ""
    for char in expr:
        if quote:
            quote = "" if char == quote else quote
        elif char in '"`':
            quote = char
        elif char in "([{":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return False
    return not depth and not quote


_RANGE = re.compile(r"\[\d+[smhd]\]")
_SELECTOR = re.compile(r"\{[^}]*\}")


def log_ranges(expr: str) -> list[str]:
    """Each `{selector} | pipeline [range]` of a metric query (or the whole log query)."""
    parts = []
    for selector in _SELECTOR.finditer(expr):
        rest = expr[selector.start() :]
        end = _RANGE.search(rest)
        parts.append(rest[: end.end()] if end else rest)
    return parts


def check_dashboard_logql(expr: str, vocabulary: Produced) -> list[str]:
    """check_logql of tests/test_doc_samples.py, taught what the dashboard adds: `json` with named
    fields, `unwrap`, `__error__` filters, several range queries in one expression and groupings
    after a range aggregation."""
    if not _balanced(expr):
        return [f"unbalanced brackets or quotes: {expr}"]
    problems: list[str] = []
    labels = set(vocabulary.loki_labels | vocabulary.loki_metadata)
    for part in log_ranges(expr):
        selector = _SELECTOR.match(part)
        assert selector is not None
        range_match = _RANGE.search(part)
        pipeline = part[selector.end() : range_match.start() if range_match else None]
        stages = [stage.strip() for stage in pipeline.split("|")[1:]]
        kept: list[str] = []
        extracted: set[str] = set()  # what the pipeline has parsed out of the line so far
        for stage in stages:
            if stage.startswith("json "):  # json name="path", ...: only those fields
                for name, path in re.findall(r'(\w+)\s*=\s*"([^"]+)"', stage):
                    if path.replace(".", "_") not in vocabulary.loki_json:
                        problems.append(f'| json {name}="{path}": not a field of the line')
                    extracted.add(name)
            elif stage.startswith("unwrap "):
                name = stage.split()[1]
                if name not in extracted:
                    problems.append(f"| unwrap {name}: not extracted by an earlier stage")
            elif stage == "json":
                extracted |= vocabulary.loki_json
                kept.append(stage)
            elif re.fullmatch(r'__error__\s*(=|!=)\s*"[^"]*"', stage):
                continue
            else:
                kept.append(stage)
        normalized = selector.group(0) + "".join(f" | {stage}" for stage in kept)
        normalized += f" {range_match.group(0)}" if range_match else ""
        problems.extend(check_logql(normalized, vocabulary))
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for name in grouping.replace(",", " ").split():
            if name not in labels:
                problems.append(f"by ({name}): not a stream label or structured metadata")
    return problems


def test_the_dashboard_logql_checker_catches_mistakes(produced: Produced) -> None:  # noqa: F811
    bad = {
        'sum by (run_id_extracted) (count_over_time({service="duvo"} [5m]))': "run_id_extracted",
        'quantile_over_time(0.9, {service="duvo"} | json | unwrap run_duration [5m]) by (service)': "run_duration",
        'quantile_over_time(0.9, {service="duvo"} | json d="runtime" | unwrap d [5m]) by (service)': "runtime",
        'quantile_over_time(0.9, {service="duvo"} | unwrap duration_seconds [5m]) by (service)': "duration_seconds",
        'sum(count_over_time({service="duvo", run_id="r"} [5m]))': "run_id",
        'sum(count_over_time({service="duvo"} | logfmt [5m]))': "logfmt",
        'sum(count_over_time({service="duvo"} [5m])': "unbalanced",
    }
    for expr, complaint in bad.items():
        problems = check_dashboard_logql(expr, produced)
        assert any(complaint in problem for problem in problems), (expr, problems)


def test_every_dashboard_logql_names_only_what_the_loki_sink_produces(
    dashboard: dict[str, Any],
    produced: Produced,  # noqa: F811
) -> None:
    queries = _targets(dashboard, "loki")
    assert len(queries) >= 8
    for title, expr in queries:
        assert check_dashboard_logql(expand(expr, dashboard), produced) == [], title


# -- the dashboard's LogQL on a real Loki (DUVO_LOKI_BIN=/path/to/loki, Loki 3.x) ---------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def real_loki() -> Iterator[str]:
    binary = os.environ.get("DUVO_LOKI_BIN")
    if not binary:
        pytest.fail("set DUVO_LOKI_BIN to a Loki 3.x binary: `make realpeer` runs the real-peer checks")
    config = yaml.safe_load((DEPLOY / "compose" / "loki.yaml").read_text())
    with tempfile.TemporaryDirectory() as folder:
        http, grpc = _free_port(), _free_port()
        text = yaml.safe_dump(config).replace("/loki", folder)
        config = yaml.safe_load(text)
        config["server"].update(
            http_listen_port=http,
            grpc_listen_port=grpc,
            http_listen_address="127.0.0.1",
            grpc_listen_address="127.0.0.1",
        )
        path = Path(folder) / "loki.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (Path(folder) / "loki.log").open("w")
        process = subprocess.Popen([binary, f"-config.file={path}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{http}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, (Path(folder) / "loki.log").read_text()[-3000:]
                try:
                    if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "Loki did not become ready"
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


@pytest.mark.realpeer
def test_the_dashboard_logql_runs_on_a_real_loki(real_loki: str, dashboard: dict[str, Any]) -> None:
    from sinks.loki import LokiSink, LokiSinkSettings
    from tests.test_doc_samples import _events

    # one Job per status (agent_7, 420 s long) and a waiting one; summaries and alerts reach a Loki
    # sink only when its filter.events asks (README "Insights"), and this dashboard's sink does not
    batch = [e for e in _events() if e["event"] in ("run.finished", "run.waiting")]
    sink = LokiSink(LokiSinkSettings(type="loki", name="loki", url=real_loki, labels={"service": "duvo"}))
    try:
        result = sink.send(batch)
    finally:
        sink.close()
    assert result.done == len(batch) and not result.rejected and result.error is None

    now = time.time_ns()
    answers: dict[str, list[dict[str, Any]]] = {}
    for title, expr in _targets(dashboard, "loki"):
        query = expand(expr, dashboard)
        deadline = time.monotonic() + 30
        while True:  # the ingester answers once the push is visible to queries
            response = requests.get(
                f"{real_loki}/loki/api/v1/query_range",
                params={"query": query, "start": now - 3_600 * 10**9, "end": now + 60 * 10**9, "step": "60s"},
                timeout=30,
            )
            assert response.status_code == 200, f"{title}: {query}\n{response.text}"
            body = response.json()
            assert body["status"] == "success"
            if body["data"]["result"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert body["data"]["result"], f"{title}: no result for {query}"
        answers[title] = body["data"]["result"]

    statuses = {series["metric"]["status"] for series in answers["Jobs by status"]}
    assert statuses == {"completed", "failed", "stopped", "interrupted"}
    [rate] = answers["Failure rate per Assignment"]
    assert rate["metric"] == {"agent_id": "agent_7"}
    assert float(rate["values"][-1][1]) == pytest.approx(1 / 5)  # 1 failed of 5 finished (2 completed)
    for series in answers["Job duration percentiles"]:
        assert float(series["values"][-1][1]) == pytest.approx(420, abs=1)
