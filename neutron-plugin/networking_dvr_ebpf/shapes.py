"""Neutron API dicts -> the values stored in etcd. Pure functions: no Neutron, no etcd.

The stored value is the API dict itself (the agents read Neutron's shapes, unknown fields
ignored), with two changes:

- a security group is stored without its nested ``security_group_rules``: each rule is a
  resource of its own (``security_group_rules/<id>``), as the API lists them;
- a router with an external gateway is placed on the SNAT hosts: ``ha`` true and
  ``ha_hosts`` all candidate ``dvr_snat`` hosts, so the agents' election picks the one that
  serves its centralized role (SNAT, central floating IPs), with no Neutron L3 agent.
"""
import zlib

SNAT_PRIORITY = 100


def snat_candidates(hosts, configured=()):
    """The hosts that may serve routers' centralized roles, by name.

    ``hosts``: {name: registered host record}; ``configured``: the operator's list
    (``[dvr_ebpf] snat_hosts``), empty for all. A candidate is ``dvr_snat`` with an external
    interface, as the agents' validation requires of ``ha_hosts``.
    """
    wanted = set(configured)
    return sorted(
        name
        for name, h in hosts.items()
        if h.get("agent_mode") == "dvr_snat"
        and h.get("external_interface")
        and (not wanted or name in wanted)
    )


def ha_hosts(router_id, candidates):
    """Every candidate, in an order of preference that differs between routers.

    The list is rotated by a hash of the router id, so routers spread over the SNAT hosts
    (Neutron's L3 scheduler spreads them by load); priorities fall from the first.
    """
    if not candidates:
        return []
    start = zlib.crc32(router_id.encode()) % len(candidates)
    order = candidates[start:] + candidates[:start]
    return [{"host": h, "priority": SNAT_PRIORITY + len(order) - i} for i, h in enumerate(order)]


def router(value, candidates):
    out = dict(value)
    gateway = out.get("external_gateway_info")
    placed = ha_hosts(out["id"], candidates) if gateway else []
    out["ha"] = bool(placed)
    out["ha_hosts"] = placed
    return out


def security_group(value):
    out = dict(value)
    out.pop("security_group_rules", None)
    return out


ROUTER_OWNERS = (
    "network:router_interface",
    "network:router_interface_distributed",
    "network:router_centralized_snat",
    "network:router_gateway",
    "network:ha_router_replicated_interface",
)


def names_router(port):
    """Whether a port's ``device_id`` is a router's id."""
    return port.get("device_owner") in ROUTER_OWNERS


def stored(kind, value, candidates=()):
    """The value to store for one resource of ``kind`` (``candidates``: SNAT hosts)."""
    if kind == "routers":
        return router(value, list(candidates))
    if kind == "security_groups":
        return security_group(value)
    return dict(value)
