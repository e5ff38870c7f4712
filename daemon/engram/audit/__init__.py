"""engram's signed audit log: a tamper-evident log anyone can verify offline.

Every audited action becomes one entry of an append-only log. The entries are the leaves of an
RFC 6962 / RFC 9162 Merkle tree, and the log periodically signs a *checkpoint* (origin, tree size,
root hash) as a C2SP signed note with an Ed25519 key, in the style of Certificate Transparency,
Trillian and Sigstore. Anyone holding the verifier key can then check that an entry is in the
log (inclusion proof) and that the log only ever grew (consistency proof between checkpoints).
See ``docs/audit.md``.

Pure libraries (no I/O, no daemon state):

* :mod:`engram.audit.merkle` — leaf/node hashing, the compact frontier, proofs, verification.
* :mod:`engram.signing` (below the parts: the inference part signs model manifests with it too) —
  signer/verifier keys, signed notes, tlog checkpoints.
* :mod:`engram.audit.canonical` — canonical JSON (RFC 8785) and content hashes.
* :mod:`engram.audit.entry` — what an entry says; requests and bus events as entries.
* :mod:`engram.audit.checkpoints` — the checkpoint notes engram signs (extension lines).
* :mod:`engram.audit.verify` — whole-log verification against verifier keys.

Storage, the daemon part and its surfaces:

* :mod:`engram.audit.store` — the SQLite tables (blocking; worker threads, bench, offline tools).
* :mod:`engram.audit.keys` — the signing key files and rotation.
* :mod:`engram.audit.log` — the ``AuditLog`` part: group-commit writer, bus recorder, checkpoints.
* :mod:`engram.audit.export` — the JSON Lines export format; log sources for verification.
* :mod:`engram.audit.methods`, :mod:`engram.audit.cli` — RPC methods, ``engram audit ...``
  (``engram bench audit`` is in engram-bench, ``benchmarks/``).
* :mod:`engram.audit.settings`, :mod:`engram.audit.events` — the ``[audit]`` settings, bus events
  and the audited topics.

Import the submodule you need; this package imports nothing so that ``import engram.audit``
stays free (``engram.signing`` pulls in ``cryptography``).
"""
