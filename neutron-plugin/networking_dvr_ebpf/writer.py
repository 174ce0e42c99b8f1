"""Read resources from Neutron (after their transaction committed) and write them to etcd.

Every write re-reads the resource from Neutron's database first, so what reaches etcd is
what Neutron holds now, whichever event asked for it; ``Store.put_resource`` keeps a newer
``revision_number`` from being overwritten by a slower writer. A resource Neutron no longer
has is deleted from etcd.
"""
import json
import logging
import threading

from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from networking_dvr_ebpf import config, shapes
from networking_dvr_ebpf.store import KINDS, encode, key

LOG = logging.getLogger(__name__)

# kind -> (plugin, single getter, list getter); plugin None is the core (ML2) plugin.
READERS = {
    "networks": (None, "get_network", "get_networks"),
    "subnets": (None, "get_subnet", "get_subnets"),
    "ports": (None, "get_port", "get_ports"),
    "routers": (plugin_constants.L3, "get_router", "get_routers"),
    "floatingips": (plugin_constants.L3, "get_floatingip", "get_floatingips"),
    "security_groups": (None, "get_security_group", "get_security_groups"),
    "security_group_rules": (None, "get_security_group_rule", "get_security_group_rules"),
    "address_groups": (None, "get_address_group", "get_address_groups"),
}


def admin():
    return n_context.get_admin_context()


def _plugin(kind):
    alias = READERS[kind][0]
    return directory.get_plugin(alias) if alias else directory.get_plugin()


def read_one(kind, rid):
    """Neutron's current dict of one resource, or None when it does not exist."""
    plugin = _plugin(kind)
    if plugin is None:
        return None
    try:
        return getattr(plugin, READERS[kind][1])(admin(), rid)
    except n_exc.NotFound:
        return None


def read_all(kind):
    plugin = _plugin(kind)
    if plugin is None:
        return []
    return getattr(plugin, READERS[kind][2])(admin())


def _drift(old_text, new):
    """What a resync found different: the fields, or that etcd lacked the resource."""
    if old_text is None:
        return "etcd lacked it"
    try:
        old = json.loads(old_text)
    except ValueError:
        return "etcd held no JSON"
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "fields " + ", ".join(fields)


class Writer:
    def __init__(self, store):
        self.store = store
        # Set when a write failed: the elected worker resyncs as soon as it can.
        self.dirty = threading.Event()

    def candidates(self):
        return shapes.snat_candidates(self.store.hosts(), config.conf().snat_hosts)

    def sync(self, kind, rid):
        """Make etcd hold what Neutron holds of one resource (never raises)."""
        try:
            self._sync(kind, rid)
        except Exception:
            LOG.exception("dvr_ebpf: writing %s/%s to etcd failed; a resync will repair it",
                          kind, rid)
            self.dirty.set()

    def _sync(self, kind, rid):
        value = read_one(kind, rid)
        if value is None:
            self.store.delete_resource(kind, rid)
            if kind == "security_groups":
                self._delete_rules_of(rid)
            return
        if kind == "ports" and shapes.names_router(value):
            # A router's ports are made before its own events: write the router first, so
            # the agents do not see a port naming a router they do not know.
            router = value.get("device_id")
            if router and self.store.get(key("routers", router)) is None:
                self._sync("routers", router)
        candidates = self.candidates() if kind == "routers" else ()
        self._put_checked(kind, rid, shapes.stored(kind, value, candidates))
        if kind == "security_groups":
            # Rules made with the group (its defaults) publish no events of their own.
            rules = value.get("security_group_rules") or []
            for rule in rules:
                self._put_checked("security_group_rules", rule["id"], rule)
            self._delete_rules_of(rid, keep={r["id"] for r in rules})

    def _put_checked(self, kind, rid, value):
        """Put, then make sure the resource was not deleted meanwhile.

        A delete committed between our read and our put would otherwise be undone by the
        put (its own etcd delete having come first). Returns True when etcd changed.
        """
        if not self.store.put_resource(kind, rid, value):
            return False
        if read_one(kind, rid) is None:
            self.store.delete_resource(kind, rid)
        return True

    def delete(self, kind, rid):
        try:
            self.store.delete_resource(kind, rid)
        except Exception:
            LOG.exception("dvr_ebpf: deleting %s/%s from etcd failed", kind, rid)
            self.dirty.set()

    def _delete_rules_of(self, sg_id, keep=frozenset()):
        for rid, text in self.store.resources("security_group_rules").items():
            if rid not in keep and f'"security_group_id":"{sg_id}"' in text:
                if read_one("security_group_rules", rid) is None:
                    self.store.delete_resource("security_group_rules", rid)

    def resync(self):
        """Repair drift both ways: put what differs, delete what Neutron no longer has.

        Returns {"put": n, "deleted": n}. A key Neutron does not list is deleted only after
        a second read finds it gone, so a resource created during the resync is kept.
        """
        candidates = self.candidates()
        put = deleted = 0
        for kind in KINDS:
            desired = {v["id"]: shapes.stored(kind, v, candidates) for v in read_all(kind)}
            stored = self.store.resources(kind)
            for rid, value in desired.items():
                if stored.get(rid) != encode(value) and self._put_checked(kind, rid, value):
                    LOG.info("dvr_ebpf: resync put %s/%s (%s)", kind, rid,
                             _drift(stored.get(rid), value))
                    put += 1
            for rid in stored.keys() - desired.keys():
                if read_one(kind, rid) is None:
                    self.store.delete_resource(kind, rid)
                    LOG.info("dvr_ebpf: resync deleted %s/%s (gone from Neutron)", kind, rid)
                    deleted += 1
        return {"put": put, "deleted": deleted}
