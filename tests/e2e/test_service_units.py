"""The service definitions in ``systemd/``: valid for systemd and launchd, hardened, and in step
with the daemon's own defaults.

``systemd-analyze verify`` loads the units the way the service manager would, without running
them. It insists that every Exec*= binary exists, so the units are verified from a copy whose
ExecStart= points at this checkout's ``engramd``. The service and socket are copied into the same
folder so that the socket's Service= resolves.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
SYSTEM_SERVICE = UNITS / "engramd.service"
SYSTEM_SOCKET = UNITS / "engramd.socket"
USER_SERVICE = UNITS / "user" / "engramd.service"
USER_SOCKET = UNITS / "user" / "engramd.socket"
SYSUSERS = UNITS / "sysusers.d" / "engram.conf"
PLIST = UNITS / "launchd" / "org.engram.engramd.plist"

# The daemon's default grace period for in-flight requests on SIGTERM (server.drain_timeout).
DRAIN_TIMEOUT_DEFAULT = 10.0

# Messages of systemd-analyze that come from this machine, not from the unit files: no runtime
# directory for a user manager, a sandbox that refuses what the manager needs to start up.
ENVIRONMENT_FAILURES = (
    "Failed to initialize manager",
    "Failed to lookup RuntimeDirectory",
    "Failed to determine $XDG_RUNTIME_DIR",
    "Failed to connect to bus",
)

Unit = dict[str, dict[str, list[str]]]


# --- reading unit files ----------------------------------------------------------------------


def parse_unit(path: Path) -> Unit:
    """Sections of a unit file, each key with every value it was given, in order.

    systemd allows a key more than once (Environment=, ExecStart=, ...), which configparser in
    strict mode refuses and otherwise collapses; an empty assignment resets a list.
    """
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith(("#", ";")):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        line = (logical + stripped).strip()
        logical = ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} comes before any [section]"
        assert "=" in line, f"{path}: {line!r} is not a key=value line"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def value(unit: Unit, section: str, key: str) -> str:
    """The effective (last) value of a key; fails if the key is missing."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of a list-valued key since its last reset (an empty assignment)."""
    collected: list[str] = []
    for item in unit.get(section, {}).get(key, []):
        if item == "":
            collected = []
        else:
            collected.extend(shlex.split(item))
    return collected


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in values(unit, "Service", "Environment"):
        name, _, val = assignment.partition("=")
        env[name] = val
    return env


_BOOLEANS = {"1": "yes", "true": "yes", "on": "yes", "0": "no", "false": "no", "off": "no"}


def normalized(text: str) -> str:
    lowered = text.strip().lower()
    return _BOOLEANS.get(lowered, text.strip())


_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "msec": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def seconds(span: str) -> float:
    """A systemd time span ("30", "30s", "1min 30s", "500ms") in seconds."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip().lower())
    assert parts, f"not a time span: {span!r}"
    for number, unit in parts:
        assert unit in _TIME_UNITS, f"unexpected time unit {unit!r} in {span!r}"
        total += float(number) * _TIME_UNITS[unit]
    return total


# --- systemd-analyze verify ------------------------------------------------------------------


def engramd_path() -> Path:
    beside_python = Path(sys.executable).parent / "engramd"
    if beside_python.exists():
        return beside_python
    found = shutil.which("engramd")
    if found is None:
        pytest.skip("no engramd entry point installed to point ExecStart= at")
    return Path(found)


def copy_for_verify(units: list[Path], folder: Path) -> list[Path]:
    """Copy the units into one folder, ExecStart= rewritten to this checkout's engramd."""
    folder.mkdir(parents=True)
    engramd = engramd_path()
    copies = []
    for unit in units:
        text = unit.read_text(encoding="utf-8")
        if unit.suffix == ".service":
            text, count = re.subn(
                r"^ExecStart=(\S+)", lambda m: f"ExecStart={engramd}", text, flags=re.MULTILINE
            )
            assert count == 1, f"{unit}: expected exactly one ExecStart= line, found {count}"
        copy = folder / unit.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    return copies


def run_verify(copies: list[Path], *, user: bool, tmp_path: Path) -> list[str]:
    """The lines of ``systemd-analyze verify`` output that name the units (none when they are
    fine); skips when this machine cannot verify at all."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    command = [analyze]
    if user:
        command.append("--user")
        runtime = env.get("XDG_RUNTIME_DIR")
        if not runtime or not Path(runtime).is_dir():
            # A user manager needs a runtime directory; a container without a login session has none.
            private = tmp_path / "xdg-runtime"
            private.mkdir(mode=0o700)
            env["XDG_RUNTIME_DIR"] = str(private)
    command += ["verify", *map(str, copies)]
    proc = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, timeout=120, cwd=copies[0].parent
    )
    output = proc.stdout + proc.stderr
    markers = {copy.name for copy in copies} | {str(copies[0].parent)}
    ours = [line for line in output.splitlines() if any(marker in line for marker in markers)]
    if not ours and proc.returncode != 0:
        if any(failure in output for failure in ENVIRONMENT_FAILURES):
            pytest.skip(f"systemd-analyze cannot verify in this environment: {output.strip()}")
        pytest.fail(f"systemd-analyze verify exited {proc.returncode}:\n{output}")
    return ours


def test_system_units_pass_systemd_analyze_verify(tmp_path):
    copies = copy_for_verify([SYSTEM_SERVICE, SYSTEM_SOCKET], tmp_path / "system")
    complaints = run_verify(copies, user=False, tmp_path=tmp_path)
    assert not complaints, "systemd-analyze verify complained:\n" + "\n".join(complaints)


def test_user_units_pass_systemd_analyze_verify(tmp_path):
    copies = copy_for_verify([USER_SERVICE, USER_SOCKET], tmp_path / "user")
    complaints = run_verify(copies, user=True, tmp_path=tmp_path)
    assert not complaints, "systemd-analyze --user verify complained:\n" + "\n".join(complaints)


def test_verify_catches_a_broken_unit(tmp_path):
    """The checks above would notice a mistake: a bad value is reported, naming the unit."""
    copies = copy_for_verify([SYSTEM_SERVICE, SYSTEM_SOCKET], tmp_path / "broken")
    service = copies[0]
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy"), encoding="utf-8")
    complaints = run_verify(copies, user=False, tmp_path=tmp_path)
    assert any("notifyy" in line for line in complaints), complaints


def test_system_service_exposure_stays_low(tmp_path):
    """systemd's own hardening score for the system service ("OK" is below 4.0 on its scale)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copies = copy_for_verify([SYSTEM_SERVICE, SYSTEM_SOCKET], tmp_path / "security")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", "--no-pager", str(copies[0])],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    if "--offline" in output and ("unrecognized" in output or "Unknown option" in output):
        pytest.skip("this systemd-analyze has no offline security analysis")
    match = re.search(r"Overall exposure level for engramd\.service:\s*([\d.]+)", output)
    if match is None and any(failure in output for failure in ENVIRONMENT_FAILURES):
        pytest.skip(f"systemd-analyze security cannot run here: {output.strip()}")
    assert match, output
    assert float(match.group(1)) <= 2.5, output


# --- the system units ------------------------------------------------------------------------

SYSTEM_SERVICE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "User": "engram",
    "Group": "engram",
    "StateDirectory": "engram",
    "StateDirectoryMode": "0700",
    "RuntimeDirectory": "engram",
    "RuntimeDirectoryMode": "0750",
    "RuntimeDirectoryPreserve": "yes",
    "UMask": "0077",
    "LimitNOFILE": "65536",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "IPAddressDeny": "any",
    "IPAddressAllow": "localhost",
}


@pytest.fixture(scope="module")
def system_service() -> Unit:
    return parse_unit(SYSTEM_SERVICE)


@pytest.fixture(scope="module")
def system_socket() -> Unit:
    return parse_unit(SYSTEM_SOCKET)


@pytest.mark.parametrize("key", sorted(SYSTEM_SERVICE_SETTINGS))
def test_system_service_setting(system_service, key):
    assert normalized(value(system_service, "Service", key)) == normalized(SYSTEM_SERVICE_SETTINGS[key])


def test_system_service_address_families(system_service):
    assert set(values(system_service, "Service", "RestrictAddressFamilies")) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_system_service_timeouts(system_service):
    assert seconds(value(system_service, "Service", "WatchdogSec")) > 0
    # The daemon has to be able to drain before systemd escalates to SIGKILL.
    assert seconds(value(system_service, "Service", "TimeoutStopSec")) > DRAIN_TIMEOUT_DEFAULT


def test_system_service_runs_engramd_with_default_paths(system_service):
    argv = shlex.split(value(system_service, "Service", "ExecStart"))
    assert argv[0].startswith("/") and argv[0].endswith("/engramd")
    # The socket and state folder come from RuntimeDirectory= and StateDirectory=, so that they
    # cannot drift apart from engramd.socket's ListenStream=.
    assert not {"--socket", "--state-dir"} & set(argv)


def test_system_service_environment(system_service):
    env = environment(system_service)
    assert env["ENGRAM_LOG__FORMAT"] == "json"
    assert env.get("ENGRAM_SERVER__SOCKET_GROUP", "engram") == value(system_service, "Service", "Group")


def test_system_service_install(system_service):
    assert value(system_service, "Install", "WantedBy") == "multi-user.target"
    assert value(system_service, "Install", "Also") == SYSTEM_SOCKET.name


def test_system_socket(system_socket, system_service):
    assert value(system_socket, "Socket", "ListenStream") == "/run/engram/engram.sock"
    assert value(system_socket, "Socket", "SocketMode") == "0660"
    assert value(system_socket, "Socket", "SocketUser") == value(system_service, "Service", "User")
    assert value(system_socket, "Socket", "SocketGroup") == value(system_service, "Service", "Group")
    assert normalized(value(system_socket, "Socket", "Accept")) == "no"
    assert normalized(value(system_socket, "Socket", "RemoveOnStop")) == "no"
    assert value(system_socket, "Socket", "Service") == SYSTEM_SERVICE.name
    assert value(system_socket, "Install", "WantedBy") == "sockets.target"
    # Members of the socket group must be able to reach the socket before the service has ever
    # run, while the folder is still root's: at least group and others may search it.
    assert int(value(system_socket, "Socket", "DirectoryMode"), 8) & 0o011 == 0o011


def test_system_socket_path_is_the_daemon_default(system_socket, system_service, monkeypatch):
    """What engramd picks under systemd with no flags is exactly where engramd.socket listens."""
    from engram.config import load_settings

    _clean_environment(monkeypatch)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/" + value(system_service, "Service", "StateDirectory"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/" + value(system_service, "Service", "RuntimeDirectory"))
    for name, val in environment(system_service).items():
        monkeypatch.setenv(name, val)
    settings = load_settings()
    assert str(settings.socket_path) == value(system_socket, "Socket", "ListenStream")
    assert settings.state_dir == Path("/var/lib/engram")
    assert settings.log.format == "json"
    assert settings.server.socket_group == value(system_service, "Service", "Group")


def test_sysusers_creates_the_service_user(system_service, tmp_path):
    text = SYSUSERS.read_text(encoding="utf-8")
    entries = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert ["u", "engram"] == entries[0][:2]
    assert value(system_service, "Service", "User") == "engram"
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed")
    root = tmp_path / "root"
    root.mkdir()
    command = [sysusers, "--dry-run", f"--root={root}", str(SYSUSERS)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "engram" in output


# --- the user units --------------------------------------------------------------------------

USER_SERVICE_SETTINGS = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "RuntimeDirectory": "engram",
    "RuntimeDirectoryMode": "0700",
    "RuntimeDirectoryPreserve": "yes",
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}

# Settings a user manager cannot honour (no privileges to build namespaces, drop capabilities or
# attach BPF programs), or that would move the state folder (StateDirectory= is $XDG_CONFIG_HOME
# for user units on older systemd).
USER_SERVICE_FORBIDDEN = (
    "User",
    "Group",
    "DynamicUser",
    "StateDirectory",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "IPAddressDeny",
    "IPAddressAllow",
)


@pytest.fixture(scope="module")
def user_service() -> Unit:
    return parse_unit(USER_SERVICE)


@pytest.fixture(scope="module")
def user_socket() -> Unit:
    return parse_unit(USER_SOCKET)


@pytest.mark.parametrize("key", sorted(USER_SERVICE_SETTINGS))
def test_user_service_setting(user_service, key):
    assert normalized(value(user_service, "Service", key)) == normalized(USER_SERVICE_SETTINGS[key])


@pytest.mark.parametrize("key", USER_SERVICE_FORBIDDEN)
def test_user_service_leaves_out(user_service, key):
    assert key not in user_service.get("Service", {})


def test_user_service_basics(user_service):
    argv = shlex.split(value(user_service, "Service", "ExecStart"))
    assert argv[0].endswith("/engramd")
    assert not {"--socket", "--state-dir"} & set(argv)
    assert seconds(value(user_service, "Service", "WatchdogSec")) > 0
    assert seconds(value(user_service, "Service", "TimeoutStopSec")) > DRAIN_TIMEOUT_DEFAULT
    assert environment(user_service)["ENGRAM_LOG__FORMAT"] == "json"
    assert set(values(user_service, "Service", "RestrictAddressFamilies")) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert value(user_service, "Install", "WantedBy") == "default.target"
    assert value(user_service, "Install", "Also") == USER_SOCKET.name


def test_user_socket(user_socket):
    assert value(user_socket, "Socket", "ListenStream") == "%t/engram/engram.sock"
    assert value(user_socket, "Socket", "SocketMode") == "0600"
    assert "SocketUser" not in user_socket["Socket"]
    assert "SocketGroup" not in user_socket["Socket"]
    assert normalized(value(user_socket, "Socket", "Accept")) == "no"
    assert value(user_socket, "Socket", "Service") == USER_SERVICE.name


def test_user_paths_are_the_daemon_defaults(user_socket, user_service, monkeypatch, tmp_path):
    """Under the user manager engramd listens where the socket unit does and keeps its state
    where it would when started from a shell."""
    from engram.config import load_settings

    _clean_environment(monkeypatch)
    runtime, state_home = tmp_path / "run", tmp_path / "state"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime / value(user_service, "Service", "RuntimeDirectory")))
    for name, val in environment(user_service).items():
        monkeypatch.setenv(name, val)
    settings = load_settings()
    listen = value(user_socket, "Socket", "ListenStream").replace("%t", str(runtime))
    assert str(settings.socket_path) == listen
    if os.geteuid() != 0:  # root's default state folder is /var/lib/engram
        assert settings.state_dir == state_home / "engram"


def _clean_environment(monkeypatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENGRAM_") or name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
            monkeypatch.delenv(name)


# --- launchd ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plist() -> dict:
    with PLIST.open("rb") as handle:
        return plistlib.load(handle)


def test_plist_runs_engramd(plist):
    assert plist["Label"] == PLIST.name.removesuffix(".plist")
    args = plist["ProgramArguments"]
    assert args[0].endswith("engramd")
    options = dict(zip(args[1::2], args[2::2]))
    state_dir, socket_path = Path(options["--state-dir"]), Path(options["--socket"])
    assert socket_path.parent == state_dir
    # sun_path holds 104 bytes on macOS, including the terminating NUL.
    assert len(os.fsencode(str(socket_path))) <= 103


def test_plist_paths_are_absolute(plist):
    """launchd expands neither ~ nor $VARIABLES."""
    paths = [plist["ProgramArguments"][0], *plist["ProgramArguments"][2::2], plist["StandardErrorPath"]]
    for path in paths:
        assert path.startswith("/"), path
        assert "~" not in path and "$" not in path, path


def test_plist_keys(plist):
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["RunAtLoad"] is True
    assert plist["ProcessType"] == "Background"
    assert plist["Umask"] == 0o077
    assert plist["EnvironmentVariables"]["ENGRAM_LOG__FORMAT"] == "json"
    assert plist["ExitTimeOut"] > DRAIN_TIMEOUT_DEFAULT
