//! Facts about this process and machine for the report: CPU time and peak RSS
//! (getrusage), hostname, cores, OS, and the git commit of the working tree.

use std::process::Command;
use std::time::Duration;

/// CPU time and memory of this process so far.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessUsage {
    /// User CPU time, seconds.
    pub cpu_user_secs: f64,
    /// System CPU time, seconds.
    pub cpu_system_secs: f64,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: u64,
}

impl ProcessUsage {
    /// The usage of this process (all threads) until now.
    pub fn now() -> Self {
        // SAFETY: getrusage only writes the struct we pass, which is plain old data
        // (zeroed is a valid value); RUSAGE_SELF is always a valid `who`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        if rc != 0 {
            return ProcessUsage::default();
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        // ru_maxrss is in KiB on Linux and in bytes on macOS.
        let rss_unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
        ProcessUsage {
            cpu_user_secs: secs(usage.ru_utime),
            cpu_system_secs: secs(usage.ru_stime),
            peak_rss_bytes: (usage.ru_maxrss.max(0) as u64) * rss_unit,
        }
    }

    /// CPU time spent between `earlier` and `self` (the peak RSS is `self`'s).
    pub fn since(&self, earlier: &ProcessUsage) -> ProcessUsage {
        ProcessUsage {
            cpu_user_secs: (self.cpu_user_secs - earlier.cpu_user_secs).max(0.0),
            cpu_system_secs: (self.cpu_system_secs - earlier.cpu_system_secs).max(0.0),
            peak_rss_bytes: self.peak_rss_bytes,
        }
    }

    /// User plus system CPU time.
    pub fn cpu_total(&self) -> Duration {
        Duration::from_secs_f64(self.cpu_user_secs + self.cpu_system_secs)
    }
}

/// This machine's host name, if it has one.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
}

/// Logical cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The OS and kernel, e.g. `linux 6.1.0-18-amd64 x86_64`.
pub fn os() -> String {
    // SAFETY: uname fills the zeroed struct; each field is NUL-terminated.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    let release = if unsafe { libc::uname(&mut uts) } == 0 {
        let field = &uts.release;
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::new()
    };
    format!(
        "{} {} {}",
        std::env::consts::OS,
        release,
        std::env::consts::ARCH
    )
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// The commit checked out in the current directory, and whether the tree has
/// uncommitted changes; `None` outside a git checkout or without git.
pub fn git_commit() -> Option<(String, bool)> {
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !head.status.success() {
        return None;
    }
    let commit = String::from_utf8(head.stdout).ok()?.trim().to_string();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    Some((commit, dirty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_grows_and_is_plausible() {
        let before = ProcessUsage::now();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = ProcessUsage::now();
        let spent = after.since(&before);
        assert!(spent.cpu_total() > Duration::ZERO);
        assert!(
            after.peak_rss_bytes > 1024 * 1024,
            "peak rss {}",
            after.peak_rss_bytes
        );
    }

    #[test]
    fn machine_facts() {
        assert!(cores() >= 1);
        assert!(os().starts_with(std::env::consts::OS));
    }
}
