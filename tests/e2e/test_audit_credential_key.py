"""engramd signing its audit log with a key from a systemd credential: nothing of the key in the
state folder, checkpoints that verify with the key's verifier key, no rotation by the daemon.
(A bad key file exiting 2 is a case of test_config_errors.py; the rest is in the unit tests.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engram.audit.export import StateFolderSource
from engram.audit.keyfile import CREDENTIAL_NAME
from engram.audit.log import origin_for
from engram.audit.store import AuditStore
from engram.audit.verify import verify_log
from engram.errors import RPCError
from engram.signing import Verifier, generate_signer

pytestmark = pytest.mark.e2e


def test_a_credential_key_signs_the_log_and_never_enters_the_state_folder(make_daemon, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o500)
    skey, vkey = generate_signer(origin_for("e2e0credential"))
    key = credentials / CREDENTIAL_NAME
    key.write_text(skey + "\n")
    os.chmod(key, 0o400)  # as systemd leaves a credential

    daemon = make_daemon(env={"CREDENTIALS_DIRECTORY": str(credentials)})
    with daemon.client() as client:
        seq = client.call("plugins.list")["audit_seq"]
        keys = client.call("audit.pubkey")
        health = client.call("system.health")["checks"]["audit"]
        with pytest.raises(RPCError) as refused:
            client.call("audit.rotate_key")
    assert keys["vkey"] == vkey and keys["origin"] == origin_for("e2e0credential")
    assert keys["key_source"] == "credential"
    assert health["ok"] and f"signing key from systemd credential {CREDENTIAL_NAME}" in health["detail"]
    assert refused.value.code == -32007 and refused.value.reason == "audit_key_external"
    assert daemon.stop() == 0

    folder = daemon.state_dir
    assert not (folder / "keys" / "audit.key").exists()
    assert (folder / "keys" / "audit.pub").read_text().strip() == vkey
    assert key.read_text() == skey + "\n" and (key.stat().st_mode & 0o777) == 0o400  # never written
    assert skey.encode() not in daemon.log_path.read_bytes()  # nor logged
    with AuditStore(folder / "engram.db", readonly=True) as store, store.snapshot():
        report = verify_log(StateFolderSource(store, None), [Verifier(vkey)])
    assert report.entries > seq and report.keys == [vkey] and report.unsigned_tail == 0
