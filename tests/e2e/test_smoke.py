def test_ping_and_status(daemon):
    assert daemon.call("system.ping", {"echo": [1, "two"]}) == {"pong": True, "echo": [1, "two"]}
    status = daemon.call("system.status")
    assert status["socket"] == str(daemon.socket)
    assert daemon.stop() == 0
