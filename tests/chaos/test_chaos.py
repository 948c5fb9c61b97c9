"""SIGKILL real node processes at random points of import, delivery, reconstruction,
refresh and reshare; after every kill, check that nothing was lost.

Each kill falls at a random moment of one operation that a user starts through the CLI,
and the killed node is started again as an operator would. Then:
- no keyset is lost or half-written: the owner holds exactly the keysets its imports made
  (a cut-off import retried with its token makes no second one), each complete;
- every node's audit log verifies;
- no custodian holds a shard of a keyset or epoch the owner does not know;
- reconstruction returns the original key.

``pytest tests/chaos --kills 500 --chaos-seed 7`` runs a longer campaign by hand; CI runs
50 kills. The moments, victims and keys come from the seed.
"""

from __future__ import annotations

import json
import pathlib
import random
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from shardnet.node._control import ControlFailed, NotRunning
from shardnet.node._home import Home
from shardnet.node._services import IMPORT_TOKEN_KEY
from shardnet.simulations._local import CLI, FIVE_CONTINENTS, LocalCluster, run_cli

from . import RESULTS

pytestmark = pytest.mark.slow
PHASES = ("import", "delivery", "reconstruction", "refresh", "reshare")
ANCHOR_WAIT = 30.0
SPREAD = 0.03  # an anchored kill falls this long after its step at most
OWNER, COORDINATOR = "frankfurt", "tokyo"


class Probe:
    """A step of an operation, seen in a node's database: a read-only SQLite connection
    (never the node's own Store, whose opening writes), polled by a Kill's thread."""

    def __init__(self, home: Home, sql: str, args: tuple[object, ...]) -> None:
        self.path, self.sql, self.args = home.path / "node.db", sql, args
        self.db: sqlite3.Connection | None = None

    def __enter__(self) -> Probe:
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.05, check_same_thread=False)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.db is not None
        self.db.close()

    def seen(self) -> bool:
        assert self.db is not None
        try:
            return self.db.execute(self.sql, self.args).fetchone() is not None
        except sqlite3.OperationalError:  # busy: a write in progress
            return False


class Kill:
    """A SIGKILL of ``proc`` ``delay`` seconds from now or, with ``anchor``, ``delay``
    seconds after ``anchor()`` is first true (a step of the operation seen on a node's
    disk: polled every 2 ms, for ANCHOR_WAIT seconds at most)."""

    def __init__(self, proc: subprocess.Popen[bytes], delay: float, anchor: Probe | None) -> None:
        self.proc = proc
        self.where = "at a random moment" if anchor is None else "just after a step"
        self.thread = threading.Thread(target=self._run, args=(delay, anchor), daemon=True)
        self.thread.start()

    def _run(self, delay: float, anchor: Probe | None) -> None:
        if anchor is not None:
            deadline = time.monotonic() + ANCHOR_WAIT
            with anchor:
                while not anchor.seen():
                    if time.monotonic() > deadline:
                        self.where = "its step never seen"
                        break
                    time.sleep(0.002)
        time.sleep(delay)
        self.proc.kill()



@dataclass
class Campaign:
    c: LocalCluster
    root: pathlib.Path
    rng: random.Random
    keys: dict[str, bytes] = field(default_factory=dict)  # every keyset an import made, with its key
    startup: float = 0.0  # the CLI's own start-up: nothing reaches a node before it
    took: dict[str, deque[float]] = field(default_factory=dict)  # recent clean runs, per phase

    def ids(self, *names: str) -> str:
        return ",".join(self.c.nodes[n].peer_id for n in names)

    def name_of(self, peer: str) -> str:
        return next(n for n, node in self.c.nodes.items() if node.peer_id == peer)

    def start_import(self, key: bytes, token: str, *, custodians: list[str], wait: int = 20) -> subprocess.Popen[str]:
        path = self.root / f"key-{token}"
        path.write_bytes(key)
        return subprocess.Popen(
            [*CLI, "key", "import", "--home", str(self.c.nodes[OWNER].home.path), "--in", str(path), "-t", "3",
             "-n", str(len(custodians)), "--custodians", self.ids(*custodians), "--approvers",
             self.ids(OWNER, COORDINATOR), "--quorum", "1", "--token", token, "--wait", str(wait), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def imported(self, *, wait: bool = True) -> tuple[str, dict]:
        """A clean import (no kill) of a new key: its keyset id and the CLI's JSON; with
        ``wait``, once every shard is delivered."""
        key, token = self.rng.randbytes(32), self.rng.randbytes(16).hex()
        t0 = time.monotonic()
        code, out, err = finish(self.start_import(key, token, custodians=self.others(5)))
        assert code == 0, err
        for phase in ("import", "delivery"):  # a clean run: a sample of both phases' length
            self.observe(phase, time.monotonic() - t0)
        d = json.loads(out)
        self.keys[d["keyset"]] = key
        if wait:
            self.wait_delivered(d["keyset"])
        return d["keyset"], d

    def others(self, n: int, *, but: str = "") -> list[str]:
        return self.rng.sample([m for m in self.c.nodes if m != but], n)

    def fresh(self, leader: str) -> tuple[str, str]:
        """A keyset imported cleanly, and whom to kill in a round on it: half the time the
        node that runs the round (``leader``), else one of the other holders."""
        keyset, d = self.imported()
        holders = [self.name_of(s["custodian"]) for s in d["shards"] if self.name_of(s["custodian"]) != leader]
        return keyset, leader if self.rng.random() < 0.5 else self.rng.choice(holders)

    def observe(self, phase: str, seconds: float) -> None:
        self.took.setdefault(phase, deque(maxlen=5)).append(seconds)

    def kill_at(self, name: str, phase: str, anchor: Probe | None = None) -> Kill:
        """SIGKILL ``name`` during the phase. Half the kills (all, without ``anchor``) fall
        at a random moment after the CLI's start-up and before a typical run (the median of
        the last clean ones) is over; the others within SPREAD seconds of ``anchor``'s step,
        which a moment drawn over the whole run would rarely hit."""
        proc = self.c.nodes[name].proc
        assert proc is not None
        if anchor is not None and self.rng.random() < 0.5:
            return Kill(proc, self.rng.uniform(0, SPREAD), anchor)
        lo = 0.8 * self.startup
        hi = max(lo + 0.05, statistics.median(self.took[phase]))
        return Kill(proc, self.rng.uniform(lo, hi), None)

    def killed(self, phase: str, victim: str, proc: subprocess.Popen[str],
               anchor: Probe | None = None) -> tuple[int, str, str, str]:
        """Run ``proc`` (just started) to its end while ``victim`` is killed during it; start
        the victim again. The CLI's code, stdout and stderr, and where the kill fell."""
        kill = self.kill_at(victim, phase, anchor)
        code, out, err = finish(proc)
        self.restart(victim, kill)
        return code, out, err, kill.where

    def restart(self, name: str, kill: Kill) -> None:
        """Wait for the kill, and start the node again on its home."""
        kill.thread.join()
        self.c.stop(name, sig=signal.SIGKILL)
        self.c.start(name)

    def committed(self, token: str) -> Probe:
        """The owner's import with ``token`` is committed (its deliveries start)."""
        return Probe(self.c.nodes[OWNER].home, "SELECT 1 FROM kv WHERE key = ?", (IMPORT_TOKEN_KEY + token,))

    def logged(self, name: str, kind: str) -> Probe:
        """``name`` wrote a ``kind`` audit entry after now (one round runs at a time here)."""
        home = self.c.nodes[name].home
        with home.open_store() as store:
            head = store.audit_head()
        return Probe(home, "SELECT 1 FROM audit WHERE seq > ? AND kind = ?", (head.seq if head else 0, kind))

    def wait_delivered(self, keyset: str, timeout: float = 20) -> float:
        deadline = t0 = time.monotonic()
        deadline += timeout
        while True:
            with self.c.nodes[OWNER].home.open_store() as store:
                rows = [r for r in store.outbox(keyset) if r["epoch"] == 0]
            if rows and all(r["state"] == "delivered" for r in rows):
                return time.monotonic() - t0
            assert time.monotonic() < deadline, f"{keyset}: {[r['state'] for r in rows]} after {timeout} s"
            time.sleep(0.05)

    def reconstruct(self, keyset: str, *, kill: tuple[str, str] | None = None,
                    timeout: int = 30) -> tuple[int, str, str]:
        """`key reconstruct` through the coordinator, approved by it (quorum 1); with ``kill``
        (victim, phase) the victim is killed meanwhile (anchored: just after the approval,
        as the holders are asked) and started again afterwards. The CLI's code and stderr,
        and where the kill fell."""
        out = self.root / f"out-{time.monotonic_ns()}"
        before = {r["request"] for r in self.c.control(COORDINATOR, "requests")}
        t0 = time.monotonic()
        proc = subprocess.Popen([*CLI, "key", "reconstruct", "--home", str(self.c.nodes[COORDINATOR].home.path),
                                 keyset, "--out", str(out), "--reason", "chaos", "--timeout", str(timeout), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        k = self.kill_at(*kill, anchor=self.logged(COORDINATOR, "vote")) if kill else None
        try:
            try:
                rid = self.new_request(keyset, before)
                self.c.control(COORDINATOR, "approve", {"request": rid})
            except (AssertionError, NotRunning, ControlFailed, OSError):
                if kill is None or kill[0] != COORDINATOR:
                    raise  # unless the coordinator was killed, its request must reach it and be approved
            code, _, err = finish(proc, timeout + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if k is not None and kill is not None:
            self.restart(kill[0], k)
        elif code == 0:  # a clean run: a sample of the phase's length
            self.observe("reconstruction", time.monotonic() - t0)
        if code == 0:
            assert out.read_bytes() == self.keys[keyset]
        return code, err, k.where if k else ""

    def new_request(self, keyset: str, before: set[str], timeout: float = 15) -> str:
        """The request a `key reconstruct` just made (one cut off by a kill stays open: not that)."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.c.control(COORDINATOR, "requests"):
                if r["keyset"] == keyset and r["request"] not in before and r["state"] == "pending":
                    return str(r["request"])
            assert time.monotonic() < deadline, "the request never reached the approver"
            time.sleep(0.05)

    def check(self, killed: str, keyset: str) -> None:
        """The invariants, after ``killed`` was killed and started again."""
        with self.c.nodes[OWNER].home.open_store() as store:
            owned = {k["keyset_id"]: k for k in store.keysets(role="owner")}
            assert set(owned) == set(self.keys), "the owner's keysets are not the ones its imports made"
            epochs = {ks: {0, *(e["epoch"] for e in store.epochs(ks))} for ks in owned}
            for ks in owned:  # whole: a shard for every index of the import
                assert {r["idx"] for r in store.outbox(ks) if r["epoch"] == 0} == set(range(1, 6)), ks
        for name, node in self.c.nodes.items():
            with node.home.open_store() as store:
                assert store.verify_audit({node.home.identity().public_key().public_bytes_raw()}) > 0
                for held in store.held_shards():
                    assert held["keyset_id"] in owned, f"{name} holds a shard of a keyset the owner never made"
                    assert held["epoch"] in epochs[held["keyset_id"]], f"{name} holds a shard of an unknown epoch"
        r = run_cli("audit", "verify", "--home", str(self.c.nodes[killed].home.path), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr
        code, err, _ = self.reconstruct(keyset)
        assert code == 0, f"after killing {killed}: {err.strip()}; {self.state(keyset)}"

    def state(self, keyset: str) -> str:
        """Who holds which epoch of ``keyset``: for a failure's message."""
        out = []
        for name, node in self.c.nodes.items():
            with node.home.open_store() as store:
                latest = store.latest_epoch(keyset)
                held = sorted((h["epoch"], h["idx"]) for h in store.held_shards(keyset))
                pending = sorted(r["epoch"] for r in store.pending_shares() if r["keyset_id"] == keyset)
            out.append(f"{name}: epoch {latest['epoch'] if latest else 0}, holds {held}, pending {pending}")
        return "; ".join(out)


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line(err: str) -> None:
    """A command cut off by a kill fails the way expected failures do: one line, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Campaign]:
    root = tmp_path_factory.mktemp("chaos")
    with LocalCluster(root, FIVE_CONTINENTS) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=30)
        cp = Campaign(c, root, random.Random(request.config.getoption("chaos_seed")))
        calibrate(cp)
        yield cp


def calibrate(cp: Campaign) -> None:
    """How long the CLI takes to start, and clean runs of each phase, on this machine now:
    the first kill windows. The campaign's own clean imports and reconstructions (never a
    killed run: those that outlast the kill would leave out the long ones) move them."""
    t0 = time.monotonic()
    run_cli("status", "--home", str(cp.c.nodes[OWNER].home.path), "--json", check=True)
    cp.startup = time.monotonic() - t0

    def timed(fn: Callable[[], object]) -> float:
        t = time.monotonic()
        fn()
        return time.monotonic() - t

    keyset, _ = cp.imported()  # the first one dials every custodian: not a typical one
    cp.took.clear()
    for _ in range(3):
        cp.imported(wait=False)  # each a sample of import and delivery
    cp.reconstruct(keyset)  # and of reconstruction
    cp.observe("refresh", timed(lambda: epoch_cli(cp, "refresh", keyset, check=True)))
    cp.observe("reshare", timed(lambda: epoch_cli(cp, "reshare", keyset, *reshare_args(cp), check=True)))


def epoch_cli(cp: Campaign, action: str, keyset: str, *extra: str, check: bool = False) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*CLI, action, "--home", str(cp.c.nodes[OWNER].home.path), keyset, "--timeout", "20",
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check:
        code, _, err = finish(proc)
        assert code == 0, err
    return proc


def reshare_args(cp: Campaign) -> tuple[str, ...]:
    """A reshare to 4 of the 5 custodians, 3 of 4."""
    return ("--shares", "4", "--custodians", cp.ids(*cp.others(4)))


def kills(request: pytest.FixtureRequest) -> int:
    total = int(request.config.getoption("kills"))
    return total // len(PHASES) + (PHASES.index(request.node.callspec.params["phase"]) < total % len(PHASES))


def record(request: pytest.FixtureRequest, phase: str, points: Counter[str]) -> None:
    request.config.stash.setdefault(RESULTS, {})[phase] = dict(points)


@pytest.mark.parametrize("phase", ["import"])
def test_kills_of_the_owner_during_import(campaign: Campaign, request: pytest.FixtureRequest, phase: str) -> None:
    cp, points = campaign, Counter[str]()
    for _ in range(kills(request)):
        key, token = cp.rng.randbytes(32), cp.rng.randbytes(16).hex()
        custodians = cp.others(5)
        code, out, err, where = cp.killed(phase, OWNER, cp.start_import(key, token, custodians=custodians),
                                          cp.committed(token))
        if code == 0:
            points[f"{where}: after the answer"] += 1
        else:  # cut off: one line; the same command with the same token finishes it
            one_line(err)
            assert code == 1, err
            again = cp.start_import(key, token, custodians=custodians)
            code, out, err = finish(again)
            assert code == 0, err
            points[f"{where}: " + ("committed, then cut off" if "already imported" in out
                                   else "before the commit")] += 1
        d = json.loads(out)
        cp.keys[d["keyset"]] = key
        cp.wait_delivered(d["keyset"])
        cp.check(OWNER, d["keyset"])
    record(request, phase, points)


@pytest.mark.parametrize("phase", ["delivery"])
def test_kills_of_a_custodian_during_delivery(campaign: Campaign, request: pytest.FixtureRequest, phase: str) -> None:
    cp, points, slowest = campaign, Counter[str](), 0.0
    for _ in range(kills(request)):
        key, token = cp.rng.randbytes(32), cp.rng.randbytes(16).hex()
        custodians = cp.others(5)
        victim = cp.rng.choice([n for n in custodians if n != OWNER])
        code, out, err, where = cp.killed(phase, victim, cp.start_import(key, token, custodians=custodians, wait=3),
                                          cp.committed(token))
        assert code == 0, err  # a custodian away leaves its shard pending, not the import failed
        d = json.loads(out)
        cp.keys[d["keyset"]] = key
        state = next(s["state"] for s in d["shards"] if cp.name_of(s["custodian"]) == victim)
        slowest = max(slowest, cp.wait_delivered(d["keyset"]))
        points[f"{where}: shard {state} at the answer"] += 1
        with cp.c.nodes[victim].home.open_store() as store:
            assert store.held_shards(d["keyset"]), f"{victim} lost the shard it was given"
        cp.check(victim, d["keyset"])
    # A custodian that comes back gets its shard at once, not after a back-off for dead peers.
    assert slowest < 5, f"a restarted custodian waited {slowest:.1f} s for its shard"
    points["slowest re-delivery after the restart, ms"] = round(slowest * 1000)
    record(request, phase, points)


@pytest.mark.parametrize("phase", ["reconstruction"])
def test_kills_of_the_coordinator_or_a_holder_during_reconstruction(
        campaign: Campaign, request: pytest.FixtureRequest, phase: str) -> None:
    cp, points = campaign, Counter[str]()
    for _ in range(kills(request)):
        keyset, victim = cp.fresh(COORDINATOR)
        code, err, where = cp.reconstruct(keyset, kill=(victim, phase))
        role = "coordinator" if victim == COORDINATOR else "holder"
        if victim != COORDINATOR:  # t of the other four holders are up: a holder away changes nothing
            assert code == 0, f"killing the holder {victim} failed the reconstruction: {err.strip()}"
        elif code != 0:
            one_line(err)
        points[f"{where}: {role}, {'released' if code == 0 else 'cut off'}"] += 1
        cp.check(victim, keyset)
    record(request, phase, points)


@pytest.mark.parametrize("phase", ["refresh", "reshare"])
def test_kills_of_the_owner_or_a_holder_during_an_epoch_round(
        campaign: Campaign, request: pytest.FixtureRequest, phase: str) -> None:
    cp, points = campaign, Counter[str]()
    for _ in range(kills(request)):
        keyset, victim = cp.fresh(OWNER)
        extra = reshare_args(cp) if phase == "reshare" else ()
        plan = cp.logged(OWNER, "epoch-plan")
        code, _, err, where = cp.killed(phase, victim, epoch_cli(cp, phase, keyset, *extra), plan)
        with cp.c.nodes[OWNER].home.open_store() as store:
            epoch = (store.latest_epoch(keyset) or {"epoch": 0})["epoch"]
        if code != 0:
            one_line(err)
        else:  # the CLI said the round committed: so did the owner, and the kill did not undo it
            assert epoch == 1, f"{phase} answered, yet the owner is at epoch {epoch} after the kill"
        role = "owner" if victim == OWNER else "holder"
        points[f"{where}: {role}, {'epoch 1' if epoch else 'epoch 0'}{'' if code == 0 else ', cut off'}"] += 1
        cp.check(victim, keyset)
    record(request, phase, points)
