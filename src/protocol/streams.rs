//! The stream table of one tunnel: stream ids to the state of each stream.
//!
//! The server allocates ids (it opens every stream); the client registers the ids the
//! server names. Ids are not reused while in use, and the table is bounded by the
//! negotiated stream limit.

use std::collections::HashMap;

use slab::Slab;

/// Ids map to slots of a dense slab: the hashed index holds 8 bytes a stream, the state
/// lives unhashed, so a tunnel's table stays small as it grows to thousands of streams.
#[derive(Debug)]
pub struct Streams<V> {
    index: HashMap<u32, u32>,
    slots: Slab<V>,
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
            index: HashMap::new(),
            slots: Slab::new(),
            next_id: 1,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Allocate a fresh id for `value` (server side).
    pub fn open(&mut self, value: V) -> Result<u32, AddError> {
        if self.len() >= self.max {
            return Err(AddError::Full);
        }
        // `max` is far below 2^32, so a free id is found within `max + 1` steps.
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.index.contains_key(&id) {
                self.insert(id, value);
                return Ok(id);
            }
        }
    }

    /// Register an id chosen by the peer (client side).
    pub fn accept(&mut self, id: u32, value: V) -> Result<(), AddError> {
        if self.index.contains_key(&id) {
            return Err(AddError::InUse);
        }
        if self.len() >= self.max {
            return Err(AddError::Full);
        }
        self.insert(id, value);
        Ok(())
    }

    fn insert(&mut self, id: u32, value: V) {
        // Slots number at most `max`, which the configuration keeps far below 2^32.
        let slot = self.slots.insert(value);
        self.index.insert(id, slot as u32);
    }

    pub fn get(&self, id: u32) -> Option<&V> {
        let &slot = self.index.get(&id)?;
        self.slots.get(slot as usize)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut V> {
        let &slot = self.index.get(&id)?;
        self.slots.get_mut(slot as usize)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.index.contains_key(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<V> {
        let slot = self.index.remove(&id)?;
        self.slots.try_remove(slot as usize)
    }

    /// Remove every stream, returning their values.
    pub fn drain(&mut self) -> Vec<V> {
        self.index.clear();
        self.slots.drain().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &V)> {
        self.index
            .iter()
            .filter_map(|(&id, &slot)| Some((id, self.slots.get(slot as usize)?)))
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
