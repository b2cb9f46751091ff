//! A child process under supervision: no stdin, stdout discarded, stderr read line by line
//! by a thread into a log that can be counted, waited on and tailed. Dropping it stops the
//! process (SIGTERM, then SIGKILL after a grace period).

use std::collections::VecDeque;
use std::io::{self, BufRead as _, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::procfs;

/// How a [`Process`] is started and stopped.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Runs of lines kept (identical lines in a row count as one run); `None` keeps them all.
    pub keep: Option<usize>,
    /// Copy each line to this process's stderr as it comes, tagged `[name]`.
    pub echo: bool,
    /// Have the kernel send SIGTERM to the child when the thread that started it ends, so
    /// that it never outlives its parent, even one killed without running its guards (Linux
    /// only; elsewhere nothing is asked).
    pub die_with_parent: bool,
    /// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            keep: None,
            echo: false,
            die_with_parent: false,
            grace: Duration::from_secs(3),
        }
    }
}

/// How [`Process::stop`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It had exited before it was asked to.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Exited(ExitStatus),
    /// It was still running after the grace period and was killed.
    Killed,
}

/// The collected stderr: runs of identical lines, each with how many times it came in a row.
#[derive(Debug, Default)]
struct Log {
    runs: VecDeque<(String, u32)>,
    /// Stderr has closed: no more lines will come.
    eof: bool,
}

impl Log {
    fn push(&mut self, line: String, keep: Option<usize>) {
        if let Some((last, count)) = self.runs.back_mut()
            && *last == line
        {
            *count += 1;
            return;
        }
        if keep.is_some_and(|k| self.runs.len() >= k) {
            self.runs.pop_front();
        }
        self.runs.push_back((line, 1));
    }

    /// Every line kept, runs written out.
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.runs
            .iter()
            .flat_map(|(line, count)| std::iter::repeat_n(line.as_str(), *count as usize))
    }

    fn count(&self, substr: &str) -> usize {
        self.runs
            .iter()
            .filter(|(line, _)| line.contains(substr))
            .map(|(_, count)| *count as usize)
            .sum()
    }
}

type SharedLog = Arc<(Mutex<Log>, Condvar)>;

/// A running child process with its stderr collected.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: SharedLog,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl Process {
    /// Start `cmd` (its stdin, stdout and stderr are set here); `name` tags its log.
    pub fn spawn(name: &str, cmd: &mut Command, opts: &ProcessOptions) -> io::Result<Process> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if opts.die_with_parent {
            die_with_parent(cmd);
        }
        let mut child = cmd.spawn()?;
        let log: SharedLog = Arc::default();
        match child.stderr.take() {
            Some(stderr) => {
                let shared = Arc::clone(&log);
                let (keep, echo) = (opts.keep, opts.echo.then(|| name.to_string()));
                // The thread ends when the child's stderr closes (the child and its heirs exited).
                let reader = thread::Builder::new()
                    .name(format!("{name}-stderr"))
                    .spawn(move || collect(stderr, &shared, keep, echo.as_deref()));
                if let Err(e) = reader {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start a thread reading its stderr: {e}"),
                    ));
                }
            }
            None => mark_eof(&log),
        }
        Ok(Process {
            name: name.to_string(),
            child,
            log,
            status: None,
            grace: opts.grace,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Wait up to `timeout` for the process to exit, then up to 2 s more for the last lines of
    /// its stderr; `None` when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    let _ = self.wait_log(Duration::from_secs(2), |log| log.eof.then_some(()));
                    return Some(status);
                }
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send a signal (`libc::SIGTERM`, `SIGSTOP`, ...), unless the process is known to have
    /// exited (its pid may then belong to another process).
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: kill(2) on a child of ours that has not been reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGTERM, up to the grace period to exit, then SIGKILL.
    pub fn stop(&mut self) -> Stop {
        if let Some(status) = self.exited() {
            return Stop::AlreadyExited(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return Stop::Exited(status);
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        Stop::Killed
    }

    /// A copy of the lines collected so far.
    pub fn lines(&self) -> Vec<String> {
        self.with_log(|log| log.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The last `n` lines.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let mut lines = self.lines();
        lines.drain(..lines.len().saturating_sub(n));
        lines
    }

    /// The last `n` runs of identical lines, each with its length.
    pub fn last_runs(&self, n: usize) -> Vec<(String, u32)> {
        self.with_log(|log| {
            let skip = log.runs.len().saturating_sub(n);
            log.runs.iter().skip(skip).cloned().collect()
        })
        .unwrap_or_default()
    }

    /// How many lines collected so far contain `substr`.
    pub fn count(&self, substr: &str) -> usize {
        self.with_log(|log| log.count(substr)).unwrap_or(0)
    }

    /// Wait until at least `n` lines contain `substr`; false after `timeout`, or when stderr
    /// closes first.
    pub fn wait_count(&self, substr: &str, n: usize, timeout: Duration) -> bool {
        self.wait_log(timeout, |log| (log.count(substr) >= n).then_some(()))
            .is_some()
    }

    /// Wait for a line containing any of `needles`; the index of the first needle found, or
    /// `None` after `timeout` or when stderr closes first.
    pub fn wait_any(&self, needles: &[&str], timeout: Duration) -> Option<usize> {
        self.wait_log(timeout, |log| needles.iter().position(|n| log.count(n) > 0))
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        procfs::rss_kib(self.pid())
    }

    fn with_log<T>(&self, f: impl FnOnce(&Log) -> T) -> Option<T> {
        self.log.0.lock().ok().map(|log| f(&log))
    }

    /// Wait until `found` gives a value for the log collected so far; `None` after `timeout`
    /// or when stderr closes first.
    fn wait_log<T>(&self, timeout: Duration, found: impl Fn(&Log) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut log = lock.lock().ok()?;
        loop {
            if let Some(v) = found(&log) {
                return Some(v);
            }
            let now = Instant::now();
            if log.eof || now >= deadline {
                return None;
            }
            log = cv.wait_timeout(log, deadline - now).ok()?.0;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Read `stderr` line by line into `log` until it closes.
fn collect(
    stderr: impl Read,
    log: &(Mutex<Log>, Condvar),
    keep: Option<usize>,
    echo: Option<&str>,
) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                if let Some(name) = echo {
                    eprintln!("[{name}] {line}");
                }
                if let Ok(mut st) = log.0.lock() {
                    st.push(line, keep);
                }
                log.1.notify_all();
            }
        }
    }
    mark_eof(log);
}

fn mark_eof(log: &(Mutex<Log>, Condvar)) {
    if let Ok(mut st) = log.0.lock() {
        st.eof = true;
    }
    log.1.notify_all();
}

/// Remove terminal colour sequences (ESC [ ... letter) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Ask for SIGTERM when the parent goes (`prctl(PR_SET_PDEATHSIG)`), and refuse to start when
/// the parent is already gone, since the request would then never fire.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: getpid is async-signal-safe and only reads our own pid.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook runs between fork and exec and only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != parent
            {
                return Err(io::Error::other("the parent process is gone"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_log_lines_are_counted() {
        let mut log = Log::default();
        for line in ["a", "b", "b", "b", "a"] {
            log.push(line.to_string(), Some(30));
        }
        let got: Vec<(&str, u32)> = log.runs.iter().map(|(l, c)| (l.as_str(), *c)).collect();
        assert_eq!(got, [("a", 1), ("b", 3), ("a", 1)]);
        assert_eq!(log.lines().collect::<Vec<_>>(), ["a", "b", "b", "b", "a"]);
        assert_eq!(log.count("b"), 3);
        for i in 0..100 {
            log.push(i.to_string(), Some(30));
        }
        assert_eq!(log.runs.len(), 30);
        assert_eq!(log.runs.back().map(|(l, _)| l.as_str()), Some("99"));
        let mut all = Log::default();
        for i in 0..100 {
            all.push(i.to_string(), None);
        }
        assert_eq!(all.runs.len(), 100);
    }

    #[test]
    fn colour_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[31mERROR\u{1b}[0m boom"), "ERROR boom");
        assert_eq!(strip_ansi("plain [text]"), "plain [text]");
    }

    #[test]
    fn stderr_is_collected_and_the_process_stopped() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one >&2; echo two >&2; echo two >&2; exec sleep 30",
        ]);
        let opts = ProcessOptions {
            grace: Duration::from_secs(2),
            die_with_parent: true,
            ..ProcessOptions::default()
        };
        let mut p = Process::spawn("sh", &mut cmd, &opts).expect("start sh");
        assert!(
            p.wait_count("two", 2, Duration::from_secs(10)),
            "{:?}",
            p.lines()
        );
        assert_eq!(
            p.wait_any(&["three", "one"], Duration::from_secs(1)),
            Some(1)
        );
        assert_eq!(p.count("o"), 3);
        assert_eq!(p.last_lines(2), ["two", "two"]);
        assert_eq!(p.last_runs(1), [("two".to_string(), 2)]);
        assert!(p.is_running());
        assert!(matches!(p.stop(), Stop::Exited(status) if !status.success()));
        assert!(!p.is_running());
        assert!(matches!(p.stop(), Stop::AlreadyExited(_)));
    }
}
