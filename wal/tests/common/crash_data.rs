//! The data the crash child writes and the crash test checks: one function,
//! shared by both through `#[path]`, so the two cannot drift apart.

/// The bytes of entry `index` of `group`: the parent checks them.
pub fn entry_data(group: u64, index: u64) -> Vec<u8> {
    let len = 16 + ((group * 7919 + index * 104729) % 1500) as usize;
    let mut v = Vec::with_capacity(len);
    let mut x = group.wrapping_mul(0x9E3779B97F4A7C15) ^ index;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}
