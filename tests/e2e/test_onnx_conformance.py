"""ONNX's backend node tests through the daemon's socket, against ONNX Runtime run directly.

The default suite runs a fixed, spread-out subset (plus cases that exercise the wire format's
edges); ``engram models conformance --all`` runs every case.
"""

from __future__ import annotations

import pytest
from engram.inference.conformance import (
    load_cases,
    node_tests_dir,
    run_conformance,
    select_subset,
)

pytestmark = pytest.mark.e2e

EDGES = (
    "test_castlike_FLOAT_to_BFLOAT16",  # bfloat16 in and out
    "test_cast_FLOAT_to_FLOAT8E4M3FN",
    "test_sequence_insert_at_back",  # a sequence input: not expressible on the wire
    "test_split_to_sequence_1",  # a sequence output
    "test_isnan",  # NaN in the inputs
    "test_and2d",  # bool
    "test_string_concat",  # strings
    "test_gather_0",
    "test_matmul_2d",
)


@pytest.fixture(scope="module")
def cases():
    everything = load_cases(node_tests_dir())
    assert len(everything) > 1000
    subset = select_subset(everything, 32)
    named = {c.name: c for c in everything}
    return subset + [named[n] for n in EDGES if n in named and named[n] not in subset]


def test_node_tests_through_the_socket_match_onnxruntime(make_daemon, cases):
    daemon = make_daemon(env={"ENGRAM_INFERENCE__AUTO_IMPORT": "false"})
    with daemon.client(timeout=60) as client:
        report = run_conformance(cases, lambda method, params: client.call(method, params), "test")
    assert report.total == len(cases)
    assert not report.unexplained, report.table()
    assert report.passed_daemon >= 0.6 * report.total, report.table()
    reasons = {d.case: d.reason for d in report.differences}
    if "test_sequence_insert_at_back" in reasons:
        assert reasons["test_sequence_insert_at_back"].startswith("not_expressible")
    assert "test_castlike_FLOAT_to_BFLOAT16" not in reasons or reasons["test_castlike_FLOAT_to_BFLOAT16"].startswith(
        "direct only (python_binding_dtype)"
    )
    assert daemon.call("models.list")["models"] == []  # every case removed its model
