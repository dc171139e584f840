//! [`VecMap`]: a small string-keyed map kept as one sorted vector, for the per-customer maps
//! of [`CustomerState`](super::CustomerState) (profile attributes, journey memories).
//!
//! A customer has a handful of entries in each, and a million customers may be cached: a
//! `BTreeMap` allocates a node of eleven slots for the first entry, which made these two maps
//! the largest part of a decoded customer. A sorted vector holds exactly what is there and is
//! searched as fast at this size; up to `N` entries are kept inside the map itself (no
//! allocation at all). It serializes as a map, so its encoding is byte for byte a
//! `BTreeMap`'s (the state format does not change). It must stay a plain container: nothing
//! about journeys or profiles belongs here.

use std::fmt;
use std::marker::PhantomData;

use compact_str::CompactString;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

/// A map from string keys to `V`, sorted by key, unique keys. Keys up to 24 bytes (attribute
/// and journey names) are stored inline. Up to `N` entries are kept inside the map itself,
/// without an allocation (a customer in one journey: its memory is read with the customer, not
/// from one more place in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VecMap<V, const N: usize = 0> {
    entries: SmallVec<[(CompactString, V); N]>,
}

impl<V, const N: usize> Default for VecMap<V, N> {
    fn default() -> Self {
        VecMap {
            entries: SmallVec::new(),
        }
    }
}

impl<V, const N: usize> VecMap<V, N> {
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.position(key).ok().map(|i| &self.entries[i].1)
    }

    /// Whether there is a value under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// The value under `key`, inserted as `V::default()` if there is none.
    pub fn or_default(&mut self, key: &str) -> &mut V
    where
        V: Default,
    {
        let i = match self.position(key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key.into(), V::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.into_iter()
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<CompactString>, V, const N: usize> FromIterator<(K, V)> for VecMap<V, N> {
    /// The last value of a repeated key wins, as in a `BTreeMap`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(CompactString, V)> =
            iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        // Stable: equal keys keep their order, so the last one is the one kept below.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: SmallVec<[(CompactString, V); N]> = SmallVec::with_capacity(entries.len());
        for (k, v) in entries {
            match kept.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => kept.push((k, v)),
            }
        }
        VecMap { entries: kept }
    }
}

impl<'a, V, const N: usize> IntoIterator for &'a VecMap<V, N> {
    type Item = (&'a str, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, V)>,
        fn(&(CompactString, V)) -> (&str, &V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<V: Serialize, const N: usize> Serialize for VecMap<V, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>, const N: usize> Deserialize<'de> for VecMap<V, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V, const N: usize>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>, const N: usize> Visitor<'de> for MapVisitor<V, N> {
            type Value = VecMap<V, N>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map with string keys")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = SmallVec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                let mut sorted = true;
                while let Some((k, v)) = access.next_entry::<CompactString, V>()? {
                    if let Some((last, _)) = entries.last() {
                        sorted &= *last < k;
                    }
                    entries.push((k, v));
                }
                if sorted {
                    // What `Serialize` wrote: already sorted and unique.
                    return Ok(VecMap { entries });
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn encodes_byte_for_byte_as_a_btree_map_and_reads_it_back() {
        let pairs = [("tz", 3u32), ("a", 1), ("m", 2)];
        let tree: BTreeMap<String, u32> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let ours: VecMap<u32> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let bytes = postcard::to_allocvec(&tree).unwrap();
        assert_eq!(postcard::to_allocvec(&ours).unwrap(), bytes);
        let back: VecMap<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ours);
        assert_eq!(
            back.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(),
            [("a", 1), ("m", 2), ("tz", 3)]
        );
        // Entries kept inside the map, or beyond what it keeps inside: the same bytes.
        for n in [1, 3] {
            let tree: BTreeMap<String, u32> = tree.clone().into_iter().take(n).collect();
            let bytes = postcard::to_allocvec(&tree).unwrap();
            let inline: VecMap<u32, 1> = tree.clone().into_iter().collect();
            assert_eq!(postcard::to_allocvec(&inline).unwrap(), bytes);
            let back: VecMap<u32, 1> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!((back.len(), back), (n, inline));
        }
    }

    #[test]
    fn keeps_keys_sorted_and_unique() {
        let mut m: VecMap<u32> = VecMap::default();
        *m.or_default("b") += 1;
        *m.or_default("a") += 1;
        *m.or_default("b") += 1;
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("b"), Some(&2));
        assert!(m.contains_key("a") && !m.contains_key("c"));
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
        // Out of order or repeated input (not what `Serialize` writes) is sorted, last wins.
        let json = r#"{"b": 1, "a": 2, "b": 3}"#;
        let m: VecMap<u32> = serde_json::from_str(json).unwrap();
        assert_eq!(
            m.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(),
            [("a", 2), ("b", 3)]
        );
    }
}
