"""Helpers shared by the audit unit tests (and the crash test's writer subprocess)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
from engram.audit.checkpoints import sign_checkpoint
from engram.audit.entry import Record, request_record
from engram.audit.store import AuditStore
from engram.principal import Principal
from engram.signing import Signer, Verifier, generate_signer
from engram.storage import Database

ORIGIN = "engram.local/test"
PRINCIPAL = Principal(uid=1000, gid=1000, pid=4242, user="ada")


def migrate(db: Path) -> None:
    async def run() -> None:
        async with Database(db):
            pass

    anyio.run(run)


def record(i: int) -> Record:
    if i % 3 == 2:
        return Record(kind="memory.deleted", detail={"id": i, "text_hash": f"{i:064x}"}, task_id=i - 1)
    return request_record(
        method="plugins.list", principal=PRINCIPAL, request=i, params={"n": i}, result={"plugins": [], "n": i}, connection=1
    )


@dataclass
class Log:
    folder: Path
    db: Path
    signer: Signer
    verifier: Verifier
    size: int

    def store(self, readonly: bool = True) -> AuditStore:
        return AuditStore(self.db, readonly=readonly).open()


def build_log(folder: Path, size: int = 20, every: int = 5, batch: int = 3) -> Log:
    """A log of ``size`` entries with a checkpoint every ``every`` entries (and one at the end),
    signed with a fresh key, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "engram.db"
    migrate(db)
    skey, vkey = generate_signer(ORIGIN)
    signer = Signer(skey)
    with AuditStore(db) as store:
        store.meta_setdefault("install_id", "test")
        done = 0
        while done < size:
            count = min(batch, size - done, every - done % every)
            store.append([record(done + i) for i in range(count)])
            done += count
            if done % every == 0 or done == size:
                signed = sign_checkpoint(ORIGIN, done, store.tree.root(), signer)
                store.add_checkpoint(done, signed.checkpoint.root, signed.note, signed.key_id, signed.time)
    return Log(folder, db, signer, Verifier(vkey), size)
