//! The standard process metrics of the Prometheus client libraries: resident memory, open
//! and maximum file descriptors, CPU time and start time, read from /proc and the C library
//! on Linux. Elsewhere nothing is written.
//!
//! A value that cannot be read leaves its family out; nothing here panics.

use std::time::SystemTime;

use super::prom::Exposition;
#[cfg(target_os = "linux")]
use super::prom::Kind;

/// Write `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_cpu_seconds_total` and `process_start_time_seconds` (`start`: when the process
/// started, as the caller recorded it).
#[cfg(target_os = "linux")]
pub fn write_process_metrics(out: &mut Exposition, start: SystemTime) {
    if let Some(bytes) = linux::resident_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            bytes,
        );
    }
    if let Some(n) = linux::open_fds() {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            n,
        );
    }
    if let Some(n) = linux::max_fds() {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            n,
        );
    }
    if let Some(secs) = linux::cpu_seconds() {
        out.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
        );
        out.sample_f64("process_cpu_seconds_total", &[], secs);
    }
    if let Ok(since) = start.duration_since(SystemTime::UNIX_EPOCH) {
        out.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
        );
        out.sample_f64("process_start_time_seconds", &[], since.as_secs_f64());
    }
}

/// Not on Linux: no process metrics.
#[cfg(not(target_os = "linux"))]
pub fn write_process_metrics(_out: &mut Exposition, _start: SystemTime) {}

#[cfg(target_os = "linux")]
fn gauge(out: &mut Exposition, name: &str, help: &str, value: u64) {
    out.family(name, Kind::Gauge, help);
    out.sample(name, &[], value);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs;

    /// Resident pages (the second field of /proc/self/statm) times the page size.
    pub fn resident_bytes() -> Option<u64> {
        let statm = fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads its argument.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).ok().filter(|&p| p > 0)?;
        pages.checked_mul(page)
    }

    /// Entries of /proc/self/fd, less the one for the directory being listed.
    pub fn open_fds() -> Option<u64> {
        let mut n: u64 = 0;
        for entry in fs::read_dir("/proc/self/fd").ok()? {
            entry.ok()?;
            n += 1;
        }
        n.checked_sub(1)
    }

    /// The soft RLIMIT_NOFILE.
    pub fn max_fds() -> Option<u64> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)]
        u64::try_from(lim.rlim_cur).ok()
    }

    /// User plus system CPU time of the whole process (all threads), in seconds.
    pub fn cpu_seconds() -> Option<f64> {
        // SAFETY: rusage is plain data; all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct we own.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Some(secs(usage.ru_utime) + secs(usage.ru_stime))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The value of the one sample named `name`, and the TYPE of its family.
    fn value_of(text: &str, name: &str) -> (f64, String) {
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
            .unwrap_or_else(|| panic!("no TYPE for {name} in:\n{text}"))
            .to_string();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
            .parse()
            .unwrap();
        (value, kind)
    }

    fn written(start: SystemTime) -> String {
        let mut e = Exposition::new();
        write_process_metrics(&mut e, start);
        e.finish()
    }

    #[test]
    fn values_are_plausible() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_155_200_250);
        let text = written(start);

        let (rss, kind) = value_of(&text, "process_resident_memory_bytes");
        assert_eq!(kind, "gauge");
        assert!(rss >= 4096.0, "rss {rss}");

        let (open, kind) = value_of(&text, "process_open_fds");
        assert_eq!(kind, "gauge");
        let (max, _) = value_of(&text, "process_max_fds");
        // stdin, stdout, stderr at least.
        assert!(open >= 3.0 && open <= max, "open {open}, max {max}");

        let (cpu, kind) = value_of(&text, "process_cpu_seconds_total");
        assert_eq!(kind, "counter");
        assert!(cpu >= 0.0 && cpu.is_finite(), "cpu {cpu}");

        let (started, kind) = value_of(&text, "process_start_time_seconds");
        assert_eq!(kind, "gauge");
        assert_eq!(started, 1_796_155_200.25);
    }

    /// Open descriptors counted without listing a directory: fcntl on each number.
    fn probed_fds() -> u64 {
        // SAFETY: F_GETFD on any number only asks whether it is open.
        (0..4096)
            .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
            .count() as u64
    }

    #[test]
    fn open_fds_leaves_out_the_listing_itself() {
        // Other tests run in threads of this process and may open or close descriptors
        // meanwhile: look for a moment when both counts agree, a bounded number of times.
        let mut seen = Vec::new();
        for _ in 0..50 {
            let before = probed_fds();
            let listed = linux::open_fds().unwrap();
            let after = probed_fds();
            if before == after && listed == before {
                return;
            }
            seen.push((before, listed, after));
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("open_fds never matched fcntl's count (before, listed, after): {seen:?}");
    }

    #[test]
    fn a_start_before_the_epoch_is_left_out() {
        let text = written(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
        assert!(!text.contains("process_start_time_seconds"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
    }

    #[test]
    fn promtool_accepts_them() {
        let text = written(SystemTime::now());
        let Some((ok, said)) = super::super::prom::promtool_check(&text) else {
            return;
        };
        assert!(ok, "promtool check metrics failed:\n{said}\non:\n{text}");
    }
}
