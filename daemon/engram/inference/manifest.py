"""A model's manifest: what the files are (SHA-256 of each), what the model does, how to feed it.

Each model folder ``<state>/models/<name>/`` holds ``manifest.json`` beside ``model.onnx``. The
manifest is checked before the model is loaded: every file's SHA-256 must match, and when the
manifest is signed its Ed25519 signature must verify.

Signing
-------
The signed message is the domain separator ``b"engram model manifest v1\\n"`` followed by the
*canonical bytes*: the manifest without its ``signature`` field, as compact JSON with sorted keys
(UTF-8, no whitespace). The signature is a plain Ed25519 signature, stored with the signer's
verifier key in the C2SP note key format (``name+keyid+base64``, the keys of
:mod:`engram.signing`). Whether a signature is *trusted* is decided by
``inference.trusted_keys``; a signature that does not verify under its own key means the manifest
was changed after signing, and the model is refused whatever the policy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engram.errors import DataError
from engram.signing import NoteError, Signer, Verifier

__all__ = [
    "MODEL_NAME",
    "EmbeddingInfo",
    "Manifest",
    "ManifestSignature",
    "SignatureStatus",
    "TensorSpec",
    "canonical_bytes",
    "check_model_name",
    "sign_manifest",
    "signature_status",
    "signing_message",
]

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
_DOMAIN = b"engram model manifest v1\n"

Task = Literal["embed", "classify", "generic"]
Dim = int | str | None


def check_model_name(name: str) -> str | None:
    """None when ``name`` is a valid model name, else what is wrong with it."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        return "model names are 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Model):
    """One graph input or output."""

    name: str
    kind: Literal["tensor", "sequence", "optional", "map", "sparse_tensor", "unknown"] = "tensor"
    onnx_type: str = Field(description='ONNX Runtime\'s name for the type, e.g. "tensor(float)", "seq(tensor(int64))".')
    dtype: str | None = Field(default=None, description="Wire dtype for tensors the wire format carries; else null.")
    shape: list[Dim] | None = Field(
        default=None, description="Dimensions: a number, a symbolic name, or null for an unnamed dynamic one; null: any rank."
    )
    allow_nonfinite: bool = Field(default=True, description="Whether NaN and infinities are accepted in this input.")

    def shape_text(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.dtype or self.onnx_type} {self.shape_text()}"


class EmbeddingInfo(_Model):
    """For task ``embed``: how texts become vectors."""

    dim: int
    max_seq_len: int
    output: str = "sentence_embedding"
    pooling: Literal["mean"] = "mean"
    normalized: bool = True
    hidden_size: int
    num_layers: int
    num_heads: int


class ManifestSignature(_Model):
    verifier_key: str = Field(description="The signer's verifier key, name+keyid+base64 (C2SP note format).")
    sig: str = Field(description="Base64 Ed25519 signature over the domain separator and the canonical bytes.")


class Manifest(_Model):
    format: Literal[1] = 1
    name: str
    task: Task = "generic"
    model_file: str = MODEL_FILE
    files: dict[str, str] = Field(description="SHA-256 (hex) of every file of the model, by file name.")
    external_data: list[str] = Field(default_factory=list, description="Files holding weights outside model_file.")
    tokenizer: str | None = Field(default=None, description="tokenizer.json of a text model (one of files).")
    labels: list[str] | None = Field(default=None, description="Class names of a classify model, in output order.")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    embedding: EmbeddingInfo | None = None
    ir_version: int = 0
    opsets: dict[str, int] = Field(default_factory=dict, description="Operator set version by domain ('' is ai.onnx).")
    source: dict[str, Any] = Field(default_factory=dict, description="Where the model came from (add, import, quantize).")
    created_at: str = ""
    signature: ManifestSignature | None = None

    @field_validator("files")
    @classmethod
    def _hex_digests(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if "/" in name or name in ("", ".", "..") or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"files: {name!r} must be a plain file name with a 64-digit hex SHA-256")
        return files

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    def size_bytes(self, sizes: dict[str, int]) -> int:
        return sum(sizes.get(name, 0) for name in self.files)


def canonical_bytes(manifest: Manifest) -> bytes:
    """The manifest without its signature, as sorted-keys compact JSON."""
    data = manifest.model_dump(mode="json", exclude={"signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signing_message(manifest: Manifest) -> bytes:
    return _DOMAIN + canonical_bytes(manifest)


def sign_manifest(manifest: Manifest, signer: Signer) -> ManifestSignature:
    signature = signer.sign(signing_message(manifest))
    return ManifestSignature(verifier_key=signer.verifier_key(), sig=base64.b64encode(signature).decode("ascii"))


SignatureStatus = Literal["unsigned", "trusted", "untrusted"]


class BadSignature(DataError, ValueError):
    """The manifest's signature does not verify (or cannot be read): it was changed after signing."""


def signature_status(manifest: Manifest, trusted: list[Verifier]) -> tuple[SignatureStatus, str | None]:
    """Whether the manifest is unsigned, signed by a trusted key or by another key; the signer's name.

    Raises :class:`BadSignature` when there is a signature and it does not verify.
    """
    signature = manifest.signature
    if signature is None:
        return "unsigned", None
    try:
        verifier = Verifier(signature.verifier_key)
        raw = base64.b64decode(signature.sig, validate=True)
    except (NoteError, binascii.Error, ValueError) as exc:
        raise BadSignature(f"unreadable signature: {exc}") from None
    if not verifier.verify(signing_message(manifest), raw):
        raise BadSignature(f"the signature by {verifier.name}+{verifier.key_id:08x} does not verify")
    label = f"{verifier.name}+{verifier.key_id:08x}"
    return ("trusted" if verifier in trusted else "untrusted"), label
