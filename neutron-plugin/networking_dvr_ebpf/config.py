"""The ``[dvr_ebpf]`` options of neutron-server's configuration."""
from oslo_config import cfg

GROUP = "dvr_ebpf"

OPTS = [
    cfg.StrOpt("etcd_host", default="127.0.0.1",
               help="Address of the etcd cluster the dvr-agents read (its gRPC gateway)."),
    cfg.PortOpt("etcd_port", default=2379, help="etcd client port."),
    cfg.FloatOpt("etcd_timeout", default=5.0,
                 help="Seconds one etcd request may take before it counts as failed."),
    cfg.IntOpt("resync_interval", default=60, min=1,
               help="Seconds between two full resyncs of Neutron's resources into etcd "
                    "(made by the elected neutron-server worker only)."),
    cfg.IntOpt("leader_ttl", default=10, min=2,
               help="Seconds the elected worker's etcd lease lives without a refresh; "
                    "another worker takes over this long after the leader dies."),
    cfg.ListOpt("snat_hosts", default=[],
                help="The dvr_snat hosts that may hold a router's centralized role (SNAT, "
                     "central floating IPs). Empty: every registered dvr_snat host with an "
                     "external interface."),
]

cfg.CONF.register_opts(OPTS, GROUP)


def conf():
    return cfg.CONF[GROUP]


def list_opts():
    return [(GROUP, OPTS)]
