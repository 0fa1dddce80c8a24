//! The two `futex` calls the crate's sleepers use (Linux only, like the rest
//! of the crate's durability code).

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`. May return early
/// (a wake-up, a signal, the word already changed): callers look again.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call and
    // `ts_ptr` is null or points at `ts`, alive until the call returns; the
    // kernel only reads them. FUTEX_WAIT's timeout is relative.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes at most `n` sleepers of `word`.
pub(crate) fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE does not access memory through the pointer beyond
    // hashing its address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}
