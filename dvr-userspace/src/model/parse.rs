//! Parsing: JSON values to typed objects, one field at a time.
//!
//! Each resource family says how to read one element ([`Element`]); [`list`] reads a
//! top-level list with it, labels every problem with the element's id and field path, and
//! remembers the ids of elements that failed, so that references to them are not reported
//! again as "does not exist".

use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::error::{FieldError, StateError};
use super::table::{HashMap, HashSet, Table};
use crate::json::{Object, Value};

/// An Ethernet MAC address, as it sits in the frame.
pub type Mac = dvr_common::Mac;

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

/// One kind of element of the state's top-level lists.
pub(super) trait Element: Sized {
    /// How errors name the kind: `network`, `port`, ...
    const KIND: &'static str;
    /// The top-level list: `networks`, `ports`, ...
    const LIST: &'static str;
    /// The field that identifies an element.
    const KEY: &'static str = "id";

    /// Reads the fields of one element, recording every problem on `r`. `Some` when the
    /// required fields are there; the element is only kept if nothing was recorded.
    fn read(r: &mut Reader<'_, '_>) -> Option<Self>;

    /// The element's id (the value of [`Element::KEY`]).
    fn key(&self) -> &str;
}

/// The elements of one top-level list.
pub(super) struct Parsed<T> {
    pub(super) table: Table<T>,
    /// Ids (or `list[i]` labels) of elements that failed to parse.
    pub(super) broken: HashSet<String>,
}

/// Reads the top-level list of `T`s; a missing list is empty.
pub(super) fn list<T: Element>(
    root: &Object<'_>,
    errors: &mut Vec<FieldError>,
) -> Result<Parsed<T>, StateError> {
    let mut parsed = Parsed {
        table: Table::default(),
        broken: HashSet::default(),
    };
    // Id -> position in the list, to report duplicates.
    let mut seen: HashMap<String, usize> = HashMap::default();
    for (i, v) in top_list(root, T::LIST)?.iter().enumerate() {
        let Some((label, obj)) = begin::<T>(&mut seen, errors, i, v) else {
            continue;
        };
        let before = errors.len();
        let mut r = Reader {
            kind: T::KIND,
            id: &label,
            prefix: String::new(),
            obj,
            errors: &mut *errors,
        };
        match T::read(&mut r) {
            Some(item) if errors.len() == before => {
                parsed.table.push(item.key().to_owned(), item);
            }
            _ => {
                parsed.broken.insert(label);
            }
        }
    }
    Ok(parsed)
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

/// Start reading list element `i`; `None` (after recording why) when it is not an object
/// or repeats an earlier element's id.
fn begin<'v, T: Element>(
    seen: &mut HashMap<String, usize>,
    errors: &mut Vec<FieldError>,
    i: usize,
    v: &'v Value,
) -> Option<(String, &'v Object<'v>)> {
    let (kind, list, key) = (T::KIND, T::LIST, T::KEY);
    let label = element_label(v, key, list, i);
    let Value::Object(obj) = v else {
        errors.push(FieldError {
            kind,
            id: label,
            field: String::new(),
            message: format!("expected an object, got {}", describe(v)),
        });
        return None;
    };
    match seen.entry(label.clone()) {
        Entry::Occupied(first) => {
            errors.push(FieldError {
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

/// The label of list element `i`: its id (or name) when it has one, else `list[i]`.
fn element_label(v: &Value, key: &str, list: &str, i: usize) -> String {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.to_string(),
        _ => format!("{list}[{i}]"),
    }
}

/// A short description of a JSON value for error messages.
pub(super) fn describe(v: &Value) -> String {
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

/// Turns one JSON value into a field's type, or says why it cannot.
pub(super) type Conv<T> = fn(&Value) -> Result<T, String>;

pub(super) fn conv_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

pub(super) fn conv_id(v: &Value) -> Result<String, String> {
    let s = conv_string(v)?;
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

pub(super) fn conv_bool(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected a boolean, got {}", describe(v)))
}

pub(super) fn conv_u32(v: &Value) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("expected an unsigned 32-bit integer, got {}", describe(v)))
}

pub(super) fn conv_ipv4(v: &Value) -> Result<Ipv4Addr, String> {
    let s = conv_string(v)?;
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!("{s:?} is IPv6, not supported by this datapath")),
        Err(_) => Err(format!("invalid IPv4 address {s:?}")),
    }
}

/// The address family a text that does not parse was probably meant in (for messages).
fn family_word(s: &str) -> &'static str {
    if s.contains(':') { "IPv6" } else { "IPv4" }
}

/// An address of either family (fixed IPs: the subnet says which one it must be).
pub(super) fn conv_ip(v: &Value) -> Result<IpAddr, String> {
    let s = conv_string(v)?;
    s.parse::<IpAddr>()
        .map_err(|_| format!("invalid {} address {s:?}", family_word(&s)))
}

/// An IPv4 address of a floating IP: floating IPs are IPv4 only (IPv6 is routed without
/// NAT).
pub(super) fn conv_fip_ipv4(v: &Value) -> Result<Ipv4Addr, String> {
    let s = conv_string(v)?;
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!(
            "{s:?} is IPv6: floating IPs are IPv4 only (IPv6 is routed without NAT)"
        )),
        Err(_) => Err(format!("invalid IPv4 address {s:?}")),
    }
}

/// An address or a CIDR of either family, for allowed address pairs (a plain address is a
/// host prefix). Host bits are kept, as Neutron accepts them.
pub(super) fn conv_pair_prefix(v: &Value) -> Result<IpNet, String> {
    let s = conv_string(v)?;
    parse_prefix(&s).ok_or_else(|| format!("invalid {} address or CIDR {s:?}", family_word(&s)))
}

/// `ipv6_ra_mode` / `ipv6_address_mode`: `slaac`, `dhcpv6-stateless` or `dhcpv6-stateful`.
pub(super) fn conv_ra_mode(v: &Value) -> Result<crate::ndp::RaMode, String> {
    let s = conv_string(v)?;
    crate::ndp::RaMode::parse(&s).ok_or_else(|| {
        format!("unknown mode {s:?} (expected slaac, dhcpv6-stateless or dhcpv6-stateful)")
    })
}

pub(super) fn conv_mac(v: &Value) -> Result<Mac, String> {
    let s = conv_string(v)?;
    parse_mac(&s).ok_or_else(|| format!("invalid MAC {s:?}"))
}

/// An address or a CIDR of either family (security group remotes, address groups). Host bits
/// are kept: callers take the network.
pub(super) fn conv_ip_prefix(v: &Value) -> Result<IpNet, String> {
    let s = conv_string(v)?;
    parse_prefix(&s).ok_or_else(|| format!("invalid address or CIDR {s:?}"))
}

/// A CIDR of either family with its prefix length and no host bits (a router's
/// `routes[i].destination`): Neutron refuses `10.99.0.1/24` and a plain address.
pub(super) fn conv_cidr(v: &Value) -> Result<IpNet, String> {
    let s = conv_string(v)?;
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => Err(format!(
            "{s} has host bits set (the network is {})",
            net.trunc()
        )),
        Ok(net) => Ok(net),
        Err(_) => Err(format!("invalid CIDR {s:?}")),
    }
}

/// A CIDR, or a plain address as its host prefix; host bits kept.
fn parse_prefix(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The label of a nested object: its `id` when it has a non-empty one.
pub(super) fn id_of(obj: &Object<'_>) -> Option<String> {
    match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.to_string()),
        _ => None,
    }
}

/// Reads the fields of one JSON object, recording every problem.
pub(super) struct Reader<'a, 'e> {
    kind: &'static str,
    id: &'a str,
    /// Path of this object inside the element, e.g. `fixed_ips[0].`.
    prefix: String,
    obj: &'a Object<'a>,
    errors: &'e mut Vec<FieldError>,
}

impl<'a> Reader<'a, '_> {
    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            kind: self.kind,
            id: self.id.to_owned(),
            field: format!("{}{field}", self.prefix),
            message: message.into(),
        });
    }

    /// The value of a field; missing and `null` are both absent.
    pub(super) fn present(&self, field: &str) -> Option<&'a Value<'a>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(super) fn req<T>(&mut self, field: &str, conv: Conv<T>) -> Option<T> {
        if self.present(field).is_none() {
            self.error(field, "missing");
            return None;
        }
        self.opt(field, conv)
    }

    pub(super) fn opt<T>(&mut self, field: &str, conv: Conv<T>) -> Option<T> {
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
    pub(super) fn opt_nonempty(&mut self, field: &str) -> Option<String> {
        self.opt(field, conv_string).filter(|s| !s.is_empty())
    }

    /// The object elements of a list field. A missing list is empty unless `required`.
    pub(super) fn list(&mut self, field: &str, required: bool) -> Vec<(String, &'a Object<'a>)> {
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

    /// A list of scalars, each converted by `conv` (problems reported as `field[i]`); `None`
    /// when the field is absent (missing or `null`) or not a list.
    pub(super) fn opt_list<T>(&mut self, field: &str, conv: Conv<T>) -> Option<Vec<T>> {
        let items = match self.present(field)? {
            Value::Array(items) => items,
            other => {
                let message = format!("expected a list, got {}", describe(other));
                self.error(field, message);
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match conv(item) {
                Ok(t) => out.push(t),
                Err(message) => self.error(&format!("{field}[{i}]"), message),
            }
        }
        Some(out)
    }

    /// A reader for an object nested in this element that errors name by its own kind and
    /// id (a rule inside its security group is reported as `security_group_rule <id>`).
    pub(super) fn nested<'c>(
        &'c mut self,
        kind: &'static str,
        id: &'c str,
        obj: &'c Object<'c>,
    ) -> Reader<'c, 'c> {
        Reader {
            kind,
            id,
            prefix: String::new(),
            obj,
            errors: &mut *self.errors,
        }
    }

    /// A reader for a nested object at `path` (which ends in `.`).
    pub(super) fn child<'c>(&'c mut self, path: &str, obj: &'a Object<'a>) -> Reader<'a, 'c> {
        Reader {
            kind: self.kind,
            id: self.id,
            prefix: format!("{}{path}", self.prefix),
            obj,
            errors: &mut *self.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::display_lines;
    use crate::testing::*;

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
}
