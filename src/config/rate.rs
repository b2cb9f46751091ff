//! Bandwidth limits as the configuration writes them: [`Rate`] and its parsers, for the
//! mapping file's `[LIMIT]` lines ([`parse_rate`]) and the original's `BANDWIDTH` key
//! ([`parse_bandwidth`]). Re-exported as `crate::config::Rate`.
//!
//! A rate is a decimal number and a unit, per second: `kbit`, `mbit`, `gbit` (10^3, 10^6,
//! 10^9 bits) in any case, or `KB`, `MB`, `GB` (10^3, 10^6, 10^9 bytes) with an upper-case
//! `B` (`kB` too). The unit is required; a space may stand between number and unit. `mb`,
//! `kb` and `gb` are refused as ambiguous (bits or bytes?), and so are the binary units
//! (`KiB`, `Mibit`): a limit is a network rate, counted in powers of ten.

use std::fmt;

/// Smallest limit, in bits per second: a quarter second of less would hold too few bytes
/// to send.
pub const MIN_RATE_BITS: u64 = 1_000;
/// Largest limit, in bits per second (1000 gbit).
pub const MAX_RATE_BITS: u64 = 1_000_000_000_000;

/// A bandwidth limit, in bits per second (exact for every value the parsers accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    bits: u64,
}

impl Rate {
    /// A rate of `bits` per second; `None` outside [`MIN_RATE_BITS`]..=[`MAX_RATE_BITS`].
    pub fn from_bits(bits: u64) -> Option<Rate> {
        (MIN_RATE_BITS..=MAX_RATE_BITS)
            .contains(&bits)
            .then_some(Rate { bits })
    }

    pub fn bits_per_sec(self) -> u64 {
        self.bits
    }

    /// Bytes per second, rounded down.
    pub fn bytes_per_sec(self) -> u64 {
        self.bits / 8
    }
}

/// The largest unit in which the rate is at least 1, with up to three decimals:
/// `10mbit`, `1.5kbit`, `2.125gbit`.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (div, unit) = match self.bits {
            b if b >= 1_000_000_000 => (1_000_000_000, "gbit"),
            b if b >= 1_000_000 => (1_000_000, "mbit"),
            _ => (1_000, "kbit"),
        };
        let whole = self.bits / div;
        let frac = (self.bits % div) * 1000 / div;
        if frac == 0 {
            write!(f, "{whole}{unit}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}{unit}", digits.trim_end_matches('0'))
        }
    }
}

/// Bits in one of `unit` (as written), or why the unit is refused.
fn unit_bits(unit: &str) -> Result<u64, String> {
    let lower = unit.to_ascii_lowercase();
    match lower.as_str() {
        "kbit" => return Ok(1_000),
        "mbit" => return Ok(1_000_000),
        "gbit" => return Ok(1_000_000_000),
        _ => {}
    }
    match unit {
        "KB" | "kB" => return Ok(8_000),
        "MB" => return Ok(8_000_000),
        "GB" => return Ok(8_000_000_000),
        _ => {}
    }
    Err(match lower.as_str() {
        "" => "no unit (write e.g. 10mbit or 2MB; the unit is required)".to_string(),
        "kb" | "mb" | "gb" => {
            let p = &lower[..1];
            format!(
                "unit {unit:?} is ambiguous: write {}B for bytes or {p}bit for bits per second",
                p.to_ascii_uppercase()
            )
        }
        "kib" | "mib" | "gib" | "kibit" | "mibit" | "gibit" => format!(
            "unit {unit:?}: binary units are not accepted (use kbit, mbit, gbit or KB, MB, GB: powers of 10)"
        ),
        "bit" | "b" | "bps" => format!(
            "unit {unit:?} is not accepted: use kbit, mbit, gbit, KB, MB or GB (per second)"
        ),
        _ => format!("unknown unit {unit:?} (expected kbit, mbit, gbit, KB, MB or GB, per second)"),
    })
}

/// A decimal number (`10`, `1.5`, `.5`) times `mult`, exactly, rounded down; `None` if
/// `num` is not such a number.
fn scaled(num: &str, mult: u64) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || int.len() > 15
        || frac.len() > 12
    {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int * u128::from(mult);
    if !frac.is_empty() {
        let f: u128 = frac.parse().ok()?;
        value += f * u128::from(mult) / 10u128.pow(frac.len() as u32);
    }
    Some(value)
}

/// `10mbit`, `1.5 MB`, `800kbit`: a rate as a `[LIMIT]` line writes it. The error says what
/// is wrong with `s`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = (&s[..split], s[split..].trim_start());
    if num.is_empty() {
        return Err(if s.is_empty() {
            "empty limit (write e.g. 10mbit or 2MB)".to_string()
        } else {
            format!("{s:?} is not a rate (write a number and a unit, e.g. 10mbit or 2MB)")
        });
    }
    let mult = unit_bits(unit).map_err(|m| format!("{s:?}: {m}"))?;
    let bits = scaled(num, mult).ok_or_else(|| format!("{s:?}: {num:?} is not a number"))?;
    check_bits(s, bits)
}

/// The original's `BANDWIDTH`: a number of Mbit/s (`100`, `2.5`), or a rate with a unit as
/// [`parse_rate`] reads it.
pub fn parse_bandwidth(s: &str) -> Result<Rate, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_rate(t);
    }
    let bits = scaled(t, 1_000_000)
        .ok_or_else(|| format!("{t:?} is not a number of Mbit/s (e.g. 100, 2.5 or 500kbit)"))?;
    check_bits(t, bits)
}

fn check_bits(s: &str, bits: u128) -> Result<Rate, String> {
    if bits == 0 {
        return Err(format!(
            "{s:?}: a limit of 0 would move nothing (leave the port out for no limit)"
        ));
    }
    u64::try_from(bits)
        .ok()
        .and_then(Rate::from_bits)
        .ok_or_else(|| {
            if bits < u128::from(MIN_RATE_BITS) {
                format!("{s:?}: a limit must be at least 1kbit")
            } else {
                format!("{s:?}: a limit may be at most 1000gbit")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> u64 {
        parse_rate(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .bits_per_sec()
    }

    #[test]
    fn units_and_numbers() {
        assert_eq!(bits("10mbit"), 10_000_000);
        assert_eq!(bits("10Mbit"), 10_000_000);
        assert_eq!(bits("10MBIT"), 10_000_000);
        assert_eq!(bits("800kbit"), 800_000);
        assert_eq!(bits("1gbit"), 1_000_000_000);
        assert_eq!(bits("1KB"), 8_000);
        assert_eq!(bits("1kB"), 8_000);
        assert_eq!(bits("2MB"), 16_000_000);
        assert_eq!(bits("1GB"), 8_000_000_000);
        assert_eq!(bits("1.5mbit"), 1_500_000);
        assert_eq!(bits(".5MB"), 4_000_000);
        assert_eq!(bits("1.5kbit"), 1_500);
        assert_eq!(bits(" 10 mbit "), 10_000_000);
        assert_eq!(bits("1000gbit"), MAX_RATE_BITS);
        assert_eq!(bits("1kbit"), MIN_RATE_BITS);
        assert_eq!(bits("007mbit"), 7_000_000);
    }

    #[test]
    fn bad_rates_say_why() {
        for (s, want) in [
            ("", "empty limit"),
            ("10", "no unit"),
            ("10 ", "no unit"),
            ("mbit", "not a rate"),
            ("-1mbit", "not a rate"),
            ("10mb", "ambiguous: write MB for bytes or mbit for bits"),
            ("10kb", "ambiguous"),
            ("10Gb", "ambiguous"),
            ("10MiB", "binary units"),
            ("10Kibit", "binary units"),
            ("10bit", "not accepted"),
            ("10B", "not accepted"),
            ("10bps", "not accepted"),
            ("10mbps", "unknown unit \"mbps\""),
            ("10Mbit/s", "unknown unit"),
            ("10 furlongs", "unknown unit"),
            ("1.2.3mbit", "not a number"),
            (".mbit", "not a number"),
            ("0mbit", "a limit of 0"),
            ("0.0KB", "a limit of 0"),
            ("0.5kbit", "at least 1kbit"),
            ("1001gbit", "at most 1000gbit"),
            ("99999999999999999999GB", "not a number"),
            ("1.0000000000001mbit", "not a number"),
        ] {
            let e = parse_rate(s).expect_err(s);
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn bandwidth_is_mbit_unless_a_unit_says_otherwise() {
        let b = |s: &str| parse_bandwidth(s).map(Rate::bits_per_sec);
        assert_eq!(b("100"), Ok(100_000_000));
        assert_eq!(b("2.5"), Ok(2_500_000));
        assert_eq!(b("500kbit"), Ok(500_000));
        assert_eq!(b("1MB"), Ok(8_000_000));
        assert!(b("0").unwrap_err().contains("a limit of 0"));
        assert!(b("").unwrap_err().contains("empty"));
        assert!(b("1.2.3").unwrap_err().contains("not a number of Mbit/s"));
        assert!(b("ten").unwrap_err().contains("not a rate"));
    }

    #[test]
    fn display_picks_the_largest_unit() {
        for (s, shown) in [
            ("10mbit", "10mbit"),
            ("1.5kbit", "1.5kbit"),
            ("2MB", "16mbit"),
            ("1GB", "8gbit"),
            ("2.125gbit", "2.125gbit"),
            ("999kbit", "999kbit"),
        ] {
            assert_eq!(parse_rate(s).unwrap().to_string(), shown, "{s}");
        }
    }
}
