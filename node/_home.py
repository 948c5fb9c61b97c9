"""A node's home directory: identity, HPKE keys, config, database, run files.

Layout::

    DIR/config.json      name, country, city, org, listen addresses
    DIR/identity.key     Ed25519 seed (32 bytes, mode 0600): the peer id and the signing key
    DIR/hpke.key         HPKE private keys, one per KEM (mode 0600)
    DIR/node.db          SQLite (WAL): directory, keysets, shards, outbox, audit log
    DIR/node.log         the running node's log
    DIR/run/addrs.json   the running node's multiaddrs (written by `shardnet run`)
    DIR/run/control.sock the control socket (mode 0600) every other command talks to
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import continent_of, peer_id_of

from ._clock import Rng
from ._files import write_atomic
from ._limits import Limits
from ._store import Store

CONFIG_VERSION = 1
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


class HomeError(Exception):
    """The home directory is missing, incomplete or already initialised."""


@dataclass(frozen=True)
class Home:
    path: pathlib.Path

    @property
    def config_file(self) -> pathlib.Path:
        return self.path / "config.json"

    @property
    def db_file(self) -> pathlib.Path:
        return self.path / "node.db"

    @property
    def run_dir(self) -> pathlib.Path:
        return self.path / "run"

    @property
    def control_socket(self) -> pathlib.Path:
        return self.run_dir / "control.sock"

    @property
    def addrs_file(self) -> pathlib.Path:
        return self.run_dir / "addrs.json"

    @property
    def log_file(self) -> pathlib.Path:
        return self.path / "node.log"

    def config(self) -> dict[str, Any]:
        try:
            cfg = json.loads(self.config_file.read_text())
        except FileNotFoundError:
            raise HomeError(f"{self.path} is not a shardnet home (run 'shardnet init --home {self.path}')") from None
        except (OSError, ValueError) as exc:
            raise HomeError(f"{self.config_file}: unreadable ({exc})") from None
        if not isinstance(cfg, dict) or cfg.get("version") != CONFIG_VERSION:
            got = cfg.get("version") if isinstance(cfg, dict) else None
            raise HomeError(f"{self.config_file}: unsupported config version {got!r}")
        for key, typ, what in (("name", str, "a name"), ("country", str, "a country code"),
                               ("listen", list, "a list of listen addresses"),
                               ("city", str, "a city, if given"), ("org", str, "an org, if given")):
            optional = key in ("city", "org")
            if optional and key not in cfg:
                continue
            if not isinstance(cfg.get(key), typ) or (not optional and not cfg[key]):
                raise HomeError(f"{self.config_file}: {key!r} must be {what} (as 'shardnet init' writes it)")
        if not all(isinstance(a, str) for a in cfg["listen"]):
            raise HomeError(f"{self.config_file}: 'listen' must be a list of listen addresses")
        try:
            Limits.from_config(cfg.get("limits"))
        except ValueError as exc:
            raise HomeError(f"{self.config_file}: {exc}") from None
        return dict(cfg)

    def limits(self) -> Limits:
        """The operator's quotas (``_limits.py``), their defaults where the config is silent."""
        return Limits.from_config(self.config().get("limits"))

    def identity(self) -> Ed25519PrivateKey:
        seed = self._secret("identity.key")
        if len(seed) != 32:
            raise HomeError(f"{self.path / 'identity.key'}: expected a 32-byte Ed25519 seed")
        return Ed25519PrivateKey.from_private_bytes(seed)

    def identity_seed(self) -> bytes:
        return self._secret("identity.key")

    def hpke_keys(self) -> dict[str, p.HpkePrivateKey]:
        raw = p.decode(self._secret("hpke.key"))
        if not isinstance(raw, dict):
            raise HomeError(f"{self.path / 'hpke.key'}: malformed")
        return {kem: p.HpkePrivateKey(kem, bytes(v)) for kem, v in raw.items()}

    def peer_id(self) -> str:
        return peer_id_of(self.identity().public_key().public_bytes_raw())

    def open_store(self) -> Store:
        return Store(self.db_file)

    def _secret(self, name: str) -> bytes:
        path = self.path / name
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError:
            raise HomeError(f"{path} is missing; is {self.path} a shardnet home?") from None
        if st.st_mode & 0o077:
            raise HomeError(f"{path} is readable by others (mode {oct(st.st_mode & 0o777)}); chmod 600 it")
        return data


def init_home(
    path: str | os.PathLike[str], *, name: str, country: str, city: str = "", org: str = "",
    listen: list[str] | None = None, rng: Rng,
) -> Home:
    """Create a new node home. Refuses a directory that already holds a node."""
    home = Home(pathlib.Path(path).absolute())
    cc = country.strip().upper()
    continent_of(cc)  # ValueError for an unknown country
    if not name.strip():
        raise ValueError("--name must not be empty")
    if home.config_file.exists() or (home.path / "identity.key").exists():
        raise HomeError(f"{home.path} already holds a shardnet node; refusing to overwrite it")
    home.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home.path, 0o700)
    seed = rng(32)
    hpke = {kem: p.HpkePrivateKey.generate(kem, rng).private_bytes() for kem in p.KEMS}
    write_atomic(home.path / "identity.key", seed, 0o600)
    write_atomic(home.path / "hpke.key", p.encode(hpke), 0o600)
    with Store(home.db_file):
        pass
    cfg = {
        "version": CONFIG_VERSION, "name": name.strip(), "country": cc, "city": city.strip(),
        "org": org.strip(), "listen": listen or [DEFAULT_LISTEN],
    }
    # The config goes last: its presence marks a complete home.
    write_atomic(home.config_file, (json.dumps(cfg, indent=1) + "\n").encode(), 0o644)
    return home
