"""The offline commands as a user runs them: `shardnet split` and `shardnet combine`."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from shardnet.node.cli import main

KEY = bytes(range(64))


@pytest.fixture
def split_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "key.bin").write_bytes(KEY)
    out = tmp_path / "out"
    assert main(["split", "--in", str(tmp_path / "key.bin"), "-t", "3", "-n", "5", "--out-dir", str(out)]) == 0
    return out


def run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def shares(d: pathlib.Path, *idx: int) -> list[str]:
    return [str(d / f"share-{i}-of-5.txt") for i in idx]


def test_split_writes_private_share_files(split_dir: pathlib.Path) -> None:
    files = sorted(p.name for p in split_dir.iterdir())
    assert files == ["keyset.txt"] + [f"share-{i}-of-5.txt" for i in range(1, 6)]
    for i in range(1, 6):
        assert stat.S_IMODE((split_dir / f"share-{i}-of-5.txt").stat().st_mode) == 0o600


def test_combine_round_trip_and_mode(split_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = split_dir.parent / "back.bin"
    code, stdout, _ = run("combine", "--keyset", str(split_dir / "keyset.txt"), *shares(split_dir, 5, 2, 4),
                          "--out", str(out), "--json", capsys=capsys)
    assert code == 0
    assert out.read_bytes() == KEY
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(stdout)["bytes"] == 64
    code, _, err = run("combine", "--keyset", str(split_dir / "keyset.txt"), *shares(split_dir, 1, 2, 3),
                       "--out", str(out), capsys=capsys)
    assert code == 2 and "already exists" in err


def corrupt(path: str) -> None:
    """Change the share value and fix the checksum: a well-formed but wrong share."""
    from shardnet.protocol import share_from_text, share_to_text

    share, t, n = share_from_text(pathlib.Path(path).read_text())
    import dataclasses

    pathlib.Path(path).write_text(share_to_text(dataclasses.replace(share, value=share.value ^ 1), t, n))


def test_bad_share_named_with_enough_good(split_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = shares(split_dir, 2)[0]
    corrupt(bad)
    out = split_dir.parent / "k.bin"
    code, stdout, err = run("combine", "--keyset", str(split_dir / "keyset.txt"), *shares(split_dir, 1, 2, 3, 4),
                            "--out", str(out), capsys=capsys)
    assert code == 0 and out.read_bytes() == KEY
    assert f"{bad}: invalid share (index 2), skipped" in err


def test_too_few_good_shares_fails_with_one_line(split_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt(shares(split_dir, 2)[0])
    code, _, err = run("combine", "--keyset", str(split_dir / "keyset.txt"), *shares(split_dir, 1, 2, 3),
                       "--out", str(split_dir.parent / "k.bin"), capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "2 of 3 required shares; invalid:" in err and "share-2-of-5.txt (index 2)" in err
    assert not (split_dir.parent / "k.bin").exists()
    code, _, err = run("combine", "--keyset", str(split_dir / "keyset.txt"), *shares(split_dir, 1, 3),
                       "--out", str(split_dir.parent / "k.bin"), capsys=capsys)
    assert code == 1 and "2 of 3 required shares" in err


@pytest.mark.parametrize(
    "case, expect",
    [
        ("duplicate", "supplied more than once"),
        ("damaged", "checksum mismatch"),
        ("mixed", "belongs to keyset"),
        ("not-a-share", "not a shardnet share file"),
        ("forged-keyset", "signature"),
        ("missing", "no such file"),
    ],
)
def test_bad_input_exits_2(
    split_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], case: str, expect: str
) -> None:
    keyset = str(split_dir / "keyset.txt")
    files = shares(split_dir, 1, 2, 3)
    if case == "duplicate":
        files = shares(split_dir, 1, 1, 3)
    elif case == "damaged":
        p = pathlib.Path(files[0])
        p.write_text(p.read_text().replace("Index: 1", "Index: 4"))
    elif case == "mixed":
        (tmp_path / "k2").write_bytes(b"other")
        main(["split", "--in", str(tmp_path / "k2"), "-t", "3", "-n", "5", "--out-dir", str(tmp_path / "o2")])
        capsys.readouterr()
        files[2] = str(tmp_path / "o2" / "share-3-of-5.txt")
    elif case == "not-a-share":
        files[0] = keyset
    elif case == "forged-keyset":
        import dataclasses

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from shardnet.protocol import decode, encode, keyset_from_text, keyset_to_text

        ks = keyset_from_text(pathlib.Path(keyset).read_text())
        tag, version, body, signer, _ = decode(ks.signed)
        forged = encode([tag, version, body, signer, Ed25519PrivateKey.generate().sign(b"x")])
        pathlib.Path(keyset).write_text(keyset_to_text(dataclasses.replace(ks, signed=forged)))
    elif case == "missing":
        files[1] = str(tmp_path / "nope.txt")
    code, _, err = run("combine", "--keyset", keyset, *files, "--out", str(tmp_path / "k.bin"), capsys=capsys)
    assert "Traceback" not in err and expect in err, err
    assert not (tmp_path / "k.bin").exists()
    if case in ("forged-keyset", "missing"):  # the keyset itself, or a file that is not there
        assert code == 2 and err.count("\n") == 1, err
        return
    # A share file that is damaged, of another keyset, or a second copy is skipped and named:
    # with 2 good of 3 required, a clean refusal, one line of error after the warning...
    assert code == 1, err
    assert err.splitlines()[-1].startswith("shardnet: error: 2 of 3 required shares; skipped ")
    # ...and with one good file more, the key.
    code, _, err = run("combine", "--keyset", keyset, *files, *shares(split_dir, 4), "--out", str(tmp_path / "k.bin"),
                       capsys=capsys)
    assert code == 0 and (tmp_path / "k.bin").read_bytes() == KEY, err
    assert "skipped" in err and expect in err


def test_any_one_character_changed_in_a_share_file_gives_the_key_or_a_clean_refusal(
    split_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import random

    keyset = str(split_dir / "keyset.txt")
    victim = pathlib.Path(shares(split_dir, 1)[0])
    text = victim.read_text()
    rng = random.Random(7)
    for trial in range(60):
        at = rng.randrange(len(text))
        swap = rng.choice([c for c in "AZaz09+/=:- \nX" if c != text[at]])
        victim.write_text(text[:at] + swap + text[at + 1:])
        out = tmp_path / f"k{trial}.bin"
        # Enough good files besides it: always the key.
        code, _, err = run("combine", "--keyset", keyset, str(victim), *shares(split_dir, 2, 3, 4), "--out", str(out),
                           capsys=capsys)
        assert code == 0 and out.read_bytes() == KEY, (at, swap, err)
        # Exactly t with it: the key (the change was harmless) or one clean line, nothing written.
        out.unlink()
        code, _, err = run("combine", "--keyset", keyset, str(victim), *shares(split_dir, 2, 3), "--out", str(out),
                           capsys=capsys)
        if code == 0:
            assert out.read_bytes() == KEY, (at, swap)
        else:
            assert code in (1, 2) and not out.exists() and "Traceback" not in err, (at, swap, err)
            assert err.splitlines()[-1].startswith("shardnet: error: "), err
        out.unlink(missing_ok=True)
    victim.write_text(text)


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["split", "-t", "3"], "required"),
        (["split", "--in", "x", "-t", "two", "-n", "3", "--out-dir", "d"], "whole number"),
        (["split", "--in", "KEY", "-t", "4", "-n", "3", "--out-dir", "d"], "threshold"),
        (["split", "--in", "KEY", "-t", "2", "-n", "1001", "--out-dir", "d"], "1000"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
        (["init", "--home", "HOME", "--name", "x", "--country", "CH", "--listen", "garbage"], "--listen 'garbage'"),
        (["key", "reconstruct", "--home", "HOME", "abc", "--out", "x", "--timeout", "0"], "from 1 to 86400 seconds"),
        (["key", "reconstruct", "--home", "HOME", "abc", "--out", "x", "--timeout", "-5"], "from 1 to 86400 seconds"),
        (["key", "reconstruct", "--home", "HOME", "abc", "--out", "x", "--timeout", "nan"], "from 1 to 86400 seconds"),
        (["key", "import", "--home", "HOME", "--in", "KEY", "-t", "2", "-n", "3", "--expires", "9000y"],
         "9000y is longer than the 100y a duration may be"),
        (["combine", "--keyset", "DIR", "--out", "x", "KEY"], "is a directory, not a file"),
        (["combine", "--keyset", "KEYSET", "--out", "DIR/no/such/x", "SHARE"], "no/such: no such directory (for --out)"),
    ],
)
def test_usage_errors(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    (tmp_path / "key").write_bytes(b"k")
    main(["split", "--in", str(tmp_path / "key"), "-t", "2", "-n", "2", "--out-dir", str(tmp_path / "s")])
    capsys.readouterr()
    subs = {"KEYSET": tmp_path / "s" / "keyset.txt", "SHARE": tmp_path / "s" / "share-1-of-2.txt",
            "KEY": tmp_path / "key", "HOME": tmp_path / "home", "DIR": tmp_path}
    argv = [subs[a] if a in subs else a for a in argv]
    argv = [str(a).replace("DIR/", f"{tmp_path}/") for a in argv]
    code, _, err = run(*argv, capsys=capsys)
    assert code == 2 and expect in err and err.count("\n") == 1, err
    assert not (tmp_path / "home").exists()  # a refused init leaves no home behind


def test_a_damaged_or_foreign_database_is_one_line_with_the_fix(tmp_path: pathlib.Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    home = tmp_path / "h"
    assert main(["init", "--home", str(home), "--name", "x", "--country", "CH"]) == 0
    (home / "node.db").write_bytes(b"not a database at all " * 100)
    capsys.readouterr()
    code, _, err = run("key", "list", "--home", str(home), capsys=capsys)
    assert code == 1 and "internal error" not in err and err.count("\n") == 1, err
    assert "file is not a database" in err and "restore it from a backup" in err
    (home / "node.db").unlink()
    with sqlite3.connect(home / "node.db") as db:
        db.execute("CREATE TABLE other (a)")
    db.close()
    code, _, err = run("status", "--home", str(home), capsys=capsys)
    assert code == 1 and "internal error" not in err and err.count("\n") == 1, err
    assert "is not a shardnet store" in err and "is --home the node's home?" in err


def test_version_and_a_damaged_config_say_what_they_are(tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("shardnet 0.")
    assert main(["init", "--home", str(tmp_path / "h"), "--name", "x", "--country", "CH"]) == 0
    cfg = tmp_path / "h" / "config.json"
    body = json.loads(cfg.read_text())
    del body["name"]
    cfg.write_text(json.dumps(body))
    capsys.readouterr()
    code, _, err = run("status", "--home", str(tmp_path / "h"), capsys=capsys)
    assert code == 2 and err.strip() == f"shardnet: error: {cfg}: 'name' must be a name (as 'shardnet init' writes it)"


def test_real_process_round_trip(tmp_path: pathlib.Path) -> None:
    """The installed console script, as a separate OS process, end to end."""
    exe = pathlib.Path(sys.executable).with_name("shardnet")
    (tmp_path / "k").write_bytes(KEY)
    r = subprocess.run([exe, "split", "--in", "-", "-t", "2", "-n", "3", "--out-dir", str(tmp_path / "s"), "--json"],
                       input=KEY, capture_output=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    r = subprocess.run([exe, "combine", "--keyset", info["keyset_file"], *info["share_files"][1:],
                        "--out", str(tmp_path / "back")], capture_output=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back").read_bytes() == KEY
    r = subprocess.run([exe, "combine", "--keyset", info["keyset_file"], info["share_files"][0],
                        "--out", str(tmp_path / "back2")], capture_output=True, check=False, timeout=60,
                       env={**os.environ, "SHARDNET_DEBUG": ""})
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "shardnet: error: 1 of 2 required shares"


@pytest.mark.parametrize("command", [["refresh", "abc"], ["reshare", "abc"], ["rewrap", "abc"],
                                     ["key", "reconstruct", "abc", "--out", "x.key"]])
def test_a_command_that_needs_the_node_says_it_is_not_running(tmp_path: pathlib.Path, command: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--home", str(tmp_path / "h"), "--name", "x", "--country", "CH"]) == 0
    capsys.readouterr()
    code = main([*command, "--home", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert code == 1 and "no node is running" in err and "shardnet run --home" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_key_show_of_a_keyset_past_year_9999_works_and_json_builds_no_text(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A home from before durations were capped may hold one (key import --expires 9000y).
    import os

    from shardnet import protocol as p
    from shardnet.node._home import Home
    from shardnet.node._services import _keyset_row
    from shardnet.node._store import AuditEvent

    home = tmp_path / "h"
    assert main(["init", "--home", str(home), "--name", "x", "--country", "CH"]) == 0
    h = Home(home)
    key = h.identity()
    far = 1_800_000_000 + 9000 * 365 * 86400
    keyset, _ = p.split_key(b"k" * 32, 2, 3, owner=key, now=1_800_000_000, not_after=far, rng=os.urandom)
    with h.open_store() as store:
        store.import_keyset(_keyset_row(keyset, "owner"), [], AuditEvent("import", {"keyset": keyset.id_hex}, key),
                            now=1_800_000_000)
    capsys.readouterr()
    code, out, err = run("key", "show", "--home", str(home), keyset.id_hex, "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["not_after"] == far, err
    code, out, err = run("key", "show", "--home", str(home), keyset.id_hex, capsys=capsys)
    assert code == 0 and f"{far} (unix time)" in out, err


def test_of_two_files_of_one_index_the_one_that_matches_the_commitments_is_used(
    split_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "share-1-bad.txt"
    bad.write_text(pathlib.Path(shares(split_dir, 1)[0]).read_text())
    corrupt(str(bad))  # parses, checksum and all, but its value is off
    out = tmp_path / "k.bin"
    code, _, err = run("combine", "--keyset", str(split_dir / "keyset.txt"), str(bad), *shares(split_dir, 1, 2, 3),
                       "--out", str(out), capsys=capsys)
    assert code == 0 and out.read_bytes() == KEY, err  # exactly t good files, the bad copy first
    assert f"{bad}: does not match the keyset's commitments (index 1" in err
