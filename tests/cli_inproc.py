"""The engram CLI called in this process, for tests where the command's output and exit status
are what is checked, not the process around it (start-up, imports, signals): a CLI subprocess
costs ~0.6 CPU-s of interpreter start and imports, and the suite runs hundreds of them.

It answers like `subprocess.run(..., capture_output=True, text=True)`, so a test reads
`returncode`, `stdout` and `stderr` either way; an exception the command did not turn into an
exit status comes back as a traceback on stderr with status 1, as a process would show it."""

from __future__ import annotations

import os
import subprocess
import traceback

from click.testing import CliRunner
from engram.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `engram ARGS` here. `env` is laid over this process's environment for the call;
    whatever the command sets there (`--socket` sets ENGRAM_SOCKET) is undone afterwards."""
    saved = dict(os.environ)
    try:
        result = CliRunner().invoke(main, list(args), env=env, input=input, prog_name="engram")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["engram", *args], result.exit_code, result.stdout, stderr)
