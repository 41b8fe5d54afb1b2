"""The day-0 of an ESC node VM, and the first-boot program that makes the node from it.

`escadm node deploy` gives a node VM one day-0 file, `esc-node.toml`, holding the
parameters of its `escadm init` under the names ESC's operators know from bootvm.py:

    hostname = "esc-a"                      # escadm init --node-name
    ip = "198.18.72.11/24"                  # the node's address (the VIM sets up the NIC)
    gateway_ip = "198.18.72.1"
    ha_node_list = ["198.18.72.11", "198.18.72.12"]   # given: escadm init --ha ...
    kad_vip = "198.18.72.100/24"
    kad_vif = "eth0"
    ha_pair_file = "ha-pair.json"           # a day-0 file beside it: the pair to join

    [init]                                  # any other escadm init option, by its name
    api-port = 8080

    [vim]                                   # the node's VIM, as [vim] of its esc.toml
    driver = "vimhost"                      # (bootvm.py's VIM connection parameters)
    url = "http://198.18.72.5:7800"
    token_file = "/etc/esc/vim.token"

and, when the node joins a pair, a second one holding the pair file. The image runs
this file as its first-boot service, with nothing but Python's standard library (it
is the image's, so it must work whatever release the image holds):

    python3 firstboot.py [--day0-dir /etc/esc/day0] [--home /root/.esc]
        [--escadm /opt/esc/venv/bin/escadm] [--start]

It makes the node once: a home that has an esc.toml is left as it is (a reboot, a
node made by hand). It runs `escadm init --json` with the day-0's parameters (with
`ha_node_list`: `--ha --ha-node-list A,B --kad-vip V --gateway-ip G [--kad-vif IF]
[--ha-pair-file F]`; without: a standalone node whose API listens on every address,
`--api-host 0.0.0.0`, since its clients are elsewhere), keeps what init printed
(the admin password among it) in HOME/data/first-boot.json, mode 0600, and prints
the rest; a day-0 [vim] is then written into the [vim] section of the node's
esc.toml. `--start` then runs `escadm start`. Its exit code is that of the escadm
command that failed (2: the day-0 itself is wrong, named), 0 when done.

The network is not this program's: the VIM gives the NIC its address (cloud-init's
network config, the lab agent's namespace) before the first boot; `ip` and
`gateway_ip` are in the day-0 so that it says the whole node, as bootvm.py did.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

DAY0_FILE = "esc-node.toml"
PAIR_FILE = "ha-pair.json"
# The first boot's output is kept here, in the node home: it holds the admin password.
RESULT_FILE = Path("data") / "first-boot.json"
DEFAULT_DAY0_DIR = Path("/etc/esc/day0")
DEFAULT_HOME = Path("/root/.esc")
DEFAULT_ESCADM = Path("/opt/esc/venv/bin/escadm")
EXIT_DAY0 = 2
INIT_TIMEOUT = 600  # seconds: an HA node's init runs initdb and migrations
START_TIMEOUT = 600

KEYS = ("hostname", "ip", "gateway_ip", "ha_node_list", "kad_vip", "kad_vif", "ha_pair_file")
TABLES = ("init", "vim")
# The init options the keys above make: not to be given again under [init].
_MADE = {
    "home",
    "json",
    "node-name",
    "ha",
    "ha-node-list",
    "kad-vip",
    "kad-vif",
    "gateway-ip",
    "ha-pair-file",
    "api-host",
}
_OPTION = re.compile(r"[a-z][a-z0-9-]{0,40}\Z")
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_SETTING = re.compile(r"[a-z][a-z0-9_]{0,40}\Z")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}\Z")


class Day0Error(ValueError):
    """The day-0 cannot make a node; the message names the key and what it must be."""


# writing ---------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # A JSON string is a TOML basic string (the same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def render_day0(parameters: dict[str, Any]) -> str:
    """The day-0 file of `parameters` (KEYS, and "init": {option: value}); empty values
    are left out. Checked as the first boot reads it, so a wrong one fails at deploy."""
    lines = [
        "# The first boot of this ESC node runs escadm init with these parameters",
        "# (written by escadm node deploy; see docs/vims.md, Node providers).",
    ]
    for key in KEYS:
        value = parameters.get(key)
        if value not in (None, "", [], ()):
            lines.append(f"{key} = {_toml(value)}")
    for table in TABLES:
        entries = {k: v for k, v in (parameters.get(table) or {}).items() if v not in (None, "")}
        if entries:
            lines += ["", f"[{table}]"]
            lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in sorted(entries.items())]
    text = "\n".join(lines) + "\n"
    check_day0(tomllib.loads(text))
    return text


# reading ---------------------------------------------------------------------------------


def read_day0(day0_dir: Path) -> dict[str, Any]:
    path = day0_dir / DAY0_FILE
    try:
        day0 = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Day0Error(
            f"no day-0 file {path}: the VIM did not deliver it (is cloud-init's write_files "
            "done before this service?) or the node was not deployed by escadm node deploy"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Day0Error(f"cannot read the day-0 file {path}: {exc}") from None
    check_day0(day0)
    return day0


def _address(day0: dict[str, Any], key: str, with_prefix: bool = False) -> None:
    value = day0.get(key)
    if value is None:
        return
    try:
        if with_prefix:
            if "/" not in str(value):
                raise ValueError("no prefix")
            ipaddress.IPv4Interface(value)
        else:
            ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        form = (
            "an IPv4 address with its prefix, e.g. 198.18.0.100/24"
            if with_prefix
            else ("an IPv4 address")
        )
        raise Day0Error(f"day-0 {key} = {value!r}: give {form}") from None


def check_day0(day0: dict[str, Any]) -> None:
    """Raise Day0Error naming the first key that cannot make a node."""
    unknown = sorted(set(day0) - {*KEYS, *TABLES})
    if unknown:
        raise Day0Error(f"unknown day-0 keys {', '.join(unknown)}: the keys are {', '.join(KEYS)}")
    for key in KEYS:
        if key in day0 and key != "ha_node_list" and not isinstance(day0[key], str):
            raise Day0Error(f"day-0 {key} must be text, not {day0[key]!r}")
    hostname = day0.get("hostname")
    if hostname is None or not _HOSTNAME.match(hostname):
        raise Day0Error(
            f"day-0 hostname = {hostname!r}: give the node's host name (lowercase letters, "
            "digits and '-', at most 63)"
        )
    if day0.get("ip") is not None:
        try:
            ipaddress.IPv4Interface(day0["ip"])
        except ValueError:
            raise Day0Error(f"day-0 ip = {day0['ip']!r}: give an IPv4 address") from None
    _address(day0, "gateway_ip")
    _address(day0, "kad_vip", with_prefix=True)
    nodes = day0.get("ha_node_list")
    if nodes is not None:
        if not isinstance(nodes, list) or len(nodes) != 2 or len(set(nodes)) != 2:
            raise Day0Error(
                f"day-0 ha_node_list = {nodes!r}: give the pair's two different addresses"
            )
        for address in nodes:
            _address({"ha_node_list": address}, "ha_node_list")
        missing = [k for k in ("kad_vip", "gateway_ip") if not day0.get(k)]
        if missing:
            raise Day0Error(f"day-0 of an HA node (ha_node_list) needs {', '.join(missing)}")
        if day0.get("ip") and str(ipaddress.IPv4Interface(day0["ip"]).ip) not in nodes:
            raise Day0Error(f"day-0 ip {day0['ip']} is not one of ha_node_list {', '.join(nodes)}")
    else:
        given = [k for k in ("kad_vip", "kad_vif", "ha_pair_file") if day0.get(k)]
        if given:
            raise Day0Error(f"day-0 {', '.join(given)} need ha_node_list (an HA node)")
    pair = day0.get("ha_pair_file")
    if pair is not None and not _FILE.match(pair):
        raise Day0Error(f"day-0 ha_pair_file = {pair!r}: name a file beside the day-0 file")
    options = day0.get("init", {})
    if not isinstance(options, dict):
        raise Day0Error("day-0 [init] must be a table of escadm init options")
    for name, value in options.items():
        if not _OPTION.match(name):
            raise Day0Error(
                f"day-0 [init] {name!r}: give an escadm init option's name without its "
                "dashes, e.g. api-port"
            )
        if name in _MADE:
            raise Day0Error(
                f"day-0 [init] {name!r}: the first boot sets --{name} itself, from the "
                "day-0's own keys"
            )
        if not isinstance(value, (str, int, bool)):
            raise Day0Error(f"day-0 [init] {name} must be text, a number or true, not {value!r}")
    vim = day0.get("vim", {})
    if not isinstance(vim, dict):
        raise Day0Error("day-0 [vim] must be a table of the node's [vim] settings")
    for name, value in vim.items():
        if not _SETTING.match(name) or not isinstance(value, (str, int, float, bool)):
            raise Day0Error(
                f"day-0 [vim] {name} = {value!r}: give a setting of esc.toml's [vim] (driver, "
                "url, token_file, ...) with a text, number or boolean value"
            )


def init_argv(day0: dict[str, Any], day0_dir: Path) -> list[str]:
    """The `escadm init` arguments (after `init`) that make the node of `day0`."""
    check_day0(day0)
    argv = ["--node-name", day0["hostname"]]
    if day0.get("ha_node_list"):
        argv += ["--ha", "--ha-node-list", ",".join(day0["ha_node_list"])]
        argv += ["--kad-vip", day0["kad_vip"], "--gateway-ip", day0["gateway_ip"]]
        if day0.get("kad_vif"):
            argv += ["--kad-vif", day0["kad_vif"]]
        if day0.get("ha_pair_file"):
            argv += ["--ha-pair-file", str(day0_dir / day0["ha_pair_file"])]
    else:
        argv += ["--api-host", "0.0.0.0"]
    for name, value in sorted(day0.get("init", {}).items()):
        if value is True:
            argv.append(f"--{name}")
        elif value is not False:
            argv += [f"--{name}", str(value)]
    return argv


def with_vim(config: str, vim: dict[str, Any]) -> str:
    """esc.toml's text `config` with the keys of `vim` set in its [vim] section (only
    there: its subsections [vim.NAME] are left alone); keys it lacks are added."""
    lines = config.splitlines()
    try:
        start = lines.index("[vim]")
    except ValueError:
        lines += ["", "[vim]"]
        start = len(lines) - 1
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    left = dict(vim)
    for i in range(start + 1, end):
        key = lines[i].split("=", 1)[0].strip()
        if "=" in lines[i] and key in left:
            lines[i] = f"{key} = {_toml(left.pop(key))}"
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # new keys go after the section's last key, not after a blank line
    lines[end:end] = [f"{key} = {_toml(value)}" for key, value in sorted(left.items())]
    return "\n".join(lines) + "\n"


# the first boot --------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"esc-firstboot: {message}", flush=True)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def first_boot(day0_dir: Path, home: Path, escadm: Path, start: bool) -> int:
    if (home / "esc.toml").exists():
        _say(f"the node in {home} exists already: not initialised again")
    else:
        try:
            arguments = init_argv(read_day0(day0_dir), day0_dir)
        except Day0Error as exc:
            print(f"esc-firstboot: {exc}", file=sys.stderr, flush=True)
            return EXIT_DAY0
        _say(f"escadm init {' '.join(arguments)}")
        done = _run([str(escadm), "init", *arguments, "--json", "--home", str(home)], INIT_TIMEOUT)
        if done.returncode != 0:
            print(f"esc-firstboot: escadm init exited {done.returncode}:", file=sys.stderr)
            print(done.stderr.strip() or done.stdout.strip(), file=sys.stderr, flush=True)
            return done.returncode
        result = home / RESULT_FILE
        fd = os.open(result, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(done.stdout)
        try:
            shown = {k: v for k, v in json.loads(done.stdout).items() if "password" not in k}
        except ValueError:
            shown = {}
        _say(f"node created in {home} ({json.dumps(shown, sort_keys=True)}); see {result}")
        vim = read_day0(day0_dir).get("vim")
        if vim:
            config = home / "esc.toml"
            config.write_text(with_vim(config.read_text(encoding="utf-8"), vim), encoding="utf-8")
            _say(f"[vim] of {config} set from the day-0: {', '.join(sorted(vim))}")
    if not start:
        return 0
    started = _run([str(escadm), "start", "--home", str(home)], START_TIMEOUT)
    output = (started.stdout + started.stderr).strip()
    _say(f"escadm start exited {started.returncode}: {output}")
    return started.returncode


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="esc-firstboot", description="Make this ESC node from its day-0 (once)."
    )
    parser.add_argument("--day0-dir", type=Path, default=DEFAULT_DAY0_DIR)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--escadm", type=Path, default=DEFAULT_ESCADM)
    parser.add_argument("--start", action="store_true", help="then run escadm start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    return first_boot(args.day0_dir, args.home.absolute(), args.escadm, args.start)


if __name__ == "__main__":
    sys.exit(main())
