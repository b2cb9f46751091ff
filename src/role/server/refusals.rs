//! The INFO summary of connections refused at accept (outside an allow-list, over
//! `MAX_PER_SOURCE`): each refusal is logged at DEBUG; at INFO the first one is logged when
//! it comes, and those after it are summed up once a minute, by a role timer that runs only
//! while refusals keep coming. Pure: the caller passes `now` and schedules the timer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often at most the summary is logged.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    /// When the current minute ends; `None` when no refusal came in the last one.
    window_end: Option<Instant>,
    /// Refusals since the last INFO line, by what was refused (`on port 1234 (not allowed)`).
    counts: BTreeMap<String, u64>,
}

impl RefusalLog {
    /// Note a refusal of kind `what`. `Some(at)` when no INFO line went out in the last
    /// minute: the caller logs this refusal at INFO and schedules the summary at `at`.
    pub(super) fn note(&mut self, now: Instant, what: &str) -> Option<Instant> {
        if self.window_end.is_none() {
            let at = now + SUMMARY_EVERY;
            self.window_end = Some(at);
            return Some(at);
        }
        *self.counts.entry(what.to_string()).or_default() += 1;
        None
    }

    /// Note and log a refusal: `detail` at DEBUG, or at INFO (followed by `summed`) when it
    /// opens a minute. `Some(at)`: schedule the summary then.
    pub(super) fn log(
        &mut self,
        now: Instant,
        what: &str,
        detail: std::fmt::Arguments<'_>,
        summed: &str,
    ) -> Option<Instant> {
        let at = self.note(now, what);
        match at {
            Some(_) => log::info!("{detail} ({summed} summed up here once a minute)"),
            None => log::debug!("{detail}"),
        }
        at
    }

    /// The summary timer fired: the line to log at INFO and when to look again, or `None`
    /// (nothing was refused in the last minute: the next refusal is logged when it comes).
    /// `noun` and `when` make the line: `refused 3 connections at accept ...`.
    pub(super) fn summary(
        &mut self,
        now: Instant,
        noun: &str,
        when: &str,
    ) -> Option<(String, Instant)> {
        if self.window_end.is_none_or(|end| end > now) {
            return None;
        }
        if self.counts.is_empty() {
            self.window_end = None;
            return None;
        }
        let total: u64 = self.counts.values().sum();
        let parts: Vec<String> = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        let at = now + SUMMARY_EVERY;
        self.window_end = Some(at);
        let s = if total == 1 { "" } else { "s" };
        Some((
            format!(
                "refused {total} {noun}{s} {when} in the last minute: {}",
                parts.join(", ")
            ),
            at,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_a_summary_a_minute() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(
            log.note(t0, "on port 1 (not allowed)"),
            Some(t0 + SUMMARY_EVERY)
        );
        assert_eq!(log.note(t0, "on port 1 (not allowed)"), None);
        assert_eq!(log.note(t0, "on port 1 (not allowed)"), None);
        assert_eq!(log.note(t0, "clients (not allowed)"), None);
        assert_eq!(
            log.summary(t0 + Duration::from_secs(59), "connection", "at accept"),
            None,
            "too early"
        );
        let t1 = t0 + SUMMARY_EVERY;
        let (line, next) = log.summary(t1, "connection", "at accept").unwrap();
        assert_eq!(
            line,
            "refused 3 connections at accept in the last minute: \
             1 clients (not allowed), 2 on port 1 (not allowed)"
        );
        assert_eq!(next, t1 + SUMMARY_EVERY);
        // A quiet minute closes the window; the next refusal is logged at once again.
        assert_eq!(log.note(t1, "x"), None);
        let t2 = t1 + SUMMARY_EVERY;
        assert!(
            log.summary(t2, "connection", "at accept")
                .unwrap()
                .0
                .contains("refused 1 connection at")
        );
        assert_eq!(
            log.summary(t2 + SUMMARY_EVERY, "connection", "at accept"),
            None
        );
        let t3 = t2 + SUMMARY_EVERY * 3;
        assert_eq!(log.note(t3, "x"), Some(t3 + SUMMARY_EVERY));
    }
}
