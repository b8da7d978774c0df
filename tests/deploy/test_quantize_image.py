"""The quantize image, built from services/quantize/Dockerfile and run as the program declares it.

The deployment (tests/deploy/local.py) deploys the dev stack, which has no quantize job, so this
is where the third project image meets a real Docker engine. The declaration comes from the
program itself: stacks/__main__.py runs under Pulumi's mock runtime for the dev stack with the
job switched on (tests/deploy/stack.py ``quantize_stack_values``), and its Image, Volume and
Container registrations are applied for real by the deployment driver's own handlers
(driver.DockerResources.new_resource), on the builder daemon the deployment builds on:

* the image: ``build.context``/``build.dockerfile`` resolved from the program's working directory,
  its build arguments as declared (PYTHON_IMAGE: the python-torch stand-in, the python stand-in
  plus the machine's torch CPU wheel, tests/deploy/standins/README.md), tagged by the program with
  a hash of its inputs and kept in the builder's cache between runs (the legacy builder's layer
  cache makes an unchanged rebuild a few seconds);
* the job: its argv (services/launch.py ``quantize_args``), ``network_mode: none``, the models
  volume at /models and the adapters volume read-only, shm, labels, ``attach`` with its create
  timeout. The models volume is filled first with what the job reads from it: the tiny model
  from the local model cache (~/.cache/llm-node/models) and the repository's calibration text.

Then the job must have exited 0 and written a compressed-tensors checkpoint into the volume:
AWQ W4A16 (prod's scheme), on the CPU through the job's own CPU-only calibration workaround
(llm_node_quantize/cpu_support.py). What it does not prove: the CUDA torch of the real image (the
stand-in base carries the CPU wheel, which satisfies the same torch==2.13.0 pin) and the GPU path.
"""

from __future__ import annotations

import io
import json
import tarfile
import time

import pytest

from services.launch import quantize_args
from stacks.config import parse_settings
from tests.deploy import driver
from tests.deploy.daemon import PrivateDaemon
from tests.deploy.declared import apply, declared, remove, resources, say
from tests.deploy.images import Builder
from tests.deploy.local import prune_images
from tests.deploy.stack import (
    BASE_STACK,
    QUANTIZE_CALIBRATION_FILE,
    QUANTIZE_OUTPUT_DIR,
    QUANTIZE_SOURCE_DIR,
    quantize_stack_values,
)
from tests.stacks.mock_runtime import BUILT_IMAGE, VOLUME
from tests.support.adapters import REPO, TINY_MODEL_DIR

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]  # a fresh machine builds the image (minutes)

CALIBRATION_TEXT = REPO / "services" / "quantize" / "calibration" / "default.txt"


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_dir(client, image: str, volume: str, path: str) -> dict[str, bytes]:
    """The files under ``path`` of the volume (mounted at /models in a container never started)."""
    helper = client.api.create_container(image, ["true"], host_config=client.api.create_host_config(
        binds=[f"{volume}:/models:ro"], network_mode="none"))["Id"]
    try:
        stream, _ = client.api.get_archive(helper, path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            return {member.name.split("/", 1)[1]: tar.extractfile(member).read()
                    for member in tar.getmembers() if member.isfile()}
    finally:
        client.api.remove_container(helper, force=True)


@pytest.fixture(scope="module")
def builder():
    daemon = PrivateDaemon.builder().start()
    yield daemon
    daemon.stop()


def test_the_quantize_image_builds_and_its_job_writes_a_compressed_tensors_checkpoint(builder):
    client = builder.client()
    started = time.monotonic()
    images = Builder(client, log=say)
    python_torch = images.standin("python-torch")
    say(f"build phase (base + python-torch stand-in): {time.monotonic() - started:.0f}s")

    values = quantize_stack_values(python_torch, builder.url)
    settings = parse_settings(values, BASE_STACK)
    program = declared(values)
    job = program.container("quantize")
    image = next(item for item in program.of_type(BUILT_IMAGE) if item.name == "quantize-image")
    volumes = {item.props["name"]: item for item in program.of_type(VOLUME)}
    models, adapters = (next(v["volumeName"] for v in job.props["volumes"] if v["containerPath"] == path)
                        for path in ("/models", "/adapters"))
    # What the program declares for the job (and what follows is applied as declared).
    assert job.props["command"] == quantize_args(settings.quantize)
    assert image.props["build"]["args"] == {"PYTHON_IMAGE": python_torch}
    assert job.props["image"] == image.props["imageName"]
    assert job.props["networkMode"] == "none" and job.props["attach"] is True

    # Nothing of an earlier run: the job must quantize now, not find its output current.
    remove(client, containers=(job.props["name"],), volumes=(models, adapters))

    hooks = resources(client, program, builder.url)
    try:
        for name in (models, adapters):
            apply(hooks, volumes[name])
        apply(hooks, image)
        image_name = image.props["imageName"]
        say(f"build {image_name}: {hooks.deployment.timings[f'build {image_name}']:.0f}s")

        files = {f"{QUANTIZE_SOURCE_DIR}/{path.name}": path.read_bytes()
                 for path in sorted(TINY_MODEL_DIR.iterdir()) if path.is_file()}
        files[QUANTIZE_CALIBRATION_FILE] = CALIBRATION_TEXT.read_bytes()
        loader = client.api.create_container(image_name, ["true"], host_config=client.api.create_host_config(
            binds=[f"{models}:/models"], network_mode="none"))["Id"]
        try:
            assert client.api.put_archive(loader, "/models", tar_of(files))
        finally:
            client.api.remove_container(loader, force=True)

        started = time.monotonic()
        container_id, state = apply(hooks, job)
        ran = time.monotonic() - started
        logs = client.api.logs(container_id).decode(errors="replace")
        say(f"quantize job ({settings.quantize.scheme}, the tiny model, no network): exited {state['exitCode']} "
            f"in {ran:.0f}s")
        assert state["exitCode"] == 0, logs[-4000:]
        inspected = client.api.inspect_container(container_id)
        assert inspected["HostConfig"]["NetworkMode"] == "none"
        assert "no accelerator: calibrating on the CPU" in logs, logs[-4000:]

        output = read_dir(client, image_name, models, f"/models/{QUANTIZE_OUTPUT_DIR}")
        config = json.loads(output["config.json"])
        quantization = config["quantization_config"]
        assert quantization["quant_method"] == "compressed-tensors"
        assert quantization["format"] == "pack-quantized" and quantization["quantization_status"] == "compressed"
        (group,) = quantization["config_groups"].values()
        assert (group["weights"]["num_bits"], group["weights"]["symmetric"]) == (4, False)  # W4A16_ASYM
        weights = [name for name in output if name.endswith(".safetensors")]
        assert weights and all(len(output[name]) > 0 for name in weights), sorted(output)
        marker = json.loads(output["llm-node-quantize.json"])
        assert marker["inputs"]["scheme"] == "W4A16_ASYM" and marker["calibration_samples"] == 32
        assert marker["format"] == "compressed-tensors"
    finally:
        driver.destroy(client, hooks.deployment, log=say)
        remove(client, volumes=(models, adapters))  # retained by the program (retain_on_delete): the test's own
    prune_images(client, {python_torch, image.props["imageName"]}, say)
