"""A node image's first boot (esc/node/firstboot.py, run as the image runs it: a script of
the standard library alone) against day-0 files in a temporary root, really making the
node home with escadm init; the image's boot service; and scripts/build-image's OVA
from a small disk (its qcow2, which needs libguestfs and the network, is not built
here)."""

from __future__ import annotations

import configparser
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from lxml import etree

from esc.node import firstboot
from esc.node.firstboot import DAY0_FILE, Day0Error, init_argv, render_day0

ROOT = Path(__file__).parents[2]
ESCADM = Path(sys.executable).with_name("escadm")
# The image's interpreter: Debian 12's, as the boot service runs it.
SYSTEM_PYTHON = "/usr/bin/python3.11"
NET = "198.18.76"
HA = {
    "hostname": "esc-b",
    "ip": f"{NET}.12/24",
    "gateway_ip": f"{NET}.1",
    "ha_node_list": [f"{NET}.11", f"{NET}.12"],
    "kad_vip": f"{NET}.100/24",
    "kad_vif": "lo",
    "ha_pair_file": "ha-pair.json",
    "init": {"api-port": 8443, "kad-vri": 71, "tls": True, "ha-bootstrap": False},
}


def test_the_day0_makes_exactly_the_escadm_init_of_the_node() -> None:
    day0 = tomllib.loads(render_day0(HA))
    assert init_argv(day0, Path("/etc/esc/day0")) == [
        *("--node-name", "esc-b", "--ha", "--ha-node-list", f"{NET}.11,{NET}.12"),
        *("--kad-vip", f"{NET}.100/24", "--gateway-ip", f"{NET}.1", "--kad-vif", "lo"),
        *("--ha-pair-file", "/etc/esc/day0/ha-pair.json"),
        *("--api-port", "8443", "--kad-vri", "71", "--tls"),
    ]
    standalone = tomllib.loads(render_day0({"hostname": "esc-s", "ip": f"{NET}.5/24"}))
    assert standalone == {"hostname": "esc-s", "ip": f"{NET}.5/24"}
    assert init_argv(standalone, Path("/d")) == ["--node-name", "esc-s", "--api-host", "0.0.0.0"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hostname": "ESC"}, "day-0 hostname = 'ESC'"),
        ({"ha_node_list": [f"{NET}.11"]}, "the pair's two different addresses"),
        ({"ha_node_list": [f"{NET}.11", "x"]}, "ha_node_list = 'x': give an IPv4 address"),
        ({"kad_vip": f"{NET}.100"}, "an IPv4 address with its prefix"),
        ({"gateway_ip": None}, "needs gateway_ip"),
        ({"ip": f"{NET}.13/24"}, "is not one of ha_node_list"),
        ({"ha_pair_file": "../pair"}, "name a file beside the day-0 file"),
        ({"init": {"home": "/x"}}, "the first boot sets --home itself"),
        ({"init": {"--api-port": "1"}}, "without its dashes"),
        ({"ha_node_list": None}, "kad_vip, kad_vif, ha_pair_file need ha_node_list"),
        ({"hostnme": "x"}, "unknown day-0 keys hostnme"),
    ],
)
def test_a_wrong_day0_is_refused_naming_the_key(changes: dict, message: str) -> None:
    day0 = {k: v for k, v in {**HA, **changes}.items() if v is not None}
    with pytest.raises(Day0Error, match=message):
        firstboot.check_day0(day0)


def boot(day0_dir: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    """The first boot as the image's service runs it: the file alone, by its path, with
    the system's Python in isolated mode (no site-packages, nothing of the checkout)."""
    script = Path(firstboot.__file__)
    command = [SYSTEM_PYTHON, "-I", str(script), "--day0-dir", str(day0_dir)]
    command += ["--home", str(home), "--escadm", str(ESCADM), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd="/")


def test_the_first_boot_makes_the_node_once_from_its_day0(tmp_path: Path) -> None:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the image's Python is Debian 12's")
    day0_dir = tmp_path / "etc" / "esc" / "day0"
    day0_dir.mkdir(parents=True)
    (day0_dir / DAY0_FILE).write_text(
        render_day0({"hostname": "esc-s", "ip": f"{NET}.5/24", "init": {"api-port": 8181}})
    )
    home = tmp_path / "root" / ".esc"
    made = boot(day0_dir, home)
    assert made.returncode == 0, made.stderr
    assert "escadm init --node-name esc-s --api-host 0.0.0.0 --api-port 8181" in made.stdout
    settings = tomllib.loads((home / "esc.toml").read_text())
    assert settings["node"]["name"] == "esc-s"
    assert (settings["api"]["host"], settings["api"]["port"]) == ("0.0.0.0", 8181)
    result = home / "data" / "first-boot.json"
    assert result.stat().st_mode & 0o777 == 0o600
    password = json.loads(result.read_text())["admin_password"]
    assert len(password) >= 12 and password not in made.stdout + made.stderr

    (day0_dir / DAY0_FILE).write_text(render_day0({"hostname": "other"}))
    again = boot(day0_dir, home)  # a reboot: the node exists, nothing is made again
    assert again.returncode == 0 and "exists already: not initialised again" in again.stdout
    assert tomllib.loads((home / "esc.toml").read_text())["node"]["name"] == "esc-s"
    assert json.loads(result.read_text())["admin_password"] == password


def test_an_ha_first_boot_runs_escadm_init_ha_and_reports_its_refusal(tmp_path: Path) -> None:
    day0_dir = tmp_path / "day0"
    day0_dir.mkdir()
    (day0_dir / DAY0_FILE).write_text(render_day0({**HA, "init": {}}))
    home = tmp_path / "home"
    # This host has no address of ha_node_list on lo: escadm init --ha refuses, in its
    # own words, which name what the day-0 gave it; nothing is made.
    refused = boot(day0_dir, home)
    assert refused.returncode == 2
    assert "escadm init exited 2" in refused.stderr
    assert f"{NET}.11, {NET}.12" in refused.stderr and "lo" in refused.stderr
    assert not (home / "esc.toml").exists()

    (day0_dir / DAY0_FILE).write_text("hostname = 'esc-b'\nkad_vip = '1.2.3.4/24'\n")
    wrong = boot(day0_dir, home)
    assert wrong.returncode == 2 and "kad_vip need ha_node_list" in wrong.stderr
    (day0_dir / DAY0_FILE).unlink()
    missing = boot(day0_dir, home)
    assert missing.returncode == 2 and "no day-0 file" in missing.stderr


def test_the_image_service_runs_the_first_boot_with_its_own_options() -> None:
    unit = configparser.ConfigParser(interpolation=None)
    unit.read(ROOT / "scripts" / "image" / "esc-node.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[:2] == ["/usr/bin/python3", "/usr/local/lib/esc/firstboot.py"]
    parsed = firstboot.arguments(argv[2:])
    assert (parsed.day0_dir, parsed.home) == (firstboot.DEFAULT_DAY0_DIR, firstboot.DEFAULT_HOME)
    assert parsed.escadm == firstboot.DEFAULT_ESCADM and parsed.start
    assert unit["Unit"]["ConditionPathExists"] == f"{firstboot.DEFAULT_DAY0_DIR}/{DAY0_FILE}"
    assert "cloud-init.service" in unit["Unit"]["After"]
    build = (ROOT / "scripts" / "build-image").read_text()
    assert "esc/node/firstboot.py:/usr/local/lib/esc" in build
    assert "esc-node.service:/etc/systemd/system" in build


def test_build_image_makes_an_ova_of_a_disk(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing (Debian: qemu-utils)")
    disk = tmp_path / "esc-1.2.0.1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    built = subprocess.run(
        [
            str(ROOT / "scripts" / "build-image"),
            "ova",
            "--qcow2",
            str(disk),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    ova = tmp_path / "esc-1.2.0.1.ova"
    with tarfile.open(ova) as archive:
        names = archive.getnames()
        assert names == ["esc-1.2.0.1.ovf", "esc-1.2.0.1.mf", "esc-1.2.0.1-disk1.vmdk"]
        archive.extractall(tmp_path / "x", filter="data")
    out = tmp_path / "x"
    manifest = dict(
        line.removeprefix("SHA256(").split(")= ")
        for line in (out / names[1]).read_text().split("\n")
        if line
    )
    for name in (names[0], names[2]):
        assert manifest[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / names[2])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "vmdk" and info["format-specific"]["data"]["create-type"] == (
        "streamOptimized"
    )
    ovf = etree.parse(str(out / names[0]))
    ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1"}
    (disk_element,) = ovf.findall(".//o:Disk", ns)
    assert disk_element.get(f"{{{ns['o']}}}capacity") == str(64 * 2**20)
    (file_element,) = ovf.findall(".//o:File", ns)
    assert file_element.get(f"{{{ns['o']}}}href") == names[2]
    assert file_element.get(f"{{{ns['o']}}}size") == str((out / names[2]).stat().st_size)
    assert "@" not in (out / names[0]).read_text().split("-->", 1)[1]  # every field filled

    refused = subprocess.run(
        [str(ROOT / "scripts" / "build-image"), "qcow2", "--wheel", str(tmp_path / "none.whl")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "no wheel" in refused.stderr
