//! One kind of state object in state order with its id index: what the parser fills, the
//! checks read and [`State`](super::State) keeps.

/// The state's indexes hash ids it parsed itself; foldhash is several times faster than
/// SipHash on them (a tenth of load time at 10,000 ports).
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(super) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Objects of one kind, in state order, by id (a host's by name).
#[derive(Debug, Clone)]
pub(super) struct Table<T> {
    items: Vec<T>,
    by_id: HashMap<String, usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            by_id: HashMap::default(),
        }
    }
}

impl<T> Table<T> {
    /// Appends `item` under `id` (the caller has ruled out duplicates).
    pub(super) fn push(&mut self, id: String, item: T) {
        self.by_id.insert(id, self.items.len());
        self.items.push(item);
    }

    /// The objects, in order.
    pub(super) fn into_items(self) -> Vec<T> {
        self.items
    }

    pub(super) fn items(&self) -> &[T] {
        &self.items
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// The position of the object with this id.
    pub(super) fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn get(&self, id: &str) -> Option<&T> {
        self.index(id).and_then(|i| self.items.get(i))
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.index(id).and_then(|i| self.items.get_mut(i))
    }

    /// The object at a position.
    pub(super) fn at(&self, i: usize) -> Option<&T> {
        self.items.get(i)
    }
}
