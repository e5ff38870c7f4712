"""ONNX's backend node tests through the daemon's socket, against ONNX Runtime run directly.

The default suite runs a fixed, spread-out subset (plus cases that exercise the wire format's
edges); ``engram models conformance --all`` runs every case.

The test fails on disagreements only: cases where the daemon and ONNX Runtime run directly, the
same ONNX Runtime, part ways (see ``conformance.judge``). Which cases ONNX Runtime itself passes
depends on its version and onnx's; those counts are reported (printed, and in every failure
message), not asserted.
"""

from __future__ import annotations

import pytest
from engram_bench.conformance import (
    load_cases,
    node_tests_dir,
    run_conformance,
    select_subset,
)

pytestmark = pytest.mark.e2e

SUBSET = 32
EDGES = (
    "test_castlike_FLOAT_to_BFLOAT16",  # bfloat16 in and out
    "test_cast_FLOAT_to_FLOAT8E4M3FN",  # an 8-bit float out (run() gives it back as uint8 in some ONNX Runtimes)
    "test_range_bfloat16_type_positive_delta",  # 0-d bfloat16 inputs: their shape must survive
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
    subset = select_subset(everything, SUBSET)
    assert len(subset) == SUBSET  # onnx defines far more node tests than the subset takes
    named = {c.name: c for c in everything}
    # An edge case that a later onnx renames or drops is simply not run.
    return subset + [named[n] for n in EDGES if n in named and named[n] not in subset]


def test_node_tests_through_the_socket_match_onnxruntime(make_daemon, cases):
    daemon = make_daemon(env={"ENGRAM_INFERENCE__AUTO_IMPORT": "false"})
    with daemon.client(timeout=60) as client:
        report = run_conformance(cases, lambda method, params: client.call(method, params), "test")
    print(report.table())
    assert report.total == len(cases)
    if report.passed_direct == 0:
        # An onnx whose cases this ONNX Runtime cannot load at all (a newer IR version, say):
        # the daemon then fails them too, and nothing would be compared.
        pytest.skip("ONNX Runtime run directly passes none of the cases; nothing to compare:\n" + report.table())
    assert not report.disagreements, report.table()
    reasons = {d.case: d.reason for d in report.differences}
    if "test_sequence_insert_at_back" in reasons:
        assert reasons["test_sequence_insert_at_back"].startswith("not_expressible"), report.table()
    assert daemon.call("models.list")["models"] == []  # every case removed its model
