"""Proof bundles: a set of audit entries, their inclusion proofs and one signed checkpoint, checked
offline with only the log's public key (``engram audit verify-bundle``).

``task.prove`` makes one for a task (docs/tasks.md, Proofs); its JSON is::

    {"format": "engram.task-proof/1", "task_id": "tk_...", "origin": "engram.local/<install id>",
     "checkpoint": {"note": "<signed note>", "size": 120, "root": "<base64>", "key_id": "<hex>", "time": "..."},
     "entries": [{"step_id": "a", "seq": 97, "canonical": "<base64 entry bytes>", "proof": ["<base64>", ...]}]}

The verifier trusts nothing in it but what the given key signed: it recomputes each entry's leaf
hash from the entry's bytes, walks each inclusion proof to the root of the checkpoint whose
signature it checked, and reads the task and step from the entry itself (so a bundle cannot pass
one task's entries off as another's). It uses the log's own functions (:mod:`.merkle`,
:mod:`engram.signing`, :func:`.entry.parse_entry`), the same :command:`engram audit verify` and
``engram audit prove`` use.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engram.audit.checkpoints import parse_checkpoint_text
from engram.audit.entry import parse_entry
from engram.audit.merkle import ProofError, leaf_hash, verify_inclusion
from engram.audit.store import StoredCheckpoint
from engram.signing import Checkpoint, NoteError, Verifier, open_checkpoint

__all__ = ["BUNDLE_FORMAT", "KIND_TASK_STEP", "Check", "ProvenEntries", "bundle_ok", "verify_bundle"]

BUNDLE_FORMAT = "engram.task-proof/1"
KIND_TASK_STEP = "task.step"


@dataclass(frozen=True, slots=True)
class ProvenEntries:
    """Entries of the log with their inclusion proofs in the tree one signed checkpoint covers."""

    origin: str
    checkpoint: StoredCheckpoint
    entries: list[tuple[int, bytes, list[bytes]]]  # (seq, canonical bytes, inclusion proof)


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a bundle: what was checked, whether it held, and why not."""

    what: str
    ok: bool
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "ok": self.ok, "why": self.why}


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


def _shape(bundle: Any) -> str | None:
    """Why the bundle is not one at all, or None."""
    if not isinstance(bundle, dict):
        return "not a JSON object"
    if bundle.get("format") != BUNDLE_FORMAT:
        return f"format is {bundle.get('format')!r}, not {BUNDLE_FORMAT!r}"
    if not isinstance(bundle.get("task_id"), str) or not isinstance(bundle.get("origin"), str):
        return "task_id and origin must be strings"
    checkpoint = bundle.get("checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("note"), str):
        return "checkpoint.note must be a string"
    entries = bundle.get("entries")
    if not isinstance(entries, list) or not entries:
        return "entries must be a non-empty list"
    if not all(isinstance(item, dict) for item in entries):
        return "every entry must be a JSON object"
    return None


def _check_checkpoint(bundle: dict[str, Any], keys: Sequence[Verifier]) -> tuple[Check, Checkpoint | None]:
    note = bundle["checkpoint"]["note"]
    try:
        checkpoint, signers = open_checkpoint(note, keys, bundle["origin"])
    except NoteError as exc:
        try:  # still check the proofs against what the note states, to say what else is wrong
            stated = parse_checkpoint_text(note)
        except NoteError:
            stated = None
        return Check("checkpoint signature", False, str(exc)), stated
    return Check(f"checkpoint signature (size {checkpoint.size}, signed by {', '.join(signers)})", True), checkpoint


def _check_entry(item: dict[str, Any], task_id: str, checkpoint: Checkpoint | None) -> list[Check]:
    label = f"entry {item.get('seq')!r} (step {item.get('step_id')!r})"
    try:
        data = _b64(item.get("canonical"), "canonical")
        proof = [_b64(p, "proof hash") for p in item.get("proof") or []]
        entry = parse_entry(data)
    except ValueError as exc:
        return [Check(label, False, f"unreadable: {exc}")]
    checks = []
    detail = entry.get("detail") if isinstance(entry.get("detail"), dict) else {}
    if entry["kind"] != KIND_TASK_STEP:
        checks.append(Check(f"{label} provenance", False, f"kind is {entry['kind']!r}, not {KIND_TASK_STEP!r}"))
    elif entry.get("task_id") != task_id:
        checks.append(Check(f"{label} provenance", False, f"task_id is {entry.get('task_id')!r}, not {task_id!r}"))
    elif entry["seq"] != item.get("seq") or detail.get("step_id") != item.get("step_id"):
        checks.append(Check(
            f"{label} provenance", False,
            f"the entry says seq {entry['seq']}, step {detail.get('step_id')!r}: not what the bundle lists",
        ))
    else:
        checks.append(Check(f"{label} provenance: task {task_id}, tool {detail.get('tool')}", True))
    if checkpoint is None:
        checks.append(Check(f"{label} inclusion", False, "no readable checkpoint to prove it against"))
        return checks
    try:
        verify_inclusion(leaf_hash(data), entry["seq"], checkpoint.size, proof, checkpoint.root)
    except ProofError as exc:
        checks.append(Check(f"{label} inclusion", False, str(exc)))
    else:
        checks.append(Check(f"{label} inclusion in the tree of {checkpoint.size} entries", True))
    return checks


def verify_bundle(bundle: Any, keys: Sequence[Verifier]) -> list[Check]:
    """Every check of ``bundle`` against the trusted ``keys``, in order; it verifies when all hold."""
    why = _shape(bundle)
    if why is not None:
        return [Check("bundle", False, why)]
    first, checkpoint = _check_checkpoint(bundle, keys)
    checks = [first]
    seen: set[Any] = set()
    for item in bundle["entries"]:
        if item.get("seq") in seen:
            checks.append(Check(f"entry {item.get('seq')!r}", False, "listed twice"))
            continue
        seen.add(item.get("seq"))
        checks += _check_entry(item, bundle["task_id"], checkpoint)
    return checks


def bundle_ok(checks: Sequence[Check]) -> bool:
    return bool(checks) and all(check.ok for check in checks)
