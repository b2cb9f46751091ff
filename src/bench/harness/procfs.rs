//! Figures of a running process read from `/proc/<pid>` (Linux): memory from `status`, CPU
//! time from `stat`. Elsewhere there is no such file and every reader returns `None`.

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`, `RssAnon`, ...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    parse_status_kib(&read(pid, "status")?, field)
}

/// Resident memory (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time used so far, user and system (utime + stime), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu_ticks(&read(pid, "stat")?)
}

/// Open files of a process (the entries of /proc/<pid>/fd).
#[cfg(target_os = "linux")]
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(Iterator::count)
}

/// Open files of a process: unknown without /proc.
#[cfg(not(target_os = "linux"))]
pub fn fd_count(_pid: u32) -> Option<usize> {
    None
}

/// Clock ticks per second, the unit of [`cpu_ticks`].
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(target_os = "linux")]
fn read(pid: u32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

#[cfg(not(target_os = "linux"))]
fn read(_pid: u32, _file: &str) -> Option<String> {
    None
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_and_stat_are_parsed() {
        let status = "Name:\ttcp-forward\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nThreads:\t1\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(4096));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(5120));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat =
            "1234 (tcp (fwd) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 99 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(22));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert!(clock_ticks_per_sec() > 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_from_proc() {
        let own = std::process::id();
        assert!(cpu_ticks(own).is_some());
        assert!(rss_kib(own).is_some_and(|kib| kib > 0));
        assert!(status_kib(own, "RssAnon").is_some_and(|kib| kib > 0));
        // At least the listing's own descriptor (the standard ones may be closed).
        assert!(fd_count(own).is_some_and(|n| n >= 1));
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn without_proc_there_are_no_figures() {
        let own = std::process::id();
        assert_eq!(cpu_ticks(own), None);
        assert_eq!(rss_kib(own), None);
        assert_eq!(fd_count(own), None);
    }
}
