"""docs/audit.md stays true: every audit method, setting, event topic and command is in it."""

from __future__ import annotations

from pathlib import Path

from engram.audit.cli import audit
from engram.audit.events import AUDIT_EVENTS
from engram.audit.log import AuditLog
from engram.audit.methods import AuditMethods
from engram.audit.settings import AuditSettings
from engram.server.methods import collect

DOC = (Path(__file__).resolve().parents[3] / "docs" / "audit.md").read_text()


def test_methods_are_documented_with_their_members() -> None:
    for method in collect(AuditMethods.__new__(AuditMethods)):
        assert f"`{method.name}`" in DOC, method.name
        for name in method.params.model_fields:
            assert f"`{name}`" in DOC, (method.name, name)
        for name in method.result.model_fields:
            if name != "audit_seq":
                assert f"`{name}`" in DOC, (method.name, name)


def test_read_only_methods_are_not_audited() -> None:
    flags = {m.name: (m.audit, m.owner_only) for m in collect(AuditMethods.__new__(AuditMethods))}
    assert flags.pop("audit.rotate_key") == (True, True)
    assert all(flag == (False, False) for flag in flags.values())


def test_settings_events_and_commands_are_documented() -> None:
    for key, field in AuditSettings.model_fields.items():
        assert f"`audit.{key}`" in DOC and field.description, key
    for event in AUDIT_EVENTS:
        assert f"`{event.topic}`" in DOC
    for command in audit.commands:
        assert f"engram audit {command}" in DOC, command
    assert "engram bench audit" in DOC
    assert AuditLog.watch.__name__ in DOC
