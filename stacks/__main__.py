"""llm-node: declare the whole inference node on one Docker host.

Reads and validates the stack's configuration (stacks/config.py), connects to the Docker
host it names, declares the Node (stacks/node.py) and exports its outputs. Nothing else.
"""

import pulumi
import pulumi_docker as docker

from stacks.config import load_node_config
from stacks.jobs import DockerJobHistory
from stacks.node import Node, NodeArgs

config = load_node_config()
if config.settings.target == "kubernetes":  # the same settings on a cluster (stacks/kubernetes/)
    from stacks.kubernetes.node import KubernetesNode, KubernetesNodeArgs

    node: KubernetesNode | Node = KubernetesNode("llm-node", KubernetesNodeArgs(config=config))
else:
    docker_host = docker.Provider("docker-host", host=config.settings.docker_host)
    node = Node("llm-node", NodeArgs(config=config, job_history=DockerJobHistory(config.settings.docker_host)),
                opts=pulumi.ResourceOptions(providers=[docker_host]))

for output_name, value in node.outputs.items():
    pulumi.export(output_name, value)
