"""The clients of a chaos run: keys created and deleted, tokens rotated, pushes, lookups, reads.

Every request goes on a fresh connection to a replica picked at random. Each user's thread makes
that user's changes one at a time (so the checker knows the order of changes of each pair and each
token); reader threads push (each push carries a unique value), look devices up, read readings and
probe tokens, old ones included, and push with keys already deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from bench.chaos.history import History, Op
from devstack.processes import ROOT

TIMEOUT = 10.0  # seconds a client waits for an answer
ROTATE_EVERY = (8.0, 16.0)  # seconds between one user's token rotations (each a CLI process)


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass
class Pair:
    device_id: str
    device_name: str
    owner: str
    private: bool
    key: str | None = None
    key_id: str | None = None
    known: bool = True  # False: the last change's outcome is unknown (resolved by listing keys)

    @property
    def pair(self) -> tuple[str, str]:
        return self.device_id, self.device_name

    def ident(self) -> dict[str, str]:
        return {"device_id": self.device_id, "device_name": self.device_name}


@dataclass
class User:
    name: str
    token: str
    old_tokens: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)


def plan_pairs(users: list[User], names: int = 2, ids: int = 3) -> None:
    """Each user: ``names`` device names of ``ids`` ids each (chains); the second name private."""
    for u, user in enumerate(users):
        for n in range(names):
            for i in range(ids):
                user.pairs.append(Pair(f"d{u}{n}{i}", f"room {u}-{n}", user.name, private=n % 2 == 1))


class Client:
    """One request at a time on a fresh connection, recorded in the history."""

    def __init__(self, history: History, bases: list[str], rng: random.Random) -> None:
        self.history, self.bases, self.rng = history, bases, rng

    def call(self, kind: str, method: str, path: str, body: Any = None, headers: dict | None = None, **req: Any) -> Op:
        replica = self.rng.randrange(len(self.bases))
        address = urlsplit(self.bases[replica])
        op = self.history.begin(kind, replica, **req)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT)
        hdrs = {"Connection": "close", **(headers or {})}
        payload = None if body is None else json.dumps(body)
        if payload is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, payload, hdrs)
            response = conn.getresponse()
            raw = response.read()
        except ConnectionRefusedError:
            return self.history.finish(op, None, error="refused")
        except TimeoutError:
            return self.history.finish(op, None, error="timeout")
        except (OSError, http.client.HTTPException) as exc:
            return self.history.finish(op, None, error=f"reset ({exc.__class__.__name__})")
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw[:200].decode(errors="replace")}
        return self.history.finish(op, response.status, data if isinstance(data, dict) else {"body": data})


def device_path(pair: Pair) -> str:
    return f"/api/v1/devices/{quote(pair.device_id, safe='')}/{quote(pair.device_name, safe='')}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class UserThread(threading.Thread):
    """One user's changes, in order: keys created and deleted, the token rotated."""

    def __init__(self, workload: Workload, user: User, seed: int) -> None:
        super().__init__(name=f"user-{user.name}", daemon=True)
        self.w, self.user, self.rng = workload, user, random.Random(seed)
        self.client = Client(workload.history, workload.bases, self.rng)
        self.next_rotate = time.monotonic() + self.rng.uniform(*ROTATE_EVERY)

    def run(self) -> None:
        while not self.w.halt.is_set():
            if time.monotonic() >= self.next_rotate:
                self.rotate()
                self.next_rotate = time.monotonic() + self.rng.uniform(*ROTATE_EVERY)
            else:
                self.change(self.rng.choice(self.user.pairs))
            self.w.halt.wait(self.rng.uniform(0.1, 0.4))

    def change(self, pair: Pair) -> None:
        user, fp = self.user, fingerprint(self.user.token)
        if not pair.known:
            self.resolve(pair)
        elif pair.key_id is None:
            body = {"device_id": pair.device_id, "device_name": pair.device_name, "private": pair.private}
            op = self.client.call("create_key", "POST", "/api/v1/api-keys", body, bearer(user.token),
                                  user=user.name, token=fp, **pair.ident())  # fmt: skip
            if op.status == 201:
                pair.key, pair.key_id = op.resp.pop("api_key"), op.resp["key_id"]
                op.resp = {"key_id": pair.key_id, "masked": op.resp.get("masked")}
            elif op.status not in (401, 400):
                pair.known = False
        elif self.rng.random() < 0.5:
            self.delete(pair, pair.key_id)

    def delete(self, pair: Pair, key_id: str) -> None:
        op = self.client.call("delete_key", "DELETE", f"/api/v1/api-keys/{key_id}", None, bearer(self.user.token),
                              user=self.user.name, token=fingerprint(self.user.token), key_id=key_id,
                              device_id=pair.device_id, device_name=pair.device_name)  # fmt: skip
        if op.status in (204, 404):
            if pair.key is not None:
                self.w.deleted.append((pair, pair.key, key_id))
            pair.key, pair.key_id, pair.known = None, None, True
        elif op.status != 401:
            pair.known, pair.key_id = False, key_id

    def resolve(self, pair: Pair) -> None:
        """After a change of unknown outcome: MongoDB's list of keys says whether the pair has one."""
        op = self.client.call("bearer", "GET", "/api/v1/api-keys", None, bearer(self.user.token),
                              user=self.user.name, token=fingerprint(self.user.token))  # fmt: skip
        if op.status != 200:
            return
        keys = [k for k in op.resp.get("keys", []) if (k["device_id"], k["device_name"]) == pair.pair]
        op.resp = {"keys": len(op.resp.get("keys", []))}
        if keys:
            self.delete(pair, keys[0]["key_id"])  # its secret is unknown (or kept): start again
        else:
            if pair.key is not None:
                self.w.deleted.append((pair, pair.key, pair.key_id))
            pair.key, pair.key_id, pair.known = None, None, True

    def rotate(self) -> None:
        """``flask users rotate-token`` as its own process, as an operator runs it."""
        history = self.w.history
        op = history.begin("rotate", None, user=self.user.name, token=fingerprint(self.user.token))
        argv = [sys.executable, "-m", "flask", "--app", "wsgi", "users", "rotate-token", self.user.name, "--wait", "3"]
        try:
            out = subprocess.run(argv, env=self.w.cli_env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            history.finish(op, None, error="timeout")
            return
        if out.returncode == 0:
            try:
                token = json.loads(out.stdout.strip().splitlines()[-1])["token"]
            except (IndexError, ValueError, KeyError):  # rotated, but its token is unknown: this user stops
                history.finish(op, None, error=f"unparsable output: {out.stdout[-200:]!r}")
                raise
            self.user.old_tokens = [self.user.token, *self.user.old_tokens][:3]
            self.user.token = token
            history.finish(op, 200, {"token": fingerprint(token)})
        else:
            status = 503 if out.returncode == 1 else 500
            history.finish(op, status, {"stderr": out.stderr.strip().splitlines()[-1:] if out.stderr else []})


class ReaderThread(threading.Thread):
    """Pushes, lookups, readings reads and token probes over every user's pairs."""

    def __init__(self, workload: Workload, seed: int) -> None:
        super().__init__(name=f"reader-{seed}", daemon=True)
        self.w, self.rng = workload, random.Random(seed)
        self.client = Client(workload.history, workload.bases, self.rng)

    def run(self) -> None:
        actions = [(self.push, 4), (self.push_deleted, 1), (self.lookup, 3), (self.readings, 1), (self.probe, 1)]
        funcs, weights = zip(*actions, strict=True)
        while not self.w.halt.is_set():
            self.rng.choices(funcs, weights)[0]()
            self.w.halt.wait(self.rng.uniform(0.02, 0.08))

    def some_pair(self) -> Pair:
        user = self.rng.choice(self.w.users)
        return self.rng.choice(user.pairs)

    def push(self, pair: Pair | None = None, key: str | None = None, key_id: str | None = None) -> None:
        if pair is None:
            pair = self.some_pair()
            key, key_id = pair.key, pair.key_id
        if key is None or key_id is None:
            return
        value = float(next(self.w.values))
        body = {"device_id": pair.device_id, "device_name": pair.device_name, "readings": {"temp": value}}
        self.client.call("push", "POST", "/api/v1/readings", body, {"X-API-Key": key}, key_id=key_id, value=value,
                         **pair.ident())  # fmt: skip

    def push_deleted(self) -> None:
        if self.w.deleted:
            pair, key, key_id = self.rng.choice(self.w.deleted[-20:])
            self.push(pair, key, key_id)

    def auth(self, pair: Pair) -> tuple[dict[str, str], str]:
        if pair.private and pair.key:
            return {"X-API-Key": pair.key}, "key"
        return {}, "anonymous"

    def lookup(self) -> None:
        pair = self.some_pair()
        headers, auth = self.auth(pair)
        op = self.client.call("lookup", "GET", device_path(pair), None, headers, auth=auth,
                              device_id=pair.device_id, device_name=pair.device_name)  # fmt: skip
        if op.status == 200:
            op.resp = {"chain": op.resp.get("chain")}

    def readings(self) -> None:
        pair = self.some_pair()
        headers, auth = self.auth(pair)
        # One-minute buckets: ended ones from the cache's chunks, the last minutes from the push log.
        query = f"?start={self.w.since}&resolution=1&size=1000&agg=avg"
        if self.rng.random() < 0.5:  # else it ends now, as a dashboard's: kept whole (app/readings/memo.py)
            end = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
            query += f"&end={end}"
        op = self.client.call("readings", "GET", device_path(pair) + "/readings/temp" + query, None, headers,
                              auth=auth, device_id=pair.device_id, device_name=pair.device_name)  # fmt: skip
        if op.status == 200:
            count = sum(item["count"] for item in op.resp.get("items", []))
            op.resp = {"count": count, "chain": op.resp["device"]["chain"]}

    def probe(self) -> None:
        user = self.rng.choice(self.w.users)
        token = self.rng.choice(user.old_tokens) if user.old_tokens and self.rng.random() < 0.5 else user.token
        op = self.client.call("bearer", "GET", "/api/v1/api-keys", None, bearer(token),
                              user=user.name, token=fingerprint(token))  # fmt: skip
        op.resp = {"keys": len(op.resp.get("keys", []))} if op.status == 200 else op.resp


class Workload:
    """Two user threads and ``readers`` reader threads, until ``stop()``."""

    def __init__(
        self, history: History, bases: list[str], users: list[User], cli_env: dict, seed: int, readers: int = 3
    ) -> None:
        self.history, self.bases, self.users, self.cli_env = history, bases, users, cli_env
        self.halt = threading.Event()
        self.deleted: list[tuple[Pair, str, str]] = []  # (pair, key, key_id) of keys deleted
        self.values = itertools.count(1)
        self.since = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.threads: list[threading.Thread] = [UserThread(self, u, seed * 100 + i) for i, u in enumerate(users)]
        self.threads += [ReaderThread(self, seed * 100 + 50 + i) for i in range(readers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(TIMEOUT + 65)
