//! SCAN's cursors and MATCH's glob patterns.
//!
//! Client libraries and `redis-cli` read a SCAN cursor as an unsigned 64-bit
//! decimal, so a cursor cannot carry the key to resume from. The server keeps
//! a table from cursor number to resume key instead: a cursor is valid on the
//! node that issued it, for as long as it is among the last
//! [`CURSORS_MAX`] issued. Keys are scanned in order and each batch resumes
//! just after the last key returned, so a key present for the whole iteration
//! is returned exactly once (and keys are never returned twice).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use parking_lot::Mutex;

/// Cursors remembered at once; the oldest is forgotten first.
pub const CURSORS_MAX: usize = 16 * 1024;

/// Cursor number → the key a SCAN resumes from.
#[derive(Debug)]
pub struct Cursors {
    inner: Mutex<CursorsInner>,
}

#[derive(Debug)]
struct CursorsInner {
    next: u64,
    by_id: HashMap<u64, Bytes>,
    order: VecDeque<u64>,
}

impl Default for Cursors {
    fn default() -> Self {
        // Start from the clock so that a restarted server does not accept an
        // old cursor as its own.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Cursors {
            inner: Mutex::new(CursorsInner {
                next: (seed >> 1).max(1),
                by_id: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

impl Cursors {
    /// A new cursor resuming at `key` (never 0).
    pub fn issue(&self, key: Bytes) -> u64 {
        let mut c = self.inner.lock();
        let id = c.next;
        c.next = c.next.wrapping_add(1).max(1);
        if c.order.len() >= CURSORS_MAX
            && let Some(old) = c.order.pop_front()
        {
            c.by_id.remove(&old);
        }
        c.by_id.insert(id, key);
        c.order.push_back(id);
        id
    }

    /// Where cursor `id` resumes (`Some(empty)` for 0, the start); `None` if
    /// unknown or forgotten.
    pub fn resume(&self, id: u64) -> Option<Bytes> {
        if id == 0 {
            return Some(Bytes::new());
        }
        self.inner.lock().by_id.get(&id).cloned()
    }
}

/// The smallest key after `key`.
pub fn key_after(key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    Bytes::from(k)
}

/// Redis's `stringmatchlen`: `*`, `?`, `[abc]`, `[^a-z]`, `\x` escapes.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point for `*`: linear-ish, no recursion.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, s[i])
                        && matched
                    {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == '['`: (matched,
/// index after the class).
fn class_match(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(j) {
            // Unterminated class: Redis treats the end as closing it.
            None => return Some((matched != negate, j)),
            Some(b']') => return Some((matched != negate, j + 1)),
            Some(b'\\') if j + 1 < pattern.len() => {
                matched |= pattern[j + 1] == c;
                j += 2;
            }
            Some(&lo) if pattern.get(j + 1) == Some(&b'-') && j + 2 < pattern.len() => {
                let hi = pattern[j + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                matched |= lo <= c && c <= hi;
                j += 3;
            }
            Some(&x) => {
                matched |= x == c;
                j += 1;
            }
        }
    }
}
