"""llm-node: declare the whole inference node on one Docker host.

Reads and validates the stack's configuration (stacks/config.py), connects to the Docker
host it names, declares the Node (stacks/node.py) and exports its outputs. Nothing else.
"""

import sys
from pathlib import Path

# Pulumi runs this directory as a script; the project root holds the packages it shares
# with the rest of the repository (services.launch, traefik, prometheus, grafana, ...).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402
import pulumi_docker as docker  # noqa: E402

from stacks.config import load_node_config  # noqa: E402
from stacks.jobs import DockerJobHistory  # noqa: E402
from stacks.node import Node, NodeArgs  # noqa: E402

config = load_node_config()
if config.settings.target == "kubernetes":  # the same settings on a cluster (stacks/kubernetes/)
    from stacks.kubernetes.node import KubernetesNode, KubernetesNodeArgs  # noqa: E402

    node = KubernetesNode("llm-node", KubernetesNodeArgs(config=config))
else:
    docker_host = docker.Provider("docker-host", host=config.settings.docker_host)
    node = Node("llm-node", NodeArgs(config=config, job_history=DockerJobHistory(config.settings.docker_host)),
                opts=pulumi.ResourceOptions(providers=[docker_host]))

for output_name, value in node.outputs.items():
    pulumi.export(output_name, value)
