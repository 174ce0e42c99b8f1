"""Unit tests of the pure conversions (run by `cargo xtask test` in the Neutron venv)."""
import unittest

from networking_dvr_ebpf import shapes, store

HOSTS = {
    "snat-b": {"agent_mode": "dvr_snat", "external_interface": "ext0"},
    "snat-a": {"agent_mode": "dvr_snat", "external_interface": "ext0"},
    "compute": {"agent_mode": "dvr", "external_interface": "ext0"},
    "snat-noext": {"agent_mode": "dvr_snat"},
}


class Shapes(unittest.TestCase):
    def test_candidates_are_dvr_snat_hosts_with_external(self):
        self.assertEqual(shapes.snat_candidates(HOSTS), ["snat-a", "snat-b"])
        self.assertEqual(shapes.snat_candidates(HOSTS, ["snat-b", "compute"]), ["snat-b"])

    def test_router_with_gateway_is_placed_on_every_candidate(self):
        r = {"id": "r1", "external_gateway_info": {"network_id": "ext"}, "ha": False}
        out = shapes.router(r, ["snat-a", "snat-b"])
        self.assertTrue(out["ha"])
        self.assertEqual(sorted(h["host"] for h in out["ha_hosts"]), ["snat-a", "snat-b"])
        self.assertEqual(len({h["priority"] for h in out["ha_hosts"]}), 2)
        self.assertFalse(r["ha"], "the input is not changed")

    def test_preference_differs_between_routers(self):
        firsts = {
            shapes.ha_hosts(f"router-{i}", ["a", "b", "c"])[0]["host"] for i in range(30)
        }
        self.assertEqual(firsts, {"a", "b", "c"})

    def test_router_without_gateway_or_candidates_is_not_ha(self):
        out = shapes.router({"id": "r1", "external_gateway_info": None, "ha": True}, ["a"])
        self.assertEqual((out["ha"], out["ha_hosts"]), (False, []))
        out = shapes.router({"id": "r1", "external_gateway_info": {"network_id": "e"}}, [])
        self.assertEqual((out["ha"], out["ha_hosts"]), (False, []))

    def test_security_group_is_stored_without_nested_rules(self):
        sg = {"id": "sg1", "security_group_rules": [{"id": "x"}], "stateful": True}
        self.assertEqual(shapes.stored("security_groups", sg), {"id": "sg1", "stateful": True})

    def test_router_ports_name_their_router(self):
        self.assertTrue(shapes.names_router({"device_owner": "network:router_gateway"}))
        self.assertFalse(shapes.names_router({"device_owner": "compute:nova"}))
        self.assertFalse(shapes.names_router({}))

    def test_encoding_is_canonical_and_revision_readable(self):
        a = store.encode({"b": 1, "a": 2, "revision_number": 7})
        self.assertEqual(a, '{"a":2,"b":1,"revision_number":7}')
        self.assertEqual(store.revision_of(a), 7)
        self.assertIsNone(store.revision_of("not json"))

    def test_status_keys(self):
        self.assertEqual(store.parse_status_key("/dvr/status/h1/p-1"), ("h1", "p-1"))
        self.assertIsNone(store.parse_status_key("/dvr/status/h1"))
        self.assertIsNone(store.parse_status_key("/dvr/v1/ports/p"))


if __name__ == "__main__":
    unittest.main()
