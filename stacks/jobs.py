"""One-shot jobs (database migrations, the quantize job): run during `pulumi up`, gate what
depends on them, and run again on the next `pulumi up` after they failed.

What the Docker provider does with a job container (kreuzwerker/terraform-provider-docker,
internal/provider/resource_docker_container_funcs.go, which pulumi-docker v5 wraps): with
``attach`` the create waits for the container to exit, and records ``exit_code``, but never
fails on a non-zero one. So the program checks the code itself (``succeeded``) and refuses
to start dependents. The failed container then stays in the state unchanged, and an
unchanged resource is never created again: every later `pulumi up` would meet the same exit
code and fail, forever, until someone ran `pulumi up --replace <urn>`.

Hence the run label: before declaring a job, the program reads the job's container on the
Docker host (``DockerJobHistory``). If it exited non-zero, the job gets a new ``llm-node.run``
label; labels cannot be updated in place, so the provider replaces the container and the job
runs again. A job that succeeded (or is still running) keeps its label: no diff, no re-run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import pulumi
import pulumi_docker as docker

if TYPE_CHECKING:
    from docker import DockerClient  # the Docker SDK

JOB_RESTART = "no"
LABEL_RUN = "llm-node.run"
FIRST_RUN = "1"

# Container arguments that make a container a one-shot job: it runs to completion while
# `pulumi up` waits (attach), is not expected to keep running, and never restarts. Its logs
# are not copied into the state (they could be large); read them with `docker logs`.
class JobArgs(TypedDict):
    must_run: bool
    attach: bool
    restart: str


JOB_ARGS: JobArgs = {"must_run": False, "attach": True, "restart": JOB_RESTART}


@dataclass(frozen=True)
class PreviousRun:
    """A job's container as the Docker host has it now."""

    container_id: str
    running: bool
    exit_code: int
    run_label: str | None


class JobHistory:
    """Where the program learns how each job's last run ended. This base knows nothing."""

    def previous_run(self, container_name: str) -> PreviousRun | None:
        return None

    def run_label(self, container_name: str) -> str:
        """The ``llm-node.run`` label to declare: a new one only after a failed run."""
        previous = self.previous_run(container_name)
        if previous is None:
            return FIRST_RUN
        if previous.running or previous.exit_code == 0:
            return previous.run_label or FIRST_RUN
        pulumi.log.warn(f"{container_name} exited with code {previous.exit_code} in an earlier update: "
                        "it runs again now (docs/runbooks.md: a failed job)")
        return f"retry-{previous.container_id[:12]}"


class DockerJobHistory(JobHistory):
    """Reads the job containers on the node's Docker host (the same host the provider uses)."""

    def __init__(self, docker_host: str):
        self.docker_host = docker_host
        self._client: DockerClient | None = None
        self._unreachable = False

    def _connect(self) -> DockerClient:
        import docker as docker_sdk  # the Docker SDK, not pulumi_docker

        # ssh:// hosts go through the ssh client, as the Docker CLI and the provider do.
        return docker_sdk.DockerClient(base_url=self.docker_host, use_ssh_client=self.docker_host.startswith("ssh://"),
                                       timeout=20)

    def previous_run(self, container_name: str) -> PreviousRun | None:
        if self._unreachable:
            return None
        try:
            import docker.errors

            if self._client is None:
                self._client = self._connect()
            try:
                container = self._client.api.inspect_container(container_name)
            except docker.errors.NotFound:
                return None
        except Exception as error:  # noqa: BLE001 - no history is no reason to stop: the provider reports the host
            self._unreachable = True
            logging.getLogger(__name__).debug("job history unavailable: %s", error)
            pulumi.log.warn(f"could not read job containers on {self.docker_host} ({type(error).__name__}): "
                            "a job that failed earlier is not re-run in this update")
            return None
        state = container.get("State") or {}
        labels = (container.get("Config") or {}).get("Labels") or {}
        return PreviousRun(container_id=container["Id"], running=bool(state.get("Running")),
                           exit_code=int(state.get("ExitCode") or 0), run_label=labels.get(LABEL_RUN))


def succeeded(job: docker.Container, what: str) -> pulumi.Output[str]:
    """"ok" once the one-shot ``job`` exited 0; fails the deployment otherwise.

    Dependents put this Output in their inputs, so they are never created after a failed job.
    """
    def check(code: int | None) -> str:
        if code not in (0, None):  # None: not run in this update (unchanged) or a preview
            raise RuntimeError(f"{what} failed with exit code {code}: read `docker logs {what}` on the node, fix the "
                               "cause, then run `pulumi up` again (the job runs again; docs/runbooks.md)")
        return "ok"

    return job.exit_code.apply(check)
