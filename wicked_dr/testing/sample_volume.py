"""Generate a realistic wicked dynamic data volume (portal-api's JSON folder) for tests and benches.

The layout follows /work/shared/wicked-facts.md ("The dynamic data volume"). Content carries the
entropy of the real thing (random hex ids, bcrypt hashes, encrypted secrets) so compression and
deduplication are not flattered, and JSON is formatted as portal-api writes it
(``JSON.stringify(x, null, 2)``: two-space indent, no trailing newline, non-ASCII unescaped).

Generation is streaming: users are produced one at a time and index files are appended to as
they go, so 200 k users need no more memory than 2 k. Output is a pure function of the seed.
"""

from __future__ import annotations

import json
import math
import os
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Top-level folders portal-api creates in the dynamic data folder.
FOLDERS = (
    "users", "applications", "subscriptions", "subscription_index", "subscription_api_index",
    "approvals", "verifications", "webhooks", "registrations", "grants", "namespaces",
)
LISTENERS = ("mailer", "chatbot", "kong-adapter")

# (api id, auth, plans): a small API catalogue like a typical installation's static config.
APIS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("petstore", "key-auth", ("basic", "unlimited")),
    ("orders-v1", "oauth2", ("basic", "gold")),
    ("orders-v2", "oauth2", ("basic", "gold", "unlimited")),
    ("customers", "oauth2", ("basic",)),
    ("invoices", "oauth2", ("basic", "internal")),
    ("weather", "key-auth", ("basic",)),
    ("search", "oauth2", ("basic", "unlimited")),
    ("documents", "oauth2", ("gold",)),
)
SCOPES = ("read", "write", "admin", "profile", "email", "offline")
POOL = "wicked"
NS_POOL = "partner"
NAMESPACES = ("acme", "globex", "initech", "umbrella")
_BCRYPT_ALPHABET = "./" + string.ascii_uppercase + string.ascii_lowercase + string.digits
_WORDS = (
    "alpha", "beta", "gamma", "delta", "orbit", "nova", "pixel", "cargo", "ledger", "falcon",
    "harbor", "quartz", "summit", "vertex", "willow", "zephyr", "atlas", "bridge", "comet", "dune",
)
_FIRST = ("anna", "ben", "chloé", "david", "eva", "felix", "greta", "hugo", "ines", "jonas",
          "karl", "lena", "mia", "noah", "olga", "paul", "rosa", "sven", "tina", "ülrich")
_LAST = ("meier", "schmidt", "müller", "weber", "wagner", "becker", "hoffmann", "koch", "bauer",
         "richter", "klein", "wolf", "neumann", "schwarz", "zimmermann", "braun", "krüger")
_DOMAINS = ("example.com", "example.org", "haufe-lexware.example", "partner.example")
_CITIES = ("Freiburg", "Berlin", "München", "Hamburg", "Köln", "Leipzig", "Stuttgart", "Bern")
_BASE_MS = 1_500_000_000_000  # mid-2017, when 0.x installations were common


@dataclass
class VolumeStats:
    """What ``generate`` wrote: counts of entities and files, and the bytes on disk."""

    users: int = 0
    applications: int = 0
    subscriptions: int = 0
    files: int = 0
    bytes: int = 0
    orphaned_subscription_files: int = 0
    stale_index_entries: int = 0
    user_ids: list[str] = field(default_factory=list, repr=False)


def dumps(value: Any) -> str:
    """Serialise like node's ``JSON.stringify(value, null, 2)``."""
    return json.dumps(value, indent=2, ensure_ascii=False)


class _Rand:
    """The seeded random helpers every generated value comes from (determinism lives here)."""

    def __init__(self, seed: int | str) -> None:
        self.rng = random.Random(seed)

    def hex(self, nbytes: int) -> str:
        return self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def wicked_id(self) -> str:
        # portal-api's utils.createRandomId(): 20 random bytes as hex.
        return self.hex(20)

    def bcrypt(self) -> str:
        return "$2a$10$" + "".join(self.rng.choices(_BCRYPT_ALPHABET, k=53))

    def encrypted(self, nbytes: int) -> str:
        # An AES-encrypted value as portal-api stores it: "!" + hex (iv and cipher text).
        return "!" + self.hex(nbytes)

    def iso_date(self, base_ms: int) -> str:
        ms = base_ms + self.rng.randrange(0, 3 * 365 * 86_400_000)
        return _iso(ms)

    def utc_ms(self) -> int:
        return _BASE_MS + self.rng.randrange(0, 3 * 365 * 86_400_000)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def count(self, mean: float) -> int:
        """A small non-negative count with the given mean (binomial, so 0 is common)."""
        if mean <= 0:
            return 0
        trials = max(3, math.ceil(mean * 2))
        p = mean / trials
        return sum(1 for _ in range(trials) if self.rng.random() < p)


def _iso(ms: int) -> str:
    import datetime as _dt

    t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class _ArrayWriter:
    """Streams a JSON array to a file in JSON.stringify(…, null, 2) format, one entry at a time."""

    def __init__(self, path: Path, stats: VolumeStats) -> None:
        self.path = path
        self._stats = stats
        self._fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._count = 0

    def _put(self, text: str) -> None:
        data = text.encode("utf-8")
        self._fh.write(data)
        self._stats.bytes += len(data)

    def add(self, entry: Any) -> None:
        self._put(("[\n  " if self._count == 0 else ",\n  ") + dumps(entry).replace("\n", "\n  "))
        self._count += 1

    def close(self) -> None:
        self._put("[]" if self._count == 0 else "\n]")
        self._fh.close()


class _Writer:
    """Writes whole files under the volume root and keeps the file and byte counts."""

    def __init__(self, root: Path, stats: VolumeStats) -> None:
        self.root = root
        self.stats = stats

    def write(self, rel: str, value: Any) -> None:
        data = dumps(value).encode("utf-8")
        with open(self.root / rel, "wb") as fh:
            fh.write(data)
        self.stats.files += 1
        self.stats.bytes += len(data)

    def array(self, rel: str) -> _ArrayWriter:
        self.stats.files += 1
        return _ArrayWriter(self.root / rel, self.stats)


@dataclass
class _User:
    id: str
    email: str
    custom_id: str | None
    apps: list[str]


def _links(app_id: str) -> dict[str, Any]:
    return {"application": {"href": f"/applications/{app_id}"}}


def _user_doc(r: _Rand, user: _User, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": user.id}
    if user.custom_id:
        doc["customId"] = user.custom_id
    doc["validated"] = r.chance(0.9)
    doc["email"] = user.email
    if not user.custom_id:
        doc["password"] = r.bcrypt()
    doc["groups"] = ["admin"] if r.chance(0.01) else (["dev"] if r.chance(0.3) else [])
    doc["applications"] = [{"id": a, "_links": _links(a)} for a in user.apps]
    doc["name"] = name
    doc["changedBy"] = user.id
    doc["changedDate"] = r.iso_date(_BASE_MS)
    return doc


def _app_doc(r: _Rand, app_id: str, owners: list[dict[str, str]]) -> dict[str, Any]:
    confidential = r.chance(0.6)
    uris = [f"https://{app_id}.{r.rng.choice(_DOMAINS)}/callback"]
    if r.chance(0.3):
        uris.append(f"http://localhost:{r.rng.randrange(3000, 9000)}/oauth2/callback")
    return {
        "id": app_id,
        "name": app_id.replace("-", " ").title(),
        "description": (f"{r.rng.choice(_WORDS).title()} integration {r.hex(4)} for "
                        f"{owners[0]['email']}, ticket {r.rng.choice(_WORDS).upper()}-"
                        f"{r.rng.randrange(100, 99999)}"),
        "redirectUri": uris[0],
        "redirectUris": uris,
        "confidential": confidential,
        "clientType": "confidential" if confidential else r.rng.choice(
            ("public_spa", "public_native")),
        "owners": owners,
        "changedBy": owners[0]["userId"],
        "changedDate": r.iso_date(_BASE_MS),
    }


def _subscription(r: _Rand, app_id: str, api: tuple[str, str, tuple[str, ...]],
                  user_id: str) -> dict[str, Any]:
    api_id, auth, plans = api
    approved = r.chance(0.9)
    sub: dict[str, Any] = {
        "id": r.wicked_id(),
        "application": app_id,
        "api": api_id,
        "plan": r.rng.choice(plans),
        "auth": auth,
        "approved": approved,
        "trusted": r.chance(0.05),
    }
    if approved:
        if auth == "oauth2":
            sub["clientId"] = r.wicked_id()
            sub["clientSecret"] = r.encrypted(48)
        else:
            sub["apikey"] = r.encrypted(32)
    if auth == "oauth2":
        sub["allowedScopesMode"] = "select"
        sub["allowedScopes"] = sorted(r.rng.sample(SCOPES, r.rng.randrange(1, 4)))
    sub["changedBy"] = user_id
    sub["changedDate"] = r.iso_date(_BASE_MS)
    return sub


def _meta(r: _Rand, alive_ms: int) -> dict[str, Any]:
    return {
        "dynamicVersion": 11,
        "config_hash": {"hash": r.hex(16), "date": _iso(alive_ms - 86_400_000)},
        "principal": {"id": r.wicked_id(), "aliveDate": alive_ms, "version": "0.12.3"},
    }


def _event(r: _Rand, action: str, entity: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": r.wicked_id(), "action": action, "entity": entity, "data": data,
            "utc": r.utc_ms()}


class _Indexes:
    """Every index file that grows with the user count, streamed while users are generated."""

    def __init__(self, w: _Writer) -> None:
        self.users = w.array("users/_index.json")
        self.apps = w.array("applications/_index.json")
        self.approvals = w.array("approvals/_index.json")
        self.verifications = w.array("verifications/_index.json")
        self.pool = w.array(f"registrations/{POOL}.json")
        self.ns_pools = {ns: w.array(f"registrations/{NS_POOL}_{ns}.json") for ns in NAMESPACES}
        self.api_index = {api[0]: w.array(f"subscription_api_index/{api[0]}.json")
                          for api in APIS}

    def close(self) -> None:
        for writer in (self.users, self.apps, self.approvals, self.verifications, self.pool,
                       *self.ns_pools.values(), *self.api_index.values()):
            writer.close()


def _app_ids(r: _Rand, serial: Iterator[int]) -> str:
    return f"{r.rng.choice(_WORDS)}-{r.rng.choice(_WORDS)}-{next(serial):x}"


_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "é": "e"})


def _person(r: _Rand, n: int) -> tuple[str, str]:
    first, last = r.rng.choice(_FIRST), r.rng.choice(_LAST)
    email = f"{first}.{last}{n}@{r.rng.choice(_DOMAINS)}".translate(_ASCII)
    return f"{first.title()} {last.title()}", email


def _registration(r: _Rand, user_id: str, name: str) -> dict[str, Any]:
    first, _, last = name.partition(" ")
    return {
        "userId": user_id, "poolId": POOL, "name": name, "firstName": first, "lastName": last,
        "company": f"{r.rng.choice(_WORDS).title()} {r.rng.choice(_WORDS).title()} GmbH",
        "street": f"{r.rng.choice(_LAST).title()}straße {r.rng.randrange(1, 200)}",
        "zip": f"{r.rng.randrange(10000, 99999)}", "city": r.rng.choice(_CITIES),
        "country": "DE", "phone": f"+49 {r.rng.randrange(30, 999)} {r.rng.randrange(10**6, 10**8)}",
        "newsletter": r.chance(0.3), "acceptedTerms": r.iso_date(_BASE_MS)}


def _write_registrations(r: _Rand, w: _Writer, idx: _Indexes, user: _User, name: str) -> None:
    regs: dict[str, list[dict[str, Any]]] = {POOL: [_registration(r, user.id, name)]}
    idx.pool.add({"userId": user.id, "name": name})
    if r.chance(0.1):
        ns = r.rng.choice(NAMESPACES)
        regs[NS_POOL] = [{"userId": user.id, "poolId": NS_POOL, "namespace": ns, "name": name,
                          "company": f"{ns.title()} {r.hex(3)}"}]
        idx.ns_pools[ns].add({"userId": user.id, "namespace": ns, "name": name})
    w.write(f"registrations/{user.id}.json", regs)


def _write_apps(r: _Rand, w: _Writer, idx: _Indexes, stats: VolumeStats, user: _User,
                new_apps: list[tuple[str, list[dict[str, str]]]]) -> list[dict[str, Any]]:
    """Write the user's new applications and their subscriptions; return grants to record."""
    grants: list[dict[str, Any]] = []
    for app_id, owners in new_apps:
        w.write(f"applications/{app_id}.json", _app_doc(r, app_id, owners))
        idx.apps.add({"id": app_id})
        stats.applications += 1
        subs = []
        for api in r.rng.sample(APIS, min(len(APIS), r.count(1.1))):
            sub = _subscription(r, app_id, api, user.id)
            subs.append(sub)
            idx.api_index[api[0]].add({"application": app_id, "plan": sub["plan"]})
            if "clientId" in sub:
                w.write(f"subscription_index/{sub['clientId']}.json",
                        {"application": app_id, "api": api[0]})
            if not sub["approved"]:
                idx.approvals.add({
                    "id": r.wicked_id(), "subscriptionId": sub["id"],
                    "user": {"id": user.id, "email": user.email},
                    "api": {"id": api[0], "name": api[0].title()},
                    "application": {"id": app_id, "name": app_id.replace("-", " ").title()},
                    "plan": {"id": sub["plan"], "name": sub["plan"].title()},
                })
            if sub["auth"] == "oauth2" and sub["approved"] and r.chance(0.4):
                grants.append({"apiId": api[0], "applicationId": app_id, "userId": user.id,
                               "grants": [{"scope": s, "grantedDate": r.iso_date(_BASE_MS)}
                                          for s in sub["allowedScopes"]]})
        stats.subscriptions += len(subs)
        w.write(f"subscriptions/{app_id}.subs.json", subs)
    return grants


def _write_untidiness(r: _Rand, w: _Writer, stats: VolumeStats, users: int) -> None:
    """What real installations carry: subs of deleted apps and stale subscription_index entries."""
    for _ in range(max(1, users // 2000)):
        app_id = f"deleted-app-{r.hex(4)}"
        api = r.rng.choice([a for a in APIS if a[1] == "oauth2"])
        w.write(f"subscriptions/{app_id}.subs.json", [_subscription(r, app_id, api, r.wicked_id())])
        stats.orphaned_subscription_files += 1
        w.write(f"subscription_index/{r.wicked_id()}.json", {"application": app_id,
                                                              "api": api[0]})
        stats.stale_index_entries += 1


def _write_static(r: _Rand, w: _Writer) -> None:
    w.write("meta.json", _meta(r, _BASE_MS + 3 * 365 * 86_400_000))
    w.write("webhooks/_listeners.json",
            [{"id": lid, "url": f"http://portal-{lid}:300{n}/"}
             for n, lid in enumerate(LISTENERS, start=3)])
    w.write(f"namespaces/{NS_POOL}.json",
            [{"namespace": ns, "poolId": NS_POOL, "description": f"{ns.title()} partners"}
             for ns in NAMESPACES])


def _write_webhooks(r: _Rand, w: _Writer, sample_users: list[_User]) -> None:
    for lid in LISTENERS:
        events = []
        for user in sample_users[: r.rng.randrange(0, 12)]:
            if user.apps and r.chance(0.3):
                # application.delete events carry the subscriptions' secrets in clear text.
                events.append(_event(r, "delete", "application", {
                    "applicationId": user.apps[0], "userId": user.id,
                    "subscriptions": [{"api": "orders-v1", "clientId": r.wicked_id(),
                                       "clientSecret": r.hex(24)}]}))
            else:
                events.append(_event(r, "add", "user", {"userId": user.id,
                                                         "email": user.email}))
        w.write(f"webhooks/{lid}.json", events)


@dataclass(frozen=True)
class _Identity:
    id: str
    name: str
    email: str
    custom_id: str | None


def _identity(r: _Rand, n: int) -> _Identity:
    name, email = _person(r, n)
    custom_id = f"google:{r.rng.randrange(10**20, 10**21)}" if r.chance(0.2) else None
    return _Identity(r.wicked_id(), name, email, custom_id)


def generate(root: Path, users: int, *, seed: int = 0, apps_per_user: float = 1.0,
             untidy: bool = True, keep_user_ids: bool = False) -> VolumeStats:
    """Write a dynamic data volume with ``users`` users under ``root`` (created if missing).

    About 5 files per user. ``untidy`` adds orphaned subscription files and stale
    subscription_index entries. ``keep_user_ids`` records the ids in the stats (memory grows
    with ``users``; leave it off for large volumes).
    """
    root.mkdir(parents=True, exist_ok=True)
    for folder in FOLDERS:
        (root / folder).mkdir(exist_ok=True)
    r = _Rand(seed)
    # Identities come from their own stream, one user ahead, so an application can name its
    # co-owner (the next user) while users are still written one at a time.
    ids = _Rand(f"{seed}:identities")
    stats = VolumeStats()
    w = _Writer(root, stats)
    idx = _Indexes(w)
    _write_static(r, w)
    serial = iter(range(1, 1 << 62))
    carried: list[str] = []
    sample_users: list[_User] = []
    nxt = _identity(ids, 0) if users else None
    for n in range(users):
        me = nxt
        assert me is not None
        nxt = _identity(ids, n + 1) if n + 1 < users else None
        user = _User(me.id, me.email, me.custom_id, list(carried))
        carried = []
        new_apps = []
        for _ in range(r.count(apps_per_user)):
            app_id = _app_ids(r, serial)
            user.apps.append(app_id)
            owners = [{"userId": me.id, "email": me.email, "role": "owner"}]
            if nxt is not None and r.chance(0.05):
                owners.append({"userId": nxt.id, "email": nxt.email, "role": "collaborator"})
                carried.append(app_id)
            new_apps.append((app_id, owners))
        w.write(f"users/{me.id}.json", _user_doc(r, user, me.name))
        # JSON.stringify drops undefined members: users without a customId have no key.
        entry = {"id": me.id, "email": me.email}
        if me.custom_id:
            entry["customId"] = me.custom_id
        idx.users.add(entry)
        stats.users += 1
        if keep_user_ids:
            stats.user_ids.append(me.id)
        grants = _write_apps(r, w, idx, stats, user, new_apps)
        if grants:
            w.write(f"grants/{me.id}.json", grants)
        if r.chance(0.8):
            _write_registrations(r, w, idx, user, me.name)
        if r.chance(0.01):
            idx.verifications.add({"id": r.wicked_id(), "type": "email", "email": me.email,
                                   "userId": me.id,
                                   "link": f"https://portal.example.com/verification/{r.hex(20)}",
                                   "utc": r.utc_ms()})
        if len(sample_users) < 12:
            sample_users.append(user)
    idx.close()
    _write_webhooks(r, w, sample_users)
    if untidy:
        _write_untidiness(r, w, stats, users)
    return stats


# ---------------------------------------------------------------------------------------------
# mutate: what a day of portal traffic does to the folder, for incremental backup tests.

# Files mutate may rewrite: per-entity documents. Indexes change only through adds/deletes.
_REWRITABLE_DIRS = ("users", "applications", "subscriptions", "grants", "registrations",
                    "webhooks")


def _read(root: Path, rel: str) -> Any:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def _rewrite(root: Path, rel: str, value: Any) -> None:
    # Truncate and write the same inode, as node's writeFileSync does.
    with open(root / rel, "wb") as fh:
        fh.write(dumps(value).encode("utf-8"))


def _touch_date(r: _Rand, doc: dict[str, Any]) -> None:
    doc["changedDate"] = _iso(_BASE_MS + 3 * 365 * 86_400_000 + r.rng.randrange(1, 86_400_000))


def _mutated(r: _Rand, rel: str, doc: Any) -> Any | None:
    """The changed document for ``rel``, or None when this file has nothing to change."""
    top = rel.partition("/")[0]
    if rel == "meta.json":
        doc["principal"]["aliveDate"] += 15_000  # same size: the 15 s heartbeat
    elif top == "users":
        if "password" in doc:
            doc["password"] = r.bcrypt()  # a password change: a same-size rewrite
        else:
            doc["validated"] = not doc["validated"]
        _touch_date(r, doc)
    elif top == "applications":
        doc["description"] = f"{doc['description'].split(' (')[0]} (rev {r.hex(3)})"
        _touch_date(r, doc)
    elif top == "subscriptions":
        if not doc:
            return None
        for sub in doc:
            for key, nbytes in (("clientSecret", 48), ("apikey", 32)):
                if key in sub:
                    sub[key] = r.encrypted(nbytes)  # secret rotation: same size
            _touch_date(r, sub)
    elif top == "grants":
        doc[0]["grants"].append({"scope": r.rng.choice(SCOPES),
                                 "grantedDate": r.iso_date(_BASE_MS)})
    elif top == "registrations":
        for regs in doc.values():
            regs[0]["phone"] = f"+49 {r.rng.randrange(30, 999)} {r.rng.randrange(10**6, 10**8)}"
    elif top == "webhooks":
        doc.append(_event(r, "update", "user", {"userId": r.wicked_id()}))
    return doc


def _rewritable(rel: str) -> bool:
    top, _, name = rel.partition("/")
    if rel == "meta.json":
        return True
    if top not in _REWRITABLE_DIRS or name.startswith("_") or "/" in name:
        return False
    # registrations/<poolId>.json are pool indexes; per-user files are named by a 40-hex id.
    return top != "registrations" or len(name) == 45


def _all_files(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        base = Path(dirpath).relative_to(root)
        out.extend(str(base / f) if str(base) != "." else f
                   for f in files if not f.endswith(".lock"))
    return sorted(out)


def _remove_from_array(root: Path, rel: str, key: str, value: str) -> bool:
    path = root / rel
    if not path.exists():
        return False
    entries = _read(root, rel)
    kept = [e for e in entries if e.get(key) != value]
    if len(kept) != len(entries):
        _rewrite(root, rel, kept)
        return True
    return False


def _delete_user(root: Path, user_id: str, changed: set[str]) -> None:
    """Delete a user without applications the way portal-api does, with its index entries."""
    for rel in (f"users/{user_id}.json", f"registrations/{user_id}.json",
                f"grants/{user_id}.json"):
        if (root / rel).exists():
            (root / rel).unlink()
            changed.add(rel)
    for rel in (f"registrations/{POOL}.json", "verifications/_index.json",
                *(f"registrations/{NS_POOL}_{ns}.json" for ns in NAMESPACES)):
        if _remove_from_array(root, rel, "userId", user_id):
            changed.add(rel)


def _add_user(root: Path, r: _Rand, n: int, index: list[dict[str, Any]],
              changed: set[str]) -> None:
    """Register a new user (a sign-up): user file, registration, verification, mail event."""
    me = _identity(r, n)
    user = _User(me.id, me.email, me.custom_id, [])
    _rewrite(root, f"users/{me.id}.json", _user_doc(r, user, me.name))
    entry = {"id": me.id, "email": me.email}
    if me.custom_id:
        entry["customId"] = me.custom_id
    index.append(entry)
    _rewrite(root, f"registrations/{me.id}.json", {POOL: [_registration(r, me.id, me.name)]})
    appends = (
        (f"registrations/{POOL}.json", {"userId": me.id, "name": me.name}),
        ("verifications/_index.json", {
            "id": r.wicked_id(), "type": "email", "email": me.email, "userId": me.id,
            "link": f"https://portal.example.com/verification/{r.hex(20)}", "utc": r.utc_ms()}),
        ("webhooks/mailer.json", _event(r, "add", "user", {"userId": me.id,
                                                          "email": me.email})),
    )
    for rel, item in appends:
        _rewrite(root, rel, [*_read(root, rel), item])
        changed.add(rel)
    changed.update({f"users/{me.id}.json", f"registrations/{me.id}.json"})


def mutate(root: Path, fraction: float, *, seed: int = 0) -> list[str]:
    """Change about ``fraction`` of the files under ``root`` in place; return the touched paths.

    meta.json always gets its heartbeat (a same-size rewrite); other picks are per-entity files
    (password changes and secret rotations are same-size too). A few users are added and a few
    without applications deleted, keeping every index consistent. Paths are relative, sorted,
    and include added and deleted files.
    """
    r = _Rand(f"{seed}:mutate")
    files = _all_files(root)
    target = max(1, round(fraction * len(files)))
    changed: set[str] = set()
    churn = max(1, target // 50)
    index: list[dict[str, Any]] = _read(root, "users/_index.json")
    deleted_ids: set[str] = set()
    for entry in r.rng.sample(index, min(len(index), churn * 20)):
        if len(deleted_ids) >= churn:
            break
        if not _read(root, f"users/{entry['id']}.json")["applications"]:
            _delete_user(root, entry["id"], changed)
            deleted_ids.add(entry["id"])
    index = [e for e in index if e["id"] not in deleted_ids]
    for _ in range(churn):
        _add_user(root, r, r.rng.randrange(10**6, 10**9), index, changed)
    _rewrite(root, "users/_index.json", index)
    changed.add("users/_index.json")
    candidates = [f for f in files if _rewritable(f) and f not in changed and f != "meta.json"]
    r.rng.shuffle(candidates)
    for rel in ["meta.json", *candidates]:
        if len(changed) >= target:
            break
        doc = _mutated(r, rel, _read(root, rel))
        if doc is not None:
            _rewrite(root, rel, doc)
            changed.add(rel)
    return sorted(changed)
