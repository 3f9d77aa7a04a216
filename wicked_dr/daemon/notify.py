"""Alerts: JSON events to webhooks (Slack-compatible ``text``) and healthchecks pings.

What is sent when:

* webhooks (every URL of ``notify.webhook_url`` and ``notify.webhook_urls``): event
  ``failure`` for a failed run; ``damage`` for a successful run that reported repository
  damage (a backup's ``damage`` list); ``success`` for any other successful run, only with
  ``notify.on_success``. A skipped run sends nothing.
* healthchecks (``notify.healthchecks.<job>``): ``<url>/start`` when the job starts, ``<url>``
  when it succeeds, ``<url>/fail`` when it fails, each a POST whose body is the one-line
  text. A skipped run pings nothing: the replica that holds the lease pings for the job, and
  a standby's skips must not look like runs. The service therefore calls ``job_started``
  only once a run's work begins (after the lease and live-restore gates), so that no
  ``/start`` is left without its end.

Sending happens on one background thread, in the order the events were given: a job never
waits for a slow or dead endpoint (each request may take up to ``notify.timeout_s``), and
each URL gets its events in order. ``flush(timeout)`` waits for what is pending,
``close(timeout)`` flushes and ends the thread (the daemon calls it at shutdown).

A failing endpoint is logged at warning and never raised: an alert that cannot be sent must
not turn a good backup into a failed one, nor hide why a failed one failed. URLs carry their
secret in the path or query (a Slack webhook, a healthchecks UUID), so a log line names only
the scheme and host.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from wicked_dr import __version__
from wicked_dr.actions.backup import BackupResult
from wicked_dr.config import NotifyConfig
from wicked_dr.daemon.outcome import JobName, JobOutcome, JobStatus
from wicked_dr.log import REDACTOR, get_logger

log = get_logger(__name__)

Event = Literal["failure", "damage", "success"]
USER_AGENT = f"wicked-dr/{__version__}"
DAMAGE_SHOWN = 3  # damage lines quoted in the text; the payload's list has them all


@dataclass(frozen=True)
class _Send:
    """One request to make: what to log it as, and where it goes."""

    kind: str           # "webhook failure", "healthchecks start", ...
    url: str
    body: bytes
    content_type: str


class Notifier:
    """Sends a job's start and outcome where ``notify`` says; see the module's docstring."""

    def __init__(self, config: NotifyConfig, *, repository: str, host: str) -> None:
        self._webhooks = [u.get_secret_value() for u in
                          ([config.webhook_url] if config.webhook_url else [])
                          + list(config.webhook_urls)]
        self._healthchecks = {job: url.get_secret_value().rstrip("/")
                              for job, url in config.healthchecks.items()}
        self._on_success = config.on_success
        self._timeout_s = config.timeout_s
        self._repository = REDACTOR.scrub(repository)
        self._host = host
        self._queue = _Queue(self._deliver)

    # -- events -----------------------------------------------------------------------------

    def job_started(self, job: JobName, run_id: str) -> None:
        """Ping the job's healthchecks ``/start``."""
        url = self._healthchecks.get(job)
        if url:
            text = f"wicked-dr {job} started on {self._host} (run {run_id})"
            self._queue.put(_Send("healthchecks start", f"{url}/start", text.encode(),
                                  "text/plain; charset=utf-8"))

    def job_finished(self, outcome: JobOutcome) -> None:
        """Ping healthchecks and send the webhook event the outcome calls for; never
        raises (a payload that cannot be built is logged like a failed send)."""
        try:
            self._finished(outcome)
        except Exception as exc:  # an alert must never mask the job's own result
            log.warning("notification not sent", job=outcome.job, run_id=outcome.run_id,
                        error=f"{type(exc).__name__}: {exc}")

    def _finished(self, outcome: JobOutcome) -> None:
        if outcome.status is JobStatus.SKIPPED:
            log.debug("skipped run: no notification", job=outcome.job, run_id=outcome.run_id)
            return
        event = event_of(outcome, on_success=self._on_success)
        text = self.text(outcome)
        url = self._healthchecks.get(outcome.job)
        if url:
            ok = outcome.status is JobStatus.OK
            self._queue.put(_Send("healthchecks " + ("success" if ok else "fail"),
                                  url if ok else f"{url}/fail", text.encode(),
                                  "text/plain; charset=utf-8"))
        if event is None or not self._webhooks:
            return
        body = json.dumps(self.payload(outcome, event, text), default=str).encode()
        for webhook in self._webhooks:
            self._queue.put(_Send(f"webhook {event}", webhook, body, "application/json"))

    # -- content ----------------------------------------------------------------------------

    def payload(self, outcome: JobOutcome, event: Event, text: str) -> dict[str, Any]:
        """The webhook body: Slack reads ``text``, other receivers the fields."""
        data = outcome.to_json()
        return {"text": text, "event": event, "job": outcome.job, "run_id": outcome.run_id,
                "host": self._host, "repository": self._repository,
                "status": str(outcome.status), "error": _scrub(outcome.error),
                "exit_code": outcome.exit_code, "damage": [REDACTOR.scrub(d) for d in
                                                           outcome.damage],
                "duration_s": data["duration_s"], "started": data["started"],
                "result": data["result"]}

    def text(self, outcome: JobOutcome) -> str:
        """One line a person reads in a chat channel."""
        where = f"on {self._host} (repository {self._repository})"
        took = f"after {outcome.duration_s:.1f}s, run {outcome.run_id}"
        if outcome.status is JobStatus.FAILED:
            return (f"wicked-dr {outcome.job} FAILED {where}: {_scrub(outcome.error)} "
                    f"(exit {outcome.exit_code}, {took})")
        figures = _figures(outcome)
        if outcome.damage:
            shown = "; ".join(REDACTOR.scrub(d) for d in outcome.damage[:DAMAGE_SHOWN])
            more = len(outcome.damage) - DAMAGE_SHOWN
            rest = f" (and {more} more)" if more > 0 else ""
            return (f"wicked-dr {outcome.job} succeeded {where} but found repository damage: "
                    f"{shown}{rest} ({took})")
        return f"wicked-dr {outcome.job} ok {where}{figures} ({took})"

    # -- delivery ---------------------------------------------------------------------------

    def _deliver(self, send: _Send) -> None:
        """One request; a failure is logged with the scheme and host only."""
        try:
            request = urllib.request.Request(send.url, data=send.body, method="POST",
                                             headers={"Content-Type": send.content_type,
                                                      "User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            log.warning("notification refused", kind=send.kind, endpoint=endpoint(send.url),
                        status=exc.code)
        except Exception as exc:  # refused, reset, timeout, bad URL: never past this thread
            log.warning("notification failed", kind=send.kind, endpoint=endpoint(send.url),
                        error=_reason(exc, send.url))
        else:
            log.debug("notification sent", kind=send.kind, endpoint=endpoint(send.url))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every notification given so far was sent or given up on; False when
        ``timeout`` seconds passed first."""
        return self._queue.wait_empty(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then end the sending thread; later notifications are dropped (logged)."""
        return self._queue.close(timeout)


def event_of(outcome: JobOutcome, *, on_success: bool) -> Event | None:
    """The webhook event of a finished run, None when it sends none."""
    if outcome.status is JobStatus.FAILED:
        return "failure"
    if outcome.status is JobStatus.OK and outcome.damage:
        return "damage"
    if outcome.status is JobStatus.OK and on_success:
        return "success"
    return None


def endpoint(url: str) -> str:
    """What a log line may say about a URL: its scheme and host (and port), no path,
    query or credentials (where webhook and healthchecks URLs keep their secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if parts.scheme.lower() not in ("http", "https"):
        return "(not an http(s) URL)"  # whatever it holds where a host would be stays out
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _reason(exc: BaseException, url: str) -> str:
    """The exception as one line without any part of the URL but its endpoint (urllib
    quotes a URL it cannot open in its message)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    text = f"{type(exc).__name__}: {reason if reason is not None else exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        text = "the server closed the connection without an answer"
    try:
        parts = urllib.parse.urlsplit(url)
        pieces = [url, parts.path, parts.query, parts.netloc, parts.fragment]
    except ValueError:
        pieces = [url]
    for secret in pieces:
        if len(secret) > 1:
            text = text.replace(secret, "***")
    return REDACTOR.scrub(" ".join(text.split()))


def _scrub(text: str | None) -> str | None:
    return REDACTOR.scrub(text) if text is not None else None


def _figures(outcome: JobOutcome) -> str:
    """A backup's figures for the success line."""
    result = outcome.result
    if not isinstance(result, BackupResult):
        return ""
    return (f": snapshot {result.snapshot}, {result.files} files, "
            f"{_size(result.bytes_read)} read, {_size(result.bytes_new)} new")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class _Queue:
    """A FIFO worked by one daemon thread, started on the first item; ``wait_empty`` and
    ``close`` let the owner wait for it."""

    def __init__(self, work: Callable[[_Send], None]) -> None:
        self._work = work
        self._items: deque[_Send] = deque()
        self._busy = 0  # items queued or being worked on
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, item: _Send) -> None:
        with self._cond:
            if self._closed:
                log.warning("notifier closed: notification dropped", kind=item.kind,
                            endpoint=endpoint(item.url))
                return
            self._items.append(item)
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wicked-dr-notify",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._closed)
                if not self._items:
                    return
                item = self._items.popleft()
            try:
                self._work(item)
            except Exception as exc:  # the worker outlives any one bad item
                log.warning("notification failed", kind=item.kind,
                            endpoint=endpoint(item.url), error=type(exc).__name__)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait_empty(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def close(self, timeout: float | None) -> bool:
        drained = self.wait_empty(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and drained:
            thread.join()
        return drained
