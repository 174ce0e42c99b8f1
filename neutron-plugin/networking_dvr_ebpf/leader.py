"""The elected neutron-server worker: periodic resync and port status.

Every worker runs a :class:`Leader` thread; the one whose create-if-absent of
``/dvr/plugin/leader`` (under its own lease) succeeded leads until its lease is lost.
The leader:

- resyncs everything when it is elected, every ``resync_interval``, when a write of any
  worker in this process failed, and when etcd restarted (its raft term changed: a watch
  on a restarted etcd may have missed events);
- watches ``/dvr/status/`` and sets each port the agents report wired ACTIVE, and DOWN
  when the report goes (the agent's lease ended, or the port left the host), so Nova's
  ``network-vif-plugged`` event fires;
- watches ``/dvr/v1/hosts/``: when the set of SNAT candidates changes (a dvr_snat host
  registered or went), routers are rewritten with the new ``ha_hosts``.

A worker that dies leaves the role when its lease ends (``leader_ttl``); a live one that
cannot reach etcd stops leading at its next failed refresh.
"""
import logging
import os
import queue
import socket
import threading
import time

from etcd3gw import watch as etcd_watch
from neutron_lib import constants as n_const
from neutron_lib.plugins import directory

from networking_dvr_ebpf import config, writer as writer_mod
from networking_dvr_ebpf.store import HOSTS, LEADER, STATUS, parse_status_key

LOG = logging.getLogger(__name__)

VIF_TYPE = "tap"
TICK = 0.2
HEALTH_EVERY = 1.0


def _range_end(prefix):
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class LostLeadership(Exception):
    pass


class Leader(threading.Thread):
    def __init__(self, writer):
        super().__init__(name="dvr-ebpf-leader", daemon=True)
        self.writer = writer
        self.store = writer.store
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self.resyncs = 0

    def run(self):
        while True:
            try:
                self._term()
            except LostLeadership as e:
                LOG.warning("dvr_ebpf: no longer the resync leader: %s", e)
            except Exception as e:  # etcd unreachable, Neutron DB busy: try again
                LOG.warning("dvr_ebpf: leader loop: %s; retrying", e)
            time.sleep(1.0)

    # -- one term ----------------------------------------------------------------------

    def _term(self):
        c = config.conf()
        lease = self.store.client.lease(c.leader_ttl)
        while not self.store.client.create(LEADER, self.me, lease=lease):
            lease.refresh()
            time.sleep(min(1.0, c.leader_ttl / 3))
        LOG.info("dvr_ebpf: %s is the resync leader", self.me)
        events = queue.Queue()
        watchers = [
            etcd_watch.Watcher(self.store.client, p, events.put, range_end=_range_end(p))
            for p in (STATUS, HOSTS)
        ]
        try:
            self._lead(lease, events)
        finally:
            for w in watchers:
                w.stop()
            try:
                lease.revoke()
            except Exception:
                pass

    def _lead(self, lease, events):
        c = config.conf()
        term = self.store.raft_term()
        candidates = self.writer.candidates()
        self._resync()
        next_resync = time.monotonic() + c.resync_interval
        next_refresh = next_health = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                if lease.refresh() <= 0:
                    raise LostLeadership("lease expired")
                next_refresh = now + c.leader_ttl / 3
            if now >= next_health:
                if self.store.raft_term() != term:
                    raise LostLeadership("etcd restarted: electing and resyncing anew")
                next_health = now + HEALTH_EVERY
            if now >= next_resync or self.writer.dirty.is_set():
                self._resync()
                next_resync = now + c.resync_interval
            try:
                event = events.get(timeout=TICK)
            except queue.Empty:
                continue
            hosts_changed = False
            while event is not None:
                key = event["kv"]["key"]
                key = key.decode() if isinstance(key, bytes) else key
                if key.startswith(HOSTS):
                    hosts_changed = True
                else:
                    self._status_event(key, event.get("type") != "DELETE")
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    event = None
            if hosts_changed:
                now_candidates = self.writer.candidates()
                if now_candidates != candidates:
                    LOG.info("dvr_ebpf: SNAT candidates now %s", now_candidates)
                    candidates = now_candidates
                    for r in writer_mod.read_all("routers"):
                        self.writer.sync("routers", r["id"])

    def _resync(self):
        self.writer.dirty.clear()
        counts = self.writer.resync()
        self.resyncs += 1
        statuses = self._status_all()
        LOG.info("dvr_ebpf: resync %d: put %d, deleted %d, statuses changed %d",
                 self.resyncs, counts["put"], counts["deleted"], statuses)

    # -- port status -------------------------------------------------------------------

    def _status_event(self, key, up):
        host_port = parse_status_key(key)
        if host_port is None:
            return
        host, port_id = host_port
        port = writer_mod.read_one("ports", port_id)
        if port is None or port.get("binding:host_id") != host:
            return
        self._set_status(port, n_const.PORT_STATUS_ACTIVE if up else n_const.PORT_STATUS_DOWN)

    def _status_all(self):
        wired = self.store.statuses()
        changed = 0
        for port in writer_mod.read_all("ports"):
            if port.get("binding:vif_type") != VIF_TYPE:
                continue
            up = (port.get("binding:host_id"), port["id"]) in wired
            changed += self._set_status(
                port, n_const.PORT_STATUS_ACTIVE if up else n_const.PORT_STATUS_DOWN)
        return changed

    @staticmethod
    def _set_status(port, status):
        if port.get("status") == status:
            return 0
        directory.get_plugin().update_port_status(
            writer_mod.admin(), port["id"], status, host=port.get("binding:host_id"))
        LOG.info("dvr_ebpf: port %s on %s is %s", port["id"], port.get("binding:host_id"),
                 status)
        return 1
