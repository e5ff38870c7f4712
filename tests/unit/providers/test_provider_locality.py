import pytest

from engram.plugins import is_loopback, locality_of


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:11434", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8000", True),
        ("http://192.168.1.20:11434", False),
        ("https://api.openai.com/v1", False),
        ("http://localhost.example.com", False),
        ("not a url", False),
    ],
)
def test_loopback_hosts(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback
    assert locality_of(url) == ("local" if loopback else "remote")


def test_a_proxy_makes_any_endpoint_remote() -> None:
    assert locality_of("http://127.0.0.1:1", proxy="http://127.0.0.1:3128") == "remote"
    assert locality_of("http://127.0.0.1:1", "local", proxy="http://127.0.0.1:3128") == "remote"
    assert locality_of("http://127.0.0.1:1", proxy="") == "local"


def test_setting_overrides_the_host() -> None:
    assert locality_of("http://127.0.0.1:1", "remote") == "remote"
    assert locality_of("https://example.com", "local") == "local"
