"""Checks a Docker host before `pulumi up`: run as ``scripts/preflight``.

Built on testinfra, so the same checks run on this machine (``--host local://``) or on the
node over SSH (``--host ssh://user@node``; the default is the stack's own ``docker_host``
when that is ssh://, else this machine). Each check gives PASS, FAIL or SKIP with a reason;
the table is printed and the exit code is 1 when anything failed.

What is needed comes from the stack file (``stacks/Pulumi.<stack>.yaml``, read with the
same code as the Pulumi program): CPU or GPU engine, the vLLM image (and so its CUDA
version), the quantization, the GPUs of the engine replicas, the published ports and the
Docker host.

    scripts/preflight --stack prod                   # the stack's docker_host (ssh://...)
    scripts/preflight --stack prod --host local://   # on the GPU node itself
    scripts/preflight --stack dev --ports 80,443
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field

import testinfra

from scripts import preflight_gpu as gpu
from stacks.config import STACKS_DIR, load_stack_settings

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class StackNeeds:
    """What a stack asks of its host, read from stacks/Pulumi.<stack>.yaml; flags override."""

    gpu: bool
    vllm_image: str
    quantization: str | None
    gpu_ids: tuple[str, ...]  # every GPU the engine replicas use (tensor-parallel replicas use several)
    host_ports: tuple[int, ...]  # Traefik publishes these; nothing else is published
    disk_gb: float  # images + model + headroom on Docker's data root
    docker_host: str  # where the stack deploys (its llm-node:docker_host)


# Free space to ask for: the CUDA vLLM image is ~20 GB unpacked and a 4-bit 7-8B model ~6 GB
# (plus its base weights for the quantize job); the CPU image and the tiny model are small.
DISK_GB = {"cuda": 60.0, "cpu": 15.0}


def available_stacks() -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def stack_needs(stack: str) -> StackNeeds:
    """The needs of a stack, from the same validated settings the Pulumi program reads."""
    settings = load_stack_settings(stack)
    cuda = [group for group in settings.engines if group.spec.device == "cuda"]
    device = "cuda" if cuda else "cpu"
    edge = settings.edge
    ports = [edge.http_port, edge.https_port] if edge.publish else []
    if edge.ops_port:
        ports.append(edge.ops_port)
    return StackNeeds(
        gpu=bool(cuda),
        vllm_image=settings.images["vllm_gpu" if cuda else "vllm_cpu"],
        # the first GPU group's method that is set (groups of a node usually share one)
        quantization=next((group.spec.quantization for group in cuda if group.spec.quantization), None),
        gpu_ids=tuple(gpu for group in settings.engines for gpu in group.gpu_devices),
        host_ports=tuple(ports),
        disk_gb=DISK_GB[device],
        docker_host=settings.docker_host,
    )


def testinfra_host_for(docker_host: str) -> str:
    """The testinfra host to check for a stack's docker_host: its SSH host, else this machine."""
    return "ssh://" + docker_host.removeprefix("ssh://") if docker_host.startswith("ssh://") else "local://"


@dataclass
class Result:
    check: str
    status: str
    detail: str


@dataclass
class Options:
    stack: str = "dev"
    host: str | None = None  # testinfra spec; None: from the stack's docker_host
    docker_host: str | None = None  # -H for the docker CLI (unix:///path.sock, tcp://)
    vllm_image: str | None = None
    cuda_version: str | None = None
    quantization: str | None = None
    ports: tuple[int, ...] | None = None
    disk_path: str | None = None
    disk_gb: float | None = None
    gpu: bool | None = None  # None: as the stack says
    gpu_ids: tuple[str, ...] | None = None  # None: the stack's engine.gpu_ids

    _needs: StackNeeds | None = None

    @property
    def needs(self) -> StackNeeds:
        if self._needs is None:
            base = stack_needs(self.stack)
            self._needs = StackNeeds(
                gpu=base.gpu if self.gpu is None else self.gpu,
                vllm_image=self.vllm_image or base.vllm_image,
                quantization=self.quantization if self.quantization is not None else base.quantization,
                gpu_ids=self.gpu_ids or (base.gpu_ids if base.gpu_ids or not self.gpu else ("0",)),
                host_ports=self.ports if self.ports is not None else base.host_ports,
                disk_gb=self.disk_gb if self.disk_gb is not None else base.disk_gb,
                docker_host=base.docker_host,
            )
        return self._needs

    @property
    def target(self) -> str:
        return self.host or testinfra_host_for(self.needs.docker_host)

    @property
    def docker_cli_host(self) -> str | None:
        """-H for the docker CLI on the target: --docker-host, or the stack's tcp:// host."""
        if self.docker_host:
            return self.docker_host
        return self.needs.docker_host if self.needs.docker_host.startswith("tcp://") else None


@dataclass
class Preflight:
    """The checks, in the order a person would fix them."""

    host: testinfra.host.Host
    options: Options
    results: list[Result] = field(default_factory=list)
    _docker_info: dict | None = None
    _gpus: list[gpu.Gpu] | None = None
    _gpu_error: str | None = None
    _driver_cuda: tuple[int, int] | None = None
    _wsl: bool | None = None

    # -- helpers ---------------------------------------------------------------------------
    def docker(self, args: str, *params: str):
        """Run ``docker <args>`` on the host, against --docker-host when given."""
        if self.options.docker_cli_host:
            return self.host.run("docker -H %s " + args, self.options.docker_cli_host, *params)
        return self.host.run("docker " + args, *params)

    @property
    def wsl(self) -> bool:
        if self._wsl is None:
            proc_version = self.host.file("/proc/version")
            self._wsl = proc_version.exists and gpu.is_wsl(proc_version.content_string)
        return self._wsl

    def read_gpus(self) -> list[gpu.Gpu]:
        """GPUs from nvidia-smi; on failure, the reason in ``_gpu_error`` and an empty list."""
        if self._gpus is not None:
            return self._gpus
        self._gpus = []
        smi = "nvidia-smi" if self.host.exists("nvidia-smi") else None
        if smi is None and self.host.file("/usr/lib/wsl/lib/nvidia-smi").exists:
            smi = "/usr/lib/wsl/lib/nvidia-smi"
        if smi is None:
            self._gpu_error = "nvidia-smi not found: no NVIDIA driver on this host"
            if self.wsl:
                self._gpu_error += (" (WSL2: the driver comes from Windows; install the NVIDIA "
                                    "driver on Windows, never a Linux driver inside WSL)")
            return self._gpus
        query = self.host.run(smi + " --query-gpu=%s --format=csv,noheader,nounits", gpu.GPU_QUERY)
        if query.rc != 0:
            reason = (query.stderr or query.stdout).strip().splitlines()
            self._gpu_error = f"nvidia-smi failed: {reason[-1] if reason else f'exit {query.rc}'}"
            return self._gpus
        self._gpus = gpu.parse_gpu_query(query.stdout)
        self._driver_cuda = gpu.parse_driver_cuda(self.host.run(smi + " -q").stdout)
        if not self._gpus:
            self._gpu_error = "nvidia-smi lists no GPU"
        return self._gpus

    def image_cuda(self) -> tuple[tuple[int, int] | None, str]:
        """(CUDA major.minor of the vLLM image, where that came from)."""
        if self.options.cuda_version:
            return gpu.major_minor(self.options.cuda_version), "--cuda-version"
        image = self.options.needs.vllm_image
        if self._docker_info is not None:
            inspected = self.docker("image inspect --format %s %s", "{{json .Config.Env}}", image)
            if inspected.rc == 0:
                found = gpu.image_cuda_from_env(json.loads(inspected.stdout or "[]"))
                if found:
                    return found, f"{image} (its CUDA_VERSION)"
        found = gpu.image_cuda_from_tag(image)
        return found, f"{image} (tag)"

    # -- checks ----------------------------------------------------------------------------
    def check_docker(self) -> Result:
        if not self.host.exists("docker"):
            return Result("docker daemon", FAIL, "docker CLI not installed (install Docker Engine)")
        info = self.docker("info --format %s", "{{json .}}")
        if info.rc != 0:
            lines = [ln for ln in (info.stderr or info.stdout).strip().splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"docker info exited {info.rc}"
            return Result("docker daemon", FAIL,
                          f"{reason} -> start it (systemctl start docker) or point --docker-host / DOCKER_HOST at it")
        self._docker_info = json.loads(info.stdout)
        version = self._docker_info.get("ServerVersion", "?")
        root = self._docker_info.get("DockerRootDir", "?")
        return Result("docker daemon", PASS, f"Docker {version} reachable, data root {root}")

    def check_driver(self) -> Result:
        name = "nvidia driver"
        if not self.options.needs.gpu:
            return Result(name, SKIP, f"stack {self.options.stack} runs the CPU engine")
        gpus = self.read_gpus()
        if not gpus:
            return Result(name, FAIL, self._gpu_error or "no GPU")
        cuda, source = self.image_cuda()
        if cuda is None:
            return Result(name, FAIL,
                          f"cannot tell the CUDA version of {source}: pull the image or pass --cuda-version")
        verdict = gpu.judge_driver(gpus, self._driver_cuda, cuda, self.wsl)
        return Result(name, PASS if verdict.ok else FAIL, f"{verdict.detail} [{source}]")

    def check_capability(self) -> Result:
        name = "cuda capability"
        if not self.options.needs.gpu:
            return Result(name, SKIP, f"stack {self.options.stack} runs the CPU engine")
        gpus = self.read_gpus()
        if not gpus:
            return Result(name, FAIL, self._gpu_error or "no GPU")
        verdict = gpu.judge_capability(gpus, self.options.needs.quantization)
        present = {str(g.index) for g in gpus}
        missing = [i for i in self.options.needs.gpu_ids if i not in present]
        if missing:
            return Result(name, FAIL, f"the stack runs its engines on GPUs {', '.join(self.options.needs.gpu_ids)}; "
                                      f"this host has GPU(s) {', '.join(sorted(present))}; {verdict.detail}")
        return Result(name, PASS if verdict.ok else FAIL, verdict.detail)

    def check_container_toolkit(self) -> Result:
        name = "nvidia container toolkit"
        if not self.options.needs.gpu:
            return Result(name, SKIP, f"stack {self.options.stack} requests no GPU")
        # Docker's --gpus (pulumi-docker's device_requests) calls this hook, which uses nvidia-container-cli.
        missing = [b for b in ("nvidia-container-runtime-hook", "nvidia-container-cli") if not self.host.exists(b)]
        if missing:
            return Result(name, FAIL, f"{', '.join(missing)} not found: install nvidia-container-toolkit "
                                      "and run `nvidia-ctk runtime configure --runtime=docker`")
        version = self.host.run("nvidia-container-cli --version").stdout.splitlines()
        detail = version[0].strip() if version else "installed"
        if self._docker_info is not None:
            runtimes = self._docker_info.get("Runtimes") or {}
            detail += "; docker runtimes: " + ", ".join(sorted(runtimes)) if runtimes else ""
        return Result(name, PASS, detail)

    def check_disk(self) -> Result:
        name = "free disk"
        needs = self.options.needs
        path = self.options.disk_path or (self._docker_info or {}).get("DockerRootDir") or "/var/lib/docker"
        probe = path
        while probe not in ("", "/") and not self.host.file(probe).exists:
            probe = os.path.dirname(probe.rstrip("/")) or "/"
        df = self.host.run("df -P -B1 %s", probe)
        rows = df.stdout.strip().splitlines()
        if df.rc != 0 or len(rows) < 2:
            return Result(name, FAIL, f"df {probe} failed: {(df.stderr or '').strip()}")
        free = int(rows[-1].split()[3]) / 1e9
        where = path if probe == path else f"{path} (on {probe})"
        detail = (f"{free:.1f} GB free at {where}; "
                  f"stack {self.options.stack} needs {needs.disk_gb:g} GB (images + model)")
        return Result(name, PASS if free >= needs.disk_gb else FAIL, detail)

    def check_ports(self) -> Result:
        name = "host ports free"
        ports = self.options.needs.host_ports
        listening = self.host.socket.get_listening_sockets()
        taken = []
        for port in ports:
            users = [s for s in listening if re.search(rf"^tcp://.*:{port}$", s)]
            if users:
                taken.append(f"{port} ({self.port_owner(port) or users[0]})")
        if taken:
            return Result(name, FAIL, f"in use: {', '.join(taken)} (the node publishes {', '.join(map(str, ports))})")
        return Result(name, PASS, f"{', '.join(map(str, ports))} free")

    def port_owner(self, port: int) -> str | None:
        out = self.host.run("ss -Hltnp sport = :%s", str(port))
        found = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out.stdout or "")
        return f"{found.group(1)} pid {found.group(2)}" if found else None

    def run(self) -> list[Result]:
        for check in (self.check_docker, self.check_driver, self.check_capability,
                      self.check_container_toolkit, self.check_disk, self.check_ports):
            name = check.__name__.removeprefix("check_").replace("_", " ")
            try:
                self.results.append(check())
            except Exception as error:  # noqa: BLE001 - one broken probe must not hide the other results
                self.results.append(Result(name, FAIL, f"check could not run: {type(error).__name__}: {error}"))
        return self.results


def render(results: list[Result], options: Options, wsl: bool = False) -> str:
    width = max(len(r.check) for r in results)
    lines = [f"llm-node preflight: stack {options.stack}, host {options.target}" + (" (WSL2)" if wsl else ""), ""]
    lines.append(f"{'CHECK'.ljust(width)}  RESULT  DETAIL")
    for r in results:
        lines.append(f"{r.check.ljust(width)}  {r.status.ljust(6)}  {r.detail}")
    failed = sum(r.status == FAIL for r in results)
    lines += ["", f"{failed} check(s) failed." if failed else "All checks passed."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="scripts/preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=available_stacks(), default="dev",
                        help="the stack to be deployed: its stacks/Pulumi.<stack>.yaml says what it needs "
                             "(default dev)")
    parser.add_argument("--host", help="testinfra host spec, local:// or ssh://user@node "
                                       "(default: the stack's docker_host when it is ssh://, else local://)")
    parser.add_argument("--docker-host", help="docker CLI -H value (default: DOCKER_HOST or the local socket)")
    parser.add_argument("--vllm-image", help="the engine image the stack uses")
    parser.add_argument("--cuda-version", help="CUDA version of the engine image, e.g. 12.8 (default: read from it)")
    parser.add_argument("--quantization", help="engine quantization (decides the minimum CUDA capability)")
    parser.add_argument("--ports", help="comma-separated host ports the node publishes (default 80,443)")
    parser.add_argument("--disk-path", help="where images and volumes go (default: Docker's data root)")
    parser.add_argument("--disk-gb", type=float, help="free space needed there, in GB")
    gpu_group = parser.add_mutually_exclusive_group()
    gpu_group.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="check the GPU stack")
    gpu_group.add_argument("--no-gpu", dest="gpu", action="store_false", help="skip the GPU checks")
    parser.add_argument("--gpu-ids", help="comma-separated GPU indexes the engines use (default: the stack's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    ports = None
    if args.ports is not None:
        try:
            ports = tuple(int(p) for p in args.ports.split(",") if p.strip())
        except ValueError:
            parser.error(f"--ports: {args.ports!r} is not a comma-separated list of numbers")
    options = Options(stack=args.stack, host=args.host, docker_host=args.docker_host, vllm_image=args.vllm_image,
                      cuda_version=args.cuda_version, quantization=args.quantization, ports=ports,
                      disk_path=args.disk_path, disk_gb=args.disk_gb, gpu=args.gpu,
                      gpu_ids=tuple(i.strip() for i in args.gpu_ids.split(",") if i.strip()) if args.gpu_ids else None)
    return options, args.json


def main(argv: list[str] | None = None) -> int:
    options, as_json = parse_args(sys.argv[1:] if argv is None else argv)
    wsl = False
    try:
        _ = options.needs  # reads and validates the stack file
    except Exception as error:  # noqa: BLE001 - a ConfigError names the key; any other error is reported the same way
        print(f"preflight: stack {options.stack}: {error}", file=sys.stderr)
        return 2
    try:
        host = testinfra.get_host(options.target)
        host.run("true")  # connects: an unreachable SSH host fails here, once
    except Exception as error:  # noqa: BLE001 - each transport fails in its own way; all are "unreachable"
        results = [Result("host reachable", FAIL, f"{options.target}: {_connection_error(error)}")]
    else:
        preflight = Preflight(host, options)
        results = preflight.run()
        wsl = preflight.wsl
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(render(results, options, wsl))
    return 1 if any(r.status == FAIL for r in results) else 0


def _connection_error(error: Exception) -> str:
    """What went wrong reaching the host, in the transport's own words (testinfra wraps an
    ssh failure in a RuntimeError whose text is a CommandResult repr)."""
    result = error.args[0] if error.args else None
    stderr = getattr(result, "stderr", None)
    if isinstance(stderr, str) and stderr.strip():
        return stderr.strip()
    return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    sys.exit(main())
