"""memory.sequence over the socket: a routine that recurs in two sessions is found from a third's,
with what came next, and bad params are -32602 naming the field."""

from __future__ import annotations

import pytest
from engram.errors import InvalidParams, NotFound

pytestmark = pytest.mark.e2e

NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}

# Four directions: the routine is a, b, c; the rest of each day is d.
A, B, C, D = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]
DAYS = {"mon": [D, A, B, C, D, D], "tue": [D, D, A, B, B, C, D], "wed": [A, B, C, D]}


def test_sequence_finds_the_routine_and_what_followed(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    with daemon.client() as client:
        ids: dict[str, list[str]] = {}
        for day, vectors in DAYS.items():
            items = [{"text": f"{day} {n}", "vector": v, "session": day, "time": 1_700_000_000 + n} for n, v in enumerate(vectors)]
            ids[day] = client.call("memory.remember", {"items": items})["ids"]
        result = client.call("memory.sequence", {"episodes": ids["wed"][:3], "k": 2, "window": 1})
        assert result["window"] == 1 and result["computed"] <= result["candidates"] == 4 + 5
        best, second = result["matches"]
        assert (best["session"], best["episodes"], best["distance"]) == ("mon", ids["mon"][1:4], 0.0)
        assert best["next"] == ids["mon"][4:6]  # what followed, up to the end of the session
        # tue's routine lingers on b: the band of 1 lets b, b pair with b, at the cost of one c pair
        assert second["session"] == "tue" and second["episodes"] == ids["tue"][2:5] and second["next"] == ids["tue"][5:7]
        assert 0.0 < second["distance"] <= 1.0
        by_vectors = client.call("memory.sequence", {"vectors": [A, B, C], "k": 1, "window": 0})
        # mon's and wed's are both at 0: a tie goes to the session that sorts first
        assert by_vectors["matches"] == [{"session": "mon", "episodes": ids["mon"][1:4], "distance": 0.0, "next": ids["mon"][4:6]}]
        for params, field, reason in (
            ({"k": 1}, "episodes", "sequence_query"),
            ({"vectors": [A]}, "vectors", "sequence_length"),
            ({"vectors": [A, B[:3]]}, "vectors.1", "dimension_mismatch"),
            ({"vectors": [A, B], "window": -1}, "window", "invalid_params"),
        ):
            with pytest.raises(InvalidParams) as err:
                client.call("memory.sequence", params)
            assert (err.value.data.get("field"), err.value.reason) == (field, reason)
        with pytest.raises(NotFound):
            client.call("memory.sequence", {"episodes": [ids["wed"][0], "ep_" + "0" * 26]})
