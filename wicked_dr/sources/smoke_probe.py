"""The smoke probe: portal-api started on the restored volume must answer ``GET /ping``.

Optional (``verify.smoke_image``). After the volume's check, the configured portal-api image
is started as a scratch service on the very volume the check read: the data volume at
``/var/portal-api/dynamic``, the static configuration (streamed as a tar into a volume of its
own, never bind-mounted) read-only at ``/var/portal-api/static``, as ``verify.smoke_user``
(wicked's node user, 888:888) from the start: wicked's root start script, which would chown
the volume and drop to 888, is not run (the volume's root is given to the restore owner
instead; directories of the image that portal-api writes into at start, such as
``routes/internal_apis`` where it writes ``swagger.json`` files, get writable copies owned
by the restore owner: ``verify.smoke_writable_dirs``). The service has no network. A second
scratch container of ``verify.image``
(python3) joins the service's network namespace, so it sees nothing but the service's own
loopback, and polls ``GET http://127.0.0.1:<port>/ping`` until it answers 200 with
``{"message": "OK"}`` or ``verify.smoke_timeout_s`` passed. It polls in short rounds: between
them, a service that exited ends the wait at once, with its exit code and its last log lines.
"""

from __future__ import annotations

import json
import time

from wicked_dr.errors import DockerError
from wicked_dr.repository.verification import ProbeResult
from wicked_dr.sources.base import ProbeBench, ScratchServiceHandle, SmokeSettings

NAME = "smoke"
DYNAMIC = "/var/portal-api/dynamic"
STATIC = "/var/portal-api/static"
STATIC_FILL = "/static"
# One polling container's budget: how soon a service that died is noticed.
ROUND_S = 5.0
LOG_BYTES = 2000

# Run with python3 -I in the service's network namespace: argv = port, budget in seconds.
PING_SCRIPT = r"""
import json, sys, time, urllib.request
port, budget = int(sys.argv[1]), float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + budget
error = "no answer"
while True:
    try:
        with opener.open(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            body = json.loads(response.read(65536).decode())
            if response.status == 200 and isinstance(body, dict) and body.get("message") == "OK":
                print(json.dumps({"ok": True, "version": str(body.get("version", ""))}))
                sys.exit(0)
            error = f"HTTP {response.status}: {str(body)[:200]}"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    if time.monotonic() >= deadline:
        print(json.dumps({"ok": False, "error": error}))
        sys.exit(1)
    time.sleep(0.2)
"""


def probe_smoke(bench: ProbeBench, data_volume: str) -> ProbeResult:
    """Start portal-api on ``data_volume`` and wait for ``GET /ping``."""
    smoke = bench.smoke
    assert smoke is not None
    started = time.monotonic()
    run = bench.scratch
    run.ensure_image(smoke.image, bench.pull)
    static = run.volume("static")
    run.fill(static, smoke.static_tar, bench.image, STATIC_FILL)
    run.own_root(data_volume, bench.owner, bench.image)
    mounts = {data_volume: DYNAMIC, static: STATIC}
    for path in smoke.writable_dirs:
        copy = run.volume("writable")
        run.copy_from_image(copy, smoke.image, path, bench.owner)
        mounts[copy] = path
    service = run.service(
        smoke.image, list(smoke.command), mounts,
        user=smoke.user, environment=smoke.environment, readonly=[static],
        must_stay_up=False)
    problems, figures = _wait_for_ping(bench, smoke, service, started)
    return ProbeResult(NAME, problems, (), round(time.monotonic() - started, 3), figures)


def _wait_for_ping(bench: ProbeBench, smoke: SmokeSettings, service: ScratchServiceHandle,
                   started: float) -> tuple[tuple[str, ...], dict[str, float]]:
    deadline = time.monotonic() + smoke.timeout_s
    last = "no answer"
    rounds = 0
    while True:
        bench.cancel.check()
        status, code = service.state()
        if status != "running":
            return (f"portal-api did not answer /ping: it {status} with exit code {code} "
                    f"before answering; its last output: {_tail(service)}",), {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return (f"portal-api did not answer /ping within {smoke.timeout_s:g} s (last "
                    f"error: {last}); its last output: {_tail(service)}",), {}
        rounds += 1
        budget = min(ROUND_S, remaining)
        try:
            outcome = bench.scratch.run(
                bench.image,
                ["python3", "-I", "-c", PING_SCRIPT, str(smoke.port), f"{budget:.3f}"],
                timeout_s=budget + 30, network_mode=f"container:{service.id}",
                cancel=bench.cancel)
        except DockerError:
            # The service may have ended between its check and the poller's start (its
            # network namespace went with it): that is the finding; anything else is not.
            if service.state()[0] != "running":
                continue
            raise
        try:
            answer = json.loads(outcome.stdout)
        except ValueError:
            answer = {"ok": False, "error": (outcome.stderr.strip().splitlines()
                                             or [f"the poller exited {outcome.exit_code}"])[-1]}
        if answer.get("ok"):
            return (), {"ping_s": round(time.monotonic() - started, 3),
                        "ping_rounds": float(rounds)}
        last = str(answer.get("error", "no answer"))


def _tail(service: ScratchServiceHandle) -> str:
    lines = service.logs(LOG_BYTES).strip().splitlines()[-15:]
    return " | ".join(lines) if lines else "(none)"
