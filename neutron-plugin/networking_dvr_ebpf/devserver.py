"""A one-process neutron-server for the test bed and the demo (not for production).

Neutron 29 ships its API as the WSGI application ``neutron.wsgi.api:application``; this
serves it with the standard library's ``wsgiref`` on one address, with a SQLite database
whose tables are made from the models (``neutron-db-manage`` cannot ALTER constraints on
SQLite), no authentication, no message queue, ML2 with this driver and the router plugin
with distributed routers.

    python -m networking_dvr_ebpf.devserver --state-dir DIR --listen 127.0.0.1:9696 \
        --etcd 192.0.2.254:2379 [--resync-interval 60]

It prints ``ready <url>`` once the API answers. Restarting it on the same ``--state-dir``
keeps the database.
"""
import argparse
import json
import os
import sys
import threading
import urllib.request
from wsgiref import simple_server

NEUTRON_CONF = """[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = noauth
transport_url = fake:/
router_distributed = True
allow_overlapping_ips = True
host = {host}
state_path = {state}
log_file = {state}/neutron.log
debug = False
api_workers = 1
api_paste_config = {paste}

[database]
connection = sqlite:///{state}/neutron.sqlite

[oslo_concurrency]
lock_path = {state}/lock

[ml2]
type_drivers = flat,vxlan
tenant_network_types = vxlan
mechanism_drivers = dvr_ebpf
extension_drivers = port_security

[ml2_type_vxlan]
vni_ranges = {vni_ranges}

[ml2_type_flat]
flat_networks = *

[dvr_ebpf]
etcd_host = {etcd_host}
etcd_port = {etcd_port}
resync_interval = {resync}
leader_ttl = {leader_ttl}
"""

# Neutron's default security group rule templates (a data migration makes them; tables
# made from the models have none): egress anywhere in every group, ingress from the group's
# own members in a project's default group.
DEFAULT_RULES = [
    {"direction": "egress", "ethertype": e, "used_in_default_sg": True,
     "used_in_non_default_sg": True}
    for e in ("IPv4", "IPv6")
] + [
    {"direction": "ingress", "ethertype": e, "remote_group_id": "PARENT",
     "used_in_default_sg": True, "used_in_non_default_sg": False}
    for e in ("IPv4", "IPv6")
]


class QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


def write_config(args):
    etcd_host, etcd_port = args.etcd.rsplit(":", 1)
    os.makedirs(os.path.join(args.state_dir, "lock"), exist_ok=True)
    path = os.path.join(args.state_dir, "neutron.conf")
    with open(path, "w") as f:
        f.write(NEUTRON_CONF.format(
            host=args.host, state=os.path.abspath(args.state_dir),
            vni_ranges=args.vni_ranges, etcd_host=etcd_host, etcd_port=etcd_port,
            resync=args.resync_interval, leader_ttl=args.leader_ttl,
            paste=os.path.join(sys.prefix, "etc", "neutron", "api-paste.ini")))
    os.environ["OS_NEUTRON_CONFIG_DIR"] = os.path.abspath(args.state_dir)
    os.environ["OS_NEUTRON_CONFIG_FILES"] = "neutron.conf"
    return path


def create_tables(state_dir):
    """Tables from the models, once (a new database). Returns True if it made them."""
    db = os.path.join(state_dir, "neutron.sqlite")
    if os.path.exists(db):
        return False
    import sqlalchemy
    from neutron.db.migration.models import head  # noqa: F401 (registers every model)
    from neutron_lib.db import model_base

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    model_base.BASEV2.metadata.create_all(engine)
    engine.dispose()
    return True


def post(url, path, body):
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def first_boot(url):
    for rule in DEFAULT_RULES:
        post(url, "/v2.0/default-security-group-rules", {"default_security_group_rule": rule})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", required=True)
    p.add_argument("--listen", default="127.0.0.1:9696")
    p.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client address HOST:PORT")
    p.add_argument("--host", default="neutron-server")
    p.add_argument("--vni-ranges", default="1000:1999")
    p.add_argument("--resync-interval", type=int, default=60)
    p.add_argument("--leader-ttl", type=int, default=10)
    args = p.parse_args(argv)

    write_config(args)
    new = create_tables(args.state_dir)
    sys.argv = [sys.argv[0]]  # Neutron parses the command line itself
    from neutron.wsgi.api import application

    addr, port = args.listen.rsplit(":", 1)
    server = simple_server.make_server(addr, int(port), application,
                                       handler_class=QuietHandler)
    url = f"http://{args.listen}"

    def announce():
        if new:
            first_boot(url)
        print(f"ready {url}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
