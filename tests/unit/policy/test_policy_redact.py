"""The redact obligation: each built-in detector, site patterns, JSON payloads, and what must stay."""

from __future__ import annotations

import pytest

from engram.policy.model import RedactionPattern
from engram.policy.redact import Redactor, luhn_valid

FULL = Redactor()


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("write to ada.lovelace+work@example.co.uk today", "write to [REDACTED:email] today", "email"),
        ("card 4111 1111 1111 1111 exp 12/29", "card [REDACTED:payment_card] exp 12/29", "payment_card"),
        ("amex 3782-822463-10005", "amex [REDACTED:payment_card]", "payment_card"),
        ("raw 5555555555554444.", "raw [REDACTED:payment_card].", "payment_card"),
        ("from 192.168.1.20:8080", "from [REDACTED:ip_address]:8080", "ip_address"),
        ("v6 2001:db8::8a2e:370:7334 and ::1", "v6 [REDACTED:ip_address] and [REDACTED:ip_address]", "ip_address"),
        ("link fe80::1%eth0 up", "link [REDACTED:ip_address] up", "ip_address"),
        ("call +33 6 12 34 56 78", "call [REDACTED:phone]", "phone"),
        ("call (555) 123-4567", "call [REDACTED:phone]", "phone"),
        ("call 555.123.4567", "call [REDACTED:phone]", "phone"),
        ("call 020 7946 0958", "call [REDACTED:phone]", "phone"),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz012345", "key [REDACTED:api_key]", "api_key"),
        ("key sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUVWX", "key [REDACTED:api_key]", "api_key"),
        ("gh ghp_" + "a1B2" * 9, "gh [REDACTED:api_key]", "api_key"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED:api_key]", "api_key"),
        ("google AIza" + "x" * 35, "google [REDACTED:api_key]", "api_key"),
        ("slack xoxb-123456789012-abcdef", "slack [REDACTED:api_key]", "api_key"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt [REDACTED:api_key]", "api_key"),
        ("Authorization: Bearer abc.def-ghi_jkl~mno/pqr=", "Authorization: Bearer [REDACTED:api_key]", "api_key"),
        ("api_key=s3cr3t-value and password: 'hunter22'", "api_key=[REDACTED:api_key] and password: '[REDACTED:api_key]'", "api_key"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAKC\n-----END RSA PRIVATE KEY----- done",
            "[REDACTED:api_key] done",
            "api_key",
        ),
    ],
)
def test_each_detector(text, expected, kind):
    out, counts = FULL.redact(text)
    assert out == expected
    assert set(counts) == {kind}


@pytest.mark.parametrize(
    "text",
    [
        "order 1234567890123 shipped",  # 13 digits failing Luhn
        "card-like 4111 1111 1111 1112",  # Luhn fails
        "at 12:30:45 on 2024-01-15 or 15/01/2024",  # times and dates
        "version 1.2.3, port 8080, year 2024, pi 3.14159",
        "total 1 000 000 units",
        "an @mention and user@localhost",
        "the key is in the drawer; token ring",  # secret words without values
        "999.1.1.1 is not an address",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert FULL.redact(text) == (text, {})


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


def test_json_payloads_are_walked_and_keys_kept():
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": "ada@example.org"}, {"role": "user", "content": "10.0.0.1"}],
        "n": 2,
        "stop": None,
        "ada@example.org": True,
    }
    out, counts = FULL.redact(payload)
    assert out["messages"] == [{"role": "user", "content": "[REDACTED:email]"}, {"role": "user", "content": "[REDACTED:ip_address]"}]
    assert out["n"] == 2 and out["stop"] is None and out["ada@example.org"] is True
    assert counts == {"email": 1, "ip_address": 1}
    assert payload["messages"][0]["content"] == "ada@example.org"


def test_site_patterns_run_first_and_detectors_can_be_chosen():
    redactor = Redactor(
        detectors=["email"],
        patterns=[
            RedactionPattern(name="employee_id", regex=r"EMP-\d{6}", replacement="[EMPLOYEE]"),
            RedactionPattern(name="project", regex=r"\bproject nightjar\b", ignore_case=True),
        ],
    )
    out, counts = redactor.redact("EMP-123456 on Project Nightjar, mail ada@example.org, call +33 6 12 34 56 78")
    assert out == "[EMPLOYEE] on [REDACTED:project], mail [REDACTED:email], call +33 6 12 34 56 78"
    assert counts == {"employee_id": 1, "project": 1, "email": 1}
    assert redactor.detectors == ["email"]


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown detectors"):
        Redactor(detectors=["dna"])


def test_redaction_is_not_applied_twice():
    once, _ = FULL.redact("ada@example.org 4111 1111 1111 1111 +33 6 12 34 56 78")
    assert FULL.redact(once) == (once, {})
