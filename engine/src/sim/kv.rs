//! The simulator's replicated state machine: a small key-value map, its
//! commands, and snapshots of it. Bytes here come from the simulator itself,
//! so decoding failures are simulator bugs and panic.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::raft::Index;

/// A command carried in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            Command::Put { key, value } => {
                b.put_u8(0);
                put_bytes(&mut b, key);
                put_bytes(&mut b, value);
            }
            Command::Delete { key } => {
                b.put_u8(1);
                put_bytes(&mut b, key);
            }
        }
        b.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Command {
        let tag = data[0];
        data = &data[1..];
        let key = take_bytes(&mut data);
        match tag {
            0 => Command::Put {
                key,
                value: take_bytes(&mut data),
            },
            1 => Command::Delete { key },
            t => panic!("sim command tag {t}"),
        }
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn take_bytes(data: &mut &[u8]) -> Vec<u8> {
    let len = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let v = data[4..4 + len].to_vec();
    *data = &data[4 + len..];
    v
}

/// The map and the last index applied to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    pub applied: Index,
}

impl Kv {
    pub fn apply(&mut self, index: Index, cmd: &Command) {
        match cmd {
            Command::Put { key, value } => {
                self.map.insert(key.clone(), value.clone());
            }
            Command::Delete { key } => {
                self.map.remove(key);
            }
        }
        self.applied = index;
    }

    pub fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u64(self.applied);
        b.put_u32(self.map.len() as u32);
        for (k, v) in &self.map {
            put_bytes(&mut b, k);
            put_bytes(&mut b, v);
        }
        b.freeze()
    }

    pub fn restore(mut data: &[u8]) -> Kv {
        if data.is_empty() {
            return Kv::default();
        }
        let applied = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
        data = &data[12..];
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = take_bytes(&mut data);
            let v = take_bytes(&mut data);
            map.insert(k, v);
        }
        Kv { map, applied }
    }

    /// A hash of the state, to compare replicas at the same applied index.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x100_0000_01b3);
        };
        for (k, v) in &self.map {
            eat(k);
            eat(v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_snapshots_round_trip() {
        let c = Command::Put {
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
        };
        assert_eq!(Command::decode(&c.encode()), c);
        let d = Command::Delete { key: b"k".to_vec() };
        assert_eq!(Command::decode(&d.encode()), d);
        let mut kv = Kv::default();
        kv.apply(1, &c);
        kv.apply(
            2,
            &Command::Put {
                key: b"z".to_vec(),
                value: vec![],
            },
        );
        assert_eq!(Kv::restore(&kv.snapshot()), kv);
        assert_eq!(Kv::restore(&[]), Kv::default());
    }
}
