"""The etcd side: the key layout the dvr-agents read, and guarded writes.

Keys (the agents' side is ``dvr-userspace/src/source``):

- ``/dvr/v1/<kind>/<id>``: one resource, its JSON in the shape of Neutron's API;
- ``/dvr/v1/hosts/<name>``: written by each agent when it registers (never by the plugin);
- ``/dvr/v1/alive/<name>``: exists while the host's agent lives (under its lease);
- ``/dvr/status/<host>/<port id>``: the agent has attached the port's tap and written its
  entries (under the agent's lease);
- ``/dvr/plugin/leader``: the neutron-server worker that resyncs and reports status.
"""
import json
import logging

from etcd3gw.client import Etcd3Client

LOG = logging.getLogger(__name__)

PREFIX = "/dvr/v1/"
ALIVE = PREFIX + "alive/"
HOSTS = PREFIX + "hosts/"
STATUS = "/dvr/status/"
LEADER = "/dvr/plugin/leader"

# The resource kinds the plugin owns (``hosts`` belong to the agents).
KINDS = (
    "networks",
    "subnets",
    "ports",
    "routers",
    "floatingips",
    "security_groups",
    "security_group_rules",
    "address_groups",
)


def key(kind, rid):
    return f"{PREFIX}{kind}/{rid}"


def encode(value):
    """The stored text of a resource: canonical JSON, so equal values compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _text(raw):
    return raw.decode() if isinstance(raw, bytes) else raw


def revision_of(text):
    """Neutron's ``revision_number`` of a stored value (None if it has none)."""
    try:
        return json.loads(text).get("revision_number")
    except (ValueError, AttributeError):
        return None


class Store:
    """etcd through etcd3gw (the client OpenStack's own etcd users take)."""

    def __init__(self, host, port, timeout):
        self.client = Etcd3Client(host=host, port=port, timeout=timeout)

    # -- resources ---------------------------------------------------------------------

    def get(self, full_key):
        got = self.client.get(full_key)
        return _text(got[0]) if got else None

    def put_resource(self, kind, rid, value, attempts=8):
        """Put a resource unless etcd already holds a newer revision of it.

        Compare-and-swap on the value read: a concurrent writer that stored a higher
        ``revision_number`` in between wins, whatever order the two requests reach etcd.
        Returns True when etcd changed.
        """
        k = key(kind, rid)
        new = encode(value)
        new_rev = value.get("revision_number")
        for _ in range(attempts):
            old = self.get(k)
            if old == new:
                return False
            if old is None:
                if self.client.create(k, new):
                    return True
                continue
            old_rev = revision_of(old)
            if old_rev is not None and new_rev is not None and old_rev > new_rev:
                LOG.debug("%s: etcd holds revision %s, newer than %s", k, old_rev, new_rev)
                return False
            if self.client.replace(k, old, new):
                return True
        raise RuntimeError(f"{k}: value kept changing during {attempts} attempts")

    def delete_resource(self, kind, rid):
        return self.client.delete(key(kind, rid))

    def resources(self, kind):
        """{id: stored text} of one kind."""
        out = {}
        prefix = f"{PREFIX}{kind}/"
        for value, meta in self.client.get_prefix(prefix):
            out[_text(meta["key"])[len(prefix):]] = _text(value)
        return out

    # -- what the agents write ---------------------------------------------------------

    def alive(self, host):
        return bool(self.client.get(ALIVE + host))

    def hosts(self):
        """{name: host record} of the registered hosts."""
        out = {}
        for value, meta in self.client.get_prefix(HOSTS):
            try:
                out[_text(meta["key"])[len(HOSTS):]] = json.loads(_text(value))
            except ValueError:
                LOG.warning("%s: not JSON, ignored", _text(meta["key"]))
        return out

    def statuses(self):
        """{(host, port id)} of the ports agents report as wired."""
        out = set()
        for _value, meta in self.client.get_prefix(STATUS):
            host_port = parse_status_key(_text(meta["key"]))
            if host_port:
                out.add(host_port)
        return out

    def raft_term(self):
        """etcd's raft term: it changes when etcd restarts (or re-elects)."""
        return int(self.client.status()["header"]["raft_term"])


def parse_status_key(k):
    rest = k[len(STATUS):] if k.startswith(STATUS) else None
    if not rest or "/" not in rest:
        return None
    host, port = rest.split("/", 1)
    return (host, port) if host and port else None
