"""Bring the test deployment up on the private daemon, and take it down.

    .venv/bin/python -m tests.deploy up     # daemon, images, deployment; prints the phases' durations
    .venv/bin/python -m tests.deploy down   # destroy (volumes kept), stop the daemon

The fixture of tests/infra (``deployed_node`` without ``--hosts``) calls the same functions;
``reapply`` runs the program again with changed stack values on a running deployment
(driver.update; tests/deploy/test_update.py).
A failed deployment is removed again (``LLM_NODE_KEEP_FAILED_DEPLOYMENT=1`` keeps it, and the
daemon running, for a look with ``docker -H unix:///run/llm-node-docker/docker.sock``). What a
deployment created is saved in the cache (``deploy/state-<stack>.json``), so a session that was
killed half-way is cleaned up by the next one before it deploys.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stacks.config import parse_settings

from . import driver
from .daemon import PrivateDaemon, transfer_image
from .forward import NetnsForwarder
from .images import DEPLOY_CACHE, Builder
from .stack import OMITTED, STANDIN_FOR, omitted_images, stack_values

STATE_FILE = DEPLOY_CACHE / "state-local.json"


def say(message: str) -> None:
    print(f"[deploy] {message}", file=sys.stderr, flush=True)


@dataclass
class LocalDeployment:
    daemon: PrivateDaemon  # the node's Docker host (in its own network namespace)
    client: Any
    values: dict
    deployment: driver.Deployment
    timings: dict[str, float] = field(default_factory=dict)
    forwarders: list[NetnsForwarder] = field(default_factory=list)

    def reach(self, host: str, port: int) -> str:
        """A loopback URL on this machine that leads to ``host:port`` in the node's namespace."""
        forwarder = NetnsForwarder(self.daemon.netns_path, host, port) if self.daemon.netns else None
        if forwarder is None:
            return f"http://{host}:{port}"
        self.forwarders.append(forwarder)
        return forwarder.url

    def close_forwarders(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders.clear()

    @property
    def settings(self):
        return parse_settings(self.values, driver_stack())

    def summary(self) -> str:
        lines = [f"local deployment of stack {driver_stack()!r} on {self.daemon.url}"]
        lines += [f"  NOT deployed: {name}: {why}" for name, why in sorted(self.deployment.omitted.items())]
        lines += [f"  {what}: {seconds:.1f}s" for what, seconds in self.timings.items()]
        return "\n".join(lines)


def driver_stack() -> str:
    from .stack import BASE_STACK

    return BASE_STACK


OURS = ("llm-node/", "llm-node-standin/", "llm-node-test/")


def build_images(client, log: Callable[[str], None] = say) -> tuple[dict[str, str], dict[str, float], set[str]]:
    """The base and every stand-in; also every tag of this run's inputs (to keep in the cache)."""
    timings: dict[str, float] = {}
    builder = Builder(client, log=log, timings=timings)
    standins = {name: builder.standin(name) for name in sorted(set(STANDIN_FOR.values()))}
    return standins, timings, builder.current_tags()


def _repository(tag: str) -> str:
    return tag.rsplit(":", 1)[0]


def prune_images(client, keep: set[str], log: Callable[[str], None] = say) -> None:
    """Remove this harness's outdated images (the cache holds one version of each): those of a
    repository ``keep`` names (llm-node/gateway, llm-node-standin/redis, ...) under a tag
    ``keep`` does not name. Repositories this run did not build are left alone: another test's
    images (the quantize image of test_quantize_image.py, its python-torch base) are pruned by
    that test. Their tags first (an image with child images cannot be deleted, but can be
    untagged), then what is left dangling. Never fails the deployment: a warning at worst."""
    repositories = {_repository(tag) for tag in keep}
    try:
        untagged = 0
        for image in client.images.list():
            tags = set(image.tags)
            if any(tag.startswith(OURS) and _repository(tag) in repositories for tag in tags) and not tags & keep:
                for tag in tags:
                    client.images.remove(tag)
                untagged += 1
        reclaimed = 0
        for _ in range(5):  # a dangling parent becomes removable once its dangling child is gone
            freed = client.images.prune(filters={"dangling": True}).get("SpaceReclaimed") or 0
            reclaimed += freed
            if not freed:
                break
        if untagged:
            log(f"removed {untagged} outdated image(s) from the cache ({reclaimed / 1e9:.1f} GB)")
    except Exception as error:  # noqa: BLE001
        log(f"WARNING: could not prune outdated images: {error}")


def up(node: PrivateDaemon | None = None, log: Callable[[str], None] = say) -> LocalDeployment:
    """Images on the builder daemon, moved to the node's daemon, then the deployment there
    (on ``node`` when given: a daemon this process started and keeps, e.g. to re-create)."""
    node = node or PrivateDaemon.node().start()
    client = node.client()
    if STATE_FILE.exists():  # a previous session did not get to destroy its deployment
        log(f"removing the previous deployment recorded in {STATE_FILE}")
        driver.destroy(client, driver.Deployment.load(STATE_FILE), log=log)
        STATE_FILE.unlink()
    builder = PrivateDaemon.builder().start()
    try:
        started = time.monotonic()
        standins, timings, current = build_images(builder.client(), log)
        timings["build phase (base + stand-ins)"] = time.monotonic() - started
        values = stack_values(standins, node.url)
        started = time.monotonic()
        for key in ("postgres", "redis", "prometheus"):  # the pulled images; the built ones move as they are built
            if transfer_image(builder.client(), client, values["images"][key]):
                log(f"moved {values['images'][key]} to the node's daemon")
        timings["move stand-ins to the node's daemon"] = time.monotonic() - started
        for why in OMITTED.values():
            log(why)
        started = time.monotonic()
        deployment = driver.deploy(client, driver_stack(), values, docker_host=node.url, build_client=builder.client(),
                                   omit=OMITTED, omitted_images=omitted_images(values),
                                   state_file=STATE_FILE, log=log)
    except BaseException:
        # Leave nothing running: what was created is removed (volumes kept), the daemons stopped.
        if os.environ.get("LLM_NODE_KEEP_FAILED_DEPLOYMENT") != "1":
            if STATE_FILE.exists():
                driver.destroy(client, driver.Deployment.load(STATE_FILE), log=log)
                STATE_FILE.unlink()
            node.stop()
        builder.stop()
        raise
    built = {k.split(" ", 1)[1] for k in deployment.timings if k.startswith("build ")}
    prune_images(builder.client(), current | built, log)
    prune_images(client, built | {values["images"][k] for k in ("postgres", "redis", "prometheus")}, log)
    builder.stop()  # builds are done: the node's daemon alone runs the node
    total = time.monotonic() - started
    project_builds = sum(v for k, v in deployment.timings.items() if k.startswith(("build ", "load ")))
    timings["deploy phase (apply, incl. project image builds)"] = total
    timings["  of which project image builds and moves"] = project_builds
    deployment.save(STATE_FILE, outputs=deployment.outputs, values=values)
    local = LocalDeployment(daemon=node, client=client, values=values, deployment=deployment, timings=timings)
    for line in local.summary().splitlines():
        log(line)
    return local


def reapply(local: LocalDeployment, values: dict, log: Callable[[str], None] = say) -> LocalDeployment:
    """`pulumi up` again with changed stack ``values`` on the running deployment
    (driver.update: changed containers replaced, the rest untouched). Images are not rebuilt."""
    started = time.monotonic()
    deployment = driver.update(local.client, local.deployment, values, docker_host=local.daemon.url,
                               omit=OMITTED, omitted_images=omitted_images(values), state_file=STATE_FILE, log=log)
    deployment.save(STATE_FILE, outputs=deployment.outputs, values=values)
    local.deployment, local.values = deployment, values
    local.timings["update"] = time.monotonic() - started
    log(f"updated in {local.timings['update']:.1f}s")
    return local


def attach(log: Callable[[str], None] = say) -> LocalDeployment:
    """The deployment a `python -m tests.deploy up` left running (for iterating on the suite)."""
    import json

    daemon = PrivateDaemon.node()
    if not daemon.answers() or not STATE_FILE.exists():
        raise RuntimeError("no running local deployment: run `python -m tests.deploy up` first")
    data = json.loads(STATE_FILE.read_text())
    log(f"using the running deployment recorded in {STATE_FILE}")
    return LocalDeployment(daemon=daemon, client=daemon.client(), values=data["values"],
                           deployment=driver.Deployment.load(STATE_FILE))


def down(local: LocalDeployment | None = None, stop_daemon: bool = True, log: Callable[[str], None] = say) -> None:
    daemon = local.daemon if local else PrivateDaemon.node()
    if local is None:
        if not daemon.answers():
            daemon.start()
        client = daemon.client()
        deployment = driver.Deployment.load(STATE_FILE) if STATE_FILE.exists() else None
    else:
        local.close_forwarders()
        client, deployment = local.client, local.deployment
    started = time.monotonic()
    if deployment is not None:
        driver.destroy(client, deployment, log=log)
        STATE_FILE.unlink(missing_ok=True)
    log(f"destroyed in {time.monotonic() - started:.1f}s (volumes kept)")
    if stop_daemon:
        daemon.stop()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "up"
    if command == "up":
        up()
        return 0
    if command == "down":
        down()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
