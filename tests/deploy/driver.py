"""Apply the Pulumi program to a real Docker engine, without the Pulumi CLI (a test harness).

``deploy()`` runs stacks/__main__.py under Pulumi's own Python runtime with a resource monitor
(``pulumi.runtime.set_mocks``) whose ``new_resource`` hook creates each declared resource for
real through the Docker Engine API (the ``docker`` SDK) and returns its real id and outputs.
The SDK sends a registration only once the resource's inputs and its ``depends_on`` resources
are resolved (pulumi/runtime/rpc.py ``_add_dependency`` awaits each dependency's URN, which the
monitor answers after ``new_resource`` returned), so resources are created in dependency order,
independent ones in parallel (the monitor runs in the SDK's executor threads).

What each resource does follows the providers' source (kreuzwerker/terraform-provider-docker
internal/provider/resource_docker_container_funcs.go, which pulumi-docker bridges for
Container/Network/Volume/RemoteImage, and pulumi/pulumi-docker provider/image.go for Image):

  Container   create -> connect networks_advanced -> upload files (a tar per file, extracted
              at "/") -> start -> ``wait``: poll until healthy within ``wait_timeout``
              (an error if no healthcheck) -> ``attach``: wait for the exit -> ``exit_code``
  Image       build ``build.context`` with ``build.dockerfile`` (both relative to the program's
              working directory, as the provider resolves them) and ``build.args``; on a
              separate builder daemon when the node's has no network, then moved over
  RemoteImage must already exist on the engine (no registry here: the stand-ins, tests/deploy)
  Network, Volume, RandomPassword, component resources
  provider    its ``host`` must name the daemon the driver applies to (the stack's docker_host)

Deliberate differences from the real providers, all forced by this machine and listed in
docs/verification.md: builds use the legacy builder with host networking (no BuildKit, no bridge to build on);
a container is created on its first network instead of the default bridge (the daemon has
none) and then joins the others; a ``wait`` fails as soon as the container has exited.

Any resource type, input field or resource option this module does not implement is refused
with ``NotImplementedByDriver`` before anything is created, so the declaration cannot silently
outgrow the harness.

``update()`` runs the program again, with changed stack values, against a deployment (its
per-resource state: ids, inputs, outputs): unchanged resources keep their ids and outputs and
are not touched; a changed container is replaced as pulumi-docker does with the program's
``delete_before_replace`` (stopped with its old ``destroy_grace_seconds`` as the stop timeout:
its StopSignal, SIGKILL when that runs out; removed; created again). Whatever else an update
would do (change a network, volume, image or password, update a container in place, create or
delete a resource) is refused with ``NotImplementedByDriver``. ``destroy()`` removes what a
deployment created, in reverse order, and keeps what the program marks ``retain_on_delete``
(the data volumes) and the images.
"""

from __future__ import annotations

import io
import json
import os
import re
import runpy
import secrets as secrets_module
import string
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.stacks.mock_runtime import (
    BUILT_IMAGE,
    CONTAINER,
    NETWORK,
    PASSWORD,
    REMOTE_IMAGE,
    VOLUME,
    engine_config,
    unwrap,
)

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "stacks" / "__main__.py"
PROGRAM_DIR = PROGRAM.parent  # Pulumi.yaml main: stacks/ -> the program's working directory

PROVIDER = "pulumi:providers:docker"


class NotImplementedByDriver(Exception):
    """The program declares something this harness cannot apply faithfully."""


class DeployError(RuntimeError):
    """A resource could not be created (the message says which and why)."""


# -- what is implemented -------------------------------------------------------------------------
# Input name -> None (a scalar or a list of scalars) or a dict (an object, or a list of objects,
# with these fields). Names as the SDK sends them (camelCase). Anything else is refused.
_LABEL = {"label": None, "value": None}
SCHEMAS: dict[str, dict[str, Any]] = {
    PROVIDER: {"host": None, "version": None},
    NETWORK: {"name": None, "driver": None, "internal": None, "labels": _LABEL,
              "ipamConfigs": {"subnet": None, "gateway": None, "ipRange": None}},
    VOLUME: {"name": None, "labels": _LABEL, "driver": None},
    REMOTE_IMAGE: {"name": None, "keepLocally": None},
    BUILT_IMAGE: {"imageName": None, "skipPush": None, "buildOnPreview": None,
                  "build": {"context": None, "dockerfile": None, "args": "map", "platform": None}},
    PASSWORD: {"length": None, "special": None, "upper": None, "lower": None, "numeric": None},
    CONTAINER: {
        "name": None, "image": None, "command": None, "entrypoints": None, "envs": None,
        "labels": _LABEL, "restart": None, "logDriver": None, "logOpts": "map",
        "uploads": {"file": None, "content": None, "contentBase64": None, "permissions": None,
                    "executable": None},
        "volumes": {"containerPath": None, "hostPath": None, "volumeName": None, "readOnly": None},
        "networksAdvanced": {"name": None, "aliases": None, "ipv4Address": None},
        "networkMode": None,
        "healthcheck": {"tests": None, "interval": None, "timeout": None, "retries": None,
                        "startPeriod": None, "startInterval": None},
        "wait": None, "waitTimeout": None, "mustRun": None, "attach": None,
        "shmSize": None, "capabilities": {"adds": None, "drops": None}, "securityOpts": None,
        "deviceRequests": {"driver": None, "deviceIds": None, "capabilities": None, "count": None},
        "ports": {"internal": None, "external": None, "ip": None, "protocol": None},
        "stopSignal": None, "stopTimeout": None, "destroyGraceSeconds": None,
        "tmpfs": "map", "user": None, "workingDir": None,
    },
}
# Resource options honoured (delete_before_replace and replace_on_changes by ``update``, which
# replaces changed containers and refuses anything else). Any other one is refused.
OPTIONS_UNDERSTOOD = {"parent", "depends_on", "provider", "providers", "retain_on_delete",
                      "delete_before_replace", "replace_on_changes", "custom_timeouts", "version",
                      "plugin_download_url",
                      # set by the SDKs themselves (secret result, type renames)
                      "additional_secret_outputs", "aliases"}


# Container inputs the provider's schema does not mark ForceNew: a change to only these is an
# update in place (or of the state alone), which the driver does not implement. Any other
# changed input, or one named in the resource's replace_on_changes, replaces the container.
NOT_FORCE_NEW = {"restart", "destroyGraceSeconds", "wait", "waitTimeout", "mustRun", "healthcheck"}


def _normal(value: Any) -> Any:
    """Inputs/outputs as the state file holds them (JSON), to compare with it."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def check_inputs(type_: str, name: str, inputs: Mapping[str, Any]) -> None:
    if type_ not in SCHEMAS:
        raise NotImplementedByDriver(f"{type_} {name!r}: resource type not implemented by tests/deploy/driver.py")

    def walk(value: Any, schema: Any, path: str) -> None:
        if value is None or schema is None or schema == "map":
            if schema is None and isinstance(value, dict):
                raise NotImplementedByDriver(f"{type_} {name!r}: input {path} is an object, not implemented")
            return
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                raise NotImplementedByDriver(f"{type_} {name!r}: input {path} has an unexpected shape")
            for key, sub in item.items():
                if key not in schema:
                    raise NotImplementedByDriver(
                        f"{type_} {name!r}: input {path}.{key} is not implemented by tests/deploy/driver.py")
                walk(sub, schema[key], f"{path}.{key}")

    walk(dict(inputs), SCHEMAS[type_], name)


def check_options(type_: str, name: str, opts: pulumi.ResourceOptions | None) -> None:
    if opts is None:
        return
    for key, value in vars(opts).items():
        if _empty(value) or key in OPTIONS_UNDERSTOOD:
            continue
        raise NotImplementedByDriver(f"{type_} {name!r}: resource option {key}={value!r} is not implemented")


def _empty(value: Any) -> bool:
    if value is None or value is False or value == [] or value == {}:
        return True
    fields = getattr(value, "__dict__", None)  # e.g. an empty ResourceHookBinding
    return bool(fields is not None and not isinstance(value, pulumi.Resource) and all(map(_empty, fields.values())))


# -- small conversions -----------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(text: str | None) -> int:
    """Go's time.ParseDuration (what the provider applies to healthcheck durations)."""
    if not text:
        return 0
    parts = _DURATION.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise NotImplementedByDriver(f"duration {text!r} is not a Go duration")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


@dataclass
class Created:
    type: str
    name: str
    id: str
    retain: bool = False
    destroy_grace: int = 0
    attach: bool = False


@dataclass
class Deployment:
    """What a run created, and the stack's outputs."""

    stack: str
    created: list[Created] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)  # container name -> why it was not created
    timings: dict[str, float] = field(default_factory=dict)
    # "type::resource name" -> {"id", "inputs", "outputs"} of every custom resource: what an
    # update compares the program's new inputs with (Pulumi's state; it holds the generated
    # passwords, like Pulumi's, here in the root-only cache of a test harness).
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self, path: Path, **extra: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stack": self.stack, "created": [vars(c) for c in self.created],
                                    "omitted": self.omitted, "state": self.state, **extra}, indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> Deployment:
        data = json.loads(path.read_text())
        return cls(stack=data["stack"], created=[Created(**c) for c in data["created"]],
                   outputs=data.get("outputs") or {}, omitted=data.get("omitted") or {},
                   state=data.get("state") or {})


class DockerResources(pulumi.runtime.Mocks):
    """The resource monitor's hooks: each registration becomes the real Docker object."""

    def __init__(self, client, deployment: Deployment, options: dict, *, docker_host: str = "", build_client=None,
                 omit: Mapping[str, str],
                 build_hook: Callable[[str, dict], None] | None, log: Callable[[str], None]):
        self.client = client
        self.api = client.api
        self.docker_host = docker_host  # the daemon ``client`` talks to, as the stack must name it
        # Where images are built when the node's daemon has no network (then moved over).
        self.build_client = build_client or client
        self.deployment = deployment
        self.options = options  # (type, name) -> ResourceOptions, recorded by a stack transformation
        self.omit = dict(omit)  # llm-node.service label -> reason: not created (Traefik, Grafana, cloudflared)
        self.build_hook = build_hook
        self.log = log
        self.lock = threading.Lock()
        self.api_version = tuple(int(p) for p in self.api.version()["ApiVersion"].split("."))
        self.errors: list[Exception] = []
        self.omitted_images: tuple[str, ...] = ()  # images of omitted services: not looked for
        self.previous: Deployment | None = None  # set by update(): the deployment being updated
        self.replaced: list[str] = []  # update(): the containers replaced

    # -- the hooks ---------------------------------------------------------------------------
    def call(self, args: pulumi.runtime.MockCallArgs):
        raise NotImplementedByDriver(f"function {args.token} is not implemented by tests/deploy/driver.py")

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = unwrap(args.inputs)
        if not args.custom and args.typ != PROVIDER and not args.typ.startswith("pulumi:providers:"):
            return args.name, inputs  # a component resource: nothing to create
        try:
            check_inputs(args.typ, args.name, inputs)
            check_options(args.typ, args.name, self.options.get((args.typ, args.name)))
            handler = {PROVIDER: self._provider, NETWORK: self._network, VOLUME: self._volume,
                       REMOTE_IMAGE: self._remote_image, BUILT_IMAGE: self._built_image, PASSWORD: self._password,
                       CONTAINER: self._container}[args.typ]
            opts = self.options.get((args.typ, args.name))
            key = f"{args.typ}::{args.name}"
            if self.previous is not None and args.typ != PROVIDER:
                old = self.previous.state.get(key)
                if old is None:
                    raise NotImplementedByDriver(f"{args.typ} {args.name!r}: a resource new in this update "
                                                 "(the driver's update only keeps or replaces containers)")
                if _normal(inputs) == old["inputs"]:
                    with self.lock:
                        self.deployment.state[key] = old
                    return old["id"], old["outputs"]  # unchanged: untouched, as Pulumi leaves it
                self._replace_container(args.typ, args.name, old, inputs, opts)
            resource_id, outputs = handler(args.name, inputs, opts)
            with self.lock:
                self.deployment.state[key] = {"id": resource_id, "inputs": _normal(inputs),
                                              "outputs": _normal(outputs)}
            return resource_id, outputs
        except Exception as error:  # recorded, then re-raised into the SDK
            self.log(f"FAILED {args.typ} {args.name}: {error}")
            with self.lock:
                self.errors.append(error)
            raise

    def _record(self, created: Created) -> None:
        with self.lock:
            self.deployment.created.append(created)

    # -- update -------------------------------------------------------------------------------
    def _replace_container(self, type_: str, name: str, old: Mapping[str, Any], inputs: Mapping[str, Any],
                           opts: pulumi.ResourceOptions | None) -> None:
        """A container whose inputs changed, as pulumi-docker replaces it with the program's
        ``delete_before_replace``: the provider's delete (resourceDockerContainerDelete:
        ContainerStop with the old state's destroy_grace_seconds as timeout, i.e. the
        StopSignal, then SIGKILL once it runs out; then ContainerRemove, forced), then the
        create. Anything else an update would have to do is refused."""
        changed = sorted(k for k in set(inputs) | set(old["inputs"])
                         if _normal(inputs.get(k)) != old["inputs"].get(k))
        if type_ != CONTAINER:
            raise NotImplementedByDriver(f"{type_} {name!r}: changed inputs {changed}; the driver's update replaces "
                                         "containers only")
        replace_on = set(opts.replace_on_changes or []) if opts else set()
        if all(k in NOT_FORCE_NEW and k not in replace_on for k in changed):
            raise NotImplementedByDriver(f"{type_} {name!r}: {changed} change without a replacement (an update in "
                                         "place by the provider), not implemented by the driver's update")
        if not (opts and opts.delete_before_replace):
            raise NotImplementedByDriver(f"{type_} {name!r}: a replacement without delete_before_replace "
                                         "(create before delete) is not implemented")
        with self.lock:
            item = next((c for c in self.deployment.created if c.type == CONTAINER and c.id == old["id"]), None)
        if item is None:
            raise NotImplementedByDriver(f"{type_} {name!r}: replacing an omitted container is not implemented")
        grace = _int(old["inputs"].get("destroyGraceSeconds"))
        self.log(f"replacing container {item.name} (changed: {', '.join(changed)}): stopping it "
                 f"(destroy_grace_seconds {grace})")
        started = time.monotonic()
        if not item.attach:
            self.api.stop(old["id"], timeout=grace)
        self.api.remove_container(old["id"], force=True, v=True)
        took = time.monotonic() - started
        self.log(f"container {item.name} stopped and removed ({took:.1f}s)")
        with self.lock:
            self.deployment.timings[f"stop {item.name}"] = took
            self.deployment.created.remove(item)
            self.replaced.append(item.name)

    # -- simple resources --------------------------------------------------------------------
    def _provider(self, name, inputs, opts):
        if inputs.get("host") != self.docker_host:
            raise DeployError(f"provider {name}: the stack names Docker host {inputs.get('host')!r}, "
                              f"the driver applies to {self.docker_host!r} (set the stack's docker_host)")
        return f"{name}-provider", inputs

    def _password(self, name, inputs, opts):
        alphabet = ""
        if inputs.get("upper", True):
            alphabet += string.ascii_uppercase
        if inputs.get("lower", True):
            alphabet += string.ascii_lowercase
        if inputs.get("numeric", True):
            alphabet += string.digits
        if inputs.get("special", True):
            alphabet += "!@#$%&*()-_=+[]{}<>:?"
        result = "".join(secrets_module.choice(alphabet) for _ in range(_int(inputs["length"])))
        return f"{name}-id", {**inputs, "result": result}

    def _network(self, name, inputs, opts):
        import docker.types

        labels = {item["label"]: item["value"] for item in inputs.get("labels") or []}
        ipam = None
        if inputs.get("ipamConfigs"):  # the provider's ipam_config -> IPAM.Config (driver "default")
            ipam = docker.types.IPAMConfig(pool_configs=[
                docker.types.IPAMPool(subnet=c.get("subnet"), gateway=c.get("gateway"), iprange=c.get("ipRange"))
                for c in inputs["ipamConfigs"]])
        network = self.api.create_network(inputs["name"], driver=inputs.get("driver") or "bridge",
                                          internal=bool(inputs.get("internal")), labels=labels, ipam=ipam,
                                          check_duplicate=True)
        self._record(Created(NETWORK, inputs["name"], network["Id"], retain=_retain(opts)))
        self.log(f"network {inputs['name']}{' (internal)' if inputs.get('internal') else ''}")
        return network["Id"], inputs

    def _volume(self, name, inputs, opts):
        labels = {item["label"]: item["value"] for item in inputs.get("labels") or []}
        volume = self.api.create_volume(inputs["name"], driver=inputs.get("driver") or "local", labels=labels)
        self._record(Created(VOLUME, inputs["name"], volume["Name"], retain=_retain(opts)))
        return volume["Name"], inputs

    def _remote_image(self, name, inputs, opts):
        reference = inputs["name"]
        if self._omitted_image(reference):
            return f"{name}-omitted", {**inputs, "imageId": "", "repoDigest": ""}
        try:
            image = self.api.inspect_image(reference)
        except Exception as error:
            raise DeployError(f"image {reference} is not on the engine and no registry is reachable: "
                              f"select a stand-in in the stack's images (tests/deploy/standins.py): {error}") from error
        return image["Id"], {**inputs, "imageId": image["Id"], "repoDigest": (image.get("RepoDigests") or [""])[0]}

    def _omitted_image(self, reference: str) -> bool:
        return reference in self.omitted_images

    def _built_image(self, name, inputs, opts):
        build = inputs.get("build") or {}
        context = (PROGRAM_DIR / (build.get("context") or ".")).resolve()
        default_dockerfile = Path(build.get("context") or ".") / "Dockerfile"
        dockerfile = (PROGRAM_DIR / (build.get("dockerfile") or default_dockerfile)).resolve()
        if not context.is_dir():
            raise DeployError(f"{name}: build context {build.get('context')!r} does not exist relative to the "
                              f"program's working directory {PROGRAM_DIR} (resolved: {context})")
        if not dockerfile.is_file():
            raise DeployError(f"{name}: Dockerfile {build.get('dockerfile')!r} not found (resolved: {dockerfile})")
        if context not in dockerfile.parents:
            raise NotImplementedByDriver(f"{name}: a Dockerfile outside its build context is not implemented")
        if self.build_hook is not None:
            self.build_hook(name, inputs)
        started = time.monotonic()
        image_name = inputs["imageName"]
        args = {k: str(v) for k, v in (build.get("args") or {}).items()}
        _, _log = _build(self.build_client, context, str(dockerfile.relative_to(context)), image_name, args,
                        build.get("platform"))
        took = time.monotonic() - started
        with self.lock:
            self.deployment.timings[f"build {image_name}"] = took
        self.log(f"built {image_name} in {took:.0f}s")
        if self.build_client is not self.client:
            from .daemon import transfer_image

            started = time.monotonic()
            if transfer_image(self.build_client, self.client, image_name):
                took = time.monotonic() - started
                with self.lock:
                    self.deployment.timings[f"load {image_name}"] = took
                self.log(f"moved {image_name} to the node's daemon in {took:.0f}s")
        image = self.api.inspect_image(image_name)
        return image["Id"], {**inputs, "baseImageName": image_name, "repoDigest": "", "registryServer": "",
                             "context": build.get("context"), "dockerfile": build.get("dockerfile"),
                             "platform": build.get("platform")}

    # -- containers --------------------------------------------------------------------------
    def _container(self, name, inputs, opts):
        labels = {item["label"]: item["value"] for item in inputs.get("labels") or []}
        service = labels.get("llm-node.service", "")
        if service in self.omit:
            with self.lock:
                self.deployment.omitted[inputs["name"]] = self.omit[service]
            self.log(f"NOT deployed: {inputs['name']} ({self.omit[service]})")
            return f"{name}-omitted", {**inputs, "exitCode": None}
        if inputs.get("deviceRequests"):
            raise DeployError(f"{inputs['name']}: declares GPU device requests; the local engine has no GPU runtime "
                              "(deploy a cpu stack)")
        started = time.monotonic()
        created = self._create_container(inputs, labels, opts)
        took = time.monotonic() - started
        with self.lock:
            self.deployment.timings[f"container {inputs['name']}"] = took
        exit_code = created.get("exit_code")
        self.log(f"container {inputs['name']} " + (f"exited {exit_code}" if inputs.get("attach") else
                                                    "healthy" if inputs.get("wait") else "started") + f" ({took:.0f}s)")
        state = {**inputs}
        if exit_code is not None:
            state["exitCode"] = exit_code
        return created["id"], state

    def _create_container(self, inputs, labels, opts) -> dict:
        api = self.api
        name = inputs["name"]
        env = inputs.get("envs") or []
        config: dict[str, Any] = {"Image": inputs["image"], "Env": list(env), "Labels": labels}
        if inputs.get("command") is not None:
            config["Cmd"] = list(inputs["command"])
        if inputs.get("entrypoints") is not None:
            config["Entrypoint"] = list(inputs["entrypoints"])
        if inputs.get("user"):
            config["User"] = inputs["user"]
        if inputs.get("workingDir"):
            config["WorkingDir"] = inputs["workingDir"]
        if inputs.get("stopSignal"):
            config["StopSignal"] = inputs["stopSignal"]
        if inputs.get("stopTimeout") is not None:
            config["StopTimeout"] = _int(inputs["stopTimeout"])
        health = inputs.get("healthcheck")
        if health:
            config["Healthcheck"] = {"Test": list(health.get("tests") or []),
                                     "Interval": duration_ns(health.get("interval")),
                                     "Timeout": duration_ns(health.get("timeout")),
                                     "StartPeriod": duration_ns(health.get("startPeriod")),
                                     "Retries": _int(health.get("retries"))}
            start_interval = duration_ns(health.get("startInterval"))
            if start_interval:
                if self.api_version >= (1, 44):
                    config["Healthcheck"]["StartInterval"] = start_interval
                else:
                    # What the provider's Docker client (moby client ContainerCreate) does.
                    raise DeployError(f"{name}: \"specify health-check start interval\" requires API version 1.44, "
                                      f"but the Docker daemon API version is {'.'.join(map(str, self.api_version))}")
        host: dict[str, Any] = {
            "RestartPolicy": {"Name": inputs.get("restart") or "no"},
            "LogConfig": {"Type": inputs.get("logDriver") or "json-file", "Config": dict(inputs.get("logOpts") or {})},
        }
        binds = []
        for volume in inputs.get("volumes") or []:
            source = volume.get("hostPath") or volume.get("volumeName")
            if not source or not volume.get("containerPath"):
                raise NotImplementedByDriver(f"{name}: a volume entry without a source and a container path")
            binds.append(f"{source}:{volume['containerPath']}:{'ro' if volume.get('readOnly') else 'rw'}")
        if binds:
            host["Binds"] = binds
        if inputs.get("shmSize"):
            host["ShmSize"] = _int(inputs["shmSize"]) * 1024 * 1024  # the provider's unit is MB
        caps = inputs.get("capabilities") or {}
        if caps.get("adds"):
            host["CapAdd"] = list(caps["adds"])
        if caps.get("drops"):
            host["CapDrop"] = list(caps["drops"])
        if inputs.get("securityOpts"):
            host["SecurityOpt"] = list(inputs["securityOpts"])
        if inputs.get("tmpfs"):
            host["Tmpfs"] = dict(inputs["tmpfs"])
        if inputs.get("ports"):
            exposed, bindings = {}, {}
            for port in inputs["ports"]:
                key = f"{_int(port['internal'])}/{port.get('protocol') or 'tcp'}"
                exposed[key] = {}
                bindings.setdefault(key, []).append({"HostIp": port.get("ip") or "0.0.0.0",
                                                     "HostPort": str(_int(port.get("external")) or "")})
            config["ExposedPorts"], host["PortBindings"] = exposed, bindings
        networks = inputs.get("networksAdvanced") or []
        if networks:
            first = networks[0]
            host["NetworkMode"] = first["name"]
            networking = {"EndpointsConfig": {first["name"]: _endpoint(first)}}
        elif inputs.get("networkMode"):
            host["NetworkMode"] = inputs["networkMode"]
            networking = None
        else:
            raise NotImplementedByDriver(f"{name}: no networks_advanced and no network_mode (the private daemon "
                                         "has no default bridge)")
        config["HostConfig"] = host
        if networking:
            config["NetworkingConfig"] = networking
        response = api._post_json(api._url("/containers/create"), data=config, params={"name": name})
        container_id = api._result(response, True)["Id"]
        destroy_grace = _int(inputs.get("destroyGraceSeconds"))
        self._record(Created(CONTAINER, name, container_id, destroy_grace=destroy_grace,
                             attach=bool(inputs.get("attach"))))
        for extra in networks[1:]:
            api.connect_container_to_network(container_id, extra["name"], aliases=list(extra.get("aliases") or []),
                                             ipv4_address=extra.get("ipv4Address") or None)
        for upload in inputs.get("uploads") or []:
            api.put_archive(container_id, "/", _upload_tar(upload))
        deadline = _create_deadline(opts)
        api.start(container_id)
        result: dict[str, Any] = {"id": container_id}
        if inputs.get("wait"):
            self._wait_healthy(container_id, name, _int(inputs.get("waitTimeout") or 60), deadline)
        if inputs.get("attach"):
            timeout = None if deadline is None else max(1, deadline - time.monotonic())
            result["exit_code"] = api.wait(container_id, timeout=timeout)["StatusCode"]
        return result

    def _wait_healthy(self, container_id: str, name: str, timeout: int, deadline: float | None) -> None:
        end = time.monotonic() + timeout
        if deadline is not None:
            end = min(end, deadline)
        while True:
            state = self.api.inspect_container(container_id)["State"]
            health = state.get("Health")
            if health is None:
                raise DeployError(f"{name}: you have supplied a 'wait' argument, but the container does not have a "
                                  "healthcheck defined")
            if health.get("Status") == "healthy":
                return
            if not state.get("Running") and not state.get("Restarting"):
                raise DeployError(f"{name} exited ({state.get('ExitCode')}) while waiting for it to be healthy:\n"
                                  + _logs_tail(self.api, container_id))
            if time.monotonic() > end:
                last = (health.get("Log") or [{}])[-1].get("Output", "")
                raise DeployError(f"{name}: container failed to be in healthy state in {timeout}s "
                                  f"(health {health.get('Status')}; last check: {last.strip()[:300]})\n"
                                  + _logs_tail(self.api, container_id))
            time.sleep(1)


def _endpoint(network: Mapping[str, Any]) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"Aliases": list(network.get("aliases") or [])}
    if network.get("ipv4Address"):
        endpoint["IPAMConfig"] = {"IPv4Address": network["ipv4Address"]}
    return endpoint


def _retain(opts: pulumi.ResourceOptions | None) -> bool:
    return bool(opts and opts.retain_on_delete)


def _create_deadline(opts: pulumi.ResourceOptions | None) -> float | None:
    timeouts = opts.custom_timeouts if opts else None
    if timeouts is None or not timeouts.create:
        return None
    return time.monotonic() + duration_ns(timeouts.create) / 1e9


def _upload_tar(upload: Mapping[str, Any]) -> bytes:
    """One file per archive, named by its absolute path, extracted at "/" (as the provider does)."""
    import base64

    if upload.get("content") is not None:
        data = str(upload["content"]).encode()
    elif upload.get("contentBase64") is not None:
        data = base64.b64decode(upload["contentBase64"])
    else:
        raise NotImplementedByDriver(f"upload {upload.get('file')}: only content and content_base64 are implemented")
    if upload.get("permissions"):
        mode = int(upload["permissions"], 8)
    else:
        mode = 0o744 if upload.get("executable") else 0o644
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(upload["file"])
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _logs_tail(api, container_id: str, lines: int = 40) -> str:
    try:
        return api.logs(container_id, tail=lines).decode(errors="replace")
    except Exception as error:  # noqa: BLE001
        return f"(no logs: {error})"


def _build(client, context: Path, dockerfile: str, tag: str, args: Mapping[str, str], platform: str | None,
           labels: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """The legacy builder with host networking (no BuildKit here, and no bridge to build on)."""
    log: list[str] = []
    image_id = None
    for chunk in client.api.build(path=str(context), dockerfile=dockerfile, tag=tag, buildargs=dict(args),
                                  platform=platform, network_mode="host", rm=True, forcerm=True, decode=True,
                                  labels=dict(labels or {})):
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk:
            raise DeployError(f"building {tag} from {context} failed: {chunk['error']}\n" + "".join(log[-40:]))
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    if image_id is None:
        raise DeployError(f"building {tag} gave no image:\n" + "".join(log[-40:]))
    return image_id, log


def deploy(client, stack: str, values: Mapping[str, Any], *, docker_host: str, build_client=None,
           omit: Mapping[str, str] | None = None, omitted_images: tuple[str, ...] = (),
           state_file: Path | None = None, build_hook=None, log: Callable[[str], None] = print) -> Deployment:
    """Run the program for ``stack`` with the stack values ``values`` and apply it to ``client``'s engine."""
    return _run(client, Deployment(stack=stack), values, docker_host=docker_host, build_client=build_client,
                omit=omit or {}, omitted_images=omitted_images, state_file=state_file, build_hook=build_hook, log=log)


def _run(client, deployment: Deployment, values: Mapping[str, Any], *, docker_host: str, build_client,
         omit: Mapping[str, str], omitted_images: tuple[str, ...], state_file: Path | None, build_hook,
         log: Callable[[str], None], previous: Deployment | None = None) -> Deployment:
    stack = deployment.stack
    config, secret_keys = engine_config(values, {})
    options: dict[tuple[str, str], pulumi.ResourceOptions] = {}
    hooks = DockerResources(client, deployment, options, docker_host=docker_host, build_client=build_client,
                            omit=omit, build_hook=build_hook, log=log)
    hooks.omitted_images = tuple(omitted_images)
    hooks.previous = previous

    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(hooks, project="llm-node", stack=stack, preview=False)
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()

    def record(args: pulumi.ResourceTransformationArgs):
        options[(args.type_, args.name)] = args.opts
        return None

    pulumi.runtime.register_stack_transformation(record)
    cwd = os.getcwd()
    started = time.monotonic()
    try:
        os.chdir(PROGRAM_DIR)  # Pulumi runs the program in its main directory
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(PROGRAM), run_name="__main__")))
    except Exception as error:
        if hooks.errors:
            raise DeployError("deployment failed: " + "; ".join(str(e) for e in hooks.errors)) from error
        raise
    finally:
        os.chdir(cwd)
        deployment.timings["deploy total"] = time.monotonic() - started
        if state_file is not None:
            deployment.save(state_file)
    if hooks.errors:
        raise DeployError("deployment failed: " + "; ".join(str(e) for e in hooks.errors))
    if previous is not None:
        gone = sorted(set(previous.state) - set(deployment.state))
        if gone:  # Pulumi would delete them
            raise NotImplementedByDriver(f"the program no longer declares {gone}: deleting resources in an update "
                                         "is not implemented by tests/deploy/driver.py")
    root = runtime_settings.get_root_resource()
    outputs = dict(getattr(root, "outputs", {}) or {})
    deployment.outputs = {k: _resolved(v) for k, v in outputs.items()}
    return deployment


def update(client, previous: Deployment, values: Mapping[str, Any], *, docker_host: str,
           omit: Mapping[str, str] | None = None, omitted_images: tuple[str, ...] = (),
           state_file: Path | None = None, log: Callable[[str], None] = print) -> Deployment:
    """Run the program again, with the stack values ``values``, against ``previous`` (what
    ``deploy``/``update`` returned or saved), as `pulumi up` on an existing stack does: a
    resource whose inputs are unchanged keeps its id and outputs and is not touched (the
    passwords keep their values); a container whose inputs changed is replaced
    (``_replace_container``). Refused (``NotImplementedByDriver``): a changed resource of any
    other type (network, volume, image, password), an update in place, a resource new in this
    update, one the program no longer declares. Nothing is built: ``build_client`` is unused.
    Returns the updated deployment (a replacement's stop is timed as "stop <name>")."""
    deployment = Deployment(stack=previous.stack, created=list(previous.created), omitted=dict(previous.omitted))
    return _run(client, deployment, values, docker_host=docker_host, build_client=None, omit=omit or {},
                omitted_images=omitted_images, state_file=state_file, build_hook=None, log=log, previous=previous)


def _resolved(value: Any) -> Any:
    if isinstance(value, pulumi.Output):
        return _resolved(_sync_await(value.future()))
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v) for v in value]
    return value


def destroy(client, deployment: Deployment, log: Callable[[str], None] = print) -> None:
    """Remove what ``deployment`` created, newest first; keep retained resources and images."""
    api = client.api
    for item in reversed(deployment.created):
        if item.retain:
            log(f"kept {item.type.rsplit(':', 1)[-1]} {item.name} (retain_on_delete)")
            continue
        log(f"removing {item.type.rsplit(':', 1)[-1]} {item.name}")
        try:
            if item.type == CONTAINER:
                if not item.attach:  # the provider stops with destroy_grace_seconds (0: killed at once)
                    api.stop(item.id, timeout=item.destroy_grace)
                api.remove_container(item.id, force=True, v=True)
            elif item.type == NETWORK:
                api.remove_network(item.id)
            elif item.type == VOLUME:
                api.remove_volume(item.id)
        except Exception as error:
            if "No such" not in str(error) and "not found" not in str(error):
                raise
