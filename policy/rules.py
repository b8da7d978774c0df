"""The node's policies as plain functions over resource properties (testable without the CLI).

Each resource rule takes ``(resource_type, props)`` — props as CrossGuard passes them: the
engine's camelCase input names, secrets already decrypted — and returns violation
messages (empty: compliant). The stack rule takes every resource at once. policy/pack.py
wraps them into CrossGuard policies.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import yaml

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"

LONG_RUNNING_RESTARTS = ("always", "unless-stopped", "on-failure")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
TRAEFIK_STATIC_FILES = ("/etc/traefik/traefik.yml", "/etc/traefik/traefik.yaml", "/etc/traefik/traefik.toml")

# Env vars allowed to hold a secret. None: every secret reaches its container as a file
# uploaded from a Pulumi secret, because `docker inspect` (anyone with the Docker API) prints
# env. The pack's `allowedSecretEnv` setting can name exceptions for a stack that needs one.
DEFAULT_ALLOWED_SECRET_ENV: tuple[str, ...] = ()
# Variables that point at secrets rather than hold them (GF_..._PASSWORD__FILE, GATEWAY_SECRETS_DIR).
_POINTER_SUFFIXES = ("_FILE", "_DIR")


class Resource(NamedTuple):
    type: str
    name: str
    props: Mapping[str, Any]
    create_timeout_seconds: float = 0.0  # the resource's custom_timeouts create (0: the provider's own)


# -- pinned images ----------------------------------------------------------------------------------
# The same rule as stacks/images.py:is_pinned (the pack runs apart from the program, so it keeps
# its own copy; tests/policy checks both agree): a digest, or a version tag (major.minor at
# least), or a source-hash tag of an image built from this repository.
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)*([-+._][0-9A-Za-z.-]+)?$")
_SOURCE_TAG = re.compile(r"^src-[0-9a-f]{12}$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_is_pinned(reference: str) -> bool:
    if _DIGEST.search(reference) or _IMAGE_ID.match(reference):
        return True
    last = reference.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    return tag is not None and bool(_VERSION_TAG.match(tag) or _SOURCE_TAG.match(tag))


def pinned_images(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    references: list[tuple[str, str]] = []
    if resource_type == CONTAINER and props.get("image"):
        references.append(("image", props["image"]))
    elif resource_type == REMOTE_IMAGE and props.get("name"):
        references.append(("name", props["name"]))
    elif resource_type == BUILT_IMAGE:
        if props.get("imageName"):
            references.append(("imageName", props["imageName"]))
        for arg, value in ((props.get("build") or {}).get("args") or {}).items():
            if arg.upper().endswith("_IMAGE"):  # base images passed as build arguments
                references.append((f"build.args.{arg}", value))
    return [f"{field} {ref!r} is not pinned: use a version tag (e.g. 1.2.3) or a digest, never latest"
            for field, ref in references if not image_is_pinned(str(ref))]


# -- healthcheck and restart --------------------------------------------------------------------------


def is_job(props: Mapping[str, Any]) -> bool:
    """A one-shot container: `pulumi up` waits for it to exit and it is not kept running."""
    return props.get("attach") is True and props.get("mustRun") is False


def healthcheck_and_restart(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type != CONTAINER:
        return []
    restart = props.get("restart") or "no"  # the provider's default
    if is_job(props):
        return [] if restart == "no" else [f"one-shot job has restart {restart!r}: it would run again and again"]
    problems = []
    if restart not in LONG_RUNNING_RESTARTS:
        problems.append(f"restart policy {restart!r}: use unless-stopped (or always / on-failure)")
    tests = (props.get("healthcheck") or {}).get("tests") or []
    if not tests or tests[0] == "NONE":
        problems.append("no healthcheck: declare one so Docker, `wait` and Traefik know when it is ready")
    return problems


# -- graceful stop and create timeouts ------------------------------------------------------------------
# What the Docker provider does (kreuzwerker/terraform-provider-docker internal/provider/
# resource_docker_container_funcs.go, wrapped by pulumi-docker v5): delete stops a container
# with destroy_grace_seconds as the timeout, 0 when unset, i.e. SIGKILL on every replace and
# destroy; create (with wait and attach inside it) runs under a 20-minute default timeout
# (resource_docker_container.go: dockerContainerCreateDefaultTimeout).
PROVIDER_CREATE_TIMEOUT_SECONDS = 20 * 60
CREATE_TIMEOUT_MARGIN_SECONDS = 60  # at least this beyond a container's wait_timeout


def graceful_stop(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Every long-running container gets at least its own stop time on replace and destroy."""
    if resource_type != CONTAINER or is_job(props):
        return []
    grace = props.get("destroyGraceSeconds") or 0
    own = props.get("stopTimeout")
    if not grace:
        return ["no destroy_grace_seconds: every replace and destroy stops it with a 0 s timeout (SIGKILL)"]
    if own is None:
        return ["no stop_timeout: say how long the service needs to stop (docker stop uses it too)"]
    if grace < own:
        return [f"destroy_grace_seconds {grace} is shorter than its own stop time ({own} s)"]
    return []


def create_timeout_covers_waits(resource_type: str, props: Mapping[str, Any],
                                create_timeout_seconds: float = 0.0) -> list[str]:
    """A job declares how long it may run; a `wait` container's create outlasts its wait_timeout."""
    if resource_type != CONTAINER:
        return []
    if is_job(props) and not create_timeout_seconds:
        return ["one-shot job without custom_timeouts create: it runs inside the provider's 20-minute create "
                "timeout, and a longer run leaves a half-created resource"]
    effective = create_timeout_seconds or PROVIDER_CREATE_TIMEOUT_SECONDS
    if props.get("wait") and effective < (props.get("waitTimeout") or 60) + CREATE_TIMEOUT_MARGIN_SECONDS:
        return [f"create timeout {effective:.0f} s does not cover wait_timeout {props.get('waitTimeout')} s: "
                "set custom_timeouts create above it"]
    return []


# -- secrets in env and arguments ------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL)", re.I)
_SECRET_VALUE = [
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@"), "a URL with a password"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "an API key"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"\beyJ[A-Za-z0-9_=-]{20,}"), "a token (base64 JSON)"),
]
_SECRET_FLAG = re.compile(r"^--?[a-z0-9-]*(password|passwd|secret|token|requirepass|api-key)$", re.I)


def _looks_secret(value: str) -> str | None:
    for pattern, what in _SECRET_VALUE:
        if pattern.search(value):
            return what
    return None


def no_plain_secrets(resource_type: str, props: Mapping[str, Any],
                     allowed_env: Iterable[str] = DEFAULT_ALLOWED_SECRET_ENV) -> list[str]:
    """Secrets belong in files uploaded from Pulumi secrets (or <NAME>_FILE pointers), not in env or argv.

    Env and arguments are stored in the state and shown by `docker inspect`.
    """
    if resource_type != CONTAINER:
        return []
    allowed = set(allowed_env)
    problems = []
    for entry in props.get("envs") or []:
        name, _, value = str(entry).partition("=")
        if name in allowed or not value:
            continue
        if name.upper().endswith(_POINTER_SUFFIXES) and value.startswith("/"):  # a path to secret files
            continue
        if _SECRET_NAME.search(name):
            problems.append(f"env {name} looks like a secret: upload it as a file from a Pulumi secret "
                            f"and point {name}_FILE at it")
        elif (what := _looks_secret(value)) is not None:
            problems.append(f"env {name} holds {what}: keep it in a file uploaded from a Pulumi secret")
    argv = [str(a) for a in (props.get("entrypoints") or []) + (props.get("command") or [])]
    for index, arg in enumerate(argv):
        flag, eq, inline = arg.partition("=")
        if _SECRET_FLAG.match(flag) and (inline or (not eq and index + 1 < len(argv))):
            problems.append(f"argument {flag} passes a secret on the command line (visible in ps and docker inspect)")
        elif (what := _looks_secret(arg)) is not None:
            problems.append(f"an argument holds {what}")
    return problems


# -- Traefik: exposedByDefault=false ------------------------------------------------------------------------


def _is_traefik(props: Mapping[str, Any]) -> bool:
    labels = {item.get("label"): item.get("value") for item in props.get("labels") or []}
    image = str(props.get("image") or "").split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    files = {u.get("file") for u in props.get("uploads") or []}
    return labels.get("llm-node.service") == "traefik" or image == "traefik" or bool(files & set(TRAEFIK_STATIC_FILES))


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return {"true": True, "false": False, "": True}.get(text)  # a bare flag means true


def traefik_exposed_by_default_off(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Traefik's Docker provider must only route containers that opt in (traefik.enable=true)."""
    if resource_type != CONTAINER or not _is_traefik(props):
        return []
    configured, values = False, []  # does any source configure the Docker provider / set the option
    for upload in props.get("uploads") or []:
        if upload.get("file") not in TRAEFIK_STATIC_FILES:
            continue
        text = upload.get("content") or ""
        try:
            static = tomllib.loads(text) if upload["file"].endswith(".toml") else yaml.safe_load(text)
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
            return [f"{upload['file']} does not parse: {error}"]
        providers = {k.lower(): v for k, v in ((static or {}).get("providers") or {}).items()}
        if "docker" in providers:
            configured = True
            docker = {k.lower(): v for k, v in (providers["docker"] or {}).items()}
            if "exposedbydefault" in docker:
                values.append(_parse_bool(docker["exposedbydefault"]))
    for arg in [str(a) for a in (props.get("command") or []) + (props.get("entrypoints") or [])]:
        flag, eq, value = arg.partition("=")
        if flag.lower().startswith("--providers.docker"):
            configured = True
        if flag.lower() == "--providers.docker.exposedbydefault":
            values.append(_parse_bool(value if eq else "true"))
    for entry in props.get("envs") or []:
        name, _, value = str(entry).partition("=")
        if name.upper().startswith("TRAEFIK_PROVIDERS_DOCKER"):
            configured = True
        if name.upper() == "TRAEFIK_PROVIDERS_DOCKER_EXPOSEDBYDEFAULT":
            values.append(_parse_bool(value))
    if any(v is not False for v in values):
        return ["Traefik's Docker provider sets exposedByDefault to true: every container would be routed"]
    if configured and not values:
        return ["Traefik's Docker provider does not set exposedByDefault: false (the default exposes every container)"]
    return []


# -- Docker socket --------------------------------------------------------------------------------------------


def _holds_socket(host_path: Any) -> bool:
    """The socket itself, or a directory that contains it (/var/run, /run, /)."""
    if not host_path:  # a named volume
        return False
    path = str(host_path).rstrip("/") or "/"
    return path == "/" or any(socket == path or socket.startswith(path + "/") for socket in DOCKER_SOCKETS)


def no_docker_socket(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """No container mounts the Docker socket, read-only or not.

    `:ro` stops writes to the socket file, not requests over it: the socket is the whole Docker
    API (read every container's env, start a privileged container with the host's / mounted),
    i.e. root on the host for whoever controls the process. The node needs it nowhere; Traefik
    reads its routes from uploaded files (stacks/traefik.py).
    """
    if resource_type != CONTAINER:
        return []
    problems = []
    for volume in props.get("volumes") or []:
        if _holds_socket(volume.get("hostPath")):
            problems.append(f"mounts {volume['hostPath']} (the Docker socket): that is the whole Docker API, "
                            f"read-only or not")
    for mount in props.get("mounts") or []:
        if mount.get("type") == "bind" and _holds_socket(mount.get("source")):
            problems.append(f"binds {mount['source']} (the Docker socket): that is the whole Docker API, "
                            f"read-only or not")
    for entry in props.get("envs") or []:
        name, _, value = str(entry).partition("=")
        if name == "DOCKER_HOST" and value:
            problems.append(f"env DOCKER_HOST={value}: the container is pointed at a Docker API")
    return problems


# -- stack: internal-only services publish no host ports -------------------------------------------------------


def internal_services_publish_no_host_ports(resources: Sequence[Resource]) -> list[tuple[str, str]]:
    """(resource name, message) for each container reachable only internally that still publishes ports.

    A container is internal-only when every network it joins is declared with internal=true
    (or it has no network at all). Host networking publishes everything and is refused too.
    """
    internal = {str(r.props.get("name")): bool(r.props.get("internal")) for r in resources if r.type == NETWORK}
    problems = []
    for resource in resources:
        if resource.type != CONTAINER:
            continue
        props = resource.props
        if props.get("networkMode") == "host":
            problems.append((resource.name, "uses the host's network: every port it opens is on the host"))
            continue
        ports = [p for p in props.get("ports") or [] if p.get("external") or p.get("internal")]
        if not ports and not props.get("publishAllPorts"):
            continue
        joined = [str(n.get("name")) for n in props.get("networksAdvanced") or []]
        internal_only = props.get("networkMode") == "none" or (joined and all(internal.get(n) for n in joined))
        if internal_only:
            published = ", ".join(f"{p.get('ip') or '0.0.0.0'}:{p.get('external') or '(random)'}->{p.get('internal')}"
                                  for p in ports) or "all exposed ports"
            problems.append((resource.name, f"joins only internal networks ({', '.join(joined) or 'none'}) "
                                            f"but publishes host ports {published}"))
    return problems


# -- stack: every GPU serves one engine ------------------------------------------------------------------


def gpus_exclusive(resources: Sequence[Resource]) -> list[tuple[str, str]]:
    """(resource name, message) for each long-running container asking for a GPU another one holds.

    Two engines on one GPU each reserve their gpu_memory_utilization share of it and then fail to
    load, or run out of KV cache under load. One-shot jobs are left out: the quantize job runs on
    its group's GPU before that group's engines start (they wait for it). A request by count
    (``--gpus all``) names no GPU, so it is refused: it would take every GPU, whoever holds them.
    """
    owner: dict[str, str] = {}
    problems = []
    for resource in resources:
        if resource.type != CONTAINER or is_job(resource.props):
            continue
        for request in resource.props.get("deviceRequests") or []:
            ids = [str(i).strip() for i in request.get("deviceIds") or []]
            if not ids:
                problems.append((resource.name, f"asks for GPUs by count ({request.get('count', 'all')}), not by "
                                                "id: name them (device_ids) so each GPU serves one engine"))
            for gpu in ids:
                if gpu in owner:
                    problems.append((resource.name, f"asks for GPU {gpu}, which {owner[gpu]} already holds: each "
                                                    "GPU serves one engine (engines[].gpu_ids)"))
                else:
                    owner[gpu] = resource.name
    return problems
