//! What one resource says about others, read from its JSON value without validating it: the
//! resources it names (`refs`), the groups it belongs to (`groups`: resources that a check
//! compares with each other, or that a host takes together), and the security groups whose
//! members its rules name (`remote_groups`).
//!
//! Keys are `<kind>/<id>` (the etcd key without its prefix). Ill-typed or missing fields
//! are simply not links here: validation reports them.
use std::sync::Arc;

use serde_json::Value;

use crate::model::OWNER_FLOATINGIP_AGENT_GATEWAY;

/// Groups a check compares within: every member of one must be validated with a changed
/// member (duplicate addresses and MACs on a network, overlapping subnets, a router's ports,
/// colliding segmentation ids, floating IP addresses, one FIP per fixed IP, host tunnel IPs
/// and DVR MACs, rule ids).
pub const CHECKED: [&str; 8] = [
    "net:", "seg:", "router:", "fipaddr:", "fipport:", "hosts", "sgrule:", "sg:",
];

/// The links of one resource. The store shares each name among all who hold it (a port's
/// `networks/<id>` is one allocation however many ports name it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Links {
    pub refs: Vec<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    pub remote_groups: Vec<Arc<str>>,
}

/// `<kind>/<id>`.
pub fn key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn list<'a>(v: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|l| l.iter())
        .into_iter()
        .flatten()
}

impl Links {
    fn refer(&mut self, kind: &str, id: Option<&str>) {
        if let Some(id) = id {
            self.refs.push(key(kind, id).into());
        }
    }

    fn group(&mut self, prefix: &str, id: Option<&str>) {
        if let Some(id) = id {
            self.groups.push(format!("{prefix}{id}").into());
        }
    }

    /// A security group rule's references (embedded in its group or on its own).
    fn rule(&mut self, r: &Value) {
        let remote = text(r, "remote_group_id");
        self.refer("security_groups", remote);
        if let Some(g) = remote {
            self.remote_groups.push(g.into());
        }
        self.refer("address_groups", text(r, "remote_address_group_id"));
        self.group("sgrule:", text(r, "id"));
    }

    /// The links of a resource of `kind` with value `v`, whose id is `id`.
    pub fn of(kind: &str, id: &str, v: &Value) -> Links {
        let mut l = Links::default();
        match kind {
            "networks" => {
                let seg = v.get("provider:segmentation_id").and_then(Value::as_u64);
                l.group("seg:", seg.map(|s| s.to_string()).as_deref());
                if v.get("router:external").and_then(Value::as_bool) == Some(true) {
                    l.groups.push("external".into());
                }
            }
            "subnets" => {
                l.refer("networks", text(v, "network_id"));
                l.group("net:", text(v, "network_id"));
            }
            "ports" => l.port(v),
            "routers" => {
                l.group("router:", Some(id));
                let gw = v.get("external_gateway_info").filter(|g| g.is_object());
                if let Some(gw) = gw {
                    l.refer("networks", text(gw, "network_id"));
                    for f in list(gw, "external_fixed_ips") {
                        l.refer("subnets", text(f, "subnet_id"));
                    }
                }
                for h in list(v, "ha_hosts") {
                    l.refer("hosts", text(h, "host"));
                    l.group("hahost:", text(h, "host"));
                }
            }
            "floatingips" => {
                l.refer("ports", text(v, "port_id"));
                l.refer("routers", text(v, "router_id"));
                l.refer("networks", text(v, "floating_network_id"));
                l.group("fipaddr:", text(v, "floating_ip_address"));
                l.group("fipport:", text(v, "port_id"));
                l.group("fiprouter:", text(v, "router_id"));
                if text(v, "port_id").is_none() {
                    l.group("fipfree:", text(v, "floating_network_id"));
                }
            }
            "hosts" => l.groups.push("hosts".into()),
            "security_groups" => {
                l.group("sg:", Some(id));
                for r in list(v, "security_group_rules") {
                    l.rule(r);
                }
            }
            "security_group_rules" => {
                l.refer("security_groups", text(v, "security_group_id"));
                l.group("sg:", text(v, "security_group_id"));
                l.rule(v);
            }
            _ => {}
        }
        l
    }

    fn port(&mut self, v: &Value) {
        let network = text(v, "network_id");
        self.refer("networks", network);
        self.group("net:", network);
        for f in list(v, "fixed_ips") {
            self.refer("subnets", text(f, "subnet_id"));
        }
        let host = text(v, "binding:host_id");
        self.refer("hosts", host);
        self.group("host:", host);
        for g in list(v, "security_groups") {
            self.refer("security_groups", g.as_str());
            self.group("sgm:", g.as_str());
        }
        let owner = text(v, "device_owner").unwrap_or_default();
        let device = text(v, "device_id");
        if owner == OWNER_FLOATINGIP_AGENT_GATEWAY {
            self.refer("hosts", device);
            self.group("fghost:", device);
            self.group("fgbound:", host);
        } else if owner.starts_with("network:") && owner.contains("router") {
            self.refer("routers", device);
            self.group("router:", device);
            if owner.contains("interface") {
                self.group("rif:", network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(l: &[Arc<str>]) -> Vec<&str> {
        l.iter().map(|s| &**s).collect()
    }

    #[test]
    fn a_port_names_its_network_subnets_host_groups_and_router() {
        let v = json!({"network_id": "n1", "fixed_ips": [{"subnet_id": "s1"}, {"subnet_id": "s6"}],
            "binding:host_id": "h1", "security_groups": ["sg1"],
            "device_owner": "network:router_interface_distributed", "device_id": "r1"});
        let l = Links::of("ports", "p1", &v);
        assert_eq!(
            names(&l.refs),
            [
                "networks/n1",
                "subnets/s1",
                "subnets/s6",
                "hosts/h1",
                "security_groups/sg1",
                "routers/r1"
            ]
        );
        assert_eq!(
            names(&l.groups),
            ["net:n1", "host:h1", "sgm:sg1", "router:r1", "rif:n1"]
        );
    }

    #[test]
    fn rules_name_their_remote_groups_wherever_they_are() {
        let sg = json!({"security_group_rules": [{"id": "r1", "remote_group_id": "sg2"},
            {"id": "r2", "remote_address_group_id": "ag1"}]});
        let l = Links::of("security_groups", "sg1", &sg);
        assert_eq!(
            names(&l.refs),
            ["security_groups/sg2", "address_groups/ag1"]
        );
        assert_eq!(names(&l.remote_groups), ["sg2"]);
        assert_eq!(names(&l.groups), ["sg:sg1", "sgrule:r1", "sgrule:r2"]);
        let rule = json!({"id": "r3", "security_group_id": "sg1", "remote_group_id": "sg1"});
        let l = Links::of("security_group_rules", "r3", &rule);
        assert_eq!(
            names(&l.refs),
            ["security_groups/sg1", "security_groups/sg1"]
        );
        assert_eq!(names(&l.remote_groups), ["sg1"]);
    }

    #[test]
    fn ill_typed_fields_are_no_links() {
        let v = json!({"network_id": 5, "fixed_ips": "x", "binding:host_id": ""});
        assert_eq!(Links::of("ports", "p", &v), Links::default());
    }
}
