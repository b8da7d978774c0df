"""Make a PEFT LoRA adapter safe to hand to vLLM, or say clearly why it cannot be.

Newer PEFT releases write keys into ``adapter_config.json`` that older loaders reject
and vLLM ignores (``alora_invocation_tokens``, ``use_qalora``, ``target_parameters``,
...), and some adapters use features vLLM cannot serve (DoRA, LoRA bias, base-model
modifying inits, ranks above ``--max-lora-rank``, modules the engine has no LoRA layer
for). This module copies an adapter to a new directory with a config that keeps only
the keys vLLM reads, refuses adapters it cannot serve with one message per problem,
and writes a report of what it changed next to the copy. The original is only read.

Standard library only: it runs in the vLLM image's entrypoint, in ``scripts/`` and in
the tests, whatever else is installed.

    python adapter_sanitizer.py adapter SRC DEST [--max-lora-rank 16] [--target-modules a,b]
    python adapter_sanitizer.py tree SRC_ROOT DEST_ROOT [...]   # every adapter under SRC_ROOT
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"
REPORT_NAME = "llm-node-sanitize-report.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
# vLLM's own default for --max-lora-rank.
DEFAULT_MAX_LORA_RANK = 16
# Linear layers vLLM has LoRA layers for in Llama-family decoders (Llama, Mistral, Qwen,
# Gemma, ...). Other architectures name them differently: pass --target-modules.
DEFAULT_TARGET_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)

# Keys of a LoRA adapter_config.json that vLLM reads or that every PEFT release since
# LoRA's introduction understands. Everything else is stripped (and reported).
KEPT_KEYS = frozenset({
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
    "auto_mapping", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
    "fan_in_fan_out", "modules_to_save", "init_lora_weights", "use_rslora",
    "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern",
})

# init_lora_weights values that only set the starting weights for training, so the saved
# adapter is a plain LoRA. Others (pissa, olora, corda, loftq) also rewrite the base model.
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
# modules_to_save vLLM loads (classification heads).
SAVABLE_MODULES = frozenset({"classifier", "score"})


class AdapterRejected(ValueError):
    """The adapter uses something vLLM cannot serve; ``problems`` has one line each."""

    def __init__(self, adapter: Path | str, problems: list[str]):
        self.adapter = str(adapter)
        self.problems = problems
        super().__init__(f"adapter {adapter} cannot be served:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Policy:
    """What the target engine accepts."""

    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    target_modules: frozenset[str] = DEFAULT_TARGET_MODULES


@dataclass
class Report:
    """What the sanitizer did to one adapter (written as JSON next to the copy)."""

    source: str
    destination: str
    removed_keys: dict[str, Any] = field(default_factory=dict)  # key -> the value it had
    kept_keys: list[str] = field(default_factory=list)
    rank: int = 0
    target_modules: list[str] = field(default_factory=list)
    weights_file: str = ""
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _enabled(value: Any) -> bool:
    """PEFT writes disabled features as null, false, 0, "", [] or {}."""
    return value not in (None, False, 0, "", [], {})


def feature_problems(config: dict[str, Any]) -> list[str]:
    """Features the config turns on that vLLM cannot serve (same rules as vLLM's PEFTHelper)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r}: only LoRA adapters can be served")
    if _enabled(config.get("use_dora")):
        problems.append("use_dora: DoRA adapters are not supported by vLLM; merge the adapter into the "
                        "base model (peft merge_and_unload) and serve the merged model instead")
    if _enabled(config.get("lora_bias")):
        problems.append("lora_bias: LoRA bias terms are not supported by vLLM")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config['bias']!r}: trained bias terms are not supported by vLLM (needs 'none')")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        problems.append(f"init_lora_weights {init!r}: this init also rewrites the base model's weights; "
                        "convert the adapter with peft's path_initial_model_for_weight_conversion first")
    if _enabled(config.get("alora_invocation_tokens")):
        problems.append("alora_invocation_tokens: Activated LoRA (aLoRA) is not supported")
    if _enabled(config.get("layer_replication")):
        problems.append("layer_replication: not supported by vLLM")
    if _enabled(config.get("use_bdlora")):
        problems.append("use_bdlora: block-diagonal LoRA is not supported by vLLM")
    if _enabled(config.get("use_qalora")):
        problems.append("use_qalora: QALoRA is not supported by vLLM")
    if _enabled(config.get("target_parameters")):
        problems.append(f"target_parameters {config['target_parameters']!r}: LoRA on raw parameters "
                        "(e.g. MoE experts) is not supported by this node")
    if _enabled(config.get("trainable_token_indices")):
        problems.append("trainable_token_indices: trained embedding rows are not supported by vLLM")
    extra = sorted(set(config.get("modules_to_save") or ()) - SAVABLE_MODULES)
    if extra:
        problems.append(f"modules_to_save {extra}: vLLM only loads {sorted(SAVABLE_MODULES)} (classification heads)")
    return problems


def rank_problems(config: dict[str, Any], policy: Policy) -> list[str]:
    problems = []
    r = config.get("r")
    if not isinstance(r, int) or r <= 0:
        return [f"r {r!r}: the LoRA rank must be a positive integer"]
    ranks = {"r": r, **{f"rank_pattern[{k!r}]": v for k, v in (config.get("rank_pattern") or {}).items()}}
    for where, rank in ranks.items():
        if isinstance(rank, int) and rank > policy.max_lora_rank:
            problems.append(f"{where} = {rank} is above the engine's max_lora_rank {policy.max_lora_rank}: "
                            f"retrain at rank <= {policy.max_lora_rank} or raise max_lora_rank (costs memory)")
    return problems


def target_problems(config: dict[str, Any], policy: Policy) -> list[str]:
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return []  # a regex: checked against the weight names instead
    if not targets:
        return ["target_modules: missing or empty"]
    unsupported = sorted({t.rsplit(".", 1)[-1] for t in targets} - policy.target_modules)
    if unsupported:
        supported = ", ".join(sorted(policy.target_modules))
        return [f"target_modules {unsupported} are not supported (supported: {supported})"]
    return []


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name -> dtype, shape, offsets."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{path}: implausible safetensors header size {length}")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def weight_problems(header: dict[str, Any], policy: Policy) -> tuple[dict[str, str], int]:
    """Check the tensors themselves (vLLM trusts them over the config).

    Returns ({category: problem}, rank); categories: dora, bias, unknown, targets, rank.
    """
    problems: dict[str, str] = {}
    unsupported, unknown, rank = set(), [], 0
    for name, info in header.items():
        if "lora_magnitude_vector" in name:
            problems["dora"] = f"{name}: DoRA magnitude weights are not supported by vLLM"
            continue
        module, _, kind = name.partition(".lora_")
        if not kind:
            if not any(f".{prefix}." in f".{name}" for prefix in SAVABLE_MODULES):
                unknown.append(name)
            continue
        if kind.endswith("bias"):
            problems["bias"] = f"{name}: LoRA bias weights are not supported by vLLM"
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in policy.target_modules:
            unsupported.add(leaf)
        if kind.startswith("A.") and len(info.get("shape", ())) == 2:
            rank = max(rank, info["shape"][0])
    if unknown:
        problems["unknown"] = f"tensors that are not LoRA weights: {unknown[:5]}"
    if unsupported:
        problems["targets"] = (f"weights for modules {sorted(unsupported)} are not supported "
                               f"(supported: {', '.join(sorted(policy.target_modules))})")
    if rank > policy.max_lora_rank:
        problems["rank"] = f"the weights have rank {rank}, above the engine's max_lora_rank {policy.max_lora_rank}"
    return problems, rank


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kept config, removed keys with their values)."""
    kept = {k: v for k, v in config.items() if k in KEPT_KEYS}
    removed = {k: v for k, v in config.items() if k not in KEPT_KEYS}
    return kept, removed


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def sanitize_adapter(source: Path | str, destination: Path | str, policy: Policy = Policy()) -> Report:
    """Copy the adapter at ``source`` to ``destination`` with a sanitized config.

    Raises ``AdapterRejected`` (nothing is written) if vLLM cannot serve it.
    ``destination`` is replaced whole; it must not overlap ``source``.
    """
    source, destination = Path(source), Path(destination)
    if _same_or_inside(source, destination):
        raise ValueError(f"destination {destination} overlaps the source {source}: the original is never edited")
    config_path = source / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterRejected(source, [f"no {CONFIG_NAME}: not a PEFT adapter directory"]) from None
    except ValueError as error:
        raise AdapterRejected(source, [f"{CONFIG_NAME} is not valid JSON: {error}"]) from None
    if not isinstance(config, dict):
        raise AdapterRejected(source, [f"{CONFIG_NAME} is not a JSON object"])

    config_rank, config_targets = rank_problems(config, policy), target_problems(config, policy)
    problems = feature_problems(config) + config_rank + config_targets
    weights = next((source / name for name in WEIGHT_FILES if (source / name).is_file()), None)
    rank = config.get("r") if isinstance(config.get("r"), int) else 0
    if weights is None:
        problems.append(f"no adapter weights ({' or '.join(WEIGHT_FILES)})")
    elif weights.suffix == ".safetensors":  # .bin/.pt are pickles: not opened here, vLLM checks them
        try:
            found, weights_rank = weight_problems(safetensors_header(weights), policy)
        except (OSError, ValueError, struct.error) as error:
            found, weights_rank = {"unreadable": f"{weights.name} is not a readable safetensors file: {error}"}, 0
        # The config's own message is clearer when it already names the same problem.
        if config_rank:
            found.pop("rank", None)
        if config_targets:
            found.pop("targets", None)
        problems += list(found.values())
        rank = max(rank, weights_rank)
    if problems:
        raise AdapterRejected(source, problems)

    kept, removed = split_config(config)
    report = Report(
        source=str(source.resolve()), destination=str(destination.resolve()),
        removed_keys=removed, kept_keys=sorted(kept), rank=rank,
        target_modules=(sorted(config["target_modules"]) if isinstance(config["target_modules"], list)
                        else [config["target_modules"]]),
        weights_file=weights.name, max_lora_rank=policy.max_lora_rank,
    )
    # Write beside the destination, then rename: a reader never sees half an adapter.
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.name == CONFIG_NAME or item.name == REPORT_NAME:
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        else:
            shutil.copy2(item, staging / item.name)
    (staging / CONFIG_NAME).write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (staging / REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return report


def adapter_dirs(root: Path) -> list[Path]:
    """Adapter directories directly under ``root`` (those with an adapter_config.json)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_NAME).is_file())


def sanitize_tree(source_root: Path | str, destination_root: Path | str, policy: Policy = Policy()) -> list[Report]:
    """Sanitize every adapter under ``source_root`` into ``destination_root/<name>``.

    All adapters are checked before failing, so one run lists every problem.
    """
    source_root, destination_root = Path(source_root), Path(destination_root)
    reports, rejected = [], []
    for adapter in adapter_dirs(source_root):
        try:
            reports.append(sanitize_adapter(adapter, destination_root / adapter.name, policy))
        except AdapterRejected as error:
            rejected.append(error)
    if rejected:
        raise AdapterRejected(source_root, [f"{Path(e.adapter).name}: {p}" for e in rejected for p in e.problems])
    return reports


def _policy(args: argparse.Namespace) -> Policy:
    modules = (frozenset(m.strip() for m in args.target_modules.split(",") if m.strip()) if args.target_modules
               else DEFAULT_TARGET_MODULES)
    return Policy(max_lora_rank=args.max_lora_rank, target_modules=modules)


def _summary(report: Report) -> str:
    removed = ", ".join(sorted(report.removed_keys)) or "nothing"
    return f"sanitized {report.source} -> {report.destination} (rank {report.rank}); removed: {removed}"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sanitize PEFT LoRA adapters for vLLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("adapter", "sanitize one adapter directory"),
                            ("tree", "sanitize every adapter directory under a root")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("source", type=Path)
        sub.add_argument("destination", type=Path)
        sub.add_argument("--max-lora-rank", type=int, default=DEFAULT_MAX_LORA_RANK)
        sub.add_argument("--target-modules", default="", help="comma-separated module names the engine supports")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "adapter":
            reports = [sanitize_adapter(args.source, args.destination, _policy(args))]
        else:
            reports = sanitize_tree(args.source, args.destination, _policy(args))
    except (AdapterRejected, ValueError) as error:
        print(f"adapter-sanitizer: {error}", file=sys.stderr)
        return 1
    for report in reports:
        print(f"adapter-sanitizer: {_summary(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
