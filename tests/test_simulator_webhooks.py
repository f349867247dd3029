"""The simulator's webhook sender: a POST when a Job started with webhook_url finishes or waits."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from exporter.simulator import Simulator, SimulatorOptions


class Catcher(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(json.loads(body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_jobs_with_a_webhook_url_announce_their_end_and_their_waits():
    Catcher.received = []
    catcher = ThreadingHTTPServer(("127.0.0.1", 0), Catcher)
    threading.Thread(target=catcher.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{catcher.server_address[1]}/hook?token=t"
    try:
        options = SimulatorOptions(jobs_per_second=0.0, requests_per_minute=None, late_fraction=0.0, time_scale=20.0)
        with Simulator(options) as sim:
            agent = sim.world.agents("team-sim")[0]
            answer = requests.post(
                f"{sim.url}/teams/team-sim/runs",
                json={"agent_id": agent, "webhook_url": url},
                headers={"Authorization": "Bearer dv_sim_key"},
                timeout=5,
            )
            assert answer.status_code == 201
            posted = answer.json()["run_id"]
            manual = sim.world.create_job("team-sim", status="running", webhook_url=url)
            silent = sim.world.create_job("team-sim", status="running")  # no webhook_url
            far = sim.world.create_job("team-sim", status="running", webhook_url="http://example.com/hook")
            sim.world.set_status(manual["id"], "waiting")
            assert wait_for(lambda: {"event": "human_request", "run_id": manual["id"], "status": "waiting"}
                            in Catcher.received)  # fmt: skip
            sim.world.set_status(manual["id"], "failed")
            for run_id in (silent["id"], far["id"]):
                sim.world.set_status(run_id, "completed")
            assert wait_for(lambda: {"event": "run_failed", "run_id": manual["id"], "status": "failed"}
                            in Catcher.received)  # fmt: skip
            # The POSTed Job runs its normal lifecycle (seconds) and announces only its end.
            assert wait_for(lambda: any(h["run_id"] == posted for h in Catcher.received), timeout=60)
            mine = [h for h in Catcher.received if h["run_id"] == posted]
            assert len(mine) == 1 and mine[0]["event"] == f"run_{mine[0]['status']}"
            assert not any(h["run_id"] in (silent["id"], far["id"]) for h in Catcher.received)
            assert (far["id"], "completed", "not sent: not a loopback URL") in sim.webhooks.deliveries
    finally:
        catcher.shutdown()
        catcher.server_close()
