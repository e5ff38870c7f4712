"""A signing key outside the state folder: where it is found, which files are refused, and the
AuditLog that never writes it, hands a log over to it, and trusts no key the state folder adds."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from audit_helpers import migrate  # type: ignore[import-not-found]
from engram.audit.checkpoints import sign_checkpoint
from engram.audit.cli import audit as audit_cli
from engram.audit.events import AUDIT_EVENTS
from engram.audit.export import StateFolderSource
from engram.audit.keyfile import CREDENTIAL_NAME, KeySource, locate_signing_key, read_signing_key
from engram.audit.log import AuditLog, origin_for
from engram.audit.settings import AuditSettings
from engram.audit.store import AuditStore
from engram.audit.verify import verify_log
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.config import load_settings
from engram.errors import Conflict, StartupError
from engram.observability.metrics import Metrics
from engram.signing import Signer, Verifier, generate_signer


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def new_key(path: Path, origin: str = origin_for("outside")) -> tuple[Path, Verifier]:
    skey, vkey = generate_signer(origin)
    return write_key(path, skey + "\n"), Verifier(vkey)


class Folder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "engram.db"
        self.keys = root / "keys"
        root.mkdir()
        migrate(self.db)
        self.bus = EventBus((*CORE_EVENTS, *AUDIT_EVENTS))

    def log(self, key: Path | None = None) -> AuditLog:
        return AuditLog(AuditSettings(signing_key_file=key), self.root, self.db, self.bus, Metrics())

    def verify(self, keys: list[Verifier]) -> Any:
        with AuditStore(self.db, readonly=True) as store, store.snapshot():
            return verify_log(StateFolderSource(store, None), keys)

    def kinds(self) -> list[str]:
        with AuditStore(self.db, readonly=True) as store:
            return [json.loads(data)["kind"] for _, data, _ in store.iter_entries()]


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path / "state")


# --- where the key comes from --------------------------------------------------------------------


def test_the_setting_wins_then_the_credential_then_the_state_folder(tmp_path: Path) -> None:
    keys, setting = tmp_path / "keys", tmp_path / "audit.key"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    # A credentials folder with other credentials only:
    assert locate_signing_key(None, keys, env) == KeySource("state_folder", keys / "audit.key")
    (credentials / CREDENTIAL_NAME).write_text("")
    assert locate_signing_key(None, keys, env) == KeySource("credential", credentials / CREDENTIAL_NAME)
    assert locate_signing_key(setting, keys, env) == KeySource("signing_key_file", setting)
    assert locate_signing_key(None, keys, {}) == KeySource("state_folder", keys / "audit.key")


def test_the_setting_comes_from_the_environment_as_an_absolute_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENGRAM_AUDIT__SIGNING_KEY_FILE", "audit.key")
    settings = load_settings(state_dir=tmp_path / "state")
    assert settings.audit.signing_key_file == tmp_path / "audit.key"
    assert settings.redacted_dict()[0]["audit"]["signing_key_file"] == str(tmp_path / "audit.key")  # a path, no secret


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_read(tmp_path: Path, mode: int) -> None:
    skey, vkey = generate_signer(origin_for("x"))
    path = write_key(tmp_path / "k", skey + "\n", mode)
    assert read_signing_key(KeySource("signing_key_file", path)).verifier_key() == vkey


SECRET = "c2VjcmV0IGtleSBkYXRh"  # stands for key data, which no message may show


def folder_instead(base: Path) -> Path:
    (base / "k").mkdir()
    return base / "k"


def under_a_file(base: Path) -> Path:
    (base / "file").write_text("")
    return base / "file" / "k"


def key_file(content: str | bytes, mode: int = 0o600) -> Any:
    def make(base: Path) -> Path:
        path = base / "k"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(path, mode)
        return path

    return make


BAD_FILES = {
    "missing": (lambda base: base / "k", "does not exist"),
    "a folder": (folder_instead, "not a regular file"),
    "under a file": (under_a_file, "Not a directory"),
    "group readable": (key_file(f"PRIVATE+KEY+a/b+00000000+{SECRET}", 0o640), "mode 0640"),
    "others writable": (key_file(f"PRIVATE+KEY+a/b+00000000+{SECRET}", 0o602), "mode 0602"),
    "malformed": (key_file(f"PRIVATE+KEY+a/b+00000000+{SECRET}\n"), "malformed"),
    "not UTF-8": (key_file(b"\xff\xfe" + SECRET.encode()), "not UTF-8"),
    "huge": (key_file(SECRET * 1000), "longer than"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_key_file_is_refused_with_the_reason(tmp_path: Path, case: str) -> None:
    make, expected = BAD_FILES[case]
    with pytest.raises(StartupError) as info:
        read_signing_key(KeySource("credential", make(tmp_path)))
    message = str(info.value)
    assert expected in message and f"systemd credential {CREDENTIAL_NAME}" in message
    assert SECRET not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path, _ = new_key(tmp_path / "k")
    os.chown(path, 4242, 4242)
    with pytest.raises(StartupError, match="belongs to uid 4242"):
        read_signing_key(KeySource("signing_key_file", path))


# --- engram audit keygen -------------------------------------------------------------------------------


def test_keygen_makes_a_private_key_for_a_new_log_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    made = CliRunner().invoke(audit_cli, ["keygen", str(path), "--json"])
    assert made.exit_code == 0, made.output
    data = json.loads(made.stdout)
    assert data["origin"].startswith("engram.local/") and data["file"] == str(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_signing_key(KeySource("signing_key_file", path)).verifier_key() == data["vkey"]
    again = CliRunner().invoke(audit_cli, ["keygen", str(path)])
    assert again.exit_code == 2 and "never overwrites" in again.stderr
    assert read_signing_key(KeySource("signing_key_file", path)).verifier_key() == data["vkey"]


def test_keygen_for_a_state_folder_makes_a_key_of_its_log(folder: Folder, tmp_path: Path) -> None:
    refused = CliRunner().invoke(audit_cli, ["keygen", str(tmp_path / "k"), "--state-dir", str(folder.root)])
    assert refused.exit_code == 2 and "has no audit log yet" in refused.stderr and not (tmp_path / "k").exists()
    with AuditStore(folder.db) as store:
        store.meta_setdefault("install_id", "existing")
    made = CliRunner().invoke(audit_cli, ["keygen", str(tmp_path / "k"), "--state-dir", str(folder.root), "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["origin"] == origin_for("existing")


# --- the audit log with an external key ---------------------------------------------------------------


async def test_an_external_key_is_never_written_and_starts_a_new_log(folder: Folder, tmp_path: Path) -> None:
    key, verifier = new_key(tmp_path / "outside.key")
    before = key.read_bytes(), key.stat().st_mtime_ns
    async with folder.log(key) as audit:
        await audit.append("test.thing")
        assert audit.origin == verifier.name  # a new log takes the origin the key was made for
        assert audit.keys.source.kind == "signing_key_file"
        with pytest.raises(Conflict) as refused:
            await audit.rotate_key()
        assert refused.value.reason == "audit_key_external" and "engram audit keygen" in str(refused.value)
        assert "signing key from audit.signing_key_file" in (await audit.health())[1]
    assert not (folder.keys / "audit.key").exists()
    assert (folder.keys / "audit.pub").read_text().strip() == verifier.key_string()
    assert (key.read_bytes(), key.stat().st_mtime_ns) == before
    assert folder.verify([verifier]).entries == 1
    async with folder.log(key):  # and restarts on it
        pass


async def test_a_key_of_another_log_is_refused(folder: Folder, tmp_path: Path) -> None:
    async with folder.log():
        pass
    key, _ = new_key(tmp_path / "other.key")
    with pytest.raises(StartupError, match="belongs to the log .*`engram audit keygen FILE --state-dir"):
        async with folder.log(key):
            pass


async def test_the_state_folder_key_hands_the_log_over_to_an_external_key(folder: Folder, tmp_path: Path) -> None:
    async with folder.log() as audit:
        await audit.append("test.thing")
        origin, old = audit.origin, audit.keys.current
    key, new = new_key(tmp_path / "outside.key", origin)
    async with folder.log(key) as audit:
        assert audit.keys.previous == [old] and audit.keys.current == new
        await audit.append("test.thing")
    assert not (folder.keys / "audit.key").exists()  # the retired key is gone from the state folder
    assert (folder.keys / f"audit-{old.key_id:08x}.pub").read_text().strip() == old.key_string()
    assert folder.kinds() == ["test.thing", "audit.key_rotated", "test.thing"]
    for trusted in ([new], [old]):  # the rotation checkpoint carries trust either way
        assert folder.verify(trusted).checkpoints == 3
    async with folder.log(key):
        pass


async def test_a_copy_of_the_external_key_in_the_state_folder_is_deleted(folder: Folder, tmp_path: Path) -> None:
    async with folder.log() as audit:
        await audit.append("test.thing")
    key = write_key(tmp_path / "moved.key", (folder.keys / "audit.key").read_text())  # copied, not moved
    async with folder.log(key) as audit:
        assert audit.keys.previous == []
    assert not (folder.keys / "audit.key").exists()
    assert folder.kinds() == ["test.thing"]  # same key: nothing to hand over


async def test_another_external_key_without_a_handover_is_refused(folder: Folder, tmp_path: Path) -> None:
    first, verifier = new_key(tmp_path / "first.key")
    async with folder.log(first) as audit:
        await audit.append("test.thing")
    second, _ = new_key(tmp_path / "second.key", verifier.name)
    with pytest.raises(StartupError) as info:
        async with folder.log(second):
            pass
    assert f"signed by key {verifier.key_id:08x}" in str(info.value) and "keys/audit.key" in str(info.value)
    # The documented way: the key that signed so far goes into the state folder for one start.
    write_key(folder.keys / "audit.key", first.read_text())
    async with folder.log(second) as audit:
        assert audit.keys.previous == [verifier]
    assert not (folder.keys / "audit.key").exists()
    assert folder.verify([verifier]).checkpoints == 3  # the first key's, the handover, at close


async def test_a_verifier_key_added_to_the_state_folder_is_not_trusted(folder: Folder, tmp_path: Path) -> None:
    key, verifier = new_key(tmp_path / "outside.key")
    async with folder.log(key) as audit:
        await audit.append("test.thing")
    # Someone who can write the state folder signs a checkpoint with a key of their own, adds its
    # verifier key beside the real ones, and (to pass for the key in use) ends with a genuine one.
    skey, vkey = generate_signer(verifier.name)
    write_key(folder.keys / "audit-00000000.pub", vkey + "\n")
    conn = sqlite3.connect(folder.db)
    size, root = conn.execute("SELECT size, root FROM audit_checkpoints ORDER BY id DESC").fetchone()
    for signer in (Signer(skey), Signer(key.read_text().strip())):
        signed = sign_checkpoint(verifier.name, size, root, signer)
        conn.execute(
            "INSERT INTO audit_checkpoints (size, root, note, key_id, time) VALUES (?, ?, ?, ?, ?)",
            (size, root, signed.note, signed.key_id, signed.time),
        )
    conn.commit()
    conn.close()
    with pytest.raises(StartupError, match="no valid signature by a trusted key"):
        async with folder.log(key):
            pass
