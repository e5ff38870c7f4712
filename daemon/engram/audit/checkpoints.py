"""How the audit log writes its checkpoints: C2SP tlog-checkpoint notes with two extension lines.

Text of a checkpoint note (https://c2sp.org/tlog-checkpoint)::

    engram.local/3f2a9c0d1e2b4a5c          origin: one per state folder
    1200                                   tree size
    <base64 root hash>
    Timestamp: 1738324800123456789         when it was signed, unix nanoseconds (as Rekor writes it)
    engram-key-rotation <old vkey> <new vkey>   only on the checkpoint that rotates the key

followed by a blank line and the Ed25519 signature line(s) of the signed-note format.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

from engram.signing import Checkpoint, NoteError, Signer

__all__ = [
    "ROTATION_EXTENSION",
    "TIMESTAMP_EXTENSION",
    "SignedCheckpoint",
    "checkpoint_time",
    "note_key_id",
    "parse_checkpoint_text",
    "sign_checkpoint",
]

ROTATION_EXTENSION = "engram-key-rotation "
TIMESTAMP_EXTENSION = "Timestamp: "


class SignedCheckpoint:
    """A freshly signed checkpoint with the columns the store keeps beside the note."""

    __slots__ = ("checkpoint", "key_id", "note", "time")

    def __init__(self, checkpoint: Checkpoint, note: str, key_id: str, time: str) -> None:
        self.checkpoint = checkpoint
        self.note = note
        self.key_id = key_id
        self.time = time


def sign_checkpoint(
    origin: str, size: int, root: bytes, signer: Signer, *, previous: Signer | None = None, now_ns: int | None = None
) -> SignedCheckpoint:
    """Sign a checkpoint. With ``previous``, it is the key rotation checkpoint: it names both keys
    and ``previous`` co-signs it, so that trust can pass from either key to the other."""
    extensions = [f"{TIMESTAMP_EXTENSION}{time.time_ns() if now_ns is None else now_ns}"]
    signers = [signer]
    if previous is not None:
        extensions.append(f"{ROTATION_EXTENSION}{previous.verifier_key()} {signer.verifier_key()}")
        signers.append(previous)
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    note = checkpoint.sign(*signers)
    return SignedCheckpoint(checkpoint, note, f"{signer.key_id:08x}", checkpoint_time(checkpoint) or "")


def parse_checkpoint_text(note: str) -> Checkpoint:
    """The checkpoint a note states, without checking signatures (``NoteError`` if malformed)."""
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    return Checkpoint.parse(note[: split + 1])


def note_key_id(note: str) -> str:
    """Hex key ID of the first signature line (the key the log signed with)."""
    block = note[note.rfind("\n\n") + 2 :]
    first = block.split("\n", 1)[0]
    _, _, b64 = first.partition(" ")[2].partition(" ")
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise NoteError("malformed signature line") from None
    if len(raw) < 5:
        raise NoteError("malformed signature line")
    return raw[:4].hex()


def checkpoint_time(checkpoint: Checkpoint) -> str | None:
    """The RFC 3339 time of a checkpoint's ``Timestamp:`` extension line, if it has one."""
    for line in checkpoint.extensions:
        if line.startswith(TIMESTAMP_EXTENSION):
            value = line[len(TIMESTAMP_EXTENSION) :]
            if not value.isdigit():
                raise NoteError(f"malformed timestamp line {line!r}")
            nanos = int(value)
            moment = datetime.fromtimestamp(nanos // 1_000_000_000, UTC)
            return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 1_000_000_000 // 1000:06d}Z"
    return None
