//! The stream table of one tunnel: stream ids to the state of each stream.
//!
//! The server allocates ids (it opens every stream); the client registers the ids the
//! server names. Ids are not reused while in use, and the table is bounded by the
//! negotiated stream limit.

use std::collections::HashMap;

#[derive(Debug)]
pub struct Streams<V> {
    map: HashMap<u32, V>,
    next_id: u32,
    max: usize,
}

/// Why a stream could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// The table holds `max` streams already.
    Full,
    /// The peer named an id that is in use: a protocol violation.
    InUse,
}

impl<V> Streams<V> {
    pub fn new(max: usize) -> Streams<V> {
        Streams {
            map: HashMap::new(),
            next_id: 1,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Allocate a fresh id for `value` (server side).
    pub fn open(&mut self, value: V) -> Result<u32, AddError> {
        if self.map.len() >= self.max {
            return Err(AddError::Full);
        }
        // `max` is far below 2^32, so a free id is found within `max + 1` steps.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(id) {
                e.insert(value);
                return Ok(id);
            }
        }
    }

    /// Register an id chosen by the peer (client side).
    pub fn accept(&mut self, id: u32, value: V) -> Result<(), AddError> {
        if self.map.contains_key(&id) {
            return Err(AddError::InUse);
        }
        if self.map.len() >= self.max {
            return Err(AddError::Full);
        }
        self.map.insert(id, value);
        Ok(())
    }

    pub fn get(&self, id: u32) -> Option<&V> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut V> {
        self.map.get_mut(&id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.map.contains_key(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<V> {
        self.map.remove(&id)
    }

    /// Remove every stream, returning their values.
    pub fn drain(&mut self) -> Vec<V> {
        self.map.drain().map(|(_, v)| v).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        self.map.iter().map(|(&id, v)| (id, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_nonzero_and_bounded() {
        let mut s = Streams::new(3);
        let a = s.open('a').unwrap();
        let b = s.open('b').unwrap();
        let c = s.open('c').unwrap();
        assert!(a != 0 && a != b && b != c);
        assert_eq!(s.open('d'), Err(AddError::Full));
        assert_eq!(s.remove(b), Some('b'));
        let d = s.open('d').unwrap();
        assert_ne!(d, b, "a freed id is not handed out again at once");
        assert_eq!(s.get(d), Some(&'d'));
    }

    #[test]
    fn id_wrap_skips_zero_and_ids_in_use() {
        let mut s = Streams::new(10);
        s.accept(1, 'x').unwrap();
        s.next_id = u32::MAX;
        assert_eq!(s.open('a'), Ok(u32::MAX));
        assert_eq!(s.open('b'), Ok(2), "0 is never used and 1 is taken");
    }

    #[test]
    fn peer_chosen_ids() {
        let mut s = Streams::new(1);
        s.accept(5, ()).unwrap();
        assert_eq!(s.accept(5, ()), Err(AddError::InUse));
        assert_eq!(s.accept(6, ()), Err(AddError::Full));
        assert_eq!(s.drain().len(), 1);
        assert!(s.is_empty());
    }
}
