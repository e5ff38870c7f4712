"""``engram audit ...``.

``verify`` and ``export --state-dir`` read the state folder's database directly (read-only) and
need no daemon, nor does ``verify-bundle`` (a proof bundle file and a public key are all it
reads); the other commands talk to the running daemon.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from engram.clitools import (
    EXIT_REMOTE,
    EXIT_USAGE,
    Output,
    call,
    client_command,
    errors,
    fail,
    json_option,
)


@click.group()
def audit() -> None:
    """The signed audit log: entries, proofs, checkpoints, keys, offline verification."""


# --- helpers ----------------------------------------------------------------------------------


def _b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _state_dir(state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    from engram.config import load_settings
    from engram.errors import ConfigError

    try:
        return load_settings().state_dir
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
        raise  # unreachable: fail exits


def _load_pubkeys(files: tuple[Path, ...]) -> list[Any]:
    from engram.audit.keys import read_verifier_keys
    from engram.signing import NoteError

    keys = []
    for path in files:
        try:
            keys += read_verifier_keys(path)
        except (OSError, NoteError) as exc:
            fail(EXIT_USAGE, f"cannot read verifier key(s) from {path}: {exc}")
    return keys


@contextmanager
def _progress(description: str, total: int | None, enabled: bool) -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def _open_state(state_dir: Path) -> Any:
    from engram.audit.store import AuditStore, StoreError

    db = state_dir / "engram.db"
    try:
        return AuditStore(db, readonly=True).open()
    except StoreError as exc:
        fail(EXIT_USAGE, str(exc))


def _state_origin(store: Any) -> str | None:
    from engram.audit.log import INSTALL_ID_KEY, origin_for

    install_id = store.meta(INSTALL_ID_KEY)
    return origin_for(install_id) if install_id else None


def _print_entry(entry: dict[str, Any]) -> None:
    detail = entry.get("detail") or {}
    principal = entry.get("principal") or {}
    who = f"uid {principal['uid']}" if "uid" in principal else "daemon"
    if entry.get("kind") == "rpc":
        what = f"{detail.get('method')} {detail.get('outcome')}"
        if detail.get("error_code") is not None:
            what += f" ({detail['error_code']} {detail.get('error_reason')})"
    else:
        what = json.dumps(detail, sort_keys=True)
    click.echo(f"{entry['seq']:>8}  {entry['time']}  {entry['kind']:<18} {who:<10} {what}")


# --- reading through the daemon ---------------------------------------------------------------------


@audit.command("tail")
@click.option("-n", "--lines", "count", type=click.IntRange(min=1, max=1000), default=10, show_default=True, help="Entries to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing entries as they are appended (Ctrl-C to stop).")
@client_command
def tail(count: int, follow: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The last entries of the audit log."""
    from engram.client import Client

    def show(entries: list[dict[str, Any]]) -> None:
        for item in entries:
            if as_json:
                click.echo(json.dumps(item["entry"]))
            else:
                _print_entry(item["entry"])

    with errors(), Client(socket_path, timeout=timeout) as client:
        size = client.call("audit.entries", {"start": 0, "limit": 1})["size"]
        page = client.call("audit.entries", {"start": max(0, size - count), "limit": count})
        show(page["entries"])
        if not follow:
            return
        following = page["entries"][-1]["seq"] + 1 if page["entries"] else size
        stream = client.subscribe(["audit.appended"])
        try:
            while True:
                try:
                    stream.receive(timeout=1.0)
                except TimeoutError:
                    pass
                except StopIteration:
                    return
                while True:
                    page = client.call("audit.entries", {"start": following, "limit": 1000})
                    if not page["entries"]:
                        break
                    show(page["entries"])
                    following = page["entries"][-1]["seq"] + 1
        except KeyboardInterrupt:
            pass


@audit.command("show")
@click.argument("seq", type=click.IntRange(min=0))
@client_command
def show(seq: int, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """One entry: its fields, canonical bytes and leaf hash."""
    result = call(socket_path, timeout, "audit.entry", {"seq": seq})

    def human(data: dict[str, Any]) -> None:
        click.echo(json.dumps(data["entry"], indent=2, sort_keys=True))
        click.echo(f"leaf hash  {data['leaf_hash']}")
        click.echo(f"bytes      {len(_b64d(data['canonical']))} (canonical JSON, base64 in --json)")

    Output(as_json).emit(result, human)


@audit.command("checkpoint")
@click.option("--stored", is_flag=True, help="The last stored checkpoint, without signing a fresh one.")
@client_command
def checkpoint(stored: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The latest signed checkpoint (a C2SP signed note): keep it to check the log later."""
    result = call(socket_path, timeout, "audit.checkpoint", {"fresh": not stored})
    Output(as_json).emit(result, lambda d: click.echo(d["note"], nl=False))


@audit.command("pubkey")
@click.option("--all", "show_all", is_flag=True, help="Also the verifier keys of earlier (rotated) keys.")
@client_command
def pubkey(show_all: bool, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The verifier key (C2SP format) to pin for `engram audit verify --pubkey`."""
    result = call(socket_path, timeout, "audit.pubkey")

    def human(data: dict[str, Any]) -> None:
        click.echo(data["vkey"])
        if show_all:
            for vkey in data["previous"]:
                click.echo(vkey)

    Output(as_json).emit(result, human)


@audit.command("rotate-key")
@client_command
def rotate_key(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Replace the signing key (owner only). Earlier checkpoints stay verifiable."""
    result = call(socket_path, timeout, "audit.rotate_key")

    def human(data: dict[str, Any]) -> None:
        click.echo(f"new verifier key       {data['vkey']}")
        click.echo(f"previous verifier key  {data['previous_vkey']}")
        click.echo(f"rotation checkpoint at size {data['size']}, signed by both keys:")
        click.echo(data["note"], nl=False)

    Output(as_json).emit(result, human)


@audit.command("keygen")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Make the key for this state folder's existing log, to hand the log over to it "
    "(default: a key that starts a new log).",
)
@json_option
def keygen(file: Path, state_dir: Path | None, as_json: bool) -> None:
    """Make a signing key to keep outside the state folder (audit.signing_key_file or the systemd
    credential engram-audit.key): writes FILE, mode 0600, never over an existing file, and prints
    its verifier key. No daemon needed."""
    from engram.audit.log import new_install_id, origin_for
    from engram.signing import generate_signer
    from engram.storage.files import fsync_directory

    if state_dir is not None:
        store = _open_state(state_dir)
        try:
            origin = _state_origin(store)
        finally:
            store.close()
        if origin is None:
            fail(EXIT_USAGE, f"{state_dir} has no audit log yet; leave out --state-dir to make a key for a new log")
    else:
        origin = origin_for(new_install_id())
    skey, vkey = generate_signer(origin)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        fail(EXIT_USAGE, f"{file} exists; engram never overwrites a signing key")
    except OSError as exc:
        fail(EXIT_USAGE, f"cannot create {file}: {exc.strerror}")
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (skey + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(file.absolute().parent)
    result = {"file": str(file), "origin": origin, "vkey": vkey}

    def human(data: dict[str, Any]) -> None:
        click.echo(f"signing key for the log {data['origin']} written to {data['file']} (mode 0600)")
        click.echo(f"its verifier key, to pin: {data['vkey']}")

    Output(as_json).emit(result, human)


@audit.command("prove")
@click.argument("seq", type=click.IntRange(min=0))
@click.option("--size", type=click.IntRange(min=1), help="Tree size to prove inclusion in (default: a fresh checkpoint's).")
@click.option(
    "--pubkey",
    "pubkey_files",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="Verifier key file(s) to check the checkpoint with (default: the key the daemon reports).",
)
@client_command
def prove(
    seq: int, size: int | None, pubkey_files: tuple[Path, ...], socket_path: Path | None, as_json: bool, timeout: float
) -> None:
    """Prove that entry SEQ is in the log, and check the proof here against a signed checkpoint."""
    from engram.audit.merkle import (
        ProofError,
        leaf_hash,
        verify_consistency,
        verify_inclusion,
    )
    from engram.client import Client
    from engram.signing import NoteError, Verifier, open_checkpoint

    with errors(), Client(socket_path, timeout=timeout) as client:
        cp_data = client.call("audit.checkpoint", {"fresh": True})
        keys_info = client.call("audit.pubkey")
        entry = client.call("audit.entry", {"seq": seq})
        want = size or cp_data["size"]
        proof = client.call("audit.prove", {"seq": seq, "size": want})
        link = None
        if want != cp_data["size"]:
            lo, hi = sorted((want, cp_data["size"]))
            link = client.call("audit.consistency", {"size1": lo, "size2": hi})
    keys = _load_pubkeys(pubkey_files) if pubkey_files else [Verifier(keys_info["vkey"])] + [
        Verifier(v) for v in keys_info["previous"]
    ]
    key_source = ", ".join(str(p) for p in pubkey_files) if pubkey_files else "the key the daemon reports"
    try:
        checkpoint, signers = open_checkpoint(cp_data["note"], keys, keys_info["origin"])
        data = _b64d(entry["canonical"])
        leaf = leaf_hash(data)
        if leaf != _b64d(proof["leaf_hash"]):
            raise ProofError("the entry's bytes do not hash to the leaf hash the proof is for")
        path = [_b64d(p) for p in proof["proof"]]
        root = _b64d(proof["root"])
        verify_inclusion(leaf, seq, want, path, root)
        if link is None:
            if root != checkpoint.root:
                raise ProofError("the proof's root is not the checkpoint's root")
        else:
            lo, hi = sorted((want, checkpoint.size))
            roots = {want: root, checkpoint.size: checkpoint.root}
            verify_consistency(lo, hi, [_b64d(p) for p in link["proof"]], roots[lo], roots[hi])
    except (NoteError, ProofError) as exc:
        fail(EXIT_REMOTE, f"proof of entry {seq} does NOT verify: {exc}")
    report = {
        **proof,
        "verified": True,
        "checkpoint": cp_data,
        "consistency": link,
        "verified_with": key_source,
    }

    def human(_: Any) -> None:
        click.echo(f"entry {seq} is in the log: inclusion proof ({len(path)} hashes) in the tree of {want} entries")
        click.echo(f"root       {proof['root']}")
        via = "" if link is None else f" (linked by a consistency proof from size {want})"
        click.echo(
            f"verified   against the checkpoint of size {checkpoint.size} signed {cp_data['time']} by "
            f"{', '.join(signers)}{via}; key from {key_source}"
        )
        if not pubkey_files:
            click.echo("note       pass --pubkey with a key you pinned earlier for a check independent of the daemon")

    Output(as_json).emit(report, human)


# --- export and offline verification ------------------------------------------------------------------


def _export_from_state(state_dir: Path, out: Path, progress: bool) -> int:
    from engram.audit.export import ExportHeader, write_export, write_export_file

    store = _open_state(state_dir)
    keys_dir = state_dir / "keys"
    vkeys: list[tuple[str, bool]] = []
    if (keys_dir / "audit.pub").exists():
        vkeys.append(((keys_dir / "audit.pub").read_text().strip(), True))
    vkeys += [(p.read_text().strip(), False) for p in sorted(keys_dir.glob("audit-*.pub"))]
    try:
        with store.snapshot():
            checkpoints = store.checkpoints()
            # The snapshot: everything the last checkpoint covers, or every entry if there is none.
            size = checkpoints[-1].size if checkpoints else store.count_entries()
            header = ExportHeader(_state_origin(store) or "", size, len(checkpoints))
            with _progress("exporting", size, progress) as bar:
                return write_export_file(
                    out, lambda f: write_export(f, header, vkeys, checkpoints, store.iter_entries(0, size), bar)
                )
    finally:
        store.close()


def _export_from_daemon(client: Any, out: Path, progress: bool) -> int:
    from engram.audit.export import ExportHeader, write_export, write_export_file
    from engram.audit.store import StoredCheckpoint

    cp = client.call("audit.checkpoint", {"fresh": True})
    keys = client.call("audit.pubkey")
    fetched: list[dict[str, Any]] = []
    while True:
        page = client.call("audit.checkpoints", {"start": len(fetched), "limit": 1000})
        fetched += page["checkpoints"]
        if not page["checkpoints"] or len(fetched) >= page["total"]:
            break
    # Sizes never shrink, so this is a prefix: the checkpoints up to the one just signed.
    checkpoints = [
        StoredCheckpoint(i + 1, c["size"], _b64d(c["root"]), c["note"], c["key_id"], c["time"])
        for i, c in enumerate(fetched)
        if c["size"] <= cp["size"]
    ]
    size = cp["size"]

    def entries() -> Iterator[tuple[int, bytes, bytes]]:
        start = 0
        while start < size:
            page = client.call("audit.entries", {"start": start, "limit": min(1000, size - start)})
            for item in page["entries"]:
                yield item["seq"], _b64d(item["canonical"]), _b64d(item["leaf_hash"])
            start += len(page["entries"])
            if not page["entries"]:
                break

    header = ExportHeader(keys["origin"], size, len(checkpoints))
    vkeys = [(keys["vkey"], True)] + [(v, False) for v in keys["previous"]]
    with _progress("exporting", size, progress) as bar:
        return write_export_file(out, lambda f: write_export(f, header, vkeys, checkpoints, entries(), bar))


@audit.command("export")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read this state folder directly (no daemon needed) instead of asking the daemon.",
)
@client_command
def export(file: Path, state_dir: Path | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Write the log (entries, checkpoints, verifier keys) to FILE as JSON Lines."""
    from engram.client import Client

    started = time.perf_counter()
    if state_dir is not None:
        count = _export_from_state(state_dir, file, progress=not as_json)
    else:
        with errors(), Client(socket_path, timeout=timeout) as client:
            count = _export_from_daemon(client, file, progress=not as_json)
    result = {"file": str(file), "entries": count, "seconds": round(time.perf_counter() - started, 3)}
    Output(as_json).emit(result, lambda d: click.echo(f"exported {d['entries']} entries to {d['file']}"))


@audit.command("verify")
@click.argument("export_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Verify this state folder's log (default: the configured state folder), read-only.",
)
@click.option(
    "--pubkey",
    "pubkey_files",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    required=True,
    help="Verifier key file(s) to trust (one C2SP key per line); repeat for several.",
)
@click.option(
    "--checkpoint",
    "checkpoint_files",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    multiple=True,
    help="A checkpoint note saved earlier (engram audit checkpoint): the log must still contain it.",
)
@json_option
def verify(
    export_file: Path | None,
    state_dir: Path | None,
    pubkey_files: tuple[Path, ...],
    checkpoint_files: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Verify the whole log offline: every leaf, the tree, every checkpoint signature.

    Reads an EXPORT_FILE or a state folder (read-only; no daemon needed). Exit 0 when everything
    verifies; exit 1 naming the first bad entry or checkpoint.
    """
    from engram.audit.export import ExportSource, StateFolderSource
    from engram.audit.verify import VerificationError, verify_log

    if export_file is not None and state_dir is not None:
        raise click.UsageError("give an EXPORT_FILE or --state-dir, not both")
    keys = _load_pubkeys(pubkey_files)
    extra = [p.read_text(encoding="utf-8") for p in checkpoint_files]
    started = time.perf_counter()
    what = str(export_file) if export_file is not None else str(_state_dir(state_dir))
    try:
        if export_file is not None:
            try:
                source = ExportSource(export_file)
            except OSError as exc:
                fail(EXIT_USAGE, f"cannot read {export_file}: {exc.strerror}")
            with source, _progress("verifying", source.entry_count_hint(), not as_json) as bar:
                report = verify_log(source, keys, extra_checkpoints=extra, progress=bar)
        else:
            store = _open_state(_state_dir(state_dir))
            try:
                with store.snapshot():
                    state_source = StateFolderSource(store, _state_origin(store))
                    with _progress("verifying", state_source.entry_count_hint(), not as_json) as bar:
                        report = verify_log(state_source, keys, extra_checkpoints=extra, progress=bar)
            finally:
                store.close()
    except VerificationError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "where": exc.where, "why": exc.why, "source": what}))
            sys.exit(EXIT_REMOTE)
        fail(EXIT_REMOTE, f"audit log {what} does NOT verify: {exc}")
    seconds = time.perf_counter() - started
    result = {**report.as_dict(), "source": what, "seconds": round(seconds, 3)}

    def human(data: dict[str, Any]) -> None:
        click.echo(f"ok: {data['entries']} entries and {data['checkpoints']} checkpoints of {data['origin']} verify")
        if data["last_checkpoint_size"] is not None:
            click.echo(f"last checkpoint: size {data['last_checkpoint_size']}, root {data['last_checkpoint_root']}")
        if data["unsigned_tail"]:
            click.echo(f"{data['unsigned_tail']} entries after the last checkpoint are not signed yet")
        for vkey in data["keys"]:
            click.echo(f"signed by {vkey}")
        if data["nodes_checked"]:
            click.echo(f"tree state and {data['nodes_checked']} stored tree nodes agree with the entries")
        click.echo(f"({data['seconds']:.2f} s)")

    Output(as_json).emit(result, human)


@audit.command("verify-bundle")
@click.argument("bundle_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--pubkey",
    "pubkey_files",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    required=True,
    help="Verifier key file(s) to trust (one C2SP key per line); repeat for several.",
)
@json_option
def verify_bundle(bundle_file: Path, pubkey_files: tuple[Path, ...], as_json: bool) -> None:
    """Check a proof bundle (task.prove) offline: each entry's leaf hash and inclusion proof, the
    checkpoint's signature by the given key, and that every entry is the bundle's task's.

    Prints OK or FAIL per check; exit 0 only when every check holds, else 1.
    """
    from engram.audit.bundle import bundle_ok
    from engram.audit.bundle import verify_bundle as check_bundle

    keys = _load_pubkeys(pubkey_files)
    try:
        bundle = json.loads(bundle_file.read_bytes())
    except OSError as exc:
        fail(EXIT_USAGE, f"cannot read {bundle_file}: {exc.strerror}")
    except ValueError as exc:
        fail(EXIT_USAGE, f"{bundle_file} is not JSON: {exc}")
    checks = check_bundle(bundle, keys)
    ok = bundle_ok(checks)
    result = {"ok": ok, "file": str(bundle_file), "checks": [check.as_dict() for check in checks]}

    def human(data: dict[str, Any]) -> None:
        for check in checks:
            click.echo(f"OK    {check.what}" if check.ok else f"FAIL  {check.what}: {check.why}")
        verdict = "verifies" if ok else "does NOT verify"
        click.echo(f"{bundle_file} {verdict}")

    Output(as_json).emit(result, human)
    if not ok:
        sys.exit(EXIT_REMOTE)
