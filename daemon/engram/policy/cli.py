"""``engram policy ...``.

``check`` and ``schema`` work on files and need no daemon; the others ask the running daemon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from engram.clitools import EXIT_USAGE, Output, call, client_command, json_option

EXIT_VIOLATIONS = 1  # policy rules test: a temporal rule fired on the recorded stream


@click.group()
def policy() -> None:
    """Who may call what, and which provider may see which data."""


@policy.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--base",
    type=click.Choice(["local-first", "privacy", "none"]),
    default="local-first",
    show_default=True,
    help="Check the files together with this shipped base policy (rule names must be unique across files).",
)
@json_option
def check(files: tuple[Path, ...], base: str, as_json: bool) -> None:
    """Validate policy FILES (exit 0: valid, 2: invalid, with file:line: key: reason for each problem)."""
    from engram.policy.loader import PolicyError, check_files, shipped_policy

    sources: list[tuple[Path, str | None]] = [(shipped_policy(base), f"shipped:{base}")] if base != "none" else []
    sources += [(path, None) for path in files]
    try:
        policies = check_files(sources)
    except PolicyError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "problems": [issue.as_dict() for issue in exc.issues]}))
        else:
            for issue in exc.issues:
                click.echo(f"engram: {issue}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    checked = [f for f in policies.files if not f.label.startswith("shipped:") or base == "none"]
    report = {
        "ok": True,
        "files": [
            {"file": f.label, "name": f.name, "rules": len(f.policy.rules), "limits": len(f.policy.limits),
             "temporal": len(f.policy.temporal)}
            for f in checked
        ],
    }

    def human(data: dict[str, Any]) -> None:
        for f in data["files"]:
            temporal = f", {f['temporal']} temporal rules" if f["temporal"] else ""
            click.echo(f"{f['file']}: ok ({f['rules']} rules, {f['limits']} limits{temporal})")

    Output(as_json).emit(report, human)


@policy.command("explain")
@click.argument("method")
@click.option("--uid", type=click.IntRange(min=0), help="Whose call (default: yours; others: owner and root only).")
@click.option("--gid", type=click.IntRange(min=0), help="Its primary gid (default: from the user database).")
@click.option("--user", help="Its user name (default: from the user database).")
@click.option("--namespace", help="Explain the namespace decision for this memory namespace.")
@click.option("--provider", help="Explain the egress decision for this provider.")
@click.option("--locality", type=click.Choice(["local", "remote"]), help="The provider's locality (default: as installed).")
@click.option("--model", help="The model at the provider.")
@click.option("--tag", "tags", multiple=True, help="A data tag of the request (repeatable).")
@click.option("--payload", help="A sample payload (JSON, or plain text): shown as it would leave, redacted.")
@client_command
def explain(
    method: str,
    uid: int | None,
    gid: int | None,
    user: str | None,
    namespace: str | None,
    provider: str | None,
    locality: str | None,
    model: str | None,
    tags: tuple[str, ...],
    payload: str | None,
    socket_path: Path | None,
    as_json: bool,
    timeout: float,
) -> None:
    """What the policy would decide for METHOD, and which rule decides."""
    if locality is not None and provider is None:
        raise click.BadParameter("needs --provider", param_hint="--locality")
    if namespace is not None and provider is not None:
        raise click.BadParameter("give --namespace or --provider, not both", param_hint="--namespace")
    params: dict[str, Any] = {"method": method}
    for key, value in (
        ("uid", uid), ("gid", gid), ("user", user), ("namespace", namespace), ("provider", provider),
        ("locality", locality), ("model", model),
    ):
        if value is not None:
            params[key] = value
    if tags:
        params["tags"] = list(tags)
    if payload is not None:
        try:
            params["payload"] = json.loads(payload)
        except ValueError:
            params["payload"] = payload
    result = call(socket_path, timeout, "policy.explain", params)

    def human(d: dict[str, Any]) -> None:
        who = f"uid {d['uid']}" + (f" ({d['user']})" if d["user"] else "")
        target = {"namespace": f" on namespace {namespace}", "egress": f" to {d.get('locality')} provider {provider}"}.get(d["point"], "")
        click.echo(f"{d['effect'].upper()}  {method} for {who}{target}")
        click.echo(f"  decided by   {d['rule']}" + (f"  ({d['policy']})" if d["policy"] else ""))
        click.echo(f"  reason       {d['reason']}")
        click.echo(f"  obligations  {', '.join(d['obligations']) or '-'}")
        matched = ", ".join(f"{m['name']} ({m['effect']})" for m in d["matched"]) or "-"
        click.echo(f"  matched      {matched}")
        click.echo(f"  privacy mode {'on' if d['privacy_mode'] else 'off'}")
        if not d["method_known"]:
            click.echo("  note         the daemon has no method of that name")
        if d["point"] == "egress":
            click.echo(f"  limits       {', '.join(d['limits']) or '-'}")
            if payload is not None:
                click.echo(f"  payload      {json.dumps(d['payload'])}")
        for rule in d.get("temporal", []):
            state = "HOLDS" if rule["holds"] else "does not hold"
            click.echo(f"  temporal     {rule['name']} ({rule['policy']}): {state}: {rule['when']}")
            for event in rule["events"]:
                rest = {k: v for k, v in event.items() if k not in ("topic", "time")}
                click.echo(f"                 {event['time']:.3f} {event['topic']} {json.dumps(rest, sort_keys=True)}")

    Output(as_json).emit(result, human)


@policy.command("show")
@client_command
def show(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The policy in force: files, rules, limits, redaction, privacy mode (owner only)."""

    def human(d: dict[str, Any]) -> None:
        click.echo(f"privacy mode {'on' if d['privacy_mode'] else 'off'} ({d['privacy_source']})")
        for f in d["files"]:
            doc = f["document"]
            click.echo(f"{f['label']}  sha256 {f['sha256'][:16]}")
            for rule in doc.get("rule", []):
                extra = ", ".join(
                    f"{key}={','.join(map(str, rule[key]))}"
                    for key in ("namespaces", "providers", "locality", "models", "obligations")
                    if rule.get(key)
                )
                click.echo(
                    f"  {rule['effect']:<5} {rule['name']:<24} {','.join(rule['principals'])} -> {','.join(rule['actions'])}"
                    + (f"  [{extra}]" if extra else "")
                    + ("  admin" if rule.get("admin") else "")
                )
            for limit in doc.get("limit", []):
                click.echo(f"  limit {limit['name']:<24} calls={limit['calls']} bytes={limit['bytes']} per {limit['period']:g} s")
            for rule in doc.get("temporal", []):
                if rule.get("when"):
                    what = rule["when"] + (f"  on {rule['on']['point']}:{','.join(rule['on']['actions'])}" if rule.get("on") else "")
                else:
                    what = f"every {rule['every']} followed_by {rule['followed_by']} within {rule['within']:g} s"
                click.echo(f"  {rule['effect']:<5} {rule['name']:<24} temporal: {what}")
        click.echo(f"redaction: {', '.join(d['redaction_detectors'] + d['redaction_patterns']) or '-'}")
        for problem in d["reload_problems"]:
            click.echo(f"last reload FAILED: {problem['file']}:{problem['line']}: {problem['key']}: {problem['message']}")

    Output(as_json).emit(call(socket_path, timeout, "policy.show"), human)


@policy.command("reload")
@client_command
def reload(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Load the policy files again (a broken file leaves the previous policy in force; exit 1)."""
    result = call(socket_path, timeout, "policy.reload")
    Output(as_json).emit(result, lambda d: click.echo(f"policy reloaded: {d['rules']} rules from {', '.join(d['files'])}"))


@policy.command("privacy")
@click.argument("mode", required=False, type=click.Choice(["on", "off", "default"]))
@client_command
def privacy(mode: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Switch privacy mode on or off (kept across restarts), back to the default, or show it."""
    result = call(socket_path, timeout, "policy.privacy", {"mode": mode} if mode else None)
    Output(as_json).emit(result, lambda d: click.echo(f"privacy mode {'on' if d['privacy_mode'] else 'off'} ({d['source']})"))


@policy.group("rules")
def rules() -> None:
    """Temporal rules ([[temporal]]) over a recorded event stream."""


@rules.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--events", "log_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
    help="JSON lines of events as `engram events --follow --json` prints them ('-': standard input).",
)
@json_option
def rules_test(files: tuple[Path, ...], log_path: Path, as_json: bool) -> None:
    """Run the temporal rules of policy FILES over a recorded event stream, and print each
    violation with the events that made it true.

    Exit 0: no rule fired; 1: a deny rule would have refused a call the log shows allowed, or an
    alert rule fired (obligations still open at the end of the log are listed, not counted);
    2: a file or the log is invalid."""
    import os

    from engram.policy.loader import PolicyError, check_files
    from engram.policy.temporal import TemporalRules, replay, violation_lines

    try:
        policies = check_files([(path, None) for path in files])
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(f"engram: {issue}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    owner_uid = os.geteuid()
    temporal = TemporalRules(policies, owner_uid=owner_uid)
    if not len(temporal):
        click.echo("engram: the files have no [[temporal]] rules", err=True)
        raise SystemExit(EXIT_USAGE)
    try:
        text = click.open_file(str(log_path), encoding="utf-8").read()
    except OSError as exc:
        click.echo(f"engram: {log_path}: cannot be read: {exc.strerror}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError as exc:
            click.echo(f"engram: {log_path}:{number}: not JSON: {exc}", err=True)
            raise SystemExit(EXIT_USAGE) from None
        if not (isinstance(event, dict) and isinstance(event.get("topic"), str) and isinstance(event.get("time"), (int, float))
                and isinstance(event.get("data", {}), dict)):
            click.echo(f"engram: {log_path}:{number}: not an event: want {{\"topic\": ..., \"time\": ..., \"data\": {{...}}}}", err=True)
            raise SystemExit(EXIT_USAGE)
        events.append(event)
    violations, count = replay(temporal, events, owner_uid)
    still_open = temporal.open_obligations()
    report = {
        "events": count,
        "rules": [
            {
                "name": rule.name, "policy": rule.policy, "effect": rule.rule.effect,
                "violations": [v.as_dict() for v in violations if v.rule == rule.name],
                "open": [v.as_dict() for v in still_open if v.rule == rule.name],
            }
            for rule in temporal.rules
        ],
        "violations": len(violations),
    }

    def human(data: dict[str, Any]) -> None:
        click.echo(f"{data['events']} events, {len(data['rules'])} temporal rules, {data['violations']} violations")
        for rule in temporal.rules:
            found = [v for v in violations if v.rule == rule.name]
            opened = [v for v in still_open if v.rule == rule.name]
            click.echo(f"{rule.name} ({rule.rule.effect}, {rule.policy}): {len(found)} violations"
                       + (f", {len(opened)} still open at the end" if opened else ""))
            for v in found:
                for line in violation_lines(v):
                    click.echo("  " + line)
            for v in opened:
                click.echo(f"  open, due {v.time:.3f}: opened by")
                for line in violation_lines(v)[1:]:
                    click.echo("  " + line)

    Output(as_json).emit(report, human)
    if violations:
        raise SystemExit(EXIT_VIOLATIONS)


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of policy files."""
    from engram.policy.model import PolicyFile

    data = PolicyFile.model_json_schema()
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "engram policy file"
    click.echo(json.dumps(data, indent=2, sort_keys=True))
