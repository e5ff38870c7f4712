"""memory.list: a namespace's episodes newest first, a page at a time (what MCP's recent-episodes
resource shows)."""

from __future__ import annotations

import pytest
from engram.errors import InvalidParams

pytestmark = pytest.mark.e2e

NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}


def test_list_pages_newest_first_with_filters(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    with daemon.client() as client:
        items = [
            {"text": f"episode {n}", "vector": [1.0, float(n), 0.0], "session": "a" if n % 2 else "b",
             "kind": "fact" if n == 4 else "note"}
            for n in range(5)
        ]
        ids = client.call("memory.remember", {"items": items})["ids"]
        first = client.call("memory.list", {"limit": 2})
        assert [e["id"] for e in first["episodes"]] == [ids[4], ids[3]]
        assert first["episodes"][0]["text"] == "episode 4" and first["next"] is not None
        second = client.call("memory.list", {"limit": 2, "before": first["next"]})
        assert [e["id"] for e in second["episodes"]] == [ids[2], ids[1]]
        third = client.call("memory.list", {"limit": 2, "before": second["next"]})
        assert [e["id"] for e in third["episodes"]] == [ids[0]] and third["next"] is None
        assert [e["id"] for e in client.call("memory.list", {"session": "a"})["episodes"]] == [ids[3], ids[1]]
        assert [e["id"] for e in client.call("memory.list", {"kind": "fact"})["episodes"]] == [ids[4]]
        client.call("memory.forget", {"ids": [ids[4]]})
        assert client.call("memory.list", {"limit": 1})["episodes"][0]["id"] == ids[3]
        # Another caller's namespace stays out of sight.
        assert client.call("memory.list", {"namespace": "elsewhere"})["episodes"] == []
        for params, field, reason in (
            ({"limit": 1001}, "limit", "limit_too_large"),
            ({"before": "yesterday"}, "before", "bad_cursor"),
            ({"kind": "Not A Kind"}, "kind", "invalid_params"),
        ):
            with pytest.raises(InvalidParams) as err:
                client.call("memory.list", params)
            assert (err.value.data.get("field"), err.value.reason) == (field, reason)
