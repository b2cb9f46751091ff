//! Port ranges, as the mapping file writes them: a port (`6000`) or an inclusive range
//! (`6000-6009`). Every section of the mapping file takes one as its key, and `[MAPPER]` and
//! `[UDP]` also as the port of their targets (`6000-6009=10.0.0.5:7000-7009`).

use std::fmt;
use std::ops::RangeInclusive;

use super::parse_port;

/// `first..=last`, both 1..=65535, `first <= last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn one(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// `6000` or `6000-6009`; the error says what is wrong with `s`.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| parse_port(p).ok_or_else(|| format!("{p:?} is not a port (1-65535)"));
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("port range {s:?} ends before it starts"));
        }
        Ok(PortRange { first, last })
    }

    /// How many ports: 1 for a single port.
    pub fn size(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// The port at `offset` from the first one (`offset < len`).
    pub fn nth(self, offset: usize) -> u16 {
        debug_assert!(offset < self.size());
        self.first + offset as u16
    }
}

/// `6000` or `6000-6009`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print() {
        for (s, first, last, shown) in [
            ("22", 22, 22, "22"),
            ("6000-6009", 6000, 6009, "6000-6009"),
            ("7-7", 7, 7, "7"),
            ("1-65535", 1, 65535, "1-65535"),
            ("01234", 1234, 1234, "1234"),
        ] {
            let r = PortRange::parse(s).expect(s);
            assert_eq!((r.first, r.last), (first, last), "{s}");
            assert_eq!(r.to_string(), shown);
        }
        let r = PortRange::parse("6000-6009").unwrap();
        assert_eq!(r.size(), 10);
        assert!(r.contains(6000) && r.contains(6009) && !r.contains(6010));
        assert_eq!(r.nth(3), 6003);
        assert_eq!(r.ports().count(), 10);
        assert_eq!(PortRange::parse("1-65535").unwrap().size(), 65535);
    }

    #[test]
    fn bad_ranges() {
        for (s, want) in [
            ("", r#""" is not a port (1-65535)"#),
            ("0", r#""0" is not a port"#),
            ("65536", r#""65536" is not a port"#),
            ("6000-", r#""" is not a port"#),
            ("-6000", r#""" is not a port"#),
            ("6000-6009-6010", r#""6009-6010" is not a port"#),
            ("6000 - 6009", r#""6000 " is not a port"#),
            ("ssh", r#""ssh" is not a port"#),
            (
                "6009-6000",
                r#"port range "6009-6000" ends before it starts"#,
            ),
        ] {
            let e = PortRange::parse(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }
}
