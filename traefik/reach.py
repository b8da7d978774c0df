"""What reaches what: can a client open a connection to a Traefik entry point and get past it?

A pure function over the declared configuration (networks with their subnets, the containers'
addresses and capabilities, Traefik's entry points, published ports and allow-lists), so a
test can assert the answer for every (client, entry point) pair of a declared node.

How a connection looks inside Traefik's container, by where it starts:

* a container on a network Traefik also joins: its own address there. It is a fixed address,
  or one from the network's dynamic range (ip_range; the whole subnet without one). A client
  that keeps CAP_NET_RAW (Docker's default) can answer ARP for any address on that bridge, so
  it can hold a TCP connection with any source address of that subnet, the bridge's gateway
  address included: it counts as every address of the subnet.
* a process on the Docker host, through a host-published port: the bridge address of the
  network Docker programs the port on, which is the container's gateway network (moby
  bridge_linux.go ProgramExternalConnectivity: NAT port bindings only on the gateway
  endpoint; internal networks have none). docker-proxy dials the container from the host
  (cmd/docker-proxy tcp_proxy_linux.go, net.DialTCP with no local address); with the userland
  proxy off, Docker masquerades host-local sources on their way into the bridge
  (iptabler/network.go "MASQ LOCAL HOST", --src-type LOCAL; nftabler/network.go "MASQUERADE
  FROM HOST", fib saddr type local). Directly to a container address: the bridge address of
  that network. (Rootful Docker; rootless Docker's port drivers and Docker Desktop were not
  checked: tests/infra probes the published ops port from the host after a deploy.)
* the internet, through a port published on a non-loopback host address: any public address
  (iptables DNAT keeps the client's address).
* Traefik itself (`traefik healthcheck --ping` dials ":<port>"): loopback.

A connection gets a TCP answer when the entry point listens on all interfaces or on the
address it was sent to; it gets past the entry point when the source is in every allow-list
the entry point applies to all its routers (none: everyone).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Range = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST = "host"  # a process on the Docker host (e.g. an SSH tunnel to 127.0.0.1:<ops_port>)
INTERNET = "internet"
SELF = "traefik-itself"
LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
PUBLIC_SAMPLE = ipaddress.ip_address("203.0.113.7")  # stands for any internet client (TEST-NET-3)


@dataclass(frozen=True)
class Network:
    name: str
    internal: bool
    subnet: ipaddress.IPv4Network | None  # None: Docker picks one (nothing can be allow-listed there)
    gateway: ipaddress.IPv4Address | None = None
    dynamic: ipaddress.IPv4Network | None = None  # ip_range


@dataclass(frozen=True)
class Container:
    name: str
    addresses: Mapping[str, ipaddress.IPv4Address | None]  # network -> fixed address (None: dynamic)
    net_raw: bool = True  # Docker's default capability set keeps NET_RAW


@dataclass(frozen=True)
class EntryPoint:
    name: str
    port: int
    bind: Address | None  # None: every interface
    allow: tuple[tuple[Range, ...], ...] = ()  # each allow-list on the entry point (all must admit)
    published: tuple[Address, ...] = ()  # host addresses it is published on


@dataclass(frozen=True)
class Node:
    networks: Mapping[str, Network]
    containers: Mapping[str, Container]
    proxy: str  # the Traefik container's name
    entry_points: Mapping[str, EntryPoint] = field(default_factory=dict)

    @property
    def traefik(self) -> Container:
        return self.containers[self.proxy]

    def gateway_network(self, container: Container) -> Network | None:
        """The network that gives the container its default route (Docker's port mappings go there)."""
        return next((self.networks[n] for n in container.addresses if not self.networks[n].internal), None)


def _admitted(entry: EntryPoint, sources: Iterable[Address | None]) -> bool:
    """Some source passes every allow-list (None: an address Docker picks, which no list can name)."""
    return any(all(s is not None and any(s in r for r in allow) for allow in entry.allow) for s in sources)


def _listens(entry: EntryPoint, destination: Address | None) -> bool:
    return entry.bind is None or (destination is not None and entry.bind == destination)


def _container_sources(node: Node, client: Container, network: Network) -> list[Address | None]:
    fixed = client.addresses[network.name]
    if network.subnet is None:
        return [fixed]  # Docker picks the subnet: a dynamic address cannot be named
    if client.net_raw:
        return list(network.subnet.hosts())  # ARP: it can stand in for any address on the bridge
    if fixed is not None:
        return [fixed]
    taken = {network.gateway} | {c.addresses.get(network.name) for c in node.containers.values()}
    pool = network.dynamic or network.subnet
    return [a for a in pool.hosts() if a not in taken]


def reaches(node: Node, client: str, entry_point: str) -> bool:
    """Does ``client`` (a container name, HOST, INTERNET or SELF) get past ``entry_point``?"""
    entry = node.entry_points[entry_point]
    traefik = node.traefik
    gateway_net = node.gateway_network(traefik)
    through_port = gateway_net is not None and _listens(entry, traefik.addresses.get(gateway_net.name))
    if client == SELF:
        return _listens(entry, ipaddress.ip_address("127.0.0.1")) and _admitted(entry, LOOPBACK)
    if client == HOST:
        paths: list[Address | None] = []
        if entry.published and through_port:
            paths.append(gateway_net.gateway)
        for name, address in traefik.addresses.items():  # straight to Traefik's address on a bridge
            if _listens(entry, address):
                paths.append(node.networks[name].gateway)
        return _admitted(entry, paths)
    if client == INTERNET:
        public = [a for a in entry.published if not a.is_loopback]
        return bool(public) and through_port and _admitted(entry, [PUBLIC_SAMPLE])
    container = node.containers[client]
    for name in set(container.addresses) & set(traefik.addresses):
        if _listens(entry, traefik.addresses[name]) and _admitted(
                entry, _container_sources(node, container, node.networks[name])):
            return True
    return False


def matrix(node: Node) -> dict[tuple[str, str], bool]:
    """(client, entry point) -> reaches, for every client (containers but Traefik, HOST, INTERNET, SELF)."""
    clients = [c for c in node.containers if c != node.proxy] + [HOST, INTERNET, SELF]
    return {(c, e): reaches(node, c, e) for c in clients for e in node.entry_points}


# -- from declared configuration ------------------------------------------------------------------


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.strip("[]"))


def entry_points_from(static: Mapping, dynamic: Mapping, ports: Sequence[Mapping]) -> dict[str, EntryPoint]:
    """Entry points from Traefik's static configuration, the file-provider middlewares their
    ``http.middlewares`` name, and the container's published ports (``internal``/``ip``)."""
    middlewares = dynamic.get("http", {}).get("middlewares", {})
    entry_points = {}
    for name, body in static["entryPoints"].items():
        host, _, port = body["address"].split("/", 1)[0].rpartition(":")
        allow = []
        for reference in (body.get("http") or {}).get("middlewares") or []:
            middleware_name, _, provider = reference.partition("@")
            if provider not in ("", "file") or middleware_name not in middlewares:
                raise ValueError(f"entry point {name}: middleware {reference} is not in the rendered file")
            ranges = middlewares[middleware_name].get("ipAllowList", {}).get("sourceRange")
            if ranges:
                allow.append(tuple(ipaddress.ip_network(r, strict=False) for r in ranges))
        published = tuple(_address(p.get("ip") or "0.0.0.0") for p in ports if p.get("internal") == int(port))
        entry_points[name] = EntryPoint(name=name, port=int(port), bind=_address(host) if host else None,
                                        allow=tuple(allow), published=published)
    return entry_points


def network_from(props: Mapping) -> Network:
    """A docker:index/network:Network's inputs (engine names: ipamConfigs, ipRange)."""
    ipam = (props.get("ipamConfigs") or [{}])[0]
    subnet = ipaddress.IPv4Network(ipam["subnet"]) if ipam.get("subnet") else None
    return Network(name=props["name"], internal=bool(props.get("internal")), subnet=subnet,
                   gateway=ipaddress.IPv4Address(ipam["gateway"]) if ipam.get("gateway") else None,
                   dynamic=ipaddress.IPv4Network(ipam["ipRange"]) if ipam.get("ipRange") else None)


def container_from(props: Mapping) -> Container:
    """A docker:index/container:Container's inputs."""
    drops = {c.upper() for c in (props.get("capabilities") or {}).get("drops") or []}
    addresses = {n["name"]: ipaddress.IPv4Address(n["ipv4Address"]) if n.get("ipv4Address") else None
                 for n in props.get("networksAdvanced") or []}
    return Container(name=props["name"], addresses=addresses, net_raw=not drops & {"NET_RAW", "ALL"})
