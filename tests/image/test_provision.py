"""`hyperpi provision` on a small real image: MBR by sfdisk, FAT32 by mkfs.vfat, ext4 by mke2fs -d.

The image has the shape of the real one (partition 1 FAT32, partition 2 ext4 with the service
user's /var/lib/hyperpi), just small, so each test takes a fraction of a second. Everything is
read back with the same tools a person would use (mtools, debugfs), not through our writer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from hyperpi.hypercore.keys import core_key, generate_keypair, z32_encode
from hyperpi_host import cli, ext4fs, fatfs, provision
from hyperpi_host.partitions import boot_and_root

TOOLS = ["sfdisk", "mkfs.vfat", "mcopy", "mdir", "mke2fs", "debugfs"]
FAT_START_SECTOR = 2048
FAT_MIB = 40  # FAT32 needs >= 65,525 clusters: 40 MiB of 512-byte clusters has ~81,000
ROOT_MIB = 16
SSID = "Kitchen Net"
PASSPHRASE = "correct horse battery"


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: tests/system-deps.sh installs fdisk dosfstools mtools e2fsprogs")
    work = tmp_path_factory.mktemp("base")
    tree = work / "root"
    for d in (
        "var/lib/hyperpi",
        "etc/wpa_supplicant",
        "etc/systemd/system/multi-user.target.wants",
        "root",
        "lib/systemd/system",
        "boot/firmware",
    ):
        (tree / d).mkdir(parents=True)
    (tree / "etc/hostname").write_text("hyperpi\n")
    (tree / "lib/systemd/system/ssh.service").write_text("[Unit]\n")
    fat, ext4, image = work / "boot.fat", work / "root.ext4", work / "hyperpi.img"
    run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-S",
            "512",
            "-s",
            "1",
            "-h",
            str(FAT_START_SECTOR),
            "-n",
            "HYPERPI",
            "-C",
            str(fat),
            str(FAT_MIB * 1024),
        ]
    )
    run(["mcopy", "-i", str(fat), str(tree / "etc/hostname"), "::/config.txt"])
    run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(ext4), f"{ROOT_MIB}M"])
    # The service user owns its state folder; debugfs sets that without root on this host.
    subprocess.run(["debugfs", "-w", "-R", "sif /var/lib/hyperpi uid 900", str(ext4)], check=True, capture_output=True)
    subprocess.run(["debugfs", "-w", "-R", "sif /var/lib/hyperpi gid 900", str(ext4)], check=True, capture_output=True)
    subprocess.run(
        ["debugfs", "-w", "-R", "sif /var/lib/hyperpi mode 040700", str(ext4)], check=True, capture_output=True
    )
    root_start = FAT_START_SECTOR + FAT_MIB * 2048
    with open(image, "wb") as f:
        f.truncate((root_start + ROOT_MIB * 2048) * 512)
    table = (
        f"label: dos\nstart={FAT_START_SECTOR}, size={FAT_MIB * 2048}, type=c, bootable\nstart={root_start}, type=83\n"
    )
    subprocess.run(["sfdisk", "--quiet", str(image)], input=table.encode(), check=True)
    for part, offset in ((fat, FAT_START_SECTOR), (ext4, root_start)):
        run(["dd", f"if={part}", f"of={image}", "bs=512", f"seek={offset}", "conv=notrunc,sparse", "status=none"])
    return image


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("HYPERPI_HOME", str(path))
    return path


def provision_cli(*args: str) -> int:
    return cli.main(["provision", *args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_provision_writes_settings_on_fat_and_secrets_in_ext4(base_image: Path, tmp_path: Path, home: Path) -> None:
    friend = core_key(generate_keypair().public_key)
    owner = core_key(generate_keypair().public_key)
    out = tmp_path / "kitchen.img"
    before = sha256(base_image)
    code = provision_cli(
        str(base_image),
        "-o",
        str(out),
        "--device",
        "kitchen",
        "--board",
        "oled-bonnet",
        "--wifi-ssid",
        SSID,
        "--wifi-psk",
        PASSPHRASE,
        "--wifi-country",
        "de",
        "--follow",
        f"Ana={z32_encode(friend)}",
        "--preset",
        "Dinner!",
        "--preset",
        "Coming",
        "--owner",
        owner.hex(),
        "--peer",
        "10.0.0.7:49737",
    )
    assert code == 0
    assert sha256(base_image) == before, "the input image must not change"
    boot, root = boot_and_root(out)

    settings = tomllib.loads(fatfs.read_file(out, boot, "/hyperpi/device.toml").decode())
    assert settings["name"] == "kitchen" and settings["board"] == "oled-bonnet"
    assert settings["presets"] == ["Dinner!", "Coming"]
    assert settings["follow"] == [{"name": "Ana", "key": z32_encode(friend)}]
    assert settings["owner"] == z32_encode(owner)
    assert settings["peers"] == ["10.0.0.7:49737"]
    assert fatfs.read_file(out, boot, "/config.txt") == b"hyperpi\n", "existing boot files stay"

    record = json.loads((home / "devices" / "kitchen.json").read_text())
    feed_secret = ext4fs.read_file(out, root, "/var/lib/hyperpi/feed.secret")
    noise_secret = ext4fs.read_file(out, root, "/var/lib/hyperpi/noise.secret")
    assert len(feed_secret) == 64 and len(noise_secret) == 64
    assert feed_secret[32:].hex() == record["feed_public_key_hex"]
    assert noise_secret[32:].hex() == record["noise_public_key_hex"]
    assert record["feed_key_hex"] == core_key(feed_secret[32:]).hex()
    assert record["board"] == "oled-bonnet"
    for path in ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret"):
        inode = ext4fs.stat(out, root, path)
        assert (inode.mode, inode.uid, inode.gid) == (0o600, 900, 900), path

    wpa = ext4fs.read_file(out, root, "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf").decode()
    psk = hashlib.pbkdf2_hmac("sha1", PASSPHRASE.encode(), SSID.encode(), 4096, 32).hex()
    assert "country=DE" in wpa and f"psk={psk}" in wpa and f"ssid={SSID.encode().hex()}" in wpa
    assert PASSPHRASE not in wpa, "the passphrase itself is never stored"
    inode = ext4fs.stat(out, root, "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert (inode.mode, inode.uid) == (0o600, 0)
    assert ext4fs.read_file(out, root, "/etc/hostname") == b"kitchen\n"

    # No secret anywhere on the FAT partition: not in files, not in free space, in no encoding.
    fat_bytes = out.read_bytes()[boot.start : boot.end]
    for secret in (feed_secret, feed_secret[:32], noise_secret, noise_secret[:32], bytes.fromhex(psk)):
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in fat_bytes
    for text in (PASSPHRASE, psk):
        assert text.encode() not in fat_bytes


def test_device_config_module_accepts_the_written_settings(base_image: Path, tmp_path: Path, home: Path) -> None:
    from hyperpi.device import config

    out = tmp_path / "hall.img"
    assert provision_cli(str(base_image), "-o", str(out), "--device", "hall", "--board", "headless") == 0
    boot, _ = boot_and_root(out)
    path = tmp_path / "device.toml"
    path.write_bytes(fatfs.read_file(out, boot, "/hyperpi/device.toml"))
    loaded = config.load_config(path)
    assert (loaded.name, loaded.board, loaded.listen_port) == ("hall", "headless", config.DEFAULT_PORT)


def ssh_public_key() -> str:
    def string(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    blob = string(b"ssh-ed25519") + string(os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} me@laptop\n"


def test_ssh_key_turns_ssh_on_for_root(base_image: Path, tmp_path: Path, home: Path) -> None:
    key_file = tmp_path / "id.pub"
    key_file.write_text(ssh_public_key())
    out = tmp_path / "ssh.img"
    assert provision_cli(str(base_image), "-o", str(out), "--device", "shed", "--ssh-key", str(key_file)) == 0
    _, root = boot_and_root(out)
    assert ext4fs.read_file(out, root, "/root/.ssh/authorized_keys").decode() == key_file.read_text()
    inode = ext4fs.stat(out, root, "/root/.ssh/authorized_keys")
    assert (inode.mode, inode.uid) == (0o600, 0)
    assert ext4fs.stat(out, root, "/root/.ssh").mode == 0o700
    link = ext4fs.stat(out, root, "/etc/systemd/system/multi-user.target.wants/ssh.service")
    assert link is not None and link.file_type == "symlink"


def test_xz_image_and_each_copy_gets_its_own_keys(base_image: Path, tmp_path: Path, home: Path) -> None:
    packed = tmp_path / "hyperpi.img.xz"
    packed.write_bytes(lzma.compress(base_image.read_bytes(), preset=0))
    secrets = []
    for name in ("one", "two"):
        out = tmp_path / f"{name}.img"
        assert provision_cli(str(packed), "-o", str(out), "--device", name) == 0
        assert out.stat().st_size == base_image.stat().st_size
        assert out.stat().st_blocks * 512 < out.stat().st_size, "the copy stays sparse"
        _, root = boot_and_root(out)
        secrets.append(ext4fs.read_file(out, root, "/var/lib/hyperpi/feed.secret"))
    assert secrets[0] != secrets[1]


def test_force_replaces_an_existing_output(base_image: Path, tmp_path: Path, home: Path) -> None:
    out = tmp_path / "again.img"
    assert provision_cli(str(base_image), "-o", str(out), "--device", "again") == 0
    _, root = boot_and_root(out)
    first = ext4fs.read_file(out, root, "/var/lib/hyperpi/feed.secret")
    assert provision_cli(str(out), "-o", str(out), "--device", "again", "--force") == 2, "in place is refused"
    assert provision_cli(str(base_image), "-o", str(out), "--device", "again", "--force") == 0
    assert ext4fs.read_file(out, root, "/var/lib/hyperpi/feed.secret") != first


BAD_ARGS = {
    "unknown board": ["--board", "toaster"],
    "bad country": ["--wifi-ssid", SSID, "--wifi-psk", PASSPHRASE, "--wifi-country", "XX"],
    "short passphrase": ["--wifi-ssid", SSID, "--wifi-psk", "short", "--wifi-country", "DE"],
    "ssid without psk": ["--wifi-ssid", SSID, "--wifi-country", "DE"],
    "psk without ssid": ["--wifi-psk", PASSPHRASE],
    "long ssid": ["--wifi-ssid", "x" * 33, "--wifi-psk", PASSPHRASE, "--wifi-country", "DE"],
    "bad follow key": ["--follow", "Ana=notakey"],
    "follow without name": ["--follow", "abc"],
    "bad owner": ["--owner", "zz" * 32],
    "bad peer": ["--peer", "no-port"],
    "control chars in preset": ["--preset", "hi\x07"],
}


@pytest.mark.parametrize("extra", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    base_image: Path, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    out = tmp_path / "out.img"
    assert provision_cli(str(base_image), "-o", str(out), "--device", "kitchen", *extra) == 2
    assert_refused(capsys, tmp_path, home)


@pytest.mark.parametrize("case", ["bad name", "private ssh key", "not an image", "output exists", "missing image"])
def test_bad_files_are_refused_in_one_line(
    base_image: Path, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    image, out, device, extra = str(base_image), tmp_path / "out.img", "kitchen", []
    if case == "bad name":
        device = "kitchen pi!"
    elif case == "private ssh key":
        key = tmp_path / "id_ed25519"
        key.write_text(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
        )
        extra = ["--ssh-key", str(key)]
    elif case == "not an image":
        junk = tmp_path / "junk.img"
        junk.write_bytes(os.urandom(4096))
        image = str(junk)
    elif case == "output exists":
        out.write_bytes(b"keep me")
    else:
        image = str(tmp_path / "nowhere.img")
    assert provision_cli(image, "-o", str(out), "--device", device, *extra) == 2
    if case == "output exists":
        assert out.read_bytes() == b"keep me"
        out.unlink()
    assert_refused(capsys, tmp_path, home)


def assert_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, home: Path) -> None:
    err = capsys.readouterr().err
    assert err.startswith("hyperpi: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.img").exists()
    assert not list(tmp_path.glob("*.partial"))
    assert not (home / "devices").exists() or not list((home / "devices").iterdir())


def test_partition_table_of_a_non_image_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "x.img"
    junk.write_bytes(b"\0" * 1024)
    with pytest.raises(provision.PartitionError):
        boot_and_root(junk)
