"""Policy files: broken ones are refused with file, line and key; shipped ones are valid and mirrored."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engram.policy.cli import policy as policy_cli
from engram.policy.loader import PolicyError, check_files, load_policy_set, parse_policy, shipped_dir
from engram.policy.model import PolicyFile
from engram.policy.settings import PolicySettings

REPO = Path(__file__).resolve().parents[3]


def _issues(text: str) -> list:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    return info.value.issues


def test_syntax_error_names_line_and_column():
    [issue] = _issues('version = 1\n\n[[rule]]\nname = "x"\neffect = allow\n')
    assert (issue.file, issue.line, issue.column) == ("p.toml", 5, 10)
    assert issue.message.startswith("not valid TOML")
    assert str(issue).startswith("p.toml:5:10: not valid TOML")


SCHEMA_ERRORS = """version = 1

[[rule]]
name = "ok"
effect = "allow"
principals = ["owner"]

[[rule]]
name = "second"
effect = "allow"
principals = ["owner"]

[[rule]]
name = "third"
effect = "permit"
principals = ["owner", "uid:abc"]
actions = []
colour = "blue"

[rule.when.time]
start = "25:00"

[[limit]]
name = "l"
period = "1 fortnight"
"""


def test_schema_errors_name_key_path_and_line():
    issues = {issue.key: issue for issue in _issues(SCHEMA_ERRORS)}
    assert set(issues) == {
        "rule[2].effect",
        "rule[2].principals[1]",
        "rule[2].actions",
        "rule[2].colour",
        "rule[2].when.time.start",
        "limit[0].period",
    }
    assert issues["rule[2].effect"].line == 15
    assert issues["rule[2].principals[1]"].line == 16 and "'uid:abc' is not a principal" in issues["rule[2].principals[1]"].message
    assert issues["rule[2].actions"].line == 17
    assert issues["rule[2].colour"].line == 18 and issues["rule[2].colour"].message == "unknown key"
    assert issues["rule[2].when.time.start"].line == 21 and "HH:MM" in issues["rule[2].when.time.start"].message
    assert issues["limit[0].period"].line == 25 and "not a duration" in issues["limit[0].period"].message
    assert str(issues["rule[2].effect"]).startswith("p.toml:15: rule[2].effect:")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[[rule]]\nname = "a"\neffect = "allow"\n', "rule[0].principals", "required"),
        ('[[rule]]\nname = "a"\neffect = "allow"\nprincipals = ["*"]\nnamespaces = ["x"]\nproviders = ["y"]\n', "rule[0]", "not both"),
        ('[[rule]]\nname = "a"\neffect = "allow"\nprincipals = ["*"]\nlocality = ["remote"]\nadmin = true\n', "rule[0]", "method rules"),
        ('[[rule]]\nname = "a b"\neffect = "allow"\nprincipals = ["*"]\n', "rule[0].name", "pattern"),
        ('[[rule]]\nname = "a"\neffect = "allow"\nprincipals = ["*"]\nobligations = ["encrypt"]\n', "rule[0].obligations[0]", "redact"),
        ('[[rule]]\nname = "a"\neffect = "allow"\nprincipals = ["*"]\n[[rule]]\nname = "a"\neffect = "deny"\nprincipals = ["*"]\n', None, "unique"),
        ('[[limit]]\nname = "l"\n', "limit[0]", "calls, bytes or both"),
        ("[redaction]\n[[redaction.pattern]]\nname = \"x\"\nregex = \"(\"\n", "redaction.pattern[0].regex", "regular expression"),
        ("[redaction]\n[[redaction.pattern]]\nname = \"x\"\nregex = \"a*\"\n", "redaction.pattern[0].regex", "empty string"),
        ('[[rule]]\nname = "a"\neffect = "allow"\nprincipals = ["*"]\nwhen = { time = { timezone = "Mars/Olympus" } }\n', "rule[0].when.time.timezone", "unknown time zone"),
        ("version = 2\n", "version", "1"),
    ],
)
def test_schema_error_messages(text, key, words):
    issues = _issues(text)
    assert any(issue.key == key and words in issue.message for issue in issues), [str(i) for i in issues]


def test_redaction_pattern_error_has_the_line(tmp_path):
    text = '[redaction]\n\n[[redaction.pattern]]\nname = "ok"\nregex = "x"\n\n[[redaction.pattern]]\nname = "bad"\nregex = "("\n'
    [issue] = _issues(text)
    assert issue.key == "redaction.pattern[1].regex" and issue.line == 9


def test_names_must_be_unique_across_files(tmp_path):
    (tmp_path / "a.toml").write_text('[[rule]]\nname = "owner-methods"\neffect = "deny"\nprincipals = ["*"]\n')
    with pytest.raises(PolicyError) as info:
        load_policy_set(PolicySettings(files=[tmp_path]))
    [issue] = info.value.issues
    assert issue.key == "rule[0].name" and "already used in shipped:local-first" in issue.message


def test_missing_and_unreadable_files(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError) as info:
        load_policy_set(PolicySettings(files=[tmp_path / "absent.toml", tmp_path / "bin.toml"]))
    messages = [str(issue) for issue in info.value.issues]
    assert messages == [f"{tmp_path}/absent.toml: file does not exist", f"{tmp_path}/bin.toml: not UTF-8 text (byte 0)"]


def test_directories_load_their_toml_files_in_name_order(tmp_path):
    for name in ("b.toml", "a.toml", "notes.txt"):
        (tmp_path / name).write_text(f'name = "{name[0]}x"\n' if name.endswith(".toml") else "not a policy")
    policies = load_policy_set(PolicySettings(base="none", files=[tmp_path]))
    assert policies.labels == [str(tmp_path / "a.toml"), str(tmp_path / "b.toml")]


def test_every_shipped_policy_and_example_is_valid():
    shipped = shipped_dir()
    for base in ("local-first", "privacy"):
        policies = load_policy_set(PolicySettings(base=base))
        assert policies.labels == [f"shipped:{base}"]
    examples = sorted((shipped / "examples").glob("*.toml"))
    assert len(examples) >= 4
    policies = check_files([(shipped / "local-first.toml", None)] + [(path, None) for path in examples])
    assert policies.rule_count > 5
    assert load_policy_set(PolicySettings(base="privacy")).privacy_mode


def test_policies_folder_mirrors_the_shipped_files():
    shipped = shipped_dir()
    for sub in ("", "examples"):
        ours = sorted(p.name for p in (shipped / sub).glob("*.toml"))
        theirs = sorted(p.name for p in (REPO / "policies" / sub).glob("*.toml"))
        assert ours == theirs, f"policies/{sub} differs from {shipped / sub}"
        for name in ours:
            assert filecmp.cmp(shipped / sub / name, REPO / "policies" / sub / name, shallow=False), name


def test_check_command_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\n[[rule]]\nname = "g"\neffect = "allow"\nprincipals = ["uid:5"]\nactions = ["system.status"]\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "b"\neffect = "allow"\nprincipals = ["everyone"]\n')
    runner = CliRunner()
    ok = runner.invoke(policy_cli, ["check", str(good)])
    assert ok.exit_code == 0 and f"{good}: ok (1 rules, 0 limits)" in ok.output
    broken = runner.invoke(policy_cli, ["check", str(good), str(bad)])
    assert broken.exit_code == 2
    assert f"{bad}:4: rule[0].principals[0]: 'everyone' is not a principal" in broken.output
    as_json = runner.invoke(policy_cli, ["check", "--json", str(bad)])
    assert as_json.exit_code == 2 and json.loads(as_json.output)["problems"][0]["line"] == 4


def test_schema_command_prints_the_file_schema():
    result = CliRunner().invoke(policy_cli, ["schema"])
    schema = json.loads(result.output)
    assert result.exit_code == 0 and schema["title"] == "engram policy file"
    assert set(schema["properties"]) == {"version", "name", "description", "privacy_mode", "rule", "limit", "redaction", "temporal"}
    assert schema == {**PolicyFile.model_json_schema(), "$schema": schema["$schema"], "title": "engram policy file"}
