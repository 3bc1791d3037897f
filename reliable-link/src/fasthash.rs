//! A small, fast hash for the endpoint's maps (the FxHash mixing step).
//!
//! Keys are connection ids this node drew at random, ports, and addresses:
//! nothing a remote party can pick to collide except the peer ids of
//! pending SYNs, which on a trusted segment is acceptable. SipHash (std's
//! default) showed up as a tenth of the receive path's time.

use std::hash::{BuildHasherDefault, Hasher};

/// See the module documentation.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.add(u64::from(v));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_and_spread_keys() {
        let mut m: FastMap<u64, u64> = FastMap::default();
        for i in 0..1000 {
            m.insert(i * 7919, i);
        }
        assert!((0..1000).all(|i| m[&(i * 7919)] == i));
        let mut a = FastHasher::default();
        a.write_u64(1);
        let mut b = FastHasher::default();
        b.write_u64(2);
        assert_ne!(a.finish(), b.finish());
    }
}
