"""NetworkPolicy semantics, enough to answer "can pod A reach pod B on port P?".

Follows the networking.k8s.io/v1 rules (kubernetes.io/docs/concepts/services-networking/network-policies):
  * a pod is isolated for ingress (egress) when at least one policy in its namespace selects it
    with that policy type; an isolated pod accepts (sends) only what some such policy allows;
    a pod no policy selects accepts and sends everything;
  * a connection needs both: the source's egress allows it and the destination's ingress does;
  * a peer with only ``podSelector`` means pods of the policy's own namespace; with only
    ``namespaceSelector``, every pod of the matching namespaces; with both, matching pods in
    matching namespaces; ``ipBlock`` matches addresses, and (the conservative reading the
    docs leave open to the plugin, which Calico and Cilium take) pod addresses too;
  * an empty or missing ``from``/``to`` matches every peer, missing ``ports`` every port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: outside the cluster (no pod, no policy applies to it)
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = "10.0.0.1"

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: an empty one ({}) matches everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(excluded) for excluded in block.get("except") or [])
    if other.namespace is None:
        return False  # pod and namespace selectors never match outside the cluster
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(rule_ports: Iterable[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    rule_ports = list(rule_ports or [])
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low, high = entry["port"], entry.get("endPort", entry["port"])
        if not isinstance(low, int):
            raise ValueError(f"named ports are not modelled here: {entry}")
        if low <= port <= high:
            return True
    return False


class Policies:
    def __init__(self, policies: Iterable[Mapping[str, Any]]):
        self.policies = [p for p in policies if p["kind"] == "NetworkPolicy"]

    def _selecting(self, pod: Endpoint, direction: str) -> list[Mapping[str, Any]]:
        if pod.namespace is None:
            return []
        return [p for p in self.policies
                if p["metadata"]["namespace"] == pod.namespace
                and direction in p["spec"].get("policyTypes", ["Ingress"])
                and selector_matches(p["spec"]["podSelector"], pod.labels)]

    def _allows(self, pod: Endpoint, other: Endpoint, port: int, protocol: str, direction: str) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True  # not isolated in this direction
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in selecting:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key) or []
                if (not peers or any(_peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers)) \
                        and _port_matches(rule.get("ports"), port, protocol):
                    return True
        return False

    def can_reach(self, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return (self._allows(source, destination, port, protocol, "Egress")
                and self._allows(destination, source, port, protocol, "Ingress"))
