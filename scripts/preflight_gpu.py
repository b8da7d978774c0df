"""What a GPU node needs from its NVIDIA driver, and how to read what it has.

Pure functions and tables, no I/O: ``preflight_checks`` runs the commands (through
testinfra) and hands their output here. Kept apart so the rules can be read and tested
on a machine without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Minimum driver per CUDA toolkit (major.minor), from the "CUDA Toolkit and Corresponding
# Driver Versions" table of NVIDIA's CUDA release notes (the GA release of each minor
# version). WSL2 uses the Windows driver, so it is compared against the Windows column.
#   cuda: (linux x86_64, windows x86_64)
MIN_DRIVER_FOR_CUDA: dict[tuple[int, int], tuple[str, str]] = {
    (11, 8): ("520.61.05", "520.06"),
    (12, 0): ("525.60.13", "527.41"),
    (12, 1): ("530.30.02", "531.14"),
    (12, 2): ("535.54.03", "536.25"),
    (12, 3): ("545.23.06", "545.84"),
    (12, 4): ("550.54.14", "551.61"),
    (12, 5): ("555.42.02", "555.85"),
    (12, 6): ("560.28.03", "560.76"),
    (12, 8): ("570.26", "570.65"),
    (12, 9): ("575.51.03", "576.02"),
    (13, 0): ("580.65.06", "580.88"),
}

# CUDA version of the official vLLM images when the tag does not say it (``-cu129``) and
# the image is not pulled yet (a pulled image's own CUDA_VERSION env wins). Ranges of
# vllm/vllm-openai release tags, newest first: (first version with it, cuda).
VLLM_IMAGE_CUDA: list[tuple[tuple[int, int], tuple[int, int]]] = [
    ((0, 20), (13, 0)),  # CUDA 13 became the default; "-cu129" tags carry 12.9
    ((0, 12), (12, 9)),
    ((0, 9), (12, 8)),
    ((0, 5), (12, 4)),
]

# vLLM runs on compute capability 7.0 (Volta) and newer; some quantization kernels need
# more (vLLM docs, "Supported Hardware" for quantization): AWQ has no Volta kernel, the
# Marlin kernels (awq_marlin, gptq_marlin, compressed-tensors W4A16) start at Turing, and
# FP8 weights need Ampere (Marlin FP8) or Ada (native W8A8).
MIN_CAPABILITY = (7, 0)
MIN_CAPABILITY_FOR_QUANTIZATION: dict[str, tuple[int, int]] = {
    "awq": (7, 5),
    "awq_marlin": (7, 5),
    "gptq": (7, 0),
    "gptq_marlin": (7, 5),
    "compressed-tensors": (7, 5),
    "fp8": (8, 0),
}

# nvidia-smi columns we query, in order.
GPU_QUERY = "index,name,driver_version,compute_cap,memory.total"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver_version: str
    compute_capability: tuple[int, int] | None  # None: the driver is too old to report it
    memory_mib: int | None


def version_tuple(text: str) -> tuple[int, ...]:
    """'570.86.15' -> (570, 86, 15); non-numeric parts end the tuple."""
    parts = []
    for piece in text.strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def major_minor(text: str) -> tuple[int, int] | None:
    found = re.search(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def fmt(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def parse_gpu_query(csv_text: str) -> list[Gpu]:
    """Rows of ``nvidia-smi --query-gpu=GPU_QUERY --format=csv,noheader,nounits``."""
    gpus = []
    for line in csv_text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5:
            continue
        index, name, driver, cap, memory = fields[:5]
        gpus.append(Gpu(
            index=int(index) if index.isdigit() else len(gpus),
            name=name,
            driver_version=driver,
            compute_capability=major_minor(cap),
            memory_mib=int(float(memory)) if re.fullmatch(r"[\d.]+", memory) else None,
        ))
    return gpus


def parse_driver_cuda(nvidia_smi_q: str) -> tuple[int, int] | None:
    """The highest CUDA version the driver supports ('CUDA Version : 12.4' in ``nvidia-smi -q``)."""
    found = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", nvidia_smi_q)
    return major_minor(found.group(1)) if found else None


def is_wsl(proc_version: str) -> bool:
    """WSL kernels name Microsoft in /proc/version ('...-microsoft-standard-WSL2')."""
    return "microsoft" in proc_version.lower()


def image_cuda_from_env(env: list[str]) -> tuple[int, int] | None:
    """CUDA version from a pulled image's env (nvidia/cuda bases set CUDA_VERSION=12.8.1)."""
    for item in env:
        if item.startswith("CUDA_VERSION="):
            return major_minor(item.split("=", 1)[1])
    return None


def image_cuda_from_tag(image: str) -> tuple[int, int] | None:
    """CUDA version implied by an image reference, or None when it cannot be told."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    suffix = re.search(r"cu(\d{2})(\d)\b", tag)
    if suffix:  # v0.21.0-cu129, cu130-nightly
        return int(suffix.group(1)), int(suffix.group(2))
    if "vllm-openai" not in image or "cpu" in image:
        return None
    release = re.match(r"v?(\d+)\.(\d+)", tag)
    if not release:
        return None
    version = (int(release.group(1)), int(release.group(2)))
    for first, cuda in VLLM_IMAGE_CUDA:
        if version >= first:
            return cuda
    return None


def min_driver_for(cuda: tuple[int, int], wsl: bool) -> str | None:
    """Lowest driver that runs ``cuda``: the entry for that version, or the next one up."""
    for known in sorted(MIN_DRIVER_FOR_CUDA):
        if known >= cuda:
            linux, windows = MIN_DRIVER_FOR_CUDA[known]
            return windows if wsl else linux
    return None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str


WSL_DRIVER_FIX = (
    "On WSL2 the GPU driver is the Windows one: update the NVIDIA driver on Windows "
    "(then `wsl --shutdown` and reopen), and do not install a Linux NVIDIA driver inside "
    "WSL (it would replace the /usr/lib/wsl/lib/libcuda.so that Windows provides)."
)


def judge_driver(gpus: list[Gpu], driver_cuda: tuple[int, int] | None,
                 image_cuda: tuple[int, int], wsl: bool) -> Verdict:
    """Is the driver new enough for an image built with CUDA ``image_cuda``?

    The NVIDIA container toolkit refuses to start a CUDA image whose NVIDIA_REQUIRE_CUDA is
    above what the driver supports ("unsatisfied condition: cuda>=12.8"), so the driver's
    own CUDA version is the test; the driver-number table names the fix.
    """
    if not gpus:
        return Verdict(False, "nvidia-smi lists no GPU")
    driver = gpus[0].driver_version
    needed = min_driver_for(image_cuda, wsl)
    where = "Windows driver" if wsl else "driver"
    wanted = f"CUDA {fmt(image_cuda)} needs {where} >= {needed}" if needed else f"CUDA {fmt(image_cuda)}"
    if driver_cuda is not None:
        ok = driver_cuda >= image_cuda
        have = f"driver {driver} supports CUDA {fmt(driver_cuda)}"
    elif needed:
        ok = version_tuple(driver) >= version_tuple(needed)
        have = f"driver {driver}"
    else:
        return Verdict(False, f"driver {driver}: cannot tell its CUDA version; {wanted}")
    if ok:
        return Verdict(True, f"{have}; image needs CUDA {fmt(image_cuda)}")
    fix = WSL_DRIVER_FIX if wsl else "Update the host's NVIDIA driver (distribution packages or NVIDIA's)."
    return Verdict(False, f"{have}, too old: {wanted}. {fix}")


def judge_capability(gpus: list[Gpu], quantization: str | None) -> Verdict:
    needed = max(MIN_CAPABILITY, MIN_CAPABILITY_FOR_QUANTIZATION.get(quantization or "", MIN_CAPABILITY))
    why = f"vLLM{' with ' + quantization if quantization else ''} needs >= {fmt(needed)}"
    if not gpus:
        return Verdict(False, f"no GPU; {why}")
    too_low = []
    for gpu in gpus:
        if gpu.compute_capability is None:
            too_low.append(f"GPU {gpu.index} {gpu.name}: capability not reported (driver too old)")
        elif gpu.compute_capability < needed:
            too_low.append(f"GPU {gpu.index} {gpu.name}: {fmt(gpu.compute_capability)}")
    if too_low:
        return Verdict(False, f"{'; '.join(too_low)}; {why}")
    listed = ", ".join(f"{g.name} {fmt(g.compute_capability)}" for g in gpus)  # type: ignore[arg-type]
    return Verdict(True, f"{listed}; {why}")
