//! Validation: references and cross-object rules, on the typed objects. What every family's
//! checks share: how a reference resolves, and where problems go.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::FieldError;
use super::parse::Mac;
use super::table::{HashSet, Table};

/// How a reference resolved.
pub(super) enum Ref {
    Found(usize),
    /// The object exists but did not parse: already reported.
    Broken,
    Missing,
}

/// The objects of one kind as the checks see them: those that parsed, and the ids of those
/// that did not (already reported, so references to them are not reported again).
pub(super) struct Known<'s, T> {
    pub(super) table: &'s Table<T>,
    broken: &'s HashSet<String>,
}

// Not derived: that would require `T: Copy`.
impl<T> Clone for Known<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Known<'_, T> {}

impl<'s, T> Known<'s, T> {
    pub(super) fn new(table: &'s Table<T>, broken: &'s HashSet<String>) -> Self {
        Known { table, broken }
    }

    pub(super) fn resolve(&self, id: &str) -> Ref {
        match self.table.index(id) {
            Some(i) => Ref::Found(i),
            None if self.broken.contains(id) => Ref::Broken,
            None => Ref::Missing,
        }
    }

    /// True when an object with this id failed to parse.
    pub(super) fn is_broken(&self, id: &str) -> bool {
        self.broken.contains(id)
    }

    /// True when some object of this kind failed to parse (a check that needs all of them,
    /// not one by id, keeps quiet then: the state is refused already).
    pub(super) fn any_broken(&self) -> bool {
        !self.broken.is_empty()
    }
}

/// Where the checks record problems, in the order found.
pub(super) struct Report<'e> {
    errors: &'e mut Vec<FieldError>,
}

impl<'e> Report<'e> {
    pub(super) fn new(errors: &'e mut Vec<FieldError>) -> Self {
        Report { errors }
    }

    pub(super) fn error(
        &mut self,
        kind: &'static str,
        id: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        self.errors.push(FieldError {
            kind,
            id: id.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

pub(super) fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

pub(super) fn ip_in(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip)
}
