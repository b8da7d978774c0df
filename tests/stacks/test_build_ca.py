"""The stack setting ``build_ca_certificates``: extra CA certificates every image build of this
repository trusts (pip behind a TLS-inspecting proxy).

Under Pulumi's mock runtime: the setting reaches every built image's build arguments (Docker and
Kubernetes targets) and its tag, is absent from them when unset, resolves a relative path from
the project root whatever the working directory, and a bad path or file fails naming the key.
The Dockerfiles' side (the certificates in the image's trust store, pip using it) is built for
real in tests/deploy/test_build_ca.py.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pulumi
import pytest

from stacks.config import BUILD_CA_KEY, ROOT_DIR, ConfigError, read_build_ca_certificates
from stacks.images import BUILD_CA_ARG, ENGINE_BUILD, GATEWAY_BUILD, QUANTIZE_BUILD
from tests.stacks.mock_runtime import BUILT_IMAGE, run_program, settled_program

# Every stack that builds images, and the images it builds.
BUILDS = {
    "dev": {"gateway-image", "engine-chat-image"},
    "prod": {"gateway-image", "engine-image", "quantize-image"},
    "k8s-prod": {"gateway-image", "engine-cuda-image", "quantize-image"},
}


def make_ca(directory: Path, name: str) -> Path:
    """A real self-signed CA certificate (what a TLS-inspecting proxy's CA looks like)."""
    certificate = directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}.key"), "-out", str(certificate)],
                   check=True, capture_output=True)
    return certificate


@pytest.fixture(scope="module")
def ca_bundle(tmp_path_factory) -> Path:
    """Two CAs in one file, with the text `openssl x509 -text`-style bundles carry between them."""
    directory = tmp_path_factory.mktemp("ca")
    first, second = make_ca(directory, "proxy-ca-1"), make_ca(directory, "proxy-ca-2")
    bundle = directory / "bundle.pem"
    bundle.write_text("# the proxy's CAs\nsubject=CN = proxy-ca-1\n" + first.read_text()
                      + "\nsubject=CN = proxy-ca-2\n" + second.read_text())
    return bundle


def built_images(stack: str, overrides: dict | None = None) -> dict[str, dict]:
    return {image.name: image.props for image in settled_program(stack, overrides=overrides).of_type(BUILT_IMAGE)}


@pytest.mark.parametrize("stack", sorted(BUILDS))
def test_the_certificates_reach_every_image_build_and_its_tag(stack, ca_bundle):
    plain = built_images(stack)
    with_ca = built_images(stack, {BUILD_CA_KEY: str(ca_bundle)})
    assert set(plain) == set(with_ca) == BUILDS[stack]
    expected = read_build_ca_certificates(str(ca_bundle))
    assert expected.count("-----BEGIN CERTIFICATE-----") == 2 and "subject=" not in expected
    for name, image in with_ca.items():
        args = image["build"]["args"]
        assert args[BUILD_CA_ARG] == expected, name
        base = next(key for key in args if key != BUILD_CA_ARG)
        assert args[base] == plain[name]["build"]["args"][base], f"{name}: the base image is unchanged"
        # The certificates change the image (its trust store): a new tag.
        assert image["imageName"] != plain[name]["imageName"], name
    for name, image in plain.items():
        assert BUILD_CA_ARG not in image["build"]["args"], f"{name}: unset, the argument is not passed at all"


def test_each_dockerfile_declares_the_argument_and_trusts_it_before_pip(ca_bundle):
    """The program passes BUILD_CA_CERTIFICATES to every recipe; each Dockerfile declares it after
    FROM (an ARG before FROM is not visible in the build stage), adds the certificates to the trust
    store and points pip at it before any pip install; the same block in every Dockerfile."""
    blocks = set()
    for recipe in (GATEWAY_BUILD, ENGINE_BUILD, QUANTIZE_BUILD):
        text = (recipe.directory / "Dockerfile").read_text()
        declared = text.index(f'ARG {BUILD_CA_ARG}=""')
        assert text.index(f"FROM ${{{recipe.base_arg}}}") < declared, recipe.service
        trusted = text.index("update-ca-certificates \\")
        pip_configured = text.index("pip config --global set global.cert /etc/ssl/certs/ca-certificates.crt")
        installs = [m.start() for m in re.finditer(r"^RUN pip install", text, re.MULTILINE)]
        assert all(declared < trusted < pip_configured < at for at in installs), recipe.service
        assert recipe.service == "engine" or installs, recipe.service
        start = text.rindex("\n\n", 0, declared)
        blocks.add(text[start:text.index("\n\n", declared)])
    assert len(blocks) == 1, "the three Dockerfiles carry the same certificate block"


def test_a_relative_path_is_resolved_from_the_project_root(ca_bundle, monkeypatch):
    relative = os.path.relpath(ca_bundle, ROOT_DIR)
    monkeypatch.chdir(ROOT_DIR / "stacks")  # where Pulumi runs the program
    assert read_build_ca_certificates(relative) == read_build_ca_certificates(str(ca_bundle))
    images = built_images("prod", {BUILD_CA_KEY: relative})
    assert images["gateway-image"]["build"]["args"][BUILD_CA_ARG] == read_build_ca_certificates(str(ca_bundle))


@pytest.mark.parametrize("content,message", [
    (None, "cannot read .*No such file or directory"),
    ("not a certificate\n", "holds no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1 is not a valid PEM certificate"),
])
def test_a_bad_file_fails_naming_the_key(tmp_path, content, message):
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)

    @pulumi.runtime.test
    def deploy():
        return run_program("prod", overrides={BUILD_CA_KEY: str(path)}).ready()

    with pytest.raises(ConfigError, match=rf"^llm-node:{BUILD_CA_KEY}: .*{message}") as raised:
        deploy()
    assert raised.value.key == BUILD_CA_KEY


def test_a_missing_relative_path_names_the_root_it_was_resolved_from(monkeypatch):
    monkeypatch.chdir(ROOT_DIR / "stacks")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(ROOT_DIR / 'certs/none.pem'))} \('certs/none.pem' "
                                          rf"relative to the project root {re.escape(str(ROOT_DIR))}\)"):
        read_build_ca_certificates("certs/none.pem")
