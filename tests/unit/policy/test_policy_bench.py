"""`engram bench policy` runs at a tiny size and reports both sides and their ratios."""

from __future__ import annotations

import json

from click.testing import CliRunner

from engram.cli import main


def test_bench_policy_smoke():
    result = CliRunner().invoke(
        main, ["bench", "policy", "-n", "200", "--rules", "3", "--payload-kib", "1", "--temporal-rules", "7", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    targets = {row["target"] for row in report["rows"]}
    assert targets == {
        "policy (cached)", "policy (uncached)", "owner-only check", "redact (all detectors)", "json.dumps",
        "events, 7 temporal rules", "events, no rules", "decision + 7 temporal checks", "decision alone",
    }
    assert all(row["requests"] > 0 and row["p50_ms"] <= row["p99_ms"] for row in report["rows"])
    assert [r["comparison"] for r in report["ratios"]] == [
        "method decision (cached)", "method decision (uncached)", "redaction of 1 KiB",
        "temporal monitoring (per event)", "guarded call",
    ]
    assert report["temporal_rules"] == 7
    human = CliRunner().invoke(main, ["bench", "policy", "-n", "100", "--rules", "0", "--payload-kib", "1"])
    assert human.exit_code == 0 and "ratio = engram / baseline" in human.output
