//! Neutron-shaped router state and its validation.
//!
//! The state file is one JSON object with the lists `networks`, `subnets`, `ports`, `routers`,
//! `floatingips` and `hosts`, each element shaped like the Neutron API object of that name
//! (same field names, e.g. `provider:segmentation_id`, `binding:host_id`). A missing list is
//! empty and unknown fields are ignored, so a dump of the Neutron API can be used as is.
//!
//! Each element is read field by field from its JSON value ([`crate::json`]) rather than through a
//! derived `Deserialize`, so that every missing or ill-typed field is reported with the element
//! id and the field path (`port 5b3c…: field `fixed_ips[1].ip_address`: ...`), and all of them
//! are reported at once. After parsing, the state uses strong types (`Ipv4Addr`, `Ipv4Net`,
//! `[u8; 6]` MACs) and a [`State`] only exists if the whole state validated: the compiler can
//! rely on every reference resolving.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
/// The state's indexes hash ids it parsed itself; foldhash is several times faster than
/// SipHash on them (a tenth of load time at 10,000 ports).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::json::{Object, Value};
use ipnet::{IpNet, Ipv4Net};

/// An Ethernet MAC address, as it sits in the frame.
pub type Mac = dvr_common::Mac;

/// `device_owner` of a DVR router interface port (one per router and subnet, same MAC and IP
/// on every host).
pub const OWNER_ROUTER_INTERFACE_DISTRIBUTED: &str = "network:router_interface_distributed";
/// `device_owner` of the centralized SNAT port of a DVR router (on the `dvr_snat` host).
pub const OWNER_ROUTER_CENTRALIZED_SNAT: &str = "network:router_centralized_snat";
/// `device_owner` of a router's port on its external network.
pub const OWNER_ROUTER_GATEWAY: &str = "network:router_gateway";
/// `device_owner` of a host's port on an external network (Neutron's "FIP agent gateway",
/// `fg-` device): `device_id` (and usually `binding:host_id`) is the host name.
pub const OWNER_FLOATINGIP_AGENT_GATEWAY: &str = "network:floatingip_agent_gateway";
/// `device_owner` prefix of Nova instance ports (`compute:<availability zone>`).
pub const OWNER_COMPUTE_PREFIX: &str = "compute:";
/// `device_owner` prefix of the ports Neutron's own services hold (`network:dhcp`, router
/// interfaces, SNAT and gateway ports, ...).
pub const OWNER_NETWORK_PREFIX: &str = "network:";
/// The only tenant network type this datapath carries.
pub const NETWORK_TYPE_VXLAN: &str = "vxlan";
/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;
/// Network MTU when the state does not say (Neutron's default for VXLAN on a 1500 underlay).
pub const DEFAULT_MTU: u32 = 1450;

/// A Neutron network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub name: Option<String>,
    /// `provider:network_type`: `vxlan`, `flat`, `vlan`, `local`, ...
    pub network_type: String,
    /// `provider:physical_network` (flat and vlan networks).
    pub physical_network: Option<String>,
    /// `provider:segmentation_id`: the VNI of a VXLAN network.
    pub segmentation_id: Option<u32>,
    /// `router:external`.
    pub external: bool,
    pub mtu: u32,
}

impl Network {
    /// True for the networks this datapath carries between hosts: internal VXLAN networks.
    pub fn is_tenant(&self) -> bool {
        !self.external && self.network_type == NETWORK_TYPE_VXLAN
    }

    /// The VNI of a tenant network, `None` for any other network.
    pub fn tenant_vni(&self) -> Option<u32> {
        if self.is_tenant() {
            self.segmentation_id
        } else {
            None
        }
    }
}

/// A Neutron IPv4 subnet (IPv6 subnets are rejected by validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    /// No host bits set.
    pub cidr: Ipv4Net,
    pub gateway_ip: Option<Ipv4Addr>,
}

/// One entry of `fixed_ips` (of a port, or of a router's `external_fixed_ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip: Ipv4Addr,
}

/// One entry of a port's `allowed_address_pairs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPair {
    /// The allowed source prefix; a plain address is a /32. May have host bits set, as
    /// Neutron accepts them; users take `net.network()`.
    pub net: Ipv4Net,
    /// The allowed source MAC (the port's own MAC when the pair does not name one).
    pub mac: Mac,
}

impl AddressPair {
    /// True when the pair allows `ip` as a source: an exact address, or a prefix holding it
    /// (host bits of the prefix ignored, as Neutron does).
    pub fn allows(&self, ip: Ipv4Addr) -> bool {
        self.net.contains(&ip)
    }
}

/// A Neutron port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub mac: Mac,
    pub fixed_ips: Vec<FixedIp>,
    pub device_owner: String,
    pub device_id: String,
    /// `binding:host_id`, `None` when unbound (absent, null or "").
    pub host_id: Option<String>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub port_security_enabled: bool,
}

impl Port {
    /// A Nova instance port (`device_owner` `compute:*`).
    pub fn is_compute(&self) -> bool {
        self.device_owner.starts_with(OWNER_COMPUTE_PREFIX)
    }

    /// A VM port: a compute port bound to a host. Only these are endpoints in the datapath.
    pub fn is_vm(&self) -> bool {
        self.is_compute() && self.host_id.is_some()
    }

    /// A DVR router interface (`network:router_interface_distributed`).
    pub fn is_distributed_interface(&self) -> bool {
        self.device_owner == OWNER_ROUTER_INTERFACE_DISTRIBUTED
    }

    /// A router's centralized SNAT port (`network:router_centralized_snat`): one per subnet
    /// with an interface, bound to the router's SNAT host.
    pub fn is_centralized_snat(&self) -> bool {
        self.device_owner == OWNER_ROUTER_CENTRALIZED_SNAT
    }

    /// A host's port on an external network (`network:floatingip_agent_gateway`).
    pub fn is_floatingip_agent_gateway(&self) -> bool {
        self.device_owner == OWNER_FLOATINGIP_AGENT_GATEWAY
    }

    /// A port that may carry a VIP: unbound (no `binding:host_id`) and held by no service:
    /// not a Neutron service port (`network:*`: router interfaces are unbound too, and a
    /// `0.0.0.0/0` address pair must not turn the gateway into a VIP) and not an instance port
    /// waiting for its binding (`compute:*`). Keepalived VIP ports are created this way, with
    /// an empty `device_owner`. It is a VIP only if VMs list its address in their allowed
    /// address pairs (decided by the compiler).
    pub fn may_be_vip(&self) -> bool {
        self.host_id.is_none()
            && !self.is_compute()
            && !self.device_owner.starts_with(OWNER_NETWORK_PREFIX)
    }

    /// A port owned by a router: its `device_id` is the router id.
    pub fn is_router_owned(&self) -> bool {
        matches!(
            self.device_owner.as_str(),
            OWNER_ROUTER_INTERFACE_DISTRIBUTED
                | OWNER_ROUTER_CENTRALIZED_SNAT
                | OWNER_ROUTER_GATEWAY
        )
    }
}

/// A router's `external_gateway_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalGateway {
    pub network_id: String,
    pub enable_snat: bool,
    pub external_fixed_ips: Vec<FixedIp>,
}

/// A Neutron router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub name: Option<String>,
    pub external_gateway: Option<ExternalGateway>,
    pub distributed: bool,
    pub ha: bool,
    /// `ha_hosts`: the `dvr_snat` hosts that may hold the router's centralized role, as
    /// listed (see [`Router::ha_candidates`] for the order of preference).
    pub ha_hosts: Vec<HaHost>,
}

/// One entry of a router's `ha_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaHost {
    pub host: String,
    /// Higher is preferred; ties go to the host name that sorts first.
    pub priority: u32,
}

impl Router {
    /// True when the router's centralized role is elected among `ha_hosts` (docs/HA.md);
    /// otherwise it is where its csnat ports are bound.
    pub fn is_ha_managed(&self) -> bool {
        self.ha && !self.ha_hosts.is_empty()
    }

    /// `ha_hosts`, most preferred first.
    pub fn ha_candidates(&self) -> Vec<&HaHost> {
        let mut c: Vec<&HaHost> = self.ha_hosts.iter().collect();
        c.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.host.cmp(&b.host))
        });
        c
    }
}

/// Who holds the centralized role of HA routers right now, as the agent learned it from
/// etcd. Not part of the Neutron state: it never makes a state invalid, and a holder that
/// is not a candidate of the router is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaRuntime {
    /// Router id -> the host last known to hold its role (kept while the role is vacant, so
    /// compute hosts keep steering somewhere during an election).
    pub holders: BTreeMap<String, String>,
    /// Routers whose role this agent's host holds now.
    pub active_here: BTreeSet<String>,
}

/// A Neutron floating IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip_address: Ipv4Addr,
    pub floating_network_id: String,
    pub router_id: Option<String>,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<Ipv4Addr>,
}

/// The L3 agent mode of a host (`agent_mode` in the Neutron L3 agent configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentMode {
    /// Compute host: distributed routing and floating IPs.
    Dvr,
    /// Network host: also runs the centralized SNAT.
    DvrSnat,
    /// Compute host without external connectivity (no floating IPs).
    DvrNoExternal,
}

impl AgentMode {
    /// The Neutron spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentMode::Dvr => "dvr",
            AgentMode::DvrSnat => "dvr_snat",
            AgentMode::DvrNoExternal => "dvr_no_external",
        }
    }

    /// Parse the Neutron spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dvr" => Some(AgentMode::Dvr),
            "dvr_snat" => Some(AgentMode::DvrSnat),
            "dvr_no_external" => Some(AgentMode::DvrNoExternal),
            _ => None,
        }
    }
}

impl fmt::Display for AgentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host running the agent (not a Neutron object: the deployment supplies these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host name, as used in ports' `binding:host_id`.
    pub name: String,
    pub agent_mode: AgentMode,
    /// Underlay address of the host's VXLAN endpoint.
    pub tunnel_ip: Ipv4Addr,
    /// Source MAC of the frames this host routes into the tunnel; unique per host.
    pub dvr_mac: Mac,
    pub external_interface: Option<String>,
}

impl Host {
    /// True when the host reaches external networks itself (and so serves floating IPs): it
    /// names an external interface and is not `dvr_no_external`.
    pub fn has_external(&self) -> bool {
        self.external_interface.is_some()
            && matches!(self.agent_mode, AgentMode::Dvr | AgentMode::DvrSnat)
    }
}

/// Why `name` cannot be a Linux network interface name, as the kernel's `dev_valid_name()`
/// (net/core/dev.c) judges it: 1 to 15 bytes (IFNAMSIZ 16 with the NUL), not `.` or `..`,
/// no `/`, `:` or whitespace. `:` has been refused since Linux 4.17 ("net: reject creation of
/// netdev names with colons"; TCX needs 6.6 anyway): `eth0:1` is an address label, not a
/// device, so it can never resolve to an ifindex.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 bytes, has {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(format!(
            "interface name {name:?} contains {c:?} (no '/', ':', NUL or whitespace)"
        ));
    }
    Ok(())
}

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `network`, `subnet`, `port`, `router`, `floatingip` or `host`.
    pub kind: &'static str,
    /// The object's id (a host's name), or `ports[3]` when it has none.
    pub id: String,
    /// Field path, e.g. `fixed_ips[0].ip_address`; empty when about the whole object.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{} {}: {}", self.kind, self.id, self.message)
        } else {
            write!(
                f,
                "{} {}: field `{}`: {}",
                self.kind, self.id, self.field, self.message
            )
        }
    }
}

/// Why a state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The top level is not an object, or one of its lists is not a list.
    #[error("state: {0}")]
    Shape(String),
    /// Every problem found, one per line.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<FieldError>),
}

impl StateError {
    /// The field errors (empty for the other variants).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            StateError::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

fn display_lines(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Parse `aa:bb:cc:dd:ee:ff` (also with `-` separators, any case).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Format as lower-case `aa:bb:cc:dd:ee:ff` (the Neutron spelling).
pub fn format_mac(mac: &Mac) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A validated state with its id indexes.
///
/// Only [`State::from_json`] and [`State::load`] build one, so every reference in it (a port's
/// network, a fixed IP's subnet, a bound port's host, ...) resolves.
#[derive(Debug, Clone, Default)]
pub struct State {
    networks: Vec<Network>,
    subnets: Vec<Subnet>,
    ports: Vec<Port>,
    routers: Vec<Router>,
    floatingips: Vec<FloatingIp>,
    hosts: Vec<Host>,
    network_by_id: HashMap<String, usize>,
    subnet_by_id: HashMap<String, usize>,
    port_by_id: HashMap<String, usize>,
    router_by_id: HashMap<String, usize>,
    floatingip_by_id: HashMap<String, usize>,
    host_by_name: HashMap<String, usize>,
    /// Per network index: subnet indexes, in state order.
    subnets_by_network: Vec<Vec<usize>>,
    /// Per network index: port indexes, in state order.
    ports_by_network: Vec<Vec<usize>>,
    /// Election results (etcd mode); `None` with a state file: HA routers are then served
    /// statically by their most preferred candidate.
    ha_runtime: Option<HaRuntime>,
}

impl State {
    /// Read and validate a state file.
    pub fn load(path: impl AsRef<Path>) -> Result<State, StateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        State::from_json(&text)
    }

    /// Parse and validate a state. All problems are reported together.
    pub fn from_json(text: &str) -> Result<State, StateError> {
        let root = Value::parse(text)?;
        let Value::Object(root) = root else {
            return Err(StateError::Shape(
                "the top level is not a JSON object".into(),
            ));
        };
        let mut p = Parser::default();
        for (i, v) in top_list(&root, "networks")?.iter().enumerate() {
            p.network(i, v);
        }
        for (i, v) in top_list(&root, "subnets")?.iter().enumerate() {
            p.subnet(i, v);
        }
        for (i, v) in top_list(&root, "ports")?.iter().enumerate() {
            p.port(i, v);
        }
        for (i, v) in top_list(&root, "routers")?.iter().enumerate() {
            p.router(i, v);
        }
        for (i, v) in top_list(&root, "floatingips")?.iter().enumerate() {
            p.floatingip(i, v);
        }
        for (i, v) in top_list(&root, "hosts")?.iter().enumerate() {
            p.host(i, v);
        }
        let Parser {
            mut state,
            broken,
            mut errors,
            ..
        } = p;
        state.index_by_network();
        Validator {
            s: &state,
            broken: &broken,
            errors: &mut errors,
        }
        .run();
        if errors.is_empty() {
            Ok(state)
        } else {
            Err(StateError::Invalid(errors))
        }
    }

    pub fn networks(&self) -> &[Network] {
        &self.networks
    }
    pub fn subnets(&self) -> &[Subnet] {
        &self.subnets
    }
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    /// Set the election results (etcd mode) the compiler uses for HA routers.
    pub fn set_ha_runtime(&mut self, rt: Option<HaRuntime>) {
        self.ha_runtime = rt;
    }

    pub fn ha_runtime(&self) -> Option<&HaRuntime> {
        self.ha_runtime.as_ref()
    }

    /// The host compute hosts steer an HA router's centralized traffic to: the elected
    /// holder (or the last one while the role is vacant), else the most preferred candidate.
    pub fn ha_target<'a>(&'a self, router: &'a Router) -> Option<&'a str> {
        let candidates = router.ha_candidates();
        let held = self
            .ha_runtime
            .as_ref()
            .and_then(|rt| rt.holders.get(&router.id))
            .filter(|h| candidates.iter().any(|c| &c.host == *h));
        match held {
            Some(h) => Some(h.as_str()),
            None => candidates.first().map(|c| c.host.as_str()),
        }
    }

    /// True when `host` serves HA router `router`'s centralized role now: it holds the
    /// election (etcd mode), or is the most preferred candidate (state file).
    pub fn ha_serving(&self, router: &Router, host: &str) -> bool {
        match &self.ha_runtime {
            Some(rt) => {
                rt.active_here.contains(&router.id)
                    && router.ha_hosts.iter().any(|c| c.host == host)
            }
            None => self.ha_target(router) == Some(host),
        }
    }
    pub fn floatingips(&self) -> &[FloatingIp] {
        &self.floatingips
    }
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.network_by_id
            .get(id)
            .and_then(|&i| self.networks.get(i))
    }
    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnet_by_id.get(id).and_then(|&i| self.subnets.get(i))
    }
    pub fn port(&self, id: &str) -> Option<&Port> {
        self.port_by_id.get(id).and_then(|&i| self.ports.get(i))
    }
    pub fn router(&self, id: &str) -> Option<&Router> {
        self.router_by_id.get(id).and_then(|&i| self.routers.get(i))
    }
    pub fn floatingip(&self, id: &str) -> Option<&FloatingIp> {
        self.floatingip_by_id
            .get(id)
            .and_then(|&i| self.floatingips.get(i))
    }
    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.host_by_name.get(name).and_then(|&i| self.hosts.get(i))
    }

    /// The subnets of a network, in state order.
    pub fn subnets_on_network<'a>(
        &'a self,
        network_id: &str,
    ) -> impl Iterator<Item = &'a Subnet> + use<'a> {
        self.by_network(&self.subnets_by_network, network_id)
            .filter_map(|&i| self.subnets.get(i))
    }

    /// The ports of a network, in state order.
    pub fn ports_on_network<'a>(
        &'a self,
        network_id: &str,
    ) -> impl Iterator<Item = &'a Port> + use<'a> {
        self.by_network(&self.ports_by_network, network_id)
            .filter_map(|&i| self.ports.get(i))
    }

    fn by_network<'a>(
        &self,
        lists: &'a [Vec<usize>],
        network_id: &str,
    ) -> std::slice::Iter<'a, usize> {
        self.network_by_id
            .get(network_id)
            .and_then(|&n| lists.get(n))
            .map_or([].iter(), |l| l.iter())
    }

    fn index_by_network(&mut self) {
        self.subnets_by_network = vec![Vec::new(); self.networks.len()];
        self.ports_by_network = vec![Vec::new(); self.networks.len()];
        for (i, s) in self.subnets.iter().enumerate() {
            if let Some(list) = self
                .network_by_id
                .get(&s.network_id)
                .and_then(|&n| self.subnets_by_network.get_mut(n))
            {
                list.push(i);
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(list) = self
                .network_by_id
                .get(&p.network_id)
                .and_then(|&n| self.ports_by_network.get_mut(n))
            {
                list.push(i);
            }
        }
    }
}

fn top_list<'a>(root: &'a Object<'a>, key: &str) -> Result<&'a [Value<'a>], StateError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(StateError::Shape(format!(
            "`{key}` must be a list, got {}",
            describe(other)
        ))),
    }
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => return "a list".into(),
        Value::Object(_) => return "an object".into(),
    };
    let mut text = v.to_string();
    if text.len() > 60 {
        let cut = (0..=57)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    format!("{kind} {text}")
}

// ---------------------------------------------------------------------------------------------
// Parsing: JSON values to typed objects, one field at a time.

/// Ids of objects that failed to parse, per kind: references to them are not reported again
/// as "does not exist".
#[derive(Debug, Default)]
struct Broken {
    networks: HashSet<String>,
    subnets: HashSet<String>,
    ports: HashSet<String>,
    routers: HashSet<String>,
    hosts: HashSet<String>,
}

#[derive(Default)]
struct Parser {
    state: State,
    broken: Broken,
    errors: Vec<FieldError>,
    /// (kind, id) -> position in its list, to report duplicates.
    seen: HashMap<(&'static str, String), usize>,
}

/// The label of list element `i`: its id (or name) when it has one, else `list[i]`.
fn element_label(v: &Value, key: &str, list: &str, i: usize) -> String {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.to_string(),
        _ => format!("{list}[{i}]"),
    }
}

type Conv<T> = fn(&Value) -> Result<T, String>;

fn conv_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

fn conv_id(v: &Value) -> Result<String, String> {
    let s = conv_string(v)?;
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

fn conv_bool(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected a boolean, got {}", describe(v)))
}

fn conv_u32(v: &Value) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("expected an unsigned 32-bit integer, got {}", describe(v)))
}

fn conv_ipv4(v: &Value) -> Result<Ipv4Addr, String> {
    let s = conv_string(v)?;
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!("{s:?} is IPv6, not supported by this datapath")),
        Err(_) => Err(format!("invalid IPv4 address {s:?}")),
    }
}

fn conv_mac(v: &Value) -> Result<Mac, String> {
    let s = conv_string(v)?;
    parse_mac(&s).ok_or_else(|| format!("invalid MAC {s:?}"))
}

/// An address or a CIDR (allowed address pairs accept both).
fn conv_ipv4_prefix(v: &Value) -> Result<Ipv4Net, String> {
    let s = conv_string(v)?;
    if let Ok(net) = s.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::from(ip));
    }
    if s.parse::<IpNet>().is_ok() || s.parse::<IpAddr>().is_ok() {
        return Err(format!("{s:?} is IPv6, not supported by this datapath"));
    }
    Err(format!("invalid IPv4 address or CIDR {s:?}"))
}

/// Reads the fields of one JSON object, recording every problem.
struct Reader<'a, 'e> {
    kind: &'static str,
    id: &'a str,
    /// Path of this object inside the element, e.g. `fixed_ips[0].`.
    prefix: String,
    obj: &'a Object<'a>,
    errors: &'e mut Vec<FieldError>,
}

impl<'a> Reader<'a, '_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            kind: self.kind,
            id: self.id.to_owned(),
            field: format!("{}{field}", self.prefix),
            message: message.into(),
        });
    }

    /// The value of a field; missing and `null` are both absent.
    fn present(&self, field: &str) -> Option<&'a Value<'a>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn req<T>(&mut self, field: &str, conv: Conv<T>) -> Option<T> {
        if self.present(field).is_none() {
            self.error(field, "missing");
            return None;
        }
        self.opt(field, conv)
    }

    fn opt<T>(&mut self, field: &str, conv: Conv<T>) -> Option<T> {
        let v = self.present(field)?;
        match conv(v) {
            Ok(t) => Some(t),
            Err(message) => {
                self.error(field, message);
                None
            }
        }
    }

    /// An optional string where "" means absent too (`binding:host_id`).
    fn opt_nonempty(&mut self, field: &str) -> Option<String> {
        self.opt(field, conv_string).filter(|s| !s.is_empty())
    }

    /// The object elements of a list field. A missing list is empty unless `required`.
    fn list(&mut self, field: &str, required: bool) -> Vec<(String, &'a Object<'a>)> {
        let items = match self.present(field) {
            None => {
                if required {
                    self.error(field, "missing");
                }
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                let message = format!("expected a list, got {}", describe(other));
                self.error(field, message);
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{field}[{i}]");
            match item {
                Value::Object(obj) => out.push((format!("{path}."), obj)),
                other => {
                    let message = format!("expected an object, got {}", describe(other));
                    self.error(&path, message);
                }
            }
        }
        out
    }

    /// A reader for a nested object at `path` (which ends in `.`).
    fn child<'c>(&'c mut self, path: &str, obj: &'a Object<'a>) -> Reader<'a, 'c> {
        Reader {
            kind: self.kind,
            id: self.id,
            prefix: format!("{}{path}", self.prefix),
            obj,
            errors: &mut *self.errors,
        }
    }

    fn fixed_ips(&mut self, field: &str, required: bool) -> Vec<FixedIp> {
        let mut out = Vec::new();
        for (path, obj) in self.list(field, required) {
            let mut r = self.child(&path, obj);
            let subnet_id = r.req("subnet_id", conv_id);
            let ip = r.req("ip_address", conv_ipv4);
            if let (Some(subnet_id), Some(ip)) = (subnet_id, ip) {
                out.push(FixedIp { subnet_id, ip });
            }
        }
        out
    }
}

impl Parser {
    /// Start reading list element `i`; `None` (after recording why) when it is not an object
    /// or repeats an earlier element's id.
    fn begin<'v>(
        &mut self,
        kind: &'static str,
        list: &str,
        key: &str,
        i: usize,
        v: &'v Value,
    ) -> Option<(String, &'v Object<'v>)> {
        let label = element_label(v, key, list, i);
        let Value::Object(obj) = v else {
            self.errors.push(FieldError {
                kind,
                id: label,
                field: String::new(),
                message: format!("expected an object, got {}", describe(v)),
            });
            return None;
        };
        match self.seen.entry((kind, label.clone())) {
            Entry::Occupied(first) => {
                self.errors.push(FieldError {
                    kind,
                    id: label,
                    field: key.into(),
                    message: format!("duplicate {key} (also {list}[{}])", first.get()),
                });
                return None;
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        Some((label, obj))
    }

    fn reader<'a>(
        &'a mut self,
        kind: &'static str,
        id: &'a str,
        obj: &'a Object<'a>,
    ) -> Reader<'a, 'a> {
        Reader {
            kind,
            id,
            prefix: String::new(),
            obj,
            errors: &mut self.errors,
        }
    }

    fn network(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("network", "networks", "id", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("network", &label, obj);
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let network_type = r.req("provider:network_type", conv_string);
        let physical_network = r.opt_nonempty("provider:physical_network");
        let segmentation_id = r.opt("provider:segmentation_id", conv_u32);
        let external = r.opt("router:external", conv_bool).unwrap_or(false);
        let mtu = r.opt("mtu", conv_u32).unwrap_or(DEFAULT_MTU);
        match (id, network_type) {
            (Some(id), Some(network_type)) if self.errors.len() == before => {
                self.state
                    .network_by_id
                    .insert(id.clone(), self.state.networks.len());
                self.state.networks.push(Network {
                    id,
                    name,
                    network_type,
                    physical_network,
                    segmentation_id,
                    external,
                    mtu,
                });
            }
            _ => {
                self.broken.networks.insert(label);
            }
        }
    }

    fn subnet(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("subnet", "subnets", "id", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("subnet", &label, obj);
        let id = r.req("id", conv_id);
        let network_id = r.req("network_id", conv_id);
        let ip_version = r.req("ip_version", conv_u32);
        let cidr_text = r.req("cidr", conv_string);
        let mut cidr = None;
        let mut gateway_ip = None;
        match ip_version {
            Some(6) => r.error(
                "ip_version",
                "ip_version 6 is not supported by this datapath",
            ),
            Some(4) => {
                if let Some(text) = cidr_text {
                    match text.parse::<IpNet>() {
                        Ok(IpNet::V4(net)) if net.trunc() != net => {
                            r.error("cidr", format!("{text} has host bits set"));
                        }
                        Ok(IpNet::V4(net)) => cidr = Some(net),
                        Ok(IpNet::V6(_)) => r.error(
                            "ip_version",
                            format!("ip_version 4 does not agree with the IPv6 cidr {text}"),
                        ),
                        Err(_) => r.error("cidr", format!("invalid CIDR {text:?}")),
                    }
                }
                gateway_ip = r.opt("gateway_ip", conv_ipv4);
            }
            Some(other) => r.error("ip_version", format!("must be 4 or 6, got {other}")),
            None => {}
        }
        match (id, network_id, cidr) {
            (Some(id), Some(network_id), Some(cidr)) if self.errors.len() == before => {
                self.state
                    .subnet_by_id
                    .insert(id.clone(), self.state.subnets.len());
                self.state.subnets.push(Subnet {
                    id,
                    network_id,
                    cidr,
                    gateway_ip,
                });
            }
            _ => {
                self.broken.subnets.insert(label);
            }
        }
    }

    fn port(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("port", "ports", "id", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("port", &label, obj);
        let id = r.req("id", conv_id);
        let network_id = r.req("network_id", conv_id);
        let mac = r.req("mac_address", conv_mac);
        let fixed_ips = r.fixed_ips("fixed_ips", true);
        let device_owner = r.opt("device_owner", conv_string).unwrap_or_default();
        let device_id = r.opt("device_id", conv_string).unwrap_or_default();
        let host_id = r.opt_nonempty("binding:host_id");
        let mut allowed_address_pairs = Vec::new();
        for (path, pair) in r.list("allowed_address_pairs", false) {
            let mut pr = r.child(&path, pair);
            let net = pr.req("ip_address", conv_ipv4_prefix);
            let pair_mac = pr.opt("mac_address", conv_mac);
            if let (Some(net), Some(mac)) = (net, pair_mac.or(mac)) {
                allowed_address_pairs.push(AddressPair { net, mac });
            }
        }
        let port_security_enabled = r.opt("port_security_enabled", conv_bool).unwrap_or(true);
        match (id, network_id, mac) {
            (Some(id), Some(network_id), Some(mac)) if self.errors.len() == before => {
                self.state
                    .port_by_id
                    .insert(id.clone(), self.state.ports.len());
                self.state.ports.push(Port {
                    id,
                    network_id,
                    mac,
                    fixed_ips,
                    device_owner,
                    device_id,
                    host_id,
                    allowed_address_pairs,
                    port_security_enabled,
                });
            }
            _ => {
                self.broken.ports.insert(label);
            }
        }
    }

    fn router(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("router", "routers", "id", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("router", &label, obj);
        let id = r.req("id", conv_id);
        let name = r.opt("name", conv_string);
        let external_gateway = match r.present("external_gateway_info") {
            None => None,
            Some(Value::Object(gw)) => {
                let mut g = r.child("external_gateway_info.", gw);
                let network_id = g.req("network_id", conv_id);
                let enable_snat = g.opt("enable_snat", conv_bool).unwrap_or(true);
                let external_fixed_ips = g.fixed_ips("external_fixed_ips", false);
                network_id.map(|network_id| ExternalGateway {
                    network_id,
                    enable_snat,
                    external_fixed_ips,
                })
            }
            Some(other) => {
                let message = format!("expected an object or null, got {}", describe(other));
                r.error("external_gateway_info", message);
                None
            }
        };
        let distributed = r.opt("distributed", conv_bool).unwrap_or(true);
        let ha = r.opt("ha", conv_bool).unwrap_or(false);
        let mut ha_hosts = Vec::new();
        for (path, obj) in r.list("ha_hosts", false) {
            let mut h = r.child(&path, obj);
            let host = h.req("host", conv_id);
            let priority = h.req("priority", conv_u32);
            if let (Some(host), Some(priority)) = (host, priority) {
                ha_hosts.push(HaHost { host, priority });
            }
        }
        match id {
            Some(id) if self.errors.len() == before => {
                self.state
                    .router_by_id
                    .insert(id.clone(), self.state.routers.len());
                self.state.routers.push(Router {
                    id,
                    name,
                    external_gateway,
                    distributed,
                    ha,
                    ha_hosts,
                });
            }
            _ => {
                self.broken.routers.insert(label);
            }
        }
    }

    fn floatingip(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("floatingip", "floatingips", "id", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("floatingip", &label, obj);
        let id = r.req("id", conv_id);
        let floating_ip_address = r.req("floating_ip_address", conv_ipv4);
        let floating_network_id = r.req("floating_network_id", conv_id);
        let router_id = r.opt_nonempty("router_id");
        let port_id = r.opt_nonempty("port_id");
        let fixed_ip_address = r.opt("fixed_ip_address", conv_ipv4);
        // Nothing refers to floating IPs, so a broken one needs no tombstone.
        if let (Some(id), Some(floating_ip_address), Some(floating_network_id)) =
            (id, floating_ip_address, floating_network_id)
            && self.errors.len() == before
        {
            self.state
                .floatingip_by_id
                .insert(id.clone(), self.state.floatingips.len());
            self.state.floatingips.push(FloatingIp {
                id,
                floating_ip_address,
                floating_network_id,
                router_id,
                port_id,
                fixed_ip_address,
            });
        }
    }

    fn host(&mut self, i: usize, v: &Value) {
        let Some((label, obj)) = self.begin("host", "hosts", "name", i, v) else {
            return;
        };
        let before = self.errors.len();
        let mut r = self.reader("host", &label, obj);
        let name = r.req("name", conv_id);
        let agent_mode = match r.req("agent_mode", conv_string) {
            Some(mode) => AgentMode::parse(&mode).or_else(|| {
                r.error(
                    "agent_mode",
                    format!(
                        "unknown agent_mode {mode:?} (expected dvr, dvr_snat or dvr_no_external)"
                    ),
                );
                None
            }),
            None => None,
        };
        let tunnel_ip = r.req("tunnel_ip", conv_ipv4);
        let dvr_mac = r.req("dvr_mac", conv_mac);
        let external_interface = r.opt_nonempty("external_interface");
        match (name, agent_mode, tunnel_ip, dvr_mac) {
            (Some(name), Some(agent_mode), Some(tunnel_ip), Some(dvr_mac))
                if self.errors.len() == before =>
            {
                self.state
                    .host_by_name
                    .insert(name.clone(), self.state.hosts.len());
                self.state.hosts.push(Host {
                    name,
                    agent_mode,
                    tunnel_ip,
                    dvr_mac,
                    external_interface,
                });
            }
            _ => {
                self.broken.hosts.insert(label);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: references and cross-object rules, on the typed objects.

/// How a reference resolved.
enum Ref {
    Found(usize),
    /// The object exists but did not parse: already reported.
    Broken,
    Missing,
}

fn resolve(index: &HashMap<String, usize>, broken: &HashSet<String>, id: &str) -> Ref {
    match index.get(id) {
        Some(&i) => Ref::Found(i),
        None if broken.contains(id) => Ref::Broken,
        None => Ref::Missing,
    }
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

fn ip_in(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip)
}

struct Validator<'s, 'e> {
    s: &'s State,
    broken: &'s Broken,
    errors: &'e mut Vec<FieldError>,
}

impl<'s> Validator<'s, '_> {
    fn error(&mut self, kind: &'static str, id: &str, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            kind,
            id: id.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn run(mut self) {
        self.hosts();
        self.networks();
        self.subnets();
        self.ports();
        self.routers();
        self.ha_hosts();
        self.snat_ports();
        self.floatingips();
    }

    fn network_ref(&self, id: &str) -> Ref {
        resolve(&self.s.network_by_id, &self.broken.networks, id)
    }
    fn subnet_ref(&self, id: &str) -> Ref {
        resolve(&self.s.subnet_by_id, &self.broken.subnets, id)
    }
    fn router_ref(&self, id: &str) -> Ref {
        resolve(&self.s.router_by_id, &self.broken.routers, id)
    }

    fn hosts(&mut self) {
        let s = self.s;
        let mut tunnel_ips: HashMap<Ipv4Addr, &'s str> = HashMap::default();
        let mut macs: HashMap<Mac, &'s str> = HashMap::default();
        for h in &s.hosts {
            let t = h.tunnel_ip;
            if t.is_unspecified() || t.is_multicast() || t.is_broadcast() || t.is_loopback() {
                let message = format!("tunnel_ip {t} is not a unicast address");
                self.error("host", &h.name, "tunnel_ip", message);
            }
            match tunnel_ips.entry(h.tunnel_ip) {
                Entry::Occupied(o) => {
                    let message = format!("tunnel_ip {} is also host {}'s", h.tunnel_ip, o.get());
                    self.error("host", &h.name, "tunnel_ip", message);
                }
                Entry::Vacant(v) => {
                    v.insert(&h.name);
                }
            }
            let text = format_mac(&h.dvr_mac);
            if is_multicast(&h.dvr_mac) || h.dvr_mac == [0; 6] {
                let message = format!("dvr_mac {text} is not a unicast MAC");
                self.error("host", &h.name, "dvr_mac", message);
            }
            match macs.entry(h.dvr_mac) {
                Entry::Occupied(o) => {
                    let message = format!("dvr_mac {text} is also host {}'s", o.get());
                    self.error("host", &h.name, "dvr_mac", message);
                }
                Entry::Vacant(v) => {
                    v.insert(&h.name);
                }
            }
            if let Some(iface) = &h.external_interface
                && let Err(message) = check_ifname(iface)
            {
                self.error("host", &h.name, "external_interface", message);
            }
        }
    }

    fn networks(&mut self) {
        let s = self.s;
        type SegKey<'a> = (&'a str, Option<&'a str>, u32);
        let mut segments: HashMap<SegKey<'s>, &'s str> = HashMap::default();
        for n in &s.networks {
            const FIELD: &str = "provider:segmentation_id";
            if n.network_type == NETWORK_TYPE_VXLAN {
                match n.segmentation_id {
                    Some(1..=VNI_MAX) => {}
                    Some(other) => {
                        let message =
                            format!("VXLAN segmentation id {other} is outside 1..={VNI_MAX}");
                        self.error("network", &n.id, FIELD, message);
                    }
                    None => self.error("network", &n.id, FIELD, "a vxlan network needs one"),
                }
            }
            let Some(seg) = n.segmentation_id else {
                continue;
            };
            // VLAN ids are per physical network; VNIs have no physical network.
            let key = (n.network_type.as_str(), n.physical_network.as_deref(), seg);
            match segments.entry(key) {
                Entry::Occupied(o) => {
                    let what = if n.network_type == NETWORK_TYPE_VXLAN {
                        "VNI"
                    } else {
                        "segment"
                    };
                    let message = format!(
                        "{what} collision: {} segmentation id {seg} is also network {}'s",
                        n.network_type,
                        o.get()
                    );
                    self.error("network", &n.id, FIELD, message);
                }
                Entry::Vacant(v) => {
                    v.insert(&n.id);
                }
            }
        }
    }

    fn subnets(&mut self) {
        let s = self.s;
        for sub in &s.subnets {
            if let Ref::Missing = self.network_ref(&sub.network_id) {
                let message = format!("network {} does not exist", sub.network_id);
                self.error("subnet", &sub.id, "network_id", message);
            }
            if let Some(gw) = sub.gateway_ip {
                let cidr = sub.cidr;
                if !ip_in(&cidr, gw) {
                    let message = format!("gateway_ip {gw} is outside cidr {cidr}");
                    self.error("subnet", &sub.id, "gateway_ip", message);
                } else if cidr.prefix_len() <= 30 && gw == cidr.network() {
                    let message = format!("gateway_ip {gw} is the network address of {cidr}");
                    self.error("subnet", &sub.id, "gateway_ip", message);
                } else if cidr.prefix_len() <= 30 && gw == cidr.broadcast() {
                    let message = format!("gateway_ip {gw} is the broadcast address of {cidr}");
                    self.error("subnet", &sub.id, "gateway_ip", message);
                }
            }
        }
        // Overlapping subnets on one network would make an address ambiguous. CIDR blocks are
        // nested or disjoint, so after sorting by start address (widest first), a block
        // overlaps an earlier one exactly when it starts before the furthest end seen so far.
        for subnets in &s.subnets_by_network {
            let mut sorted: Vec<&'s Subnet> =
                subnets.iter().filter_map(|&i| s.subnets.get(i)).collect();
            sorted.sort_by_key(|s| (s.cidr.network(), s.cidr.prefix_len()));
            let mut widest: Option<&'s Subnet> = None;
            for sub in sorted {
                match widest {
                    Some(w) if sub.cidr.network() <= w.cidr.broadcast() => {
                        let message = format!(
                            "{} overlaps subnet {} ({}) on the same network",
                            sub.cidr, w.id, w.cidr
                        );
                        self.error("subnet", &sub.id, "cidr", message);
                    }
                    _ => widest = Some(sub),
                }
            }
        }
    }

    fn ports(&mut self) {
        let s = self.s;
        let mut macs: HashMap<(usize, Mac), &'s str> = HashMap::default();
        let mut ips: HashMap<(usize, Ipv4Addr), &'s str> = HashMap::default();
        // (router, network) -> (subnet, port) and subnet -> (router, port), for DVR interfaces.
        let mut iface_by_router_net: HashMap<(usize, usize), (usize, &'s str)> = HashMap::default();
        let mut iface_by_subnet: HashMap<usize, (usize, &'s str)> = HashMap::default();
        for p in &s.ports {
            let net = match self.network_ref(&p.network_id) {
                Ref::Found(n) => Some(n),
                Ref::Broken => None,
                Ref::Missing => {
                    let message = format!("network {} does not exist", p.network_id);
                    self.error("port", &p.id, "network_id", message);
                    None
                }
            };
            let mac_text = || format_mac(&p.mac);
            if is_multicast(&p.mac) || p.mac == [0; 6] {
                let message = format!("MAC {} is not a unicast MAC", mac_text());
                self.error("port", &p.id, "mac_address", message);
            }
            if let Some(net) = net {
                match macs.entry((net, p.mac)) {
                    Entry::Occupied(o) => {
                        let message = format!(
                            "duplicate MAC {} on network {}: also port {}",
                            mac_text(),
                            p.network_id,
                            o.get()
                        );
                        self.error("port", &p.id, "mac_address", message);
                    }
                    Entry::Vacant(v) => {
                        v.insert(&p.id);
                    }
                }
            }

            let mut first_subnet = None;
            for (i, fip) in p.fixed_ips.iter().enumerate() {
                let subnet_field = || format!("fixed_ips[{i}].subnet_id");
                let ip_field = || format!("fixed_ips[{i}].ip_address");
                let si = match self.subnet_ref(&fip.subnet_id) {
                    Ref::Found(si) => si,
                    Ref::Broken => continue,
                    Ref::Missing => {
                        let message = format!("subnet {} does not exist", fip.subnet_id);
                        self.error("port", &p.id, &subnet_field(), message);
                        continue;
                    }
                };
                let Some(sub) = s.subnets.get(si) else {
                    continue;
                };
                if i == 0 {
                    first_subnet = Some(si);
                }
                if sub.network_id != p.network_id {
                    let message = format!(
                        "subnet {} is on network {}, not on the port's network {}",
                        sub.id, sub.network_id, p.network_id
                    );
                    self.error("port", &p.id, &subnet_field(), message);
                }
                if !ip_in(&sub.cidr, fip.ip) {
                    let message = format!("{} is outside subnet {} ({})", fip.ip, sub.id, sub.cidr);
                    self.error("port", &p.id, &ip_field(), message);
                    continue;
                }
                match ips.entry((si, fip.ip)) {
                    Entry::Occupied(o) => {
                        let other = *o.get();
                        let message = if other == p.id {
                            format!("{} is listed twice", fip.ip)
                        } else {
                            format!(
                                "duplicate IP {} in subnet {}: also port {other}",
                                fip.ip, sub.id
                            )
                        };
                        self.error("port", &p.id, &ip_field(), message);
                    }
                    Entry::Vacant(v) => {
                        v.insert(&p.id);
                    }
                }
            }

            if let Some(host) = &p.host_id
                && !s.host_by_name.contains_key(host)
                && !self.broken.hosts.contains(host)
            {
                let message = format!("host {host} is not in hosts");
                self.error("port", &p.id, "binding:host_id", message);
            }

            let mut router = None;
            if p.is_router_owned() {
                match self.router_ref(&p.device_id) {
                    Ref::Found(r) => router = Some(r),
                    Ref::Broken => {}
                    Ref::Missing if p.device_id.is_empty() => {
                        let message = format!("a {} port needs the router id", p.device_owner);
                        self.error("port", &p.id, "device_id", message);
                    }
                    Ref::Missing => {
                        let message = format!("router {} does not exist", p.device_id);
                        self.error("port", &p.id, "device_id", message);
                    }
                }
                if p.fixed_ips.len() != 1 {
                    let message = format!(
                        "a {} port needs exactly one fixed IP, has {}",
                        p.device_owner,
                        p.fixed_ips.len()
                    );
                    self.error("port", &p.id, "fixed_ips", message);
                }
            }

            if p.is_distributed_interface()
                && p.fixed_ips.len() == 1
                && let (Some(r), Some(si), Some(net)) = (router, first_subnet, net)
                && s.subnets
                    .get(si)
                    .is_some_and(|s| s.network_id == p.network_id)
            {
                const FIELD: &str = "fixed_ips[0].subnet_id";
                let subnet_id = s.subnets.get(si).map_or("", |s| s.id.as_str());
                match iface_by_router_net.entry((r, net)) {
                    Entry::Occupied(o) => {
                        let (other_subnet, other_port) = *o.get();
                        let message = if other_subnet == si {
                            format!(
                                "router {} has two interfaces on subnet {subnet_id}: also port {other_port}",
                                p.device_id
                            )
                        } else {
                            let other_id =
                                s.subnets.get(other_subnet).map_or("", |s| s.id.as_str());
                            format!(
                                "router interface on two subnets of one network: router {} already \
                                 has port {other_port} on subnet {other_id} of network {}",
                                p.device_id, p.network_id
                            )
                        };
                        self.error("port", &p.id, FIELD, message);
                    }
                    Entry::Vacant(v) => {
                        v.insert((si, &p.id));
                    }
                }
                match iface_by_subnet.entry(si) {
                    Entry::Occupied(o) => {
                        let (other_router, other_port) = *o.get();
                        if other_router != r {
                            let other_id =
                                s.routers.get(other_router).map_or("", |r| r.id.as_str());
                            let message = format!(
                                "subnet {subnet_id} already has a distributed interface of router \
                                 {other_id} (port {other_port}); interfaces of two routers on one \
                                 subnet are not supported"
                            );
                            self.error("port", &p.id, FIELD, message);
                        }
                    }
                    Entry::Vacant(v) => {
                        v.insert((r, &p.id));
                    }
                }
            }

            if p.is_compute()
                && let Some(n) = net.and_then(|n| s.networks.get(n))
                && !n.external
                && n.network_type != NETWORK_TYPE_VXLAN
            {
                let message = format!(
                    "compute port on {} network {}: this datapath carries tenant networks over \
                     VXLAN only",
                    n.network_type, n.id
                );
                self.error("port", &p.id, "network_id", message);
            }
        }
    }

    /// Checks that `id` names an external network; reports on `kind id: field` otherwise.
    fn external_network(&mut self, kind: &'static str, id: &str, field: &str, network_id: &str) {
        let s = self.s;
        match self.network_ref(network_id) {
            Ref::Found(n) => {
                if s.networks.get(n).is_some_and(|n| !n.external) {
                    let message = format!("network {network_id} is not external (router:external)");
                    self.error(kind, id, field, message);
                }
            }
            Ref::Broken => {}
            Ref::Missing => {
                self.error(
                    kind,
                    id,
                    field,
                    format!("network {network_id} does not exist"),
                );
            }
        }
    }

    /// `ha_hosts`: only with `ha: true`, at least two distinct `dvr_snat` hosts with an
    /// external interface.
    fn ha_hosts(&mut self) {
        let s = self.s;
        for r in s.routers.iter().filter(|r| !r.ha_hosts.is_empty()) {
            if !r.ha {
                let message = "only an HA router (ha: true) has ha_hosts";
                self.error("router", &r.id, "ha_hosts", message);
                continue;
            }
            if r.ha_hosts.len() < 2 {
                let message = "an HA router needs at least two ha_hosts";
                self.error("router", &r.id, "ha_hosts", message);
            }
            let mut seen: HashMap<&str, usize> = HashMap::default();
            for (i, c) in r.ha_hosts.iter().enumerate() {
                let field = format!("ha_hosts[{i}].host");
                if let Some(first) = seen.insert(&c.host, i) {
                    let message =
                        format!("host {} is listed twice (also ha_hosts[{first}])", c.host);
                    self.error("router", &r.id, &field, message);
                    continue;
                }
                let problem = match s.host(&c.host) {
                    None if self.broken.hosts.contains(&c.host) => None,
                    None => Some(format!("host {} does not exist", c.host)),
                    Some(h) => match (h.agent_mode, &h.external_interface) {
                        (AgentMode::DvrSnat, Some(_)) => None,
                        (AgentMode::DvrSnat, None) => Some(format!(
                            "host {} is dvr_snat but has no external_interface",
                            c.host
                        )),
                        (mode, _) => Some(format!(
                            "host {} is agent_mode {mode}, not dvr_snat",
                            c.host
                        )),
                    },
                };
                if let Some(message) = problem {
                    self.error("router", &r.id, &field, message);
                }
            }
        }
    }

    fn routers(&mut self) {
        let s = self.s;
        for r in &s.routers {
            let Some(gw) = &r.external_gateway else {
                continue;
            };
            self.external_network(
                "router",
                &r.id,
                "external_gateway_info.network_id",
                &gw.network_id,
            );
            for (i, fip) in gw.external_fixed_ips.iter().enumerate() {
                let prefix = format!("external_gateway_info.external_fixed_ips[{i}]");
                match self.subnet_ref(&fip.subnet_id) {
                    Ref::Found(si) => {
                        let Some(sub) = s.subnets.get(si) else {
                            continue;
                        };
                        if sub.network_id != gw.network_id {
                            let message = format!(
                                "subnet {} is on network {}, not on the gateway network {}",
                                sub.id, sub.network_id, gw.network_id
                            );
                            self.error("router", &r.id, &format!("{prefix}.subnet_id"), message);
                        } else if !ip_in(&sub.cidr, fip.ip) {
                            let message =
                                format!("{} is outside subnet {} ({})", fip.ip, sub.id, sub.cidr);
                            self.error("router", &r.id, &format!("{prefix}.ip_address"), message);
                        }
                    }
                    Ref::Broken => {}
                    Ref::Missing => {
                        let message = format!("subnet {} does not exist", fip.subnet_id);
                        self.error("router", &r.id, &format!("{prefix}.subnet_id"), message);
                    }
                }
            }
        }
    }

    /// Centralized SNAT ports: those of one router are bound to one host (the router's SNAT
    /// host), a `dvr_snat` host with an external interface, and there is at most one per
    /// subnet. An unbound one is not scheduled yet and binds the router to no host.
    fn snat_ports(&mut self) {
        let s = self.s;
        const HOST: &str = "binding:host_id";
        // router -> (SNAT host, first port bound there); (router, subnet) -> port.
        let mut host_of_router: HashMap<&'s str, (&'s str, &'s str)> = HashMap::default();
        let mut by_subnet: HashMap<(&'s str, &'s str), &'s str> = HashMap::default();
        for p in s.ports.iter().filter(|p| p.is_centralized_snat()) {
            // A missing router is reported with the port's other router checks.
            if !s.router_by_id.contains_key(&p.device_id) {
                continue;
            }
            let router = p.device_id.as_str();
            if let [fixed] = p.fixed_ips.as_slice() {
                match by_subnet.entry((router, fixed.subnet_id.as_str())) {
                    Entry::Occupied(o) => {
                        let message = format!(
                            "router {router} has two centralized SNAT ports on subnet {}: also \
                             port {}",
                            fixed.subnet_id,
                            o.get()
                        );
                        self.error("port", &p.id, "fixed_ips[0].subnet_id", message);
                    }
                    Entry::Vacant(v) => {
                        v.insert(&p.id);
                    }
                }
            }
            let Some(host) = p.host_id.as_deref() else {
                continue;
            };
            // An HA router's csnat ports are served where it is elected, not where bound.
            if s.router(router).is_some_and(Router::is_ha_managed) {
                continue;
            }
            if let Some(h) = s.host(host) {
                let problem = match (h.agent_mode, &h.external_interface) {
                    (AgentMode::DvrSnat, Some(_)) => None,
                    (AgentMode::DvrSnat, None) => Some(format!(
                        "host {host} is dvr_snat but has no external_interface"
                    )),
                    (mode, _) => Some(format!("host {host} is agent_mode {mode}")),
                };
                if let Some(problem) = problem {
                    let message = format!(
                        "{problem}: a {OWNER_ROUTER_CENTRALIZED_SNAT} port needs a dvr_snat host \
                         with an external_interface"
                    );
                    self.error("port", &p.id, HOST, message);
                }
            }
            match host_of_router.entry(router) {
                Entry::Occupied(o) => {
                    let (other_host, other_port) = *o.get();
                    if other_host != host {
                        let message = format!(
                            "router {router} has its centralized SNAT ports on two hosts: port \
                             {other_port} on host {other_host}, this one on host {host}"
                        );
                        self.error("port", &p.id, HOST, message);
                    }
                }
                Entry::Vacant(v) => {
                    v.insert((host, &p.id));
                }
            }
        }
    }

    fn floatingips(&mut self) {
        let s = self.s;
        let mut by_address: HashMap<Ipv4Addr, &'s str> = HashMap::default();
        // (port, fixed IP) -> floating IP: one translation per address.
        let mut by_fixed: HashMap<(&'s str, Ipv4Addr), &'s str> = HashMap::default();
        for f in &s.floatingips {
            self.external_network(
                "floatingip",
                &f.id,
                "floating_network_id",
                &f.floating_network_id,
            );
            let address = f.floating_ip_address;
            if let Ref::Found(n) = self.network_ref(&f.floating_network_id) {
                let inside = s
                    .subnets_by_network
                    .get(n)
                    .into_iter()
                    .flatten()
                    .filter_map(|&i| s.subnets.get(i))
                    .any(|sub| ip_in(&sub.cidr, address));
                if !inside {
                    let message = format!(
                        "{address} is outside every subnet of network {}",
                        f.floating_network_id
                    );
                    self.error("floatingip", &f.id, "floating_ip_address", message);
                }
            }
            match by_address.entry(address) {
                Entry::Occupied(o) => {
                    let message =
                        format!("duplicate address {address}: also floatingip {}", o.get());
                    self.error("floatingip", &f.id, "floating_ip_address", message);
                }
                Entry::Vacant(v) => {
                    v.insert(&f.id);
                }
            }
            if let Some(port_id) = &f.port_id
                && let Some(port) = s.port(port_id)
                && let Some(fixed) = f
                    .fixed_ip_address
                    .or_else(|| port.fixed_ips.first().map(|x| x.ip))
            {
                match by_fixed.entry((&port.id, fixed)) {
                    Entry::Occupied(o) => {
                        let field = if f.fixed_ip_address.is_some() {
                            "fixed_ip_address"
                        } else {
                            "port_id"
                        };
                        let message = format!(
                            "port {port_id} fixed IP {fixed} already has floatingip {}",
                            o.get()
                        );
                        self.error("floatingip", &f.id, field, message);
                    }
                    Entry::Vacant(v) => {
                        v.insert(&f.id);
                    }
                }
            }
            if let Some(router_id) = &f.router_id
                && let Ref::Missing = self.router_ref(router_id)
            {
                let message = format!("router {router_id} does not exist");
                self.error("floatingip", &f.id, "router_id", message);
            }
            let Some(port_id) = &f.port_id else { continue };
            match s.port(port_id) {
                Some(port) => {
                    if let Some(fixed) = f.fixed_ip_address
                        && !port.fixed_ips.iter().any(|x| x.ip == fixed)
                    {
                        let message = format!("port {port_id} has no fixed IP {fixed}");
                        self.error("floatingip", &f.id, "fixed_ip_address", message);
                    }
                }
                None if self.broken.ports.contains(port_id) => {}
                None => {
                    let message = format!("port {port_id} does not exist");
                    self.error("floatingip", &f.id, "port_id", message);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;

    /// Two hosts; one DVR router with interfaces on subnet1 (net1) and subnet2 (net2) and a
    /// gateway on the external network; VM1 (net1) and VM2 (net2) on host-a, VM3 (net1) on
    /// host-b; a DHCP port, a SNAT port and a floating IP. Unknown fields are sprinkled in.
    pub(crate) const FIXTURE: &str = r#"{
      "generated_by": "test",
      "networks": [
        {"id": "net1", "name": "private-1", "provider:network_type": "vxlan",
         "provider:segmentation_id": 1001, "router:external": false, "mtu": 1450,
         "status": "ACTIVE", "tenant_id": "t1", "shared": false},
        {"id": "net2", "name": "private-2", "provider:network_type": "vxlan",
         "provider:segmentation_id": 1002},
        {"id": "ext", "name": "public", "provider:network_type": "flat",
         "provider:physical_network": "physnet1", "provider:segmentation_id": null,
         "router:external": true, "mtu": 1500}
      ],
      "subnets": [
        {"id": "subnet1", "network_id": "net1", "cidr": "10.0.1.0/24", "gateway_ip": "10.0.1.1",
         "ip_version": 4, "enable_dhcp": true, "allocation_pools": [{"start": "10.0.1.2", "end": "10.0.1.254"}]},
        {"id": "subnet2", "network_id": "net2", "cidr": "10.0.2.0/24", "gateway_ip": "10.0.2.1",
         "ip_version": 4},
        {"id": "ext-subnet", "network_id": "ext", "cidr": "203.0.113.0/24",
         "gateway_ip": "203.0.113.1", "ip_version": 4}
      ],
      "ports": [
        {"id": "vm1", "network_id": "net1", "mac_address": "fa:16:3e:00:00:01",
         "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.10"}],
         "device_owner": "compute:nova", "device_id": "instance-1", "binding:host_id": "host-a",
         "binding:vif_type": "ovs", "security_groups": ["sg1"]},
        {"id": "vm2", "network_id": "net2", "mac_address": "fa:16:3e:00:00:02",
         "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.20"}],
         "device_owner": "compute:nova", "device_id": "instance-2", "binding:host_id": "host-a"},
        {"id": "vm3", "network_id": "net1", "mac_address": "fa:16:3e:00:00:03",
         "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.30"}],
         "device_owner": "compute:az1", "device_id": "instance-3", "binding:host_id": "host-b"},
        {"id": "rif1", "network_id": "net1", "mac_address": "fa:16:3e:00:01:01",
         "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.1"}],
         "device_owner": "network:router_interface_distributed", "device_id": "router1",
         "binding:host_id": ""},
        {"id": "rif2", "network_id": "net2", "mac_address": "fa:16:3e:00:01:02",
         "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.1"}],
         "device_owner": "network:router_interface_distributed", "device_id": "router1"},
        {"id": "snat1", "network_id": "net1", "mac_address": "fa:16:3e:00:02:01",
         "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.5"}],
         "device_owner": "network:router_centralized_snat", "device_id": "router1",
         "binding:host_id": "host-b"},
        {"id": "dhcp1", "network_id": "net1", "mac_address": "fa:16:3e:00:03:01",
         "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.2"}],
         "device_owner": "network:dhcp", "device_id": "dhcp-host-b", "binding:host_id": "host-b"},
        {"id": "rgw1", "network_id": "ext", "mac_address": "fa:16:3e:00:04:01",
         "fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}],
         "device_owner": "network:router_gateway", "device_id": "router1",
         "binding:host_id": "host-b"}
      ],
      "routers": [
        {"id": "router1", "name": "r1", "distributed": true, "ha": false, "admin_state_up": true,
         "external_gateway_info": {"network_id": "ext", "enable_snat": true,
           "external_fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"}]}}
      ],
      "floatingips": [
        {"id": "fip1", "floating_ip_address": "203.0.113.50", "floating_network_id": "ext",
         "router_id": "router1", "port_id": "vm1", "fixed_ip_address": "10.0.1.10",
         "status": "ACTIVE"}
      ],
      "hosts": [
        {"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1",
         "dvr_mac": "fa:16:3f:00:00:0a"},
        {"name": "host-b", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.2",
         "dvr_mac": "fa:16:3f:00:00:0b", "external_interface": "eth1", "rack": 7}
      ]
    }"#;

    pub(crate) fn fixture_value() -> Value {
        match serde_json::from_str(FIXTURE) {
            Ok(v) => v,
            Err(e) => panic!("fixture is not JSON: {e}"),
        }
    }

    pub(crate) fn state_of(v: &Value) -> State {
        match State::from_json(&v.to_string()) {
            Ok(s) => s,
            Err(e) => panic!("state does not validate:\n{e}"),
        }
    }

    /// The element of `list` whose `key` is `id`, for editing.
    pub(crate) fn elem<'a>(v: &'a mut Value, list: &str, key: &str, id: &str) -> &'a mut Value {
        let found = v[list]
            .as_array_mut()
            .and_then(|items| items.iter_mut().find(|e| e[key] == id));
        match found {
            Some(e) => e,
            None => panic!("no {list} element with {key} {id}"),
        }
    }

    pub(crate) fn push(v: &mut Value, list: &str, item: Value) {
        match v[list].as_array_mut() {
            Some(items) => items.push(item),
            None => panic!("{list} is not a list"),
        }
    }

    /// The fixture after `edit`: the errors it produces (panics if it validates).
    fn errors_after(edit: impl FnOnce(&mut Value)) -> Vec<FieldError> {
        let mut v = fixture_value();
        edit(&mut v);
        match State::from_json(&v.to_string()) {
            Ok(_) => panic!("edited fixture validated"),
            Err(StateError::Invalid(errors)) => errors,
            Err(e) => panic!("not a validation error: {e}"),
        }
    }

    fn with_ha(v: &mut Value, ha: bool, hosts: Value) {
        push(
            v,
            "hosts",
            serde_json::json!({"name": "host-c", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.3",
                               "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "eth1"}),
        );
        let r = elem(v, "routers", "id", "router1");
        r["ha"] = ha.into();
        r["ha_hosts"] = hosts;
    }

    #[test]
    fn ha_hosts_elect_the_preferred_candidate_unless_told_otherwise() {
        let mut v = fixture_value();
        with_ha(
            &mut v,
            true,
            serde_json::json!([{"host": "host-c", "priority": 100}, {"host": "host-b", "priority": 200}]),
        );
        let mut s = state_of(&v);
        let Some(r) = s.router("router1").cloned() else {
            panic!("no router1")
        };
        assert!(r.is_ha_managed());
        let order: Vec<&str> = r.ha_candidates().iter().map(|c| c.host.as_str()).collect();
        assert_eq!(order, ["host-b", "host-c"]);
        assert_eq!(
            s.ha_target(&r),
            Some("host-b"),
            "state file: the preferred one"
        );
        assert!(s.ha_serving(&r, "host-b") && !s.ha_serving(&r, "host-c"));
        s.set_ha_runtime(Some(HaRuntime {
            holders: BTreeMap::from([("router1".into(), "host-c".into())]),
            active_here: BTreeSet::from(["router1".into()]),
        }));
        assert_eq!(s.ha_target(&r), Some("host-c"), "elected holder");
        assert!(s.ha_serving(&r, "host-c"));
        s.set_ha_runtime(Some(HaRuntime {
            holders: BTreeMap::from([("router1".into(), "host-a".into())]),
            active_here: BTreeSet::new(),
        }));
        assert_eq!(
            s.ha_target(&r),
            Some("host-b"),
            "a holder that is no candidate is ignored"
        );
        assert!(
            !s.ha_serving(&r, "host-b"),
            "etcd mode: only the elected host serves"
        );
    }

    #[test]
    fn bad_ha_hosts_name_router_and_field() {
        let e = errors_after(|v| {
            with_ha(
                v,
                false,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-c", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts", "only an HA router");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts", "at least two");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-a", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "not dvr_snat");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "host-b", "priority": 2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].host", "listed twice");
        let e = errors_after(|v| {
            with_ha(
                v,
                true,
                serde_json::json!([{"host": "host-b", "priority": 1}, {"host": "nowhere", "priority": -2}]),
            )
        });
        assert_error(&e, "router", "router1", "ha_hosts[1].priority", "unsigned");
    }

    /// Asserts one error is about `kind id`, `field`, with `text` in its message, and that its
    /// Display line names the object and field.
    #[track_caller]
    fn assert_error(errors: &[FieldError], kind: &str, id: &str, field: &str, text: &str) {
        let found = errors
            .iter()
            .find(|e| e.kind == kind && e.id == id && e.field == field && e.message.contains(text));
        match found {
            Some(e) => {
                let line = e.to_string();
                assert!(
                    line.starts_with(&format!("{kind} {id}: field `{field}`: ")),
                    "{line}"
                );
            }
            None => panic!(
                "no error `{kind} {id}: field `{field}`: ...{text}...` among:\n{}",
                display_lines(errors)
            ),
        }
    }

    #[test]
    fn fixture_is_valid() {
        let s = state_of(&fixture_value());
        assert_eq!(s.networks().len(), 3);
        assert_eq!(s.subnets().len(), 3);
        assert_eq!(s.ports().len(), 8);
        assert_eq!(s.routers().len(), 1);
        assert_eq!(s.floatingips().len(), 1);
        assert_eq!(s.hosts().len(), 2);
        let vm1 = s.port("vm1");
        assert_eq!(vm1.map(|p| p.mac), Some([0xfa, 0x16, 0x3e, 0, 0, 1]));
        assert_eq!(vm1.map(Port::is_vm), Some(true));
        assert!(vm1.is_some_and(|p| p.port_security_enabled));
        assert_eq!(s.port("rif1").and_then(|p| p.host_id.clone()), None);
        assert_eq!(s.network("net1").and_then(Network::tenant_vni), Some(1001));
        assert_eq!(s.network("ext").and_then(Network::tenant_vni), None);
        assert_eq!(s.network("net2").map(|n| n.mtu), Some(DEFAULT_MTU));
        assert_eq!(
            s.host("host-b").map(|h| h.agent_mode),
            Some(AgentMode::DvrSnat)
        );
        assert_eq!(
            s.host("host-b").map(|h| h.tunnel_ip),
            Some(Ipv4Addr::new(192, 0, 2, 2))
        );
        let on_net1: Vec<&str> = s.ports_on_network("net1").map(|p| p.id.as_str()).collect();
        assert_eq!(on_net1, ["vm1", "vm3", "rif1", "snat1", "dhcp1"]);
        let subnets: Vec<&str> = s
            .subnets_on_network("net2")
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(subnets, ["subnet2"]);
        let gw = s.router("router1").and_then(|r| r.external_gateway.clone());
        assert_eq!(
            gw.map(|g| (g.enable_snat, g.external_fixed_ips.len())),
            Some((true, 1))
        );
    }

    #[test]
    fn empty_and_missing_lists() {
        let s = match State::from_json("{}") {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert!(s.ports().is_empty() && s.hosts().is_empty());
        assert!(matches!(State::from_json("[]"), Err(StateError::Shape(_))));
        assert!(matches!(
            State::from_json(r#"{"ports": 3}"#),
            Err(StateError::Shape(_))
        ));
        assert!(matches!(State::from_json("{"), Err(StateError::Json(_))));
    }

    #[test]
    fn load_reports_path() {
        let err = State::load("/nonexistent/dvr-state.json");
        assert!(matches!(&err, Err(StateError::Read { .. })));
        assert!(
            err.err()
                .is_some_and(|e| e.to_string().contains("/nonexistent/dvr-state.json"))
        );
    }

    #[test]
    fn mac_parse_and_format() {
        assert_eq!(
            parse_mac("fa:16:3E:00:0a:ff"),
            Some([0xfa, 0x16, 0x3e, 0, 0x0a, 0xff])
        );
        assert_eq!(
            parse_mac("fa-16-3e-00-0a-ff"),
            Some([0xfa, 0x16, 0x3e, 0, 0x0a, 0xff])
        );
        for bad in [
            "",
            "fa:16:3e:00:0a",
            "fa:16:3e:00:0a:ff:00",
            "zz:16:3e:00:0a:ff",
            "f:16:3e:00:0a:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0xfa, 0x16, 0x3e, 0, 0x0a, 0xff]),
            "fa:16:3e:00:0a:ff"
        );
    }

    #[test]
    fn missing_field_names_port_and_field() {
        let errors = errors_after(|v| {
            let port = elem(v, "ports", "id", "vm1");
            if let Some(obj) = port.as_object_mut() {
                obj.remove("network_id");
            }
        });
        assert_error(&errors, "port", "vm1", "network_id", "missing");
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn element_without_id_is_labelled_by_index() {
        let errors = errors_after(|v| {
            push(
                v,
                "ports",
                serde_json::json!({"network_id": "net1", "mac_address": "fa:16:3e:99:99:99", "fixed_ips": []}),
            );
        });
        assert_error(&errors, "port", "ports[8]", "id", "missing");
    }

    #[test]
    fn ill_typed_fields_are_all_reported() {
        let errors = errors_after(|v| {
            let port = elem(v, "ports", "id", "vm2");
            port["mac_address"] = "zz:16:3e:00:00:02".into();
            port["port_security_enabled"] = "yes".into();
            port["fixed_ips"][0]["ip_address"] = 10.into();
            let net = elem(v, "networks", "id", "net2");
            net["mtu"] = (-1).into();
        });
        assert_error(
            &errors,
            "port",
            "vm2",
            "mac_address",
            "invalid MAC \"zz:16:3e:00:00:02\"",
        );
        assert_error(
            &errors,
            "port",
            "vm2",
            "port_security_enabled",
            "expected a boolean",
        );
        assert_error(
            &errors,
            "port",
            "vm2",
            "fixed_ips[0].ip_address",
            "expected a string",
        );
        assert_error(&errors, "network", "net2", "mtu", "unsigned 32-bit integer");
        // net2 is broken: its subnet's reference to it is not reported again.
        assert!(
            !errors.iter().any(|e| e.kind == "subnet"),
            "{}",
            display_lines(&errors)
        );
    }

    #[test]
    fn display_is_one_line_per_error() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm1")["mac_address"] = "zz:00".into();
        elem(&mut v, "hosts", "name", "host-a")["agent_mode"] = "legacy".into();
        let text = match State::from_json(&v.to_string()) {
            Ok(_) => panic!("validated"),
            Err(e) => e.to_string(),
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "port vm1: field `mac_address`: invalid MAC \"zz:00\"",
                "host host-a: field `agent_mode`: unknown agent_mode \"legacy\" (expected dvr, \
                 dvr_snat or dvr_no_external)",
            ]
        );
    }

    #[test]
    fn duplicate_ids() {
        let errors = errors_after(|v| {
            let mut copy = elem(v, "networks", "id", "net2").clone();
            copy["provider:segmentation_id"] = 2002.into();
            push(v, "networks", copy);
            let port = elem(v, "ports", "id", "vm3").clone();
            push(v, "ports", port);
        });
        assert_error(
            &errors,
            "network",
            "net2",
            "id",
            "duplicate id (also networks[1])",
        );
        assert_error(&errors, "port", "vm3", "id", "duplicate id (also ports[2])");
    }

    #[test]
    fn host_names_tunnel_ips_and_dvr_macs_unique() {
        let errors = errors_after(|v| {
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-a", "agent_mode": "dvr", "tunnel_ip": "192.0.2.9", "dvr_mac": "fa:16:3f:00:00:0c"}),
            );
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-c", "agent_mode": "dvr", "tunnel_ip": "192.0.2.1", "dvr_mac": "fa:16:3f:00:00:0b"}),
            );
        });
        assert_error(
            &errors,
            "host",
            "host-a",
            "name",
            "duplicate name (also hosts[0])",
        );
        assert_error(
            &errors,
            "host",
            "host-c",
            "tunnel_ip",
            "is also host host-a's",
        );
        assert_error(
            &errors,
            "host",
            "host-c",
            "dvr_mac",
            "is also host host-b's",
        );
    }

    #[test]
    fn host_dvr_mac_and_agent_mode_valid() {
        let errors = errors_after(|v| {
            let h = elem(v, "hosts", "name", "host-a");
            h["dvr_mac"] = "fa:16:3f:00:00".into();
            h["agent_mode"] = "legacy".into();
            h["tunnel_ip"] = "2001:db8::1".into();
            elem(v, "hosts", "name", "host-b")["dvr_mac"] = "01:00:5e:00:00:01".into();
        });
        assert_error(&errors, "host", "host-a", "dvr_mac", "invalid MAC");
        assert_error(
            &errors,
            "host",
            "host-a",
            "agent_mode",
            "unknown agent_mode \"legacy\"",
        );
        assert_error(&errors, "host", "host-a", "tunnel_ip", "IPv6");
        assert_error(&errors, "host", "host-b", "dvr_mac", "not a unicast MAC");
        // host-a did not parse: its ports' binding is not reported as unknown.
        assert!(!errors.iter().any(|e| e.field == "binding:host_id"));
    }

    #[test]
    fn host_tunnel_ip_unicast() {
        let errors = errors_after(|v| {
            elem(v, "hosts", "name", "host-b")["tunnel_ip"] = "0.0.0.0".into();
        });
        assert_error(
            &errors,
            "host",
            "host-b",
            "tunnel_ip",
            "0.0.0.0 is not a unicast address",
        );
    }

    #[test]
    fn vxlan_needs_segmentation_id_in_range() {
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net1")["provider:segmentation_id"] = Value::Null;
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 16_777_216.into();
        });
        assert_error(
            &errors,
            "network",
            "net1",
            "provider:segmentation_id",
            "needs one",
        );
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "outside 1..=16777215",
        );
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 0.into();
        });
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "outside",
        );
    }

    #[test]
    fn vni_collision_names_both_networks() {
        let errors = errors_after(|v| {
            elem(v, "networks", "id", "net2")["provider:segmentation_id"] = 1001.into();
        });
        assert_error(
            &errors,
            "network",
            "net2",
            "provider:segmentation_id",
            "VNI collision: vxlan segmentation id 1001 is also network net1's",
        );
    }

    #[test]
    fn vlan_ids_are_per_physical_network() {
        let mut v = fixture_value();
        for (id, physnet) in [("vlan-a", "physnet1"), ("vlan-b", "physnet2")] {
            push(
                &mut v,
                "networks",
                serde_json::json!({"id": id, "provider:network_type": "vlan",
                    "provider:physical_network": physnet, "provider:segmentation_id": 100,
                    "router:external": true}),
            );
        }
        state_of(&v);
        elem(&mut v, "networks", "id", "vlan-b")["provider:physical_network"] = "physnet1".into();
        let errors = match State::from_json(&v.to_string()) {
            Err(StateError::Invalid(errors)) => errors,
            other => panic!("{other:?}"),
        };
        assert_error(
            &errors,
            "network",
            "vlan-b",
            "provider:segmentation_id",
            "also network vlan-a's",
        );
    }

    #[test]
    fn subnet_network_must_exist() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet2")["network_id"] = "nope".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "network_id",
            "network nope does not exist",
        );
        // The port on subnet2 is now on a subnet of another network.
        assert_error(
            &errors,
            "port",
            "vm2",
            "fixed_ips[0].subnet_id",
            "is on network nope",
        );
    }

    #[test]
    fn subnet_cidr_parses_without_host_bits() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet1")["cidr"] = "10.0.1.1/24".into();
            elem(v, "subnets", "id", "subnet2")["cidr"] = "10.0.2.0/33".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "cidr",
            "10.0.1.1/24 has host bits set",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "cidr",
            "invalid CIDR \"10.0.2.0/33\"",
        );
        // Ports on the broken subnets are not reported again.
        assert_eq!(errors.len(), 2, "{}", display_lines(&errors));
    }

    #[test]
    fn subnet_ipv6_rejected() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet6", "network_id": "net1", "cidr": "fd00::/64",
                    "gateway_ip": "fd00::1", "ip_version": 6}),
            );
        });
        assert_error(
            &errors,
            "subnet",
            "subnet6",
            "ip_version",
            "ip_version 6 is not supported by this datapath",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn subnet_ip_version_agrees_with_cidr() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet2")["cidr"] = "fd00::/64".into();
            elem(v, "subnets", "id", "subnet1")["ip_version"] = 5.into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "ip_version",
            "does not agree with the IPv6 cidr fd00::/64",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "ip_version",
            "must be 4 or 6, got 5",
        );
    }

    #[test]
    fn subnet_gateway_inside_and_not_network_or_broadcast() {
        let errors = errors_after(|v| {
            elem(v, "subnets", "id", "subnet1")["gateway_ip"] = "10.0.9.1".into();
            elem(v, "subnets", "id", "subnet2")["gateway_ip"] = "10.0.2.255".into();
            elem(v, "subnets", "id", "ext-subnet")["gateway_ip"] = "203.0.113.0".into();
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1",
            "gateway_ip",
            "10.0.9.1 is outside cidr 10.0.1.0/24",
        );
        assert_error(
            &errors,
            "subnet",
            "subnet2",
            "gateway_ip",
            "broadcast address",
        );
        assert_error(
            &errors,
            "subnet",
            "ext-subnet",
            "gateway_ip",
            "network address",
        );
        // null gateway is fine
        let mut v = fixture_value();
        elem(&mut v, "subnets", "id", "subnet1")["gateway_ip"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn subnets_of_one_network_do_not_overlap() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.1.128/25", "ip_version": 4}),
            );
        });
        assert_error(
            &errors,
            "subnet",
            "subnet1b",
            "cidr",
            "overlaps subnet subnet1",
        );
        // The same range on another network is fine (tenants reuse ranges).
        let mut v = fixture_value();
        push(
            &mut v,
            "networks",
            serde_json::json!({"id": "net3", "provider:network_type": "vxlan", "provider:segmentation_id": 3}),
        );
        push(
            &mut v,
            "subnets",
            serde_json::json!({"id": "subnet3", "network_id": "net3", "cidr": "10.0.1.0/24", "ip_version": 4}),
        );
        state_of(&v);
    }

    #[test]
    fn port_network_must_exist() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["network_id"] = "nope".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "network_id",
            "network nope does not exist",
        );
    }

    #[test]
    fn port_mac_valid_unicast() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["mac_address"] = "zz:16:3e:00:00:01".into();
            elem(v, "ports", "id", "vm2")["mac_address"] = "ff:ff:ff:ff:ff:ff".into();
            elem(v, "ports", "id", "vm3")["mac_address"] = "01:00:5e:00:00:01".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "mac_address",
            "invalid MAC \"zz:16:3e:00:00:01\"",
        );
        assert_error(&errors, "port", "vm2", "mac_address", "not a unicast MAC");
        assert_error(&errors, "port", "vm3", "mac_address", "not a unicast MAC");
    }

    #[test]
    fn port_mac_unique_within_network() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["mac_address"] = "fa:16:3e:00:00:01".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "mac_address",
            "duplicate MAC fa:16:3e:00:00:01 on network net1: also port vm1",
        );
        // The same MAC on another network is allowed.
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm2")["mac_address"] = "fa:16:3e:00:00:01".into();
        state_of(&v);
    }

    #[test]
    fn port_fixed_ip_subnet_exists_and_is_on_the_network() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["fixed_ips"][0]["subnet_id"] = "nope".into();
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["subnet_id"] = "subnet2".into();
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["ip_address"] = "10.0.2.30".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "fixed_ips[0].subnet_id",
            "subnet nope does not exist",
        );
        assert_error(
            &errors,
            "port",
            "vm3",
            "fixed_ips[0].subnet_id",
            "subnet subnet2 is on network net2, not on the port's network net1",
        );
    }

    #[test]
    fn port_fixed_ip_inside_subnet() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["fixed_ips"][0]["ip_address"] = "10.0.2.10".into();
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "fixed_ips[0].ip_address",
            "10.0.2.10 is outside subnet subnet1 (10.0.1.0/24)",
        );
    }

    #[test]
    fn port_fixed_ip_unique_in_subnet() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["fixed_ips"][0]["ip_address"] = "10.0.1.10".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "fixed_ips[0].ip_address",
            "duplicate IP 10.0.1.10 in subnet subnet1: also port vm1",
        );
    }

    #[test]
    fn port_allowed_address_pairs_parse() {
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm1")["allowed_address_pairs"] = serde_json::json!([
            {"ip_address": "10.0.1.100"},
            {"ip_address": "192.168.0.0/16", "mac_address": "fa:16:3e:aa:bb:cc"}
        ]);
        let s = state_of(&v);
        let pairs = s
            .port("vm1")
            .map(|p| p.allowed_address_pairs.clone())
            .unwrap_or_default();
        assert_eq!(
            pairs,
            [
                AddressPair {
                    net: Ipv4Net::from(Ipv4Addr::new(10, 0, 1, 100)),
                    mac: [0xfa, 0x16, 0x3e, 0, 0, 1]
                },
                AddressPair {
                    net: Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap_or_default(),
                    mac: [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]
                },
            ]
        );
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm1")["allowed_address_pairs"] = serde_json::json!([
                {"ip_address": "10.0.1.300"},
                {"ip_address": "10.0.1.0/24", "mac_address": "nope"}
            ]);
        });
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[0].ip_address",
            "invalid IPv4 address or CIDR \"10.0.1.300\"",
        );
        assert_error(
            &errors,
            "port",
            "vm1",
            "allowed_address_pairs[1].mac_address",
            "invalid MAC \"nope\"",
        );
    }

    #[test]
    fn address_pair_allows_its_address_or_prefix() {
        let pair = |net: &str| AddressPair {
            net: net.parse().unwrap_or_default(),
            mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
        };
        let vip = Ipv4Addr::new(10, 0, 1, 100);
        assert!(pair("10.0.1.100/32").allows(vip));
        assert!(!pair("10.0.1.101/32").allows(vip));
        assert!(pair("10.0.1.100/30").allows(vip));
        assert!(pair("10.0.1.103/30").allows(vip), "host bits are ignored");
        assert!(!pair("10.0.1.104/30").allows(vip));
        assert!(pair("0.0.0.0/0").allows(vip));
    }

    #[test]
    fn may_be_vip_is_unbound_and_unowned() {
        let mut v = fixture_value();
        let vip = serde_json::json!({"id": "vip", "network_id": "net1",
            "mac_address": "fa:16:3e:00:09:01",
            "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.100"}]});
        push(&mut v, "ports", vip);
        elem(&mut v, "ports", "id", "vm3")["binding:host_id"] = "".into();
        let s = state_of(&v);
        let may = |id: &str| s.port(id).map(Port::may_be_vip);
        assert_eq!(may("vip"), Some(true));
        // Bound, an instance port waiting for its binding, a router interface.
        assert_eq!(may("vm1"), Some(false));
        assert_eq!(may("vm3"), Some(false));
        assert_eq!(may("rif1"), Some(false));
    }

    #[test]
    fn port_binding_host_must_be_known() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "vm3")["binding:host_id"] = "host-z".into();
        });
        assert_error(
            &errors,
            "port",
            "vm3",
            "binding:host_id",
            "host host-z is not in hosts",
        );
        // Unbound is fine.
        let mut v = fixture_value();
        elem(&mut v, "ports", "id", "vm3")["binding:host_id"] = "".into();
        assert_eq!(state_of(&v).port("vm3").map(Port::is_vm), Some(false));
    }

    #[test]
    fn router_port_needs_router_and_one_fixed_ip() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "rif1")["device_id"] = "router9".into();
            elem(v, "ports", "id", "snat1")["device_id"] = "".into();
            let gw = elem(v, "ports", "id", "rgw1");
            gw["fixed_ips"] = serde_json::json!([
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "203.0.113.11"}
            ]);
            elem(v, "ports", "id", "rif2")["fixed_ips"] = serde_json::json!([]);
        });
        assert_error(
            &errors,
            "port",
            "rif1",
            "device_id",
            "router router9 does not exist",
        );
        assert_error(&errors, "port", "snat1", "device_id", "needs the router id");
        assert_error(
            &errors,
            "port",
            "rgw1",
            "fixed_ips",
            "needs exactly one fixed IP, has 2",
        );
        assert_error(
            &errors,
            "port",
            "rif2",
            "fixed_ips",
            "needs exactly one fixed IP, has 0",
        );
    }

    #[test]
    fn router_interface_on_two_subnets_of_one_network() {
        let errors = errors_after(|v| {
            push(
                v,
                "subnets",
                serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.11.0/24", "ip_version": 4}),
            );
            push(
                v,
                "ports",
                serde_json::json!({"id": "rif1b", "network_id": "net1", "mac_address": "fa:16:3e:00:01:0b",
                    "fixed_ips": [{"subnet_id": "subnet1b", "ip_address": "10.0.11.1"}],
                    "device_owner": "network:router_interface_distributed", "device_id": "router1"}),
            );
        });
        assert_error(
            &errors,
            "port",
            "rif1b",
            "fixed_ips[0].subnet_id",
            "router interface on two subnets of one network: router router1 already has port rif1 on subnet subnet1 of network net1",
        );
    }

    #[test]
    fn one_subnet_with_interfaces_of_two_routers() {
        let errors = errors_after(|v| {
            push(v, "routers", serde_json::json!({"id": "router2"}));
            push(
                v,
                "ports",
                serde_json::json!({"id": "rif3", "network_id": "net1", "mac_address": "fa:16:3e:00:01:03",
                    "fixed_ips": [{"subnet_id": "subnet1", "ip_address": "10.0.1.3"}],
                    "device_owner": "network:router_interface_distributed", "device_id": "router2"}),
            );
        });
        assert_error(
            &errors,
            "port",
            "rif3",
            "fixed_ips[0].subnet_id",
            "subnet subnet1 already has a distributed interface of router router1 (port rif1)",
        );
    }

    #[test]
    fn router_gateway_network_exists_and_is_external() {
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "net1".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network net1 is not external",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "not on the gateway network net1",
        );
        let errors = errors_after(|v| {
            elem(v, "routers", "id", "router1")["external_gateway_info"]["network_id"] =
                "nope".into();
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.network_id",
            "network nope does not exist",
        );
        // No gateway at all is fine.
        let mut v = fixture_value();
        elem(&mut v, "routers", "id", "router1")["external_gateway_info"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn router_external_fixed_ip_subnet_and_address() {
        let errors = errors_after(|v| {
            let gw = &mut elem(v, "routers", "id", "router1")["external_gateway_info"];
            gw["external_fixed_ips"] = serde_json::json!([
                {"subnet_id": "nope", "ip_address": "203.0.113.10"},
                {"subnet_id": "ext-subnet", "ip_address": "198.51.100.10"}
            ]);
        });
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[0].subnet_id",
            "subnet nope does not exist",
        );
        assert_error(
            &errors,
            "router",
            "router1",
            "external_gateway_info.external_fixed_ips[1].ip_address",
            "198.51.100.10 is outside subnet ext-subnet",
        );
    }

    #[test]
    fn floatingip_references() {
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_network_id"] = "net1".into();
            f["router_id"] = "router9".into();
            f["port_id"] = "vm9".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_network_id",
            "network net1 is not external",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "router_id",
            "router router9 does not exist",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "port_id",
            "port vm9 does not exist",
        );
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_network_id"] = "nope".into();
            f["fixed_ip_address"] = "10.0.1.11".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_network_id",
            "network nope does not exist",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "fixed_ip_address",
            "port vm1 has no fixed IP 10.0.1.11",
        );
        // Unassociated floating IP.
        let mut v = fixture_value();
        let f = elem(&mut v, "floatingips", "id", "fip1");
        f["router_id"] = Value::Null;
        f["port_id"] = Value::Null;
        f["fixed_ip_address"] = Value::Null;
        state_of(&v);
    }

    #[test]
    fn floatingip_addresses_parse() {
        let errors = errors_after(|v| {
            let f = elem(v, "floatingips", "id", "fip1");
            f["floating_ip_address"] = "203.0.113".into();
            f["fixed_ip_address"] = "x".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_ip_address",
            "invalid IPv4 address \"203.0.113\"",
        );
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "fixed_ip_address",
            "invalid IPv4 address \"x\"",
        );
    }

    #[test]
    fn host_external_interface_is_a_linux_name() {
        for (bad, text) in [
            ("eth/1", "contains '/'"),
            ("eth0:1", "contains ':'"),
            ("eth 1", "contains ' '"),
            ("eth\t1", "contains '\\t'"),
            (".", "not a valid interface name"),
            ("..", "not a valid interface name"),
            ("abcdefghijklmnop", "must be 1 to 15 bytes, has 16"),
        ] {
            let errors = errors_after(|v| {
                elem(v, "hosts", "name", "host-b")["external_interface"] = bad.into();
            });
            assert_error(&errors, "host", "host-b", "external_interface", text);
        }
        for good in ["abcdefghijklmno", "br-ex", "e", "eth0.100", "..."] {
            let mut v = fixture_value();
            elem(&mut v, "hosts", "name", "host-b")["external_interface"] = good.into();
            let s = state_of(&v);
            assert_eq!(
                s.host("host-b")
                    .and_then(|h| h.external_interface.as_deref()),
                Some(good)
            );
        }
    }

    #[test]
    fn host_has_external_needs_interface_and_mode() {
        let mut v = fixture_value();
        let s = state_of(&v);
        assert_eq!(s.host("host-a").map(Host::has_external), Some(false));
        assert_eq!(s.host("host-b").map(Host::has_external), Some(true));
        elem(&mut v, "hosts", "name", "host-b")["agent_mode"] = "dvr_no_external".into();
        elem(&mut v, "hosts", "name", "host-a")["external_interface"] = "eth1".into();
        // A dvr_no_external host cannot hold the router's SNAT port.
        elem(&mut v, "ports", "id", "snat1")["binding:host_id"] = "".into();
        let s = state_of(&v);
        assert_eq!(s.host("host-a").map(Host::has_external), Some(true));
        assert_eq!(s.host("host-b").map(Host::has_external), Some(false));
    }

    #[test]
    fn floatingip_address_inside_its_network() {
        let errors = errors_after(|v| {
            elem(v, "floatingips", "id", "fip1")["floating_ip_address"] = "198.51.100.5".into();
        });
        assert_error(
            &errors,
            "floatingip",
            "fip1",
            "floating_ip_address",
            "198.51.100.5 is outside every subnet of network ext",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn floatingip_address_unique() {
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.50", "floating_network_id": "ext"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "floating_ip_address",
            "duplicate address 203.0.113.50: also floatingip fip1",
        );
    }

    #[test]
    fn one_floatingip_per_port_fixed_ip() {
        // fip2 names no fixed IP: it takes vm1's first, which fip1 already translates.
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                    "port_id": "vm1"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "port_id",
            "port vm1 fixed IP 10.0.1.10 already has floatingip fip1",
        );
        let errors = errors_after(|v| {
            push(
                v,
                "floatingips",
                serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                    "port_id": "vm1", "fixed_ip_address": "10.0.1.10"}),
            );
        });
        assert_error(
            &errors,
            "floatingip",
            "fip2",
            "fixed_ip_address",
            "port vm1 fixed IP 10.0.1.10 already has floatingip fip1",
        );
        // Another fixed IP of the same port may have its own.
        let mut v = fixture_value();
        push(
            &mut v,
            "subnets",
            serde_json::json!({"id": "subnet1b", "network_id": "net1", "cidr": "10.0.11.0/24", "ip_version": 4}),
        );
        elem(&mut v, "ports", "id", "vm1")["fixed_ips"] = serde_json::json!([
            {"subnet_id": "subnet1", "ip_address": "10.0.1.10"},
            {"subnet_id": "subnet1b", "ip_address": "10.0.11.10"}
        ]);
        push(
            &mut v,
            "floatingips",
            serde_json::json!({"id": "fip2", "floating_ip_address": "203.0.113.51", "floating_network_id": "ext",
                "port_id": "vm1", "fixed_ip_address": "10.0.11.10"}),
        );
        state_of(&v);
    }

    #[test]
    fn compute_port_needs_vxlan_tenant_network() {
        let errors = errors_after(|v| {
            let net = elem(v, "networks", "id", "net2");
            net["provider:network_type"] = "vlan".into();
            net["provider:physical_network"] = "physnet1".into();
        });
        assert_error(
            &errors,
            "port",
            "vm2",
            "network_id",
            "compute port on vlan network net2: this datapath carries tenant networks over VXLAN only",
        );
        // A compute port directly on the external network is not the datapath's business.
        let mut v = fixture_value();
        push(
            &mut v,
            "ports",
            serde_json::json!({"id": "vm-ext", "network_id": "ext", "mac_address": "fa:16:3e:00:05:01",
                "fixed_ips": [{"subnet_id": "ext-subnet", "ip_address": "203.0.113.77"}],
                "device_owner": "compute:nova", "binding:host_id": "host-a"}),
        );
        state_of(&v);
    }

    fn snat2_on(host: &str) -> Value {
        serde_json::json!({"id": "snat2", "network_id": "net2", "mac_address": "fa:16:3e:00:02:02",
            "fixed_ips": [{"subnet_id": "subnet2", "ip_address": "10.0.2.5"}],
            "device_owner": "network:router_centralized_snat", "device_id": "router1",
            "binding:host_id": host})
    }

    #[test]
    fn centralized_snat_ports_of_a_router_share_one_host() {
        let errors = errors_after(|v| {
            push(
                v,
                "hosts",
                serde_json::json!({"name": "host-s", "agent_mode": "dvr_snat", "tunnel_ip": "192.0.2.3",
                    "dvr_mac": "fa:16:3f:00:00:0c", "external_interface": "eth1"}),
            );
            push(v, "ports", snat2_on("host-s"));
        });
        assert_error(
            &errors,
            "port",
            "snat2",
            "binding:host_id",
            "router router1 has its centralized SNAT ports on two hosts: port snat1 on host \
             host-b, this one on host host-s",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
        // Both on host-b is the normal case.
        let mut v = fixture_value();
        push(&mut v, "ports", snat2_on("host-b"));
        let s = state_of(&v);
        assert_eq!(s.port("snat2").map(Port::is_centralized_snat), Some(true));
        // Unbound (not scheduled yet) binds the router to no host.
        let mut v = fixture_value();
        push(&mut v, "ports", snat2_on(""));
        state_of(&v);
    }

    #[test]
    fn centralized_snat_port_needs_a_dvr_snat_host_with_external() {
        let errors = errors_after(|v| {
            elem(v, "ports", "id", "snat1")["binding:host_id"] = "host-a".into();
        });
        assert_error(
            &errors,
            "port",
            "snat1",
            "binding:host_id",
            "host host-a is agent_mode dvr: a network:router_centralized_snat port needs a \
             dvr_snat host with an external_interface",
        );
        let errors = errors_after(|v| {
            elem(v, "hosts", "name", "host-b")["external_interface"] = Value::Null;
        });
        assert_error(
            &errors,
            "port",
            "snat1",
            "binding:host_id",
            "host host-b is dvr_snat but has no external_interface",
        );
        // No csnat port at all is fine: the router simply has no SNAT.
        let mut v = fixture_value();
        if let Some(ports) = v["ports"].as_array_mut() {
            ports.retain(|p| p["id"] != "snat1");
        }
        state_of(&v);
    }

    #[test]
    fn one_centralized_snat_port_per_router_and_subnet() {
        let errors = errors_after(|v| {
            let mut dup = snat2_on("host-b");
            dup["network_id"] = "net1".into();
            dup["fixed_ips"] =
                serde_json::json!([{"subnet_id": "subnet1", "ip_address": "10.0.1.6"}]);
            push(v, "ports", dup);
        });
        assert_error(
            &errors,
            "port",
            "snat2",
            "fixed_ips[0].subnet_id",
            "router router1 has two centralized SNAT ports on subnet subnet1: also port snat1",
        );
        assert_eq!(errors.len(), 1, "{}", display_lines(&errors));
    }

    #[test]
    fn defaults_apply() {
        let state = State::from_json(
            r#"{"networks": [{"id": "n", "provider:network_type": "vxlan", "provider:segmentation_id": 7}],
                "subnets": [{"id": "s", "network_id": "n", "cidr": "10.9.0.0/16", "ip_version": 4}],
                "ports": [{"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                           "fixed_ips": [{"subnet_id": "s", "ip_address": "10.9.0.5"}]}],
                "routers": [{"id": "r"}]}"#,
        );
        let s = match state {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let n = s.network("n");
        assert_eq!(
            n.map(|n| (n.external, n.mtu, n.name.is_none())),
            Some((false, DEFAULT_MTU, true))
        );
        let p = s.port("p");
        assert_eq!(
            p.map(|p| (
                p.device_owner.as_str(),
                p.device_id.as_str(),
                p.host_id.is_none(),
                p.port_security_enabled
            )),
            Some(("", "", true, true))
        );
        let r = s.router("r");
        assert_eq!(
            r.map(|r| (r.distributed, r.ha, r.external_gateway.is_none())),
            Some((true, false, true))
        );
        assert_eq!(s.subnet("s").and_then(|s| s.gateway_ip), None);
    }
}
