//! Linearizability checker for client histories of the key-value store.
//!
//! # What it checks
//!
//! [`check`] decides whether a history of client operations ([`Op`]: an invocation, a
//! response and their logical times) is *linearizable* with respect to a map of
//! independent registers, one per key, each initially absent: whether every operation
//! can be given a single instant between its call and its return such that, executed
//! one after another in the order of those instants, a plain sequential map produces
//! exactly the outputs the clients saw.
//!
//! # Algorithm
//!
//! Linearizability is compositional (Herlihy & Wing): a history over several objects is
//! linearizable iff each object's sub-history is. Every operation touches exactly one
//! key, so the history is partitioned by key and each key is checked on its own, which
//! turns one search exponential in the whole history into many small ones.
//!
//! Each key is checked with the Wing & Gong search as improved by Lowe ("Testing for
//! linearizability", 2017) and used by the Porcupine checker: a depth-first search that
//! repeatedly picks an operation to linearize next, applies it to the sequential model
//! and backtracks when the model rejects the output. The search is pruned in five ways,
//! all of them exact (they never hide a linearization; the brute-force cross-check in
//! the tests exercises this):
//!
//! * **Minimal-op rule.** An operation may be linearized next only if its call is not
//!   after the earliest return among the completed operations not yet linearized; any
//!   other choice would place it after an operation that returned before it was called.
//! * **Memoisation.** Every configuration reached, (set of linearized operations as a
//!   bitset, model state), is remembered; the rest of the search depends only on that
//!   pair, so one that was already explored (and failed) is not explored again. Values
//!   are interned per key, so the model state is a `u32` and hashing is cheap.
//! * **Reads go first.** An operation that never changes the state (a `Get` or a
//!   `Cas` that reported no swap) and that could be linearized next and agrees with the
//!   current state is linearized at once, without trying alternatives: moving such an
//!   operation earlier in any linearization keeps every other result unchanged and
//!   respects real time (nothing that must precede it is still pending), so if any
//!   linearization exists, one that takes the read now exists too.
//! * **Unobservable values merge.** Values that no op compares against (never returned
//!   by a `Get`, never a `Cas` expectation) all behave alike, so they share one state.
//! * **Unknown ops just in time.** See below.
//!
//! # Operations with unknown outcome
//!
//! An operation whose output is [`Output::Unknown`] (timeout, crash, lost reply) may
//! have taken effect at any instant after its call, or never. Its return time is
//! treated as +infinity (any `ret` recorded on it is ignored, since the request may
//! still be in flight), so it never constrains other operations, and the search
//! succeeds as soon as every *completed* operation is linearized: the remaining unknown
//! ones are simply left out. An unknown `Put`, `Delete` or `Cas` is always applicable
//! (an unknown `Cas` swaps iff the state equals `expected`, as the real one would);
//! an unknown `Get` has no effect and constrains nothing, so it is dropped.
//!
//! Unknown ops would otherwise blow the search up, since they stay pending forever and
//! every subset of them could be linearized. Two exact rules keep that in check: an
//! unknown op that would not change the current state is never tried (leaving it out
//! is at least as permissive), and an unknown op may only be followed immediately by an
//! op that reads the state (a `Get` or a `Cas`, not a blind `Put`/`Delete`): in any
//! linearization an unknown op followed by a blind write, or by nothing, can be dropped
//! without changing any result. So unknown ops are only tried right before a read that
//! might need them.
//!
//! # Time
//!
//! Operation A precedes B in real time iff `A.ret < B.call`. Operations whose intervals
//! merely touch (`A.ret == B.call`) are treated as concurrent: logical clocks are
//! coarse, and this choice can only make the checker more permissive, never raise a
//! false alarm. Give events distinct times if touching intervals must be ordered.
//!
//! # Budget
//!
//! The problem is NP-complete, so the search counts its steps (attempts to apply an
//! operation to the model) per key and gives up past
//! [`CheckOptions::max_steps_per_key`] (default [`DEFAULT_MAX_STEPS_PER_KEY`]). Giving
//! up is reported as a [`Violation`] whose `kind` is
//! [`ViolationKind::BudgetExhausted`]: the history was neither proven linearizable
//! nor refuted, and callers should not count it as a bug found. The memo table holds at
//! most one entry per step (about 25 bytes for keys of up to 64 ops, growing with the
//! bitset), which bounds memory too: the default budget costs at most about 2 s and
//! ~60 MB per key on a current x86 core for keys of up to 64 ops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// What a client asked for. Keys and values are byte strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    /// Compare-and-set: if the current value equals `expected` (None = absent), set it to
    /// `new` (None = delete).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

impl Input {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Input::Put { key, .. }
            | Input::Delete { key }
            | Input::Get { key }
            | Input::Cas { key, .. } => key,
        }
    }
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A Put/Delete completed.
    Done,
    /// A Get returned this value (None = absent).
    Value(Option<Vec<u8>>),
    /// A Cas completed; true if it swapped.
    Swapped(bool),
    /// The client never learned the outcome (timeout, crash, lost reply): the
    /// operation may or may not have taken effect, at any time after `call`.
    Unknown,
}

/// One client operation: invocation, response and their logical times.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: u64,
    /// Logical time of the invocation.
    pub call: u64,
    /// Logical time the response arrived; None when Output::Unknown (treated as
    /// +infinity; a value given for an unknown op is ignored).
    pub ret: Option<u64>,
    pub input: Input,
    pub output: Output,
}

/// Why [`check`] rejected a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// No linearization exists: the store (or the history recorder) is wrong.
    NotLinearizable,
    /// The search hit [`CheckOptions::max_steps_per_key`] before reaching a verdict.
    /// Inconclusive: not evidence of a bug.
    BudgetExhausted,
    /// The history itself is ill-formed (output does not match the input, return
    /// before call, missing return time); nothing was checked.
    Malformed,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::BudgetExhausted => "linearizability search gave up",
            ViolationKind::Malformed => "malformed history",
        })
    }
}

/// A rejected history, pinned to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The key whose sub-history failed (for [`ViolationKind::Malformed`], the bad op's key).
    pub key: Vec<u8>,
    /// Indices into the checked history: for `NotLinearizable` and `BudgetExhausted`, every
    /// op on `key` in history order (that sub-history alone reproduces the verdict, since
    /// keys are independent); for `Malformed`, the offending op.
    pub ops: Vec<usize>,
    /// Human-readable explanation; for `NotLinearizable` it shows the longest partial
    /// linearization found and the op that could not be placed after it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on key {} ({} ops): {}",
            self.kind,
            Bytes(&self.key),
            self.ops.len(),
            self.message
        )
    }
}

impl std::error::Error for Violation {}

/// Default for [`CheckOptions::max_steps_per_key`].
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 10_000_000;

/// Tuning for [`check_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Give up on a key after this many search steps (attempts to apply an op to the
    /// model) and report [`ViolationKind::BudgetExhausted`].
    pub max_steps_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: DEFAULT_MAX_STEPS_PER_KEY,
        }
    }
}

/// Checks that the history is linearizable with respect to a map of independent
/// registers (one per key, initially absent). Ok(()) if it is.
///
/// Keys are checked in byte order and the first failing key is reported; see
/// [`Violation::kind`] to tell a real violation from an exhausted search budget.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    check_with(history, &CheckOptions::default())
}

/// [`check`] with explicit options.
pub fn check_with(history: &[Op], options: &CheckOptions) -> Result<(), Violation> {
    for (i, op) in history.iter().enumerate() {
        validate(i, op)?;
    }
    // BTreeMap so that the key reported first is deterministic across runs.
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.input.key()).or_default().push(i);
    }
    for (key, indices) in by_key {
        check_key(history, key, &indices, options)?;
    }
    Ok(())
}

fn validate(index: usize, op: &Op) -> Result<(), Violation> {
    let malformed = |message: String| Violation {
        kind: ViolationKind::Malformed,
        key: op.input.key().to_vec(),
        ops: vec![index],
        message: format!("{message}: {}", describe(index, op)),
    };
    let matches = matches!(
        (&op.input, &op.output),
        (_, Output::Unknown)
            | (Input::Put { .. } | Input::Delete { .. }, Output::Done)
            | (Input::Get { .. }, Output::Value(_))
            | (Input::Cas { .. }, Output::Swapped(_))
    );
    if !matches {
        return Err(malformed("output does not match the input".to_string()));
    }
    if op.output != Output::Unknown {
        match op.ret {
            None => return Err(malformed("completed op has no return time".to_string())),
            Some(ret) if ret < op.call => {
                return Err(malformed("op returns before it is called".to_string()));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Per-key model
// ---------------------------------------------------------------------------------------

/// Model state of one register: an interned value id, [`ABSENT`] when the key is absent.
type State = u32;
const ABSENT: State = 0;

/// Stands for every value that no op ever compares against (see [`canonicalize`]).
const UNOBSERVED: State = State::MAX;

/// Interns the values of one key so that states compare and hash as integers.
struct Interner<'a> {
    ids: HashMap<&'a [u8], State>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, value: Option<&'a [u8]>) -> State {
        let Some(bytes) = value else { return ABSENT };
        let next = self.ids.len() + 1;
        // A key has at most as many distinct values as ops, far below u32::MAX - 1;
        // saturating keeps this total without a panic path.
        *self
            .ids
            .entry(bytes)
            .or_insert_with(|| State::try_from(next).unwrap_or(UNOBSERVED - 1))
    }
}

/// An op of one key, reduced to what the search needs.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Completed Put/Delete: always applies, sets the state.
    Write { new: State },
    /// Completed Get: applies iff the state equals `value`.
    Read { value: State },
    /// Completed Cas that swapped: applies iff state == expected.
    CasSwapped { expected: State, new: State },
    /// Completed Cas that did not swap: applies iff state != expected; read-only.
    CasFailed { expected: State },
    /// Put/Delete of unknown outcome.
    MaybeWrite { new: State },
    /// Cas of unknown outcome: swaps iff state == expected.
    MaybeCas { expected: State, new: State },
}

impl Step {
    fn known(self) -> bool {
        !matches!(self, Step::MaybeWrite { .. } | Step::MaybeCas { .. })
    }

    /// Never changes the state, whatever it is (eligible for the reads-go-first rule).
    fn read_only(self) -> bool {
        matches!(self, Step::Read { .. } | Step::CasFailed { .. })
    }

    /// Depends on the state it is applied in (as opposed to a blind write).
    fn reads_state(self) -> bool {
        !matches!(self, Step::Write { .. } | Step::MaybeWrite { .. })
    }

    /// The value ids the op compares the state against.
    fn observes(self) -> Option<State> {
        match self {
            Step::Read { value } => Some(value),
            Step::CasSwapped { expected, .. }
            | Step::CasFailed { expected }
            | Step::MaybeCas { expected, .. } => Some(expected),
            Step::Write { .. } | Step::MaybeWrite { .. } => None,
        }
    }

    /// Rewrites the value the op writes, if any.
    fn map_written(self, f: impl Fn(State) -> State) -> Step {
        match self {
            Step::Write { new } => Step::Write { new: f(new) },
            Step::MaybeWrite { new } => Step::MaybeWrite { new: f(new) },
            Step::CasSwapped { expected, new } => Step::CasSwapped {
                expected,
                new: f(new),
            },
            Step::MaybeCas { expected, new } => Step::MaybeCas {
                expected,
                new: f(new),
            },
            Step::Read { .. } | Step::CasFailed { .. } => self,
        }
    }

    /// The state after applying this op in `state`, or None if the op's recorded output
    /// is impossible there.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Write { new } | Step::MaybeWrite { new } => Some(new),
            Step::Read { value } => (state == value).then_some(state),
            Step::CasSwapped { expected, new } => (state == expected).then_some(new),
            Step::CasFailed { expected } => (state != expected).then_some(state),
            Step::MaybeCas { expected, new } => Some(if state == expected { new } else { state }),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyOp {
    call: u64,
    /// u64::MAX for unknown ops (never consulted for them).
    ret: u64,
    step: Step,
    /// Index into the full history.
    index: usize,
}

fn check_key(
    history: &[Op],
    key: &[u8],
    indices: &[usize],
    options: &CheckOptions,
) -> Result<(), Violation> {
    let mut interner = Interner {
        ids: HashMap::new(),
    };
    let mut ops: Vec<KeyOp> = Vec::with_capacity(indices.len());
    for &index in indices {
        let Some(op) = history.get(index) else {
            continue;
        };
        let unknown = op.output == Output::Unknown;
        let step = match (&op.input, &op.output) {
            // An unknown Get observed nothing and changed nothing: it constrains no one.
            (Input::Get { .. }, Output::Unknown) => continue,
            (Input::Put { value, .. }, _) => {
                let new = interner.id(Some(value));
                if unknown {
                    Step::MaybeWrite { new }
                } else {
                    Step::Write { new }
                }
            }
            (Input::Delete { .. }, _) => {
                if unknown {
                    Step::MaybeWrite { new: ABSENT }
                } else {
                    Step::Write { new: ABSENT }
                }
            }
            (Input::Get { .. }, Output::Value(v)) => Step::Read {
                value: interner.id(v.as_deref()),
            },
            (Input::Cas { expected, new, .. }, out) => {
                let expected = interner.id(expected.as_deref());
                let new = interner.id(new.as_deref());
                match out {
                    Output::Swapped(true) => Step::CasSwapped { expected, new },
                    Output::Swapped(false) => Step::CasFailed { expected },
                    _ => Step::MaybeCas { expected, new },
                }
            }
            // validate() rejected every other combination before we got here.
            (Input::Get { .. }, _) => continue,
        };
        let ret = if unknown {
            u64::MAX
        } else {
            op.ret.unwrap_or(u64::MAX)
        };
        ops.push(KeyOp {
            call: op.call,
            ret,
            step,
            index,
        });
    }

    canonicalize(&mut ops);
    let n = ops.len();
    let outcome = if n <= 64 {
        search::<[u64; 1]>(&ops, options.max_steps_per_key)
    } else if n <= 128 {
        search::<[u64; 2]>(&ops, options.max_steps_per_key)
    } else if n <= 256 {
        search::<[u64; 4]>(&ops, options.max_steps_per_key)
    } else if n <= 512 {
        search::<[u64; 8]>(&ops, options.max_steps_per_key)
    } else {
        search::<Vec<u64>>(&ops, options.max_steps_per_key)
    };

    match outcome {
        Outcome::Linearizable => Ok(()),
        Outcome::GaveUp { steps } => Err(Violation {
            kind: ViolationKind::BudgetExhausted,
            key: key.to_vec(),
            ops: indices.to_vec(),
            message: format!(
                "no verdict after {steps} search steps over {n} ops \
                 (raise CheckOptions::max_steps_per_key or shorten the history)"
            ),
        }),
        Outcome::NotLinearizable { path } => Err(Violation {
            kind: ViolationKind::NotLinearizable,
            key: key.to_vec(),
            ops: indices.to_vec(),
            message: explain(history, &ops, &path),
        }),
    }
}

/// Merges all values that no op compares against (never read, never a CAS expectation)
/// into the single state [`UNOBSERVED`]. Every op treats such values alike (all its
/// comparisons are false), so this is exact; it lets configurations that differ only in
/// an unobservable value share one memo entry.
fn canonicalize(ops: &mut [KeyOp]) {
    let observed: HashSet<State> = ops
        .iter()
        .filter_map(|o| o.step.observes())
        .chain([ABSENT])
        .collect();
    for o in ops.iter_mut() {
        o.step = o
            .step
            .map_written(|v| if observed.contains(&v) { v } else { UNOBSERVED });
    }
}

/// Replays a partial linearization on a plain register to show the value it leaves.
fn replay<'h>(history: &'h [Op], ops: &[KeyOp], path: &[u32]) -> Option<&'h [u8]> {
    let mut value: Option<&[u8]> = None;
    for op in path.iter().filter_map(|&p| ops.get(p as usize)) {
        match history.get(op.index).map(|o| &o.input) {
            Some(Input::Put { value: v, .. }) => value = Some(v),
            Some(Input::Delete { .. }) => value = None,
            Some(Input::Cas { expected, new, .. }) => {
                if value == expected.as_deref() {
                    value = new.as_deref();
                }
            }
            Some(Input::Get { .. }) | None => {}
        }
    }
    value
}

/// Builds the message for a refuted key from the deepest configuration the search
/// reached: which ops it managed to linearize, and which completed op then had to be
/// placed (the pending one with the earliest return) but could not.
fn explain(history: &[Op], ops: &[KeyOp], path: &[u32]) -> String {
    let known_total = ops.iter().filter(|o| o.step.known()).count();
    let known_placed = path
        .iter()
        .filter(|&&i| ops.get(i as usize).is_some_and(|o| o.step.known()))
        .count();
    let mut placed = vec![false; ops.len()];
    for &i in path {
        if let Some(p) = placed.get_mut(i as usize) {
            *p = true;
        }
    }
    let blocking = ops
        .iter()
        .zip(&placed)
        .filter(|(o, p)| o.step.known() && !**p)
        .map(|(o, _)| o)
        .min_by_key(|o| (o.ret, o.call));

    let mut msg =
        format!("the search placed at most {known_placed} of {known_total} completed ops; ");
    const SHOWN: usize = 8;
    if path.is_empty() {
        msg.push_str("none can go first");
    } else {
        msg.push_str("the longest partial linearization ends ");
        if path.len() > SHOWN {
            msg.push_str(&format!("(last {SHOWN} of {}) ", path.len()));
        }
        let start = path.len().saturating_sub(SHOWN);
        let shown: Vec<String> = path
            .get(start..)
            .unwrap_or(&[])
            .iter()
            .filter_map(|&i| ops.get(i as usize))
            .filter_map(|o| history.get(o.index).map(|op| describe(o.index, op)))
            .collect();
        msg.push_str(&format!("[{}]", shown.join(", ")));
    }
    msg.push_str(&format!(
        ", leaving the key {}",
        Value(replay(history, ops, path))
    ));
    if let Some((b, op)) = blocking.and_then(|b| history.get(b.index).map(|op| (b, op))) {
        msg.push_str(&format!(
            "; then {} must take effect by time {} but no order of the pending ops allows it",
            describe(b.index, op),
            b.ret
        ));
    }
    msg
}

// ---------------------------------------------------------------------------------------
// The search
// ---------------------------------------------------------------------------------------

/// A set of op positions (< the key's op count), as fixed or growable u64 words.
trait Bits: Clone + Eq {
    fn empty(len: usize) -> Self;
    fn words(&self) -> &[u64];
    fn words_mut(&mut self) -> &mut [u64];

    fn get(&self, i: usize) -> bool {
        self.words()
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: usize) {
        if let Some(w) = self.words_mut().get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn clear(&mut self, i: usize) {
        if let Some(w) = self.words_mut().get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
}

impl<const W: usize> Bits for [u64; W] {
    fn empty(_len: usize) -> Self {
        [0; W]
    }
    fn words(&self) -> &[u64] {
        self
    }
    fn words_mut(&mut self) -> &mut [u64] {
        self
    }
}

impl Bits for Vec<u64> {
    fn empty(len: usize) -> Self {
        vec![0; len.div_ceil(64)]
    }
    fn words(&self) -> &[u64] {
        self
    }
    fn words_mut(&mut self) -> &mut [u64] {
        self
    }
}

/// A memoised configuration: which ops are linearized, the resulting model state, and
/// whether the next op must read the state (see [`Frame::readers_only`]). A node explored
/// under that restriction may fail where an unrestricted one would not, so the flag is
/// part of the key.
#[derive(Clone, PartialEq, Eq)]
struct Config<B> {
    linearized: B,
    state: State,
    readers_only: bool,
}

impl<B: Bits> Hash for Config<B> {
    // By hand so the words go to the hasher as u64s, not as a byte slice.
    fn hash<H: Hasher>(&self, h: &mut H) {
        for &w in self.linearized.words() {
            h.write_u64(w);
        }
        h.write_u32(self.state);
        h.write_u8(u8::from(self.readers_only));
    }
}

/// FxHash-style multiplicative hasher with a strong finaliser: the memo table is the
/// hot path and SipHash would dominate the run time. No HashDoS concern here.
#[derive(Default)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            if let Some(dst) = buf.get_mut(..chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            self.add(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn finish(&self) -> u64 {
        // splitmix64 finaliser: hashbrown takes bucket bits from the low end and tag bits
        // from the high end, so both must be well mixed.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

type Memo<B> = HashSet<Config<B>, BuildHasherDefault<FastHasher>>;

enum Outcome {
    Linearizable,
    /// `path`: positions of the deepest partial linearization found.
    NotLinearizable {
        path: Vec<u32>,
    },
    GaveUp {
        steps: u64,
    },
}

/// How a search node enumerates its choices.
enum Cursor {
    /// Reads-go-first: the single op to try (None once tried).
    Forced(Option<u32>),
    /// Scan the candidates in call order: phase 0 completed writes, phase 1 unknown ops
    /// (tried last, since a linearizable history rarely needs them).
    Scan { phase: u8, pos: usize },
}

/// One node of the depth-first search.
struct Frame {
    /// Earliest return among pending completed ops: candidates must be called by then.
    bound: u64,
    cursor: Cursor,
    /// The op currently linearized from this node, and the state before it.
    applied: Option<(u32, State)>,
    /// Set right after an unknown op: only an op that reads the state may follow. In any
    /// linearization, an unknown op followed by a blind write (or by nothing) can be
    /// dropped without changing any result, so some linearization, if one exists, has
    /// every unknown op immediately followed by a reader. Trying unknown ops only "just in
    /// time" stops them from multiplying the search space by 2^(pending unknown ops).
    readers_only: bool,
}

struct Search<'o, B> {
    ops: &'o [KeyOp],
    /// All op positions, by call time.
    by_call: Vec<u32>,
    /// Completed op positions, by return time.
    by_ret: Vec<u32>,
    linearized: B,
    state: State,
    steps: u64,
}

impl<B: Bits> Search<'_, B> {
    fn is_linearized(&self, pos: u32) -> bool {
        self.linearized.get(pos as usize)
    }

    fn op(&self, pos: u32) -> Option<&KeyOp> {
        self.ops.get(pos as usize)
    }

    /// Sets up the node for the current configuration. Requires a pending completed op.
    fn enter(&self, readers_only: bool) -> Frame {
        let bound = self
            .by_ret
            .iter()
            .find(|&&p| !self.is_linearized(p))
            .and_then(|&p| self.op(p))
            .map_or(u64::MAX, |o| o.ret);
        // Reads-go-first (see the module doc): a read-only op that may go next and agrees
        // with the state is the only choice worth trying here.
        let forced = self.candidates(bound).find(|&p| {
            self.op(p)
                .is_some_and(|o| o.step.read_only() && o.step.apply(self.state).is_some())
        });
        let cursor = match forced {
            Some(p) => Cursor::Forced(Some(p)),
            None => Cursor::Scan { phase: 0, pos: 0 },
        };
        Frame {
            bound,
            cursor,
            applied: None,
            readers_only,
        }
    }

    /// Pending ops that may be linearized next: called no later than `bound`.
    fn candidates(&self, bound: u64) -> impl Iterator<Item = u32> + '_ {
        self.by_call
            .iter()
            .copied()
            .take_while(move |&p| self.op(p).is_some_and(|o| o.call <= bound))
            .filter(move |&p| !self.is_linearized(p))
    }

    /// The node's next choice the model accepts, as (op, state after it).
    fn next_choice(&mut self, frame: &mut Frame) -> Option<(u32, State)> {
        match &mut frame.cursor {
            Cursor::Forced(p) => {
                let p = p.take()?;
                self.steps += 1;
                let next = self.op(p)?.step.apply(self.state)?;
                Some((p, next))
            }
            Cursor::Scan { phase, pos } => {
                while *phase < 2 {
                    while let Some(&p) = self.by_call.get(*pos) {
                        let Some(&op) = self.op(p) else { break };
                        if op.call > frame.bound {
                            break;
                        }
                        *pos += 1;
                        // Known reads are not tried: had one applied, the node would have
                        // been Forced; so none applies here.
                        let wanted = if *phase == 0 {
                            op.step.known() && !op.step.read_only()
                        } else {
                            !op.step.known()
                        } && (op.step.reads_state() || !frame.readers_only);
                        if !wanted || self.is_linearized(p) {
                            continue;
                        }
                        self.steps += 1;
                        let Some(next) = op.step.apply(self.state) else {
                            continue;
                        };
                        // An unknown op that changes nothing is dominated by leaving it out.
                        if !op.step.known() && next == self.state {
                            continue;
                        }
                        return Some((p, next));
                    }
                    *phase += 1;
                    *pos = 0;
                }
                None
            }
        }
    }
}

fn search<B: Bits>(ops: &[KeyOp], max_steps: u64) -> Outcome {
    let positions = 0..u32::try_from(ops.len()).unwrap_or(u32::MAX);
    let mut by_call: Vec<u32> = positions.clone().collect();
    by_call.sort_by_key(|&p| ops.get(p as usize).map_or(u64::MAX, |o| o.call));
    let mut by_ret: Vec<u32> = positions
        .filter(|&p| ops.get(p as usize).is_some_and(|o| o.step.known()))
        .collect();
    by_ret.sort_by_key(|&p| {
        ops.get(p as usize)
            .map_or((u64::MAX, u64::MAX), |o| (o.ret, o.call))
    });
    let known_total = by_ret.len();
    if known_total == 0 {
        return Outcome::Linearizable;
    }

    let mut s = Search {
        ops,
        by_call,
        by_ret,
        linearized: B::empty(ops.len()),
        state: ABSENT,
        steps: 0,
    };
    let mut memo: Memo<B> = HashSet::default();
    let mut path: Vec<u32> = Vec::new();
    let mut known_placed = 0usize;
    let mut best: (usize, Vec<u32>) = (0, Vec::new());
    let mut stack: Vec<Frame> = vec![s.enter(false)];

    while let Some(frame) = stack.last_mut() {
        // Coming back to this node: undo the choice whose subtree just failed.
        if let Some((p, before)) = frame.applied.take() {
            s.linearized.clear(p as usize);
            s.state = before;
            path.pop();
            if s.op(p).is_some_and(|o| o.step.known()) {
                known_placed -= 1;
            }
        }
        let mut chosen = None;
        while let Some((p, next)) = s.next_choice(frame) {
            if s.steps > max_steps {
                return Outcome::GaveUp { steps: s.steps };
            }
            s.linearized.set(p as usize);
            let config = Config {
                linearized: s.linearized.clone(),
                state: next,
                readers_only: s.op(p).is_some_and(|o| !o.step.known()),
            };
            if memo.insert(config) {
                chosen = Some((p, next));
                break;
            }
            s.linearized.clear(p as usize);
        }
        let Some((p, next)) = chosen else {
            stack.pop();
            continue;
        };
        frame.applied = Some((p, s.state));
        s.state = next;
        path.push(p);
        if s.op(p).is_some_and(|o| o.step.known()) {
            known_placed += 1;
            if known_placed == known_total {
                // Every completed op is placed; pending unknown ops are left out.
                return Outcome::Linearizable;
            }
            if known_placed > best.0 {
                best = (known_placed, path.clone());
            }
        }
        let child = s.enter(s.op(p).is_some_and(|o| !o.step.known()));
        stack.push(child);
    }
    Outcome::NotLinearizable { path: best.1 }
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

/// Byte string shown as a quoted string when it is UTF-8, else as escaped bytes.
struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// A register value; None renders as `absent`.
struct Value<'a>(Option<&'a [u8]>);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => Bytes(v).fmt(f),
            None => f.write_str("absent"),
        }
    }
}

/// One op on one line, e.g. `#7 c2 cas(absent -> "b") -> swapped @[4, 9]`.
fn describe(index: usize, op: &Op) -> String {
    let input = match &op.input {
        Input::Put { value, .. } => format!("put({})", Bytes(value)),
        Input::Delete { .. } => "delete()".to_string(),
        Input::Get { .. } => "get()".to_string(),
        Input::Cas { expected, new, .. } => format!(
            "cas({} -> {})",
            Value(expected.as_deref()),
            Value(new.as_deref())
        ),
    };
    let output = match &op.output {
        Output::Done => "done".to_string(),
        Output::Value(v) => Value(v.as_deref()).to_string(),
        Output::Swapped(true) => "swapped".to_string(),
        Output::Swapped(false) => "not swapped".to_string(),
        Output::Unknown => "unknown".to_string(),
    };
    let interval = match (&op.output, op.ret) {
        (Output::Unknown, _) | (_, None) => format!("[{}, inf)", op.call),
        (_, Some(ret)) => format!("[{}, {ret}]", op.call),
    };
    format!("#{index} c{} {input} -> {output} @{interval}", op.client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // --- builders ---------------------------------------------------------------------

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn op(call: u64, ret: u64, input: Input, output: Output) -> Op {
        Op {
            client: 0,
            call,
            ret: Some(ret),
            input,
            output,
        }
    }

    fn put(call: u64, ret: u64, key: &str, value: &str) -> Op {
        let input = Input::Put {
            key: b(key),
            value: b(value),
        };
        op(call, ret, input, Output::Done)
    }

    fn del(call: u64, ret: u64, key: &str) -> Op {
        op(call, ret, Input::Delete { key: b(key) }, Output::Done)
    }

    fn get(call: u64, ret: u64, key: &str, value: Option<&str>) -> Op {
        op(
            call,
            ret,
            Input::Get { key: b(key) },
            Output::Value(value.map(b)),
        )
    }

    fn cas(call: u64, ret: u64, key: &str, exp: Option<&str>, new: Option<&str>, ok: bool) -> Op {
        let input = Input::Cas {
            key: b(key),
            expected: exp.map(b),
            new: new.map(b),
        };
        op(call, ret, input, Output::Swapped(ok))
    }

    /// The same op, but the client never learned its outcome.
    fn unknown(mut op: Op) -> Op {
        op.ret = None;
        op.output = Output::Unknown;
        op
    }

    #[track_caller]
    fn ok(history: &[Op]) {
        if let Err(v) = check(history) {
            panic!("expected linearizable, got: {v}");
        }
    }

    #[track_caller]
    fn bad(history: &[Op]) -> Violation {
        match check(history) {
            Ok(()) => panic!("expected a violation for {history:#?}"),
            Err(v) => {
                assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
                v
            }
        }
    }

    // --- sequential -------------------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        ok(&[]);
    }

    #[test]
    fn sequential_linearizable() {
        ok(&[
            get(0, 1, "x", None),
            put(2, 3, "x", "a"),
            get(4, 5, "x", Some("a")),
            put(6, 7, "x", "b"),
            get(8, 9, "x", Some("b")),
            del(10, 11, "x"),
            get(12, 13, "x", None),
        ]);
    }

    #[test]
    fn read_of_value_never_written_fails() {
        let v = bad(&[put(0, 1, "x", "a"), get(2, 3, "x", Some("zzz"))]);
        assert_eq!(v.key, b("x"));
        assert!(v.to_string().contains("not linearizable"), "{v}");
        // Also on an otherwise empty key: the initial state is absent.
        bad(&[get(0, 1, "x", Some("a"))]);
    }

    #[test]
    fn stale_read_after_newer_put_completed_fails() {
        bad(&[
            put(0, 1, "x", "a"),
            put(2, 3, "x", "b"),
            get(4, 5, "x", Some("a")),
        ]);
    }

    #[test]
    fn read_before_any_write_must_see_absent() {
        bad(&[get(0, 1, "x", Some("a")), put(2, 3, "x", "a")]);
    }

    // --- concurrency ------------------------------------------------------------------

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in ["a", "b"] {
            ok(&[
                put(0, 1, "x", "a"),
                put(2, 10, "x", "b"),
                get(3, 4, "x", Some(seen)),
            ]);
        }
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        for last in ["a", "b"] {
            ok(&[
                put(0, 5, "x", "a"),
                put(1, 6, "x", "b"),
                get(7, 8, "x", Some(last)),
                get(9, 10, "x", Some(last)),
            ]);
        }
        // ...but once both are done, later reads must agree on the winner.
        bad(&[
            put(0, 5, "x", "a"),
            put(1, 6, "x", "b"),
            get(7, 8, "x", Some("a")),
            get(9, 10, "x", Some("b")),
        ]);
    }

    #[test]
    fn new_then_old_read_during_one_write_fails() {
        // The write is concurrent with both reads, but once a read saw the new value a
        // later read may not see the old one.
        bad(&[
            put(0, 1, "x", "0"),
            put(2, 20, "x", "1"),
            get(3, 4, "x", Some("1")),
            get(5, 6, "x", Some("0")),
        ]);
        // Old then new is fine.
        ok(&[
            put(0, 1, "x", "0"),
            put(2, 20, "x", "1"),
            get(3, 4, "x", Some("0")),
            get(5, 6, "x", Some("1")),
        ]);
        // Concurrent reads (overlapping each other) may disagree in either order.
        ok(&[
            put(0, 1, "x", "0"),
            put(2, 20, "x", "1"),
            get(3, 6, "x", Some("1")),
            get(4, 5, "x", Some("0")),
        ]);
    }

    #[test]
    fn lost_update_fails() {
        // Two concurrent CAS from the same expected value cannot both swap.
        bad(&[
            put(0, 1, "x", "a"),
            cas(2, 5, "x", Some("a"), Some("b"), true),
            cas(3, 6, "x", Some("a"), Some("c"), true),
        ]);
        // Exactly one winning is fine, whichever it is.
        ok(&[
            put(0, 1, "x", "a"),
            cas(2, 5, "x", Some("a"), Some("b"), true),
            cas(3, 6, "x", Some("a"), Some("c"), false),
            get(7, 8, "x", Some("b")),
        ]);
        ok(&[
            put(0, 1, "x", "a"),
            cas(2, 5, "x", Some("a"), Some("b"), false),
            cas(3, 6, "x", Some("a"), Some("c"), true),
            get(7, 8, "x", Some("c")),
        ]);
    }

    #[test]
    fn touching_intervals_count_as_concurrent() {
        // The get returns at 5, the put is called at 5: either order is accepted.
        ok(&[get(1, 5, "x", Some("a")), put(5, 10, "x", "a")]);
        bad(&[get(1, 4, "x", Some("a")), put(5, 10, "x", "a")]);
    }

    // --- unknown outcomes -------------------------------------------------------------

    #[test]
    fn unknown_put_may_explain_a_later_read() {
        ok(&[unknown(put(1, 0, "x", "a")), get(5, 6, "x", Some("a"))]);
    }

    #[test]
    fn unknown_put_may_be_left_out() {
        ok(&[unknown(put(1, 0, "x", "a")), get(5, 6, "x", None)]);
        ok(&[
            put(0, 1, "x", "a"),
            unknown(put(2, 0, "x", "b")),
            get(5, 6, "x", Some("a")),
            get(7, 8, "x", Some("a")),
        ]);
    }

    #[test]
    fn unknown_put_may_take_effect_long_after_its_call() {
        ok(&[
            unknown(put(1, 0, "x", "a")),
            get(5, 6, "x", None),
            get(7, 8, "x", None),
            get(9, 10, "x", Some("a")),
        ]);
        // A return time recorded on an unknown op (when the client gave up) is ignored:
        // the request may still land later.
        let mut late = unknown(put(1, 0, "x", "a"));
        late.ret = Some(2);
        ok(&[late, get(5, 6, "x", None), get(9, 10, "x", Some("a"))]);
    }

    #[test]
    fn unknown_put_cannot_explain_a_read_that_returned_before_its_call() {
        bad(&[get(1, 2, "x", Some("a")), unknown(put(3, 0, "x", "a"))]);
    }

    #[test]
    fn unknown_put_takes_effect_at_most_once() {
        bad(&[
            put(0, 1, "x", "a"),
            unknown(put(2, 0, "x", "b")),
            get(3, 4, "x", Some("b")),
            get(5, 6, "x", Some("a")),
            get(7, 8, "x", Some("b")),
        ]);
        // Not forgotten once applied: a read of b followed by a read of a needs some
        // other write of a after the unknown put.
        bad(&[
            put(0, 1, "x", "a"),
            unknown(put(2, 0, "x", "b")),
            get(3, 4, "x", Some("b")),
            get(5, 6, "x", Some("a")),
        ]);
    }

    #[test]
    fn unknown_delete_and_cas() {
        let base = || vec![put(0, 1, "x", "a"), unknown(del(2, 0, "x"))];
        let mut h = base();
        h.extend([get(3, 4, "x", None)]);
        ok(&h);
        let mut h = base();
        h.extend([get(3, 4, "x", Some("a")), get(5, 6, "x", None)]);
        ok(&h);
        let mut h = base();
        h.extend([get(3, 4, "x", None), get(5, 6, "x", Some("a"))]);
        bad(&h);

        // An unknown CAS swaps iff its expectation holds when it lands.
        let swap = || unknown(cas(2, 0, "x", Some("a"), Some("b"), true));
        ok(&[put(0, 1, "x", "a"), swap(), get(3, 4, "x", Some("b"))]);
        ok(&[put(0, 1, "x", "a"), swap(), get(3, 4, "x", Some("a"))]);
        let wrong = unknown(cas(2, 0, "x", Some("c"), Some("b"), true));
        bad(&[put(0, 1, "x", "a"), wrong, get(3, 4, "x", Some("b"))]);
        // The expectation can become true later, by a completed write after its call.
        let late = unknown(cas(2, 0, "x", Some("c"), Some("b"), true));
        ok(&[
            put(0, 1, "x", "a"),
            late,
            put(3, 4, "x", "c"),
            get(5, 6, "x", Some("b")),
        ]);
    }

    #[test]
    fn unknown_get_constrains_nothing() {
        let g = unknown(get(0, 0, "x", Some("whatever")));
        ok(&[g, put(1, 2, "x", "a"), get(3, 4, "x", Some("a"))]);
    }

    // --- delete and CAS semantics -----------------------------------------------------

    #[test]
    fn delete_semantics() {
        ok(&[del(0, 1, "x"), get(2, 3, "x", None)]);
        ok(&[put(0, 1, "x", "a"), del(2, 3, "x"), get(4, 5, "x", None)]);
        bad(&[
            put(0, 1, "x", "a"),
            del(2, 3, "x"),
            get(4, 5, "x", Some("a")),
        ]);
        // Put after delete brings the key back.
        ok(&[
            put(0, 1, "x", "a"),
            del(2, 3, "x"),
            put(4, 5, "x", "a"),
            get(6, 7, "x", Some("a")),
        ]);
        // A read concurrent with the delete may see either side.
        ok(&[
            put(0, 1, "x", "a"),
            del(2, 6, "x"),
            get(3, 4, "x", Some("a")),
        ]);
        ok(&[put(0, 1, "x", "a"), del(2, 6, "x"), get(3, 4, "x", None)]);
    }

    #[test]
    fn cas_semantics() {
        ok(&[
            cas(0, 1, "x", None, Some("a"), true),
            get(2, 3, "x", Some("a")),
            cas(4, 5, "x", Some("b"), Some("c"), false),
            get(6, 7, "x", Some("a")),
            cas(8, 9, "x", Some("a"), None, true),
            get(10, 11, "x", None),
            cas(12, 13, "x", Some("a"), Some("b"), false),
        ]);
        // Failing although the expectation held.
        bad(&[cas(0, 1, "x", None, Some("a"), false)]);
        bad(&[
            put(0, 1, "x", "a"),
            cas(2, 3, "x", Some("a"), Some("b"), false),
        ]);
        // Swapping although the expectation did not hold.
        bad(&[cas(0, 1, "x", Some("a"), Some("b"), true)]);
        bad(&[put(0, 1, "x", "a"), cas(2, 3, "x", None, Some("b"), true)]);
        // A swapped CAS writes its new value; a failed one writes nothing.
        bad(&[
            put(0, 1, "x", "a"),
            cas(2, 3, "x", Some("a"), Some("b"), true),
            get(4, 5, "x", Some("a")),
        ]);
        bad(&[
            put(0, 1, "x", "a"),
            cas(2, 3, "x", Some("z"), Some("b"), false),
            get(4, 5, "x", Some("b")),
        ]);
        // CAS to None deletes.
        bad(&[
            put(0, 1, "x", "a"),
            cas(2, 3, "x", Some("a"), None, true),
            get(4, 5, "x", Some("a")),
        ]);
    }

    // --- several keys -----------------------------------------------------------------

    #[test]
    fn multi_key_history_checks_each_key_independently() {
        // As one register this would be a stale read; as independent keys it is fine.
        let h = [
            put(0, 1, "x", "a"),
            put(2, 3, "y", "b"),
            get(4, 5, "x", Some("a")),
            get(4, 6, "y", Some("b")),
            cas(7, 9, "z", None, Some("c"), true),
            del(8, 10, "x"),
            get(11, 12, "z", Some("c")),
            get(11, 12, "x", None),
            get(11, 12, "y", Some("b")),
        ];
        ok(&h);
    }

    #[test]
    fn violation_names_the_bad_key_and_its_ops() {
        let h = [
            put(0, 1, "x", "a"),
            put(0, 1, "y", "a"),
            put(2, 3, "y", "b"),
            get(4, 5, "x", Some("a")),
            get(6, 7, "y", Some("a")),
        ];
        let v = bad(&h);
        assert_eq!(v.key, b("y"));
        assert_eq!(v.ops, vec![1, 2, 4]);
        let text = v.to_string();
        assert!(text.contains("\"y\""), "{text}");
        assert!(text.contains("#4"), "the blocked op is named: {text}");
    }

    #[test]
    fn non_utf8_keys_render_escaped() {
        let key = vec![0xff, 0x00];
        let h = [op(
            0,
            1,
            Input::Get { key: key.clone() },
            Output::Value(Some(vec![0xfe])),
        )];
        let v = bad(&h);
        assert_eq!(v.key, key);
        assert!(v.to_string().contains("b\"\\xff\\x00\""), "{v}");
    }

    // --- malformed histories and the budget -------------------------------------------

    #[test]
    fn malformed_histories_are_rejected() {
        let cases = [
            op(0, 1, Input::Get { key: b("x") }, Output::Done),
            op(
                0,
                1,
                Input::Put {
                    key: b("x"),
                    value: b("a"),
                },
                Output::Swapped(true),
            ),
            op(5, 4, Input::Delete { key: b("x") }, Output::Done),
            Op {
                ret: None,
                ..put(0, 1, "x", "a")
            },
        ];
        for case in cases {
            let h = [put(0, 1, "y", "a"), case];
            match check(&h) {
                Err(v) => {
                    assert_eq!(v.kind, ViolationKind::Malformed, "{v}");
                    assert_eq!(v.ops, vec![1]);
                }
                Ok(()) => panic!("accepted malformed {h:?}"),
            }
        }
    }

    /// `n` mutually concurrent puts, then two reads that disagree although all the puts
    /// had completed. Refuting it means trying every order of the puts, which memoisation
    /// cuts to every subset: about 3 * 2^n configurations.
    fn hard_history(n: u64) -> Vec<Op> {
        let mut h: Vec<Op> = (0..n).map(|i| put(i, 100, "x", &format!("v{i}"))).collect();
        h.push(get(101, 102, "x", Some("v0")));
        h.push(get(103, 104, "x", Some("v1")));
        h
    }

    #[test]
    fn search_budget_gives_up_with_a_distinct_kind() {
        let options = CheckOptions {
            max_steps_per_key: 10_000,
        };
        match check_with(&hard_history(20), &options) {
            Err(v) => {
                assert_eq!(v.kind, ViolationKind::BudgetExhausted, "{v}");
                assert!(v.to_string().contains("gave up"), "{v}");
                assert_eq!(v.ops.len(), 22);
            }
            Ok(()) => panic!("unlinearizable history accepted"),
        }
        // With a little more room it is refuted properly.
        let roomy = CheckOptions {
            max_steps_per_key: 100_000_000,
        };
        let v = check_with(&hard_history(8), &roomy);
        assert!(
            matches!(&v, Err(v) if v.kind == ViolationKind::NotLinearizable),
            "{v:?}"
        );
    }

    #[test]
    fn long_single_key_histories_use_wide_bitsets() {
        // 64, 128, 256, 512 and beyond exercise every bitset representation.
        for n in [30u64, 100, 200, 400, 700] {
            let mut h = Vec::new();
            for i in 0..n {
                let t = 10 * i;
                h.push(put(t, t + 6, "x", &format!("v{i}")));
                // Overlaps the put: may see the previous or the new value.
                let seen = if i % 2 == 0 {
                    format!("v{i}")
                } else {
                    format!("v{}", i.saturating_sub(1))
                };
                let seen = if i == 0 && i % 2 == 1 {
                    None
                } else {
                    Some(seen)
                };
                h.push(get(t + 1, t + 8, "x", seen.as_deref()));
            }
            ok(&h);
            // Corrupt the last read to a stale value.
            if let Some(last) = h.last_mut() {
                last.output = Output::Value(Some(b("v0")));
            }
            bad(&h);
        }
    }

    // --- randomized ---------------------------------------------------------------------

    /// xorshift64*: tiny, deterministic, good enough for test inputs.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            // n is small; the modulo bias is irrelevant here.
            (self.next() % n.max(1) as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    /// Applies an op atomically to a real map (its linearization point).
    fn apply(store: &mut HashMap<Vec<u8>, Vec<u8>>, input: &Input) -> Output {
        match input {
            Input::Put { key, value } => {
                store.insert(key.clone(), value.clone());
                Output::Done
            }
            Input::Delete { key } => {
                store.remove(key);
                Output::Done
            }
            Input::Get { key } => Output::Value(store.get(key).cloned()),
            Input::Cas { key, expected, new } => {
                if store.get(key) != expected.as_ref() {
                    return Output::Swapped(false);
                }
                match new {
                    Some(v) => store.insert(key.clone(), v.clone()),
                    None => store.remove(key),
                };
                Output::Swapped(true)
            }
        }
    }

    struct Shape {
        ops: usize,
        keys: usize,
        clients: usize,
        unknown_percent: u64,
    }

    #[derive(Clone)]
    enum Client {
        Idle,
        Invoked(usize),
        Applied(usize, Output),
    }

    /// A history of a correct store: each op takes effect atomically at a random instant
    /// inside its interval, so the history is linearizable by construction. Clients pick
    /// their next step at random, which makes intervals overlap heavily. Some replies are
    /// lost (the op may or may not have been applied), and some requests are applied
    /// long after their client gave up. Every written value is unique.
    fn generate(rng: &mut Rng, shape: &Shape) -> Vec<Op> {
        let mut store = HashMap::new();
        let mut written: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        let mut clients = vec![Client::Idle; shape.clients];
        let mut lost: Vec<usize> = Vec::new();
        let mut history: Vec<Op> = Vec::new();
        let mut fresh = 0u64;
        let mut time = 0u64;
        loop {
            time += 1;
            if !lost.is_empty() && rng.chance(5) {
                let idx = lost.swap_remove(rng.below(lost.len()));
                apply(&mut store, &history[idx].input);
            }
            let c = rng.below(clients.len());
            clients[c] = match clients[c].clone() {
                Client::Idle if history.len() < shape.ops => {
                    let key = format!("k{}", rng.below(shape.keys)).into_bytes();
                    let mut value = || {
                        fresh += 1;
                        format!("v{fresh}").into_bytes()
                    };
                    let input = match rng.below(10) {
                        0..=2 => Input::Put {
                            key: key.clone(),
                            value: value(),
                        },
                        3 => Input::Delete { key: key.clone() },
                        4..=7 => Input::Get { key: key.clone() },
                        _ => {
                            let old = written.get(&key).map_or(&[][..], |w| &w[..]);
                            let expected = if rng.chance(50) {
                                store.get(&key).cloned()
                            } else if old.is_empty() || rng.chance(20) {
                                None
                            } else {
                                Some(old[rng.below(old.len())].clone())
                            };
                            let new = if rng.chance(15) { None } else { Some(value()) };
                            Input::Cas {
                                key: key.clone(),
                                expected,
                                new,
                            }
                        }
                    };
                    if let Input::Put { value: v, .. } | Input::Cas { new: Some(v), .. } = &input {
                        written.entry(key).or_default().push(v.clone());
                    }
                    history.push(Op {
                        client: c as u64,
                        call: time,
                        ret: None,
                        input,
                        output: Output::Unknown,
                    });
                    Client::Invoked(history.len() - 1)
                }
                Client::Idle => Client::Idle,
                Client::Invoked(idx) => {
                    if rng.chance(shape.unknown_percent) {
                        // Timed out before it was applied; it may still land later.
                        lost.push(idx);
                        Client::Idle
                    } else {
                        Client::Applied(idx, apply(&mut store, &history[idx].input))
                    }
                }
                Client::Applied(idx, output) => {
                    // Otherwise the reply is lost and the op stays Unknown.
                    if !rng.chance(shape.unknown_percent) {
                        history[idx].ret = Some(time);
                        history[idx].output = output;
                    }
                    Client::Idle
                }
            };
            if history.len() >= shape.ops && clients.iter().all(|c| matches!(c, Client::Idle)) {
                return history;
            }
        }
    }

    fn known(op: &Op) -> bool {
        op.output != Output::Unknown
    }

    /// Corrupts a completed read into one of a value never written.
    fn corrupt_never_written(rng: &mut Rng, h: &mut [Op]) -> bool {
        let reads: Vec<usize> = (0..h.len())
            .filter(|&i| known(&h[i]) && matches!(h[i].input, Input::Get { .. }))
            .collect();
        if reads.is_empty() {
            return false;
        }
        let i = reads[rng.below(reads.len())];
        h[i].output = Output::Value(Some(b("never-written")));
        true
    }

    /// Corrupts a completed read G into a stale value that no linearization allows:
    /// some completed P wrote w (values are unique, so only P did), a completed write Q
    /// that surely leaves the key != w started after P returned, and G started after Q
    /// returned. So G must follow Q, which follows P: G cannot see w.
    fn corrupt_stale(rng: &mut Rng, h: &mut [Op]) -> bool {
        let key_of = |op: &Op| op.input.key().to_vec();
        let ret = |op: &Op| op.ret.unwrap_or(u64::MAX);
        let mut choices = Vec::new();
        for pop in h.iter() {
            let w = match (&pop.input, &pop.output) {
                (Input::Put { value, .. }, Output::Done) => value.clone(),
                (Input::Cas { new: Some(v), .. }, Output::Swapped(true)) => v.clone(),
                _ => continue,
            };
            let Some(q) = h.iter().position(|q| {
                key_of(q) == key_of(pop)
                    && q.call > ret(pop)
                    && matches!(
                        (&q.input, &q.output),
                        (Input::Put { .. } | Input::Delete { .. }, Output::Done)
                            | (Input::Cas { .. }, Output::Swapped(true))
                    )
            }) else {
                continue;
            };
            for (g, gop) in h.iter().enumerate() {
                if key_of(gop) == key_of(pop)
                    && known(gop)
                    && matches!(gop.input, Input::Get { .. })
                    && gop.call > ret(&h[q])
                {
                    choices.push((g, w.clone()));
                }
            }
        }
        if choices.is_empty() {
            return false;
        }
        let (g, w) = choices.swap_remove(rng.below(choices.len()));
        h[g].output = Output::Value(Some(w));
        true
    }

    #[test]
    fn randomized_histories_of_a_correct_store_pass_and_corruptions_fail() {
        let shapes = [
            Shape {
                ops: 40,
                keys: 2,
                clients: 4,
                unknown_percent: 10,
            },
            Shape {
                ops: 80,
                keys: 3,
                clients: 8,
                unknown_percent: 5,
            },
            Shape {
                ops: 150,
                keys: 2,
                clients: 12,
                unknown_percent: 8,
            },
        ];
        let (mut never, mut stale) = (0, 0);
        for seed in 0..300u64 {
            let mut rng = Rng::new(seed);
            let shape = &shapes[seed as usize % shapes.len()];
            let h = generate(&mut rng, shape);
            if let Err(v) = check(&h) {
                panic!("seed {seed}: correct history rejected: {v}");
            }

            let mut c = h.clone();
            if corrupt_never_written(&mut rng, &mut c) {
                never += 1;
                match check(&c) {
                    Err(v) if v.kind == ViolationKind::NotLinearizable => {}
                    other => panic!("seed {seed}: garbage read not caught: {other:?}"),
                }
            }
            let mut c = h.clone();
            if corrupt_stale(&mut rng, &mut c) {
                stale += 1;
                match check(&c) {
                    Err(v) if v.kind == ViolationKind::NotLinearizable => {}
                    other => panic!("seed {seed}: stale read not caught: {other:?}"),
                }
            }
        }
        // Make sure the corruptions actually ran.
        assert!(never > 250 && stale > 150, "never {never}, stale {stale}");
    }

    /// The definition, by brute force: try every order of every subset of the unknown
    /// ops together with all completed ops, respecting real time (A before B whenever
    /// A.ret < B.call). No pruning, so it checks the pruning rules of the real search.
    fn brute_force(h: &[Op]) -> bool {
        fn rec(h: &[Op], used: &mut Vec<bool>, store: &mut HashMap<Vec<u8>, Vec<u8>>) -> bool {
            if (0..h.len()).all(|i| used[i] || !known(&h[i])) {
                return true;
            }
            for i in 0..h.len() {
                if used[i] {
                    continue;
                }
                // Every completed op that returned before i was called must already be in.
                let blocked = (0..h.len()).any(|j| {
                    j != i && !used[j] && known(&h[j]) && h[j].ret.is_some_and(|r| r < h[i].call)
                });
                if blocked {
                    continue;
                }
                let before = store.clone();
                let out = apply(store, &h[i].input);
                if !known(&h[i]) || out == h[i].output {
                    used[i] = true;
                    if rec(h, used, store) {
                        return true;
                    }
                    used[i] = false;
                }
                *store = before;
            }
            false
        }
        rec(h, &mut vec![false; h.len()], &mut HashMap::new())
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let vals = [None, Some("a"), Some("b")];
        let (mut yes, mut no) = (0, 0);
        for seed in 0..20_000u64 {
            let mut rng = Rng::new(seed);
            let pick = |rng: &mut Rng| vals[rng.below(vals.len())];
            let n = 1 + rng.below(6);
            let mut h = Vec::new();
            for _ in 0..n {
                let call = rng.below(8) as u64;
                let ret = call + rng.below(4) as u64;
                let mut o = match rng.below(5) {
                    0 | 1 => match pick(&mut rng) {
                        Some(v) => put(call, ret, "k", v),
                        None => del(call, ret, "k"),
                    },
                    2 | 3 => get(call, ret, "k", pick(&mut rng)),
                    _ => {
                        let (e, nv) = (pick(&mut rng), pick(&mut rng));
                        cas(call, ret, "k", e, nv, rng.chance(50))
                    }
                };
                if rng.chance(25) {
                    o = unknown(o);
                }
                h.push(o);
            }
            let expected = brute_force(&h);
            let got = check(&h);
            assert_eq!(got.is_ok(), expected, "seed {seed}: {h:#?}\n{got:?}");
            if let Err(v) = got {
                assert_eq!(v.kind, ViolationKind::NotLinearizable);
            }
            if expected { yes += 1 } else { no += 1 }
        }
        assert!(yes > 2000 && no > 2000, "yes {yes}, no {no}");
    }

    #[test]
    fn performance_sanity_two_thousand_concurrent_ops() {
        let mut rng = Rng::new(42);
        let shape = Shape {
            ops: 2000,
            keys: 20,
            clients: 64,
            unknown_percent: 5,
        };
        let h = generate(&mut rng, &shape);
        let start = std::time::Instant::now();
        if let Err(v) = check(&h) {
            panic!("correct history rejected: {v}");
        }
        // A few hot keys: hundreds of heavily overlapping ops each.
        let hot = Shape {
            ops: 2000,
            keys: 4,
            clients: 32,
            unknown_percent: 5,
        };
        let h2 = generate(&mut rng, &hot);
        if let Err(v) = check(&h2) {
            panic!("correct hot-key history rejected: {v}");
        }
        let mut c = h2.clone();
        if corrupt_stale(&mut rng, &mut c) {
            let r = check(&c);
            assert!(
                matches!(&r, Err(v) if v.kind == ViolationKind::NotLinearizable),
                "{r:?}"
            );
        }
        eprintln!("performance sanity: {:?}", start.elapsed());
    }
}
