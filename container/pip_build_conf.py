"""Mirror this host's pip configuration into a container build, as build secrets.

    python container/pip_build_conf.py OUTDIR

reads the configuration the host's pip uses (`pip config list`: its config files and PIP_*
variables) and writes OUTDIR/pip.conf for the build's pip (mounted as /etc/pip.conf by the
Dockerfile's `RUN --mount=type=secret,id=pip.conf`). It prints the `--secret` options for
`podman build` on stdout, one per line, and says on stderr what it mirrored and what it left out.

- The CA bundle pip trusts (its `cert`, else REQUESTS_CA_BUNDLE / SSL_CERT_FILE / CURL_CA_BUNDLE)
  becomes the secret `pip-ca.crt`, named by `cert = /run/secrets/pip-ca.crt` in the pip.conf: the
  build can verify a TLS-intercepting proxy without the bundle entering any layer.
- Index settings that work from inside a container are kept: index-url, extra-index-url,
  trusted-host, proxy, timeout, retries. Credentials in them stay in the secret pip.conf and are
  masked in what this prints.
- Local paths and file:// URLs (find-links, wheel directories, constraint files of this machine)
  do not exist inside the build and are left out, as are options for pip's own behaviour.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

KEPT = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
ALIASES = {"default-timeout": "timeout"}  # PIP_DEFAULT_TIMEOUT is `timeout` in pip.conf
CA_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
CA_IN_BUILD = "/run/secrets/pip-ca.crt"
# Later sections win, as in pip: files' [global], then [install], then PIP_* variables.
PRECEDENCE = {"global": 0, "install": 1, ":env:": 2}
LINE = re.compile(r"^(?P<section>[^.]+)\.(?P<key>[^=]+)=(?P<value>.*)$")


def mask(value: str) -> str:
    return re.sub(r"//[^/@\s]+@", "//***@", value)


def host_settings() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        match = LINE.match(line.strip())
        if not match or match["section"] not in PRECEDENCE:
            continue
        value = match["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        key = ALIASES.get(match["key"], match["key"])
        rank = PRECEDENCE[match["section"]]
        if key not in found or rank >= found[key][0]:
            found[key] = (rank, value)
    return {key: value for key, (_, value) in found.items()}


def reachable_from_build(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def main() -> int:
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    settings = host_settings()
    lines = ["[global]"]
    secrets: list[str] = []

    ca = settings.pop("cert", "") or next((os.environ[name] for name in CA_ENV if os.environ.get(name)), "")
    if ca and Path(ca).is_file():
        lines.append(f"cert = {CA_IN_BUILD}")
        secrets.append(f"--secret=id=pip-ca.crt,src={Path(ca).resolve()}")
        print(f"pip in the build trusts the host's CA bundle {ca} (a build secret, not in the image)", file=sys.stderr)
    elif ca:
        print(f"pip's CA bundle {ca} does not exist; the build uses pip's own", file=sys.stderr)

    for key, value in settings.items():
        if key not in KEPT:
            why = "a path on this host" if value.startswith(("/", "file:")) else "not about reaching the index"
            print(f"left out ({why}): {key} = {mask(value)}", file=sys.stderr)
            continue
        if key in ("index-url", "extra-index-url"):
            urls = value.split()
            kept = [url for url in urls if reachable_from_build(url)]
            for url in urls:
                if url not in kept:
                    print(f"left out (a path on this host): {key} {url}", file=sys.stderr)
            if not kept:
                continue
            value = " ".join(kept)
        lines.append(f"{key} = {value}")
        print(f"mirrored: {key} = {mask(value)}", file=sys.stderr)

    conf = outdir / "pip.conf"
    conf.touch(mode=0o600)
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    secrets.append(f"--secret=id=pip.conf,src={conf.resolve()}")
    print("\n".join(secrets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
