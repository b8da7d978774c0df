"""Fixed addresses on the edge and metrics networks, so Traefik's allow-lists name real peers.

Each of the two networks gets the subnet from the stack's config (edge.subnet,
edge.metrics_subnet), its bridge's gateway at the first address, a few fixed container
addresses in the lower half, and Docker's dynamic allocation confined to the upper half
(ip_range). Docker hands a fixed (preferred) address anywhere in the subnet and a dynamic one
only from ip_range (moby daemon/libnetwork/ipams/defaultipam/allocator.go getAddress), so no
container created first can take a fixed address, and no dynamic address is ever one of them.

  edge     gateway .1   the source of every connection that comes through a host-published
                        port on 127.0.0.1 (docker-proxy dials from the host; with the userland
                        proxy off, Docker masquerades host-local sources to the bridge address)
  metrics  gateway .1, Traefik .2 (its metrics entrypoint binds there), Prometheus .3
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi_docker as docker

TRAEFIK_HOST = 2  # host numbers of the fixed addresses, counted from the subnet's network address
PROMETHEUS_HOST = 3


@dataclass(frozen=True)
class SubnetPlan:
    subnet: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def dynamic_range(self) -> str:
        """Where Docker allocates addresses nobody fixed: the upper half."""
        return str(list(self.network.subnets(prefixlen_diff=1))[1])

    def fixed(self, host: int) -> str:
        address = self.network.network_address + host
        if not 1 < host < self.network.num_addresses // 2:
            raise ValueError(f"host {host} is outside the fixed (lower) half of {self.subnet}")
        return str(address)


def without_net_raw() -> docker.ContainerCapabilitiesArgs:
    """For every container that shares a network with Traefik, except Prometheus (whose address
    the metrics allow-list names anyway). With CAP_NET_RAW, Docker's default, a container can
    answer ARP for any address on its bridge, e.g. the gateway address the ops allow-list trusts,
    and hold a connection from it (traefik/reach.py counts it as every address of the subnet)."""
    return docker.ContainerCapabilitiesArgs(drops=["NET_RAW"])
