"""The ML2 mechanism driver: port binding, and the hooks that write resources to etcd."""
import logging

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins.ml2 import api

from networking_dvr_ebpf import config, leader, writer
from networking_dvr_ebpf.store import Store

LOG = logging.getLogger(__name__)

BINDABLE_TYPES = ("vxlan", "flat")

# Callback resource -> the etcd kind its events rewrite (networks, subnets and ports come
# through the ML2 postcommit methods instead).
CALLBACKS = {
    resources.ROUTER: "routers",
    resources.ROUTER_GATEWAY: "routers",
    resources.ROUTER_INTERFACE: "routers",
    resources.FLOATING_IP: "floatingips",
    resources.SECURITY_GROUP: "security_groups",
    resources.SECURITY_GROUP_RULE: "security_group_rules",
    resources.ADDRESS_GROUP: "address_groups",
}
AFTER = (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE)


def _id_of(payload):
    if payload.resource_id:
        return payload.resource_id
    for state in reversed(payload.states or ()):
        if isinstance(state, dict) and state.get("id"):
            return state["id"]
    return None


def _field_of(payload, field):
    for state in reversed(payload.states or ()):
        if isinstance(state, dict) and state.get(field):
            return state[field]
    return (payload.metadata or {}).get(field)


class DvrEbpfMechanismDriver(api.MechanismDriver):
    """Binds ports to dvr-agents (``vif_type`` ``tap``) and mirrors Neutron into etcd."""

    def initialize(self):
        c = config.conf()
        self.store = Store(c.etcd_host, c.etcd_port, c.etcd_timeout)
        self.writer = writer.Writer(self.store)
        self.leader = None
        for resource in CALLBACKS:
            for event in AFTER:
                registry.subscribe(self._on_event, resource, event)
        # After the API workers forked: each process runs its own leader candidate.
        registry.subscribe(self._start_leader, resources.PROCESS, events.AFTER_INIT)
        LOG.info("dvr_ebpf: writing to etcd at %s:%s", c.etcd_host, c.etcd_port)

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def _start_leader(self, resource, event, trigger, payload=None):
        if self.leader is None:
            self.leader = leader.Leader(self.writer)
            self.leader.start()

    # -- callbacks -----------------------------------------------------------------------

    def _on_event(self, resource, event, trigger, payload):
        kind = CALLBACKS[resource]
        rid = _id_of(payload)
        if rid is None:
            LOG.warning("dvr_ebpf: %s %s without a resource id; the resync repairs it",
                        resource, event)
            self.writer.dirty.set()
            return
        self.writer.sync(kind, rid)
        if resource == resources.SECURITY_GROUP_RULE:
            # The group's revision moves with its rules.
            sg_id = _field_of(payload, "security_group_id")
            if sg_id:
                self.writer.sync("security_groups", sg_id)
        if resource == resources.ROUTER_INTERFACE:
            port = (payload.metadata or {}).get("port") or {}
            if port.get("id"):
                self.writer.sync("ports", port["id"])

    # -- ML2 -----------------------------------------------------------------------------

    def create_network_postcommit(self, context):
        self.writer.sync("networks", context.current["id"])

    def update_network_postcommit(self, context):
        self.writer.sync("networks", context.current["id"])

    def delete_network_postcommit(self, context):
        self.writer.delete("networks", context.current["id"])

    # A network's dict lists its subnets: it changes with them.
    def create_subnet_postcommit(self, context):
        self.writer.sync("subnets", context.current["id"])
        self.writer.sync("networks", context.current["network_id"])

    def update_subnet_postcommit(self, context):
        self.writer.sync("subnets", context.current["id"])

    def delete_subnet_postcommit(self, context):
        self.writer.delete("subnets", context.current["id"])
        self.writer.sync("networks", context.current["network_id"])

    def create_port_postcommit(self, context):
        self.writer.sync("ports", context.current["id"])

    def update_port_postcommit(self, context):
        self.writer.sync("ports", context.current["id"])

    def delete_port_postcommit(self, context):
        self.writer.delete("ports", context.current["id"])

    def bind_port(self, context):
        """Bind on a host whose dvr-agent is alive; leave the port unbound otherwise.

        No other driver binding it, ML2 marks the port ``binding_failed``.
        """
        host = context.host
        vnic = context.current.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if vnic != portbindings.VNIC_NORMAL:
            return
        try:
            alive = self.store.alive(host)
        except Exception as e:
            LOG.warning("dvr_ebpf: cannot bind port %s: etcd unreachable: %s",
                        context.current["id"], e)
            return
        if not alive:
            LOG.warning("dvr_ebpf: not binding port %s: no live dvr-agent on host %s",
                        context.current["id"], host)
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] in BINDABLE_TYPES:
                context.set_binding(segment[api.ID], leader.VIF_TYPE,
                                    {portbindings.CAP_PORT_FILTER: True})
                return
        LOG.warning("dvr_ebpf: port %s: no vxlan or flat segment to bind",
                    context.current["id"])
