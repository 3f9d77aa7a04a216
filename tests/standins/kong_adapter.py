"""Stand-in of wicked's portal-kong-adapter (standard library + psycopg2).

It writes Kong's database directly with SQL (the real adapter talks to Kong's admin API;
the rows that end up in the database are the same for what wicked-dr cares about: consumers,
their oauth2 credentials and services). Only approved ``oauth2`` subscriptions with a
client id are synced (no key-auth, ACLs, plugins or routes). env:

* ``PORT`` (3002): listens on 127.0.0.1 only;
* ``PORTAL_API_URL``: portal-api (its ``/ping`` and the stand-in's ``/standin/subscriptions``);
* ``KONG_DSN``: libpq DSN of Kong's database;
* ``KONG_GENERATION``: one of 0.11, 0.14, 1.x, 2.x, 3.x (2.x/3.x: ``ws_id``, workspace
  ``default``);
* ``ALLOW_RESYNC``: non-empty enables ``POST /resync``;
* ``STATE``: records go to ``$STATE/kong-adapter.events.jsonl``;
* ``HEALTHY2_PINGS`` (2): pings answered ``healthy: 2`` after the start-up sync finished.

Start-up: wait until portal-api's ``/ping`` answers 200, then a full sync: one service per
API (``name`` = API id; existing ones kept), every consumer deleted (credentials and tokens
go by ON DELETE CASCADE) and one consumer per subscription recreated with NEW UUIDs
(``username = <appId>$<apiId>``, ``custom_id`` = subscription id) with its oauth2
credential (``client_id``/``client_secret`` from wicked, ``name`` = app id). Retries every
0.2 s on failure. ``GET /ping``: 503 ``{"healthy": 2}`` while initialising (and for
HEALTHY2_PINGS pings after), 200 ``{"healthy": 1}`` when up, 503 ``{"healthy": 0}`` when
portal-api or Kong's database is unreachable once the start-up sync began (watched every
0.2 s). ``POST /resync``: 404 without ALLOW_RESYNC, else a full sync, 200 with statistics
``{actions, failedComparisons, GET, POST, DELETE}`` or 500 ``{"err"}``. SIGTERM records
``stop`` and exits 0 at once.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg2  # type: ignore[import-untyped]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _records import record, send_json, stop_on_sigterm  # type: ignore[import-not-found]

COMPONENT = "kong-adapter"
PORT = int(os.environ.get("PORT", "3002"))
PORTAL_API_URL = os.environ.get("PORTAL_API_URL", "http://127.0.0.1:3001").rstrip("/")
KONG_DSN = os.environ.get("KONG_DSN", "")
GENERATION = os.environ.get("KONG_GENERATION", "1.x")
ALLOW_RESYNC = bool(os.environ.get("ALLOW_RESYNC"))
HEALTHY2_PINGS = int(os.environ.get("HEALTHY2_PINGS", "2"))
RETRY_S = 0.2


class State:
    """What /ping reports; guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.sync_started = False
        self.synced = False
        self.reachable = True
        self.pings_after_sync = 0


STATE = State()


def _get_json(path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(PORTAL_API_URL + path, timeout=2) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _portal_up() -> bool:
    try:
        return _get_json("/ping")[0] == 200
    except (OSError, ValueError):
        return False


def _kong_up() -> bool:
    try:
        conn = psycopg2.connect(KONG_DSN, connect_timeout=2, application_name=COMPONENT)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def _subscriptions() -> list[dict[str, Any]]:
    status, subs = _get_json("/standin/subscriptions")
    if status != 200 or not isinstance(subs, list):
        raise RuntimeError(f"portal-api answered {status} for /standin/subscriptions")
    return [s for s in subs if isinstance(s, dict) and s.get("auth") == "oauth2"
            and s.get("approved") and s.get("clientId")]


def full_sync() -> dict[str, Any]:
    """Make Kong's database match wicked's subscriptions; Kong-admin-API-style statistics."""
    subs = _subscriptions()
    actions: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"actions": actions, "failedComparisons": [], "GET": 2,
                             "POST": 0, "PUT": 0, "PATCH": 0, "DELETE": 0}
    wanted = {f"{s['application']}${s['api']}" for s in subs}
    conn = psycopg2.connect(KONG_DSN, connect_timeout=5, application_name=COMPONENT)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            ws = None
            if GENERATION in ("2.x", "3.x"):
                cur.execute("SELECT id::text FROM workspaces WHERE name = 'default'")
                row = cur.fetchone()
                ws = row[0] if row else None
            table = "apis" if GENERATION == "0.11" else "services"
            cur.execute(f"SELECT name FROM {table}")
            existing = {r[0] for r in cur.fetchall()}
            for api_id in sorted({s["api"] for s in subs} - existing):
                if table == "apis":
                    cur.execute("INSERT INTO apis (id, name, upstream_url, preserve_host) "
                                "VALUES (gen_random_uuid(), %s, 'http://upstream', false)",
                                (api_id,))
                    body = {"name": api_id, "upstream_url": "http://upstream"}
                elif ws:
                    cur.execute("INSERT INTO services (id, name, host, ws_id) VALUES "
                                "(gen_random_uuid(), %s, 'upstream', %s)", (api_id, ws))
                    body = {"name": api_id, "host": "upstream"}
                else:
                    cur.execute("INSERT INTO services (id, name, host) VALUES "
                                "(gen_random_uuid(), %s, 'upstream')", (api_id,))
                    body = {"name": api_id, "host": "upstream"}
                actions.append({"method": "POST", "url": f"/{table}", "body": body})
            cur.execute("DELETE FROM consumers RETURNING id::text, username")
            deleted = cur.fetchall()
            for consumer_id, _username in sorted(deleted, key=lambda r: str(r[1])):
                actions.append({"method": "DELETE", "url": f"/consumers/{consumer_id}",
                                "body": None})
            ws_col, ws_val = (", ws_id", ", %(ws)s") if ws else ("", "")
            for sub in sorted(subs, key=lambda s: (s["application"], s["api"])):
                params = {"u": f"{sub['application']}${sub['api']}", "c": sub["id"], "ws": ws,
                          "name": sub["application"], "cid": sub["clientId"],
                          "sec": sub.get("clientSecret")}
                cur.execute(f"INSERT INTO consumers (id, username, custom_id{ws_col}) VALUES "
                            f"(gen_random_uuid(), %(u)s, %(c)s{ws_val}) RETURNING id::text",
                            params)
                row = cur.fetchone()
                consumer_id = row[0] if row else None
                cur.execute(f"INSERT INTO oauth2_credentials (id, name, consumer_id, "
                            f"client_id, client_secret{ws_col}) VALUES (gen_random_uuid(), "
                            f"%(name)s, %(cons)s, %(cid)s, %(sec)s{ws_val})",
                            {**params, "cons": consumer_id})
                actions.append({"method": "POST", "url": "/consumers",
                                "body": {"username": params["u"], "custom_id": params["c"]}})
                actions.append({"method": "POST", "url": f"/consumers/{consumer_id}/oauth2",
                                "body": {"name": params["name"], "client_id": params["cid"],
                                         "client_secret": params["sec"]}})
    finally:
        conn.close()
    for action in actions:
        stats[action["method"]] += 1
    unknown = sum(1 for _, username in deleted if username not in wanted)
    record(COMPONENT, "sync", consumers=len(subs), deleted=len(deleted), unknown=unknown,
           services_created=sum(1 for a in actions if a["url"] == f"/{table}"))
    return stats


def _startup() -> None:
    """Wait for portal-api, sync, retry every RETRY_S; then watch the dependencies."""
    while True:
        if _portal_up():
            with STATE.lock:
                STATE.sync_started = True
            try:
                with STATE.sync_lock:
                    full_sync()
                break
            except (OSError, RuntimeError, ValueError, KeyError, psycopg2.Error) as exc:
                print(f"start-up sync failed: {exc}", flush=True)
                with STATE.lock:
                    STATE.reachable = False
        elif STATE.sync_started:
            with STATE.lock:
                STATE.reachable = False
        time.sleep(RETRY_S)
    with STATE.lock:
        STATE.synced, STATE.reachable = True, True
    record(COMPONENT, "ready")
    while True:
        up = _portal_up() and _kong_up()
        with STATE.lock:
            STATE.reachable = up
        time.sleep(RETRY_S)


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: Any) -> None:
        send_json(self, status, body)

    def do_GET(self) -> None:
        if self.path != "/ping":
            self._send(404, {"message": "not found"})
            return
        with STATE.lock:
            if not STATE.reachable:
                healthy = 0
            elif not STATE.synced or STATE.pings_after_sync < HEALTHY2_PINGS:
                healthy = 2
                if STATE.synced:
                    STATE.pings_after_sync += 1
            else:
                healthy = 1
        self._send(200 if healthy == 1 else 503, {"healthy": healthy})

    def do_POST(self) -> None:
        if self.path != "/resync" or not ALLOW_RESYNC:
            self._send(404, {"message": "not found"})
            return
        record(COMPONENT, "resync")
        try:
            with STATE.sync_lock:
                stats = full_sync()
        except (OSError, RuntimeError, ValueError, KeyError, psycopg2.Error) as exc:
            self._send(500, {"err": str(exc)})
            return
        self._send(200, stats)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    stop_on_sigterm(COMPONENT)
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    record(COMPONENT, "start", generation=GENERATION, allow_resync=ALLOW_RESYNC,
           portal_api_url=PORTAL_API_URL)
    threading.Thread(target=_startup, daemon=True).start()
    print(f"stand-in kong-adapter on 127.0.0.1:{PORT} ({GENERATION})", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
