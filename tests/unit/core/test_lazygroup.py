"""Groups that other distributions fill (``engram bench``, ``engram models``): their commands come
from entry points, and without the distribution that adds them the group says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import click
from click.testing import CliRunner

from engram.clitools import INSTALL_BENCH
from engram.lazygroup import LazyGroup

HINT = "engram-example adds it: pip install engram-example"


def test_a_group_nothing_fills_says_what_to_install_and_exits_2() -> None:
    @click.group(cls=LazyGroup, entry_point_group="engram.cli.nothing-declares-this", install_hint=HINT)
    def empty() -> None:
        """A group no installed distribution adds to."""

    for args in ([], ["--help"], ["run"]):
        result = CliRunner().invoke(empty, args, prog_name="engram empty")
        assert result.exit_code == 2, (args, result.output)
        assert HINT in result.output and "no commands installed" in result.output


def test_a_missing_command_names_the_hint_beside_the_commands_there() -> None:
    @click.group(cls=LazyGroup, entry_point_group="engram.cli.nothing-declares-this", install_hint=HINT)
    def tools() -> None:
        """A group with a command of its own."""

    @tools.command()
    def here() -> None:
        click.echo("here")

    assert CliRunner().invoke(tools, ["here"]).output == "here\n"
    missing = CliRunner().invoke(tools, ["conformance"])
    assert missing.exit_code == 2 and "No such command 'conformance'" in missing.output and HINT in missing.output


# engram's own CLI with no distribution declaring any entry point (engram-bench not installed).
WITHOUT_BENCH = """
import importlib.metadata, json
importlib.metadata.entry_points = lambda **selection: ()
from click.testing import CliRunner
from engram.cli import main
results = {}
for args in (["bench"], ["bench", "--help"], ["bench", "rpc"], ["models", "conformance"]):
    result = CliRunner().invoke(main, args)
    results[" ".join(args)] = [result.exit_code, result.output]
print(json.dumps(results))
"""


def test_engram_bench_without_engram_bench_says_how_to_install_it() -> None:
    out = subprocess.run([sys.executable, "-c", WITHOUT_BENCH], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for args, (code, output) in json.loads(out.stdout.splitlines()[-1]).items():
        assert code == 2, (args, output)
        assert "make bench" in INSTALL_BENCH and INSTALL_BENCH in " ".join(output.split()), (args, output)
