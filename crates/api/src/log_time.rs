//! Times of log lines: how the agent stamps each line it writes (RFC 3339 in
//! UTC with nanoseconds, always [`STAMP_LEN`] bytes, then a space), and how
//! the times users give `service logs --since` are read (a duration ago, an
//! RFC 3339 time, or Unix seconds), as `docker service logs` reads them.
//!
//! Times are nanoseconds since the Unix epoch (`i64`: until the year 2262).

use std::time::Duration;

/// `2026-12-01T10:00:00.123456789Z`.
pub const STAMP_LEN: usize = 30;
const NANOS_PER_SECOND: i64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// `unix_ns` as `2026-12-01T10:00:00.123456789Z` ([`STAMP_LEN`] bytes for
/// years 0–9999).
pub fn format_stamp(unix_ns: i64) -> String {
    format_rfc3339(unix_ns, 9)
}

/// `unix_ns` as an RFC 3339 time in UTC with `fraction_digits` (0–9) digits
/// of the second: 3 gives `2026-12-01T10:00:00.123Z`.
pub fn format_rfc3339(unix_ns: i64, fraction_digits: u32) -> String {
    let digits = fraction_digits.min(9);
    let seconds = unix_ns.div_euclid(NANOS_PER_SECOND);
    let nanos = unix_ns.rem_euclid(NANOS_PER_SECOND);
    let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
    let of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let fraction = if digits == 0 {
        String::new()
    } else {
        let value = nanos / 10i64.pow(9 - digits);
        format!(".{value:0width$}", width = digits as usize)
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Reads an RFC 3339 time (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00.5+01:00`;
/// `t` or a space for the `T`, `z` for the `Z`), as nanoseconds since the
/// epoch. `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let year = digits(0, 4)?;
    let month = digits(5, 2)? as u32;
    let day = digits(8, 2)? as u32;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let offset = h * 3_600 + m * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3_600 + minute * 60 + second
            - offset_seconds;
    seconds.checked_mul(NANOS_PER_SECOND)?.checked_add(nanos)
}

/// The time a log line's stamp says, and the line without it; `None` for a
/// line that has no stamp.
pub fn split_stamp(line: &[u8]) -> Option<(i64, &[u8])> {
    let stamp = std::str::from_utf8(line.get(..STAMP_LEN)?).ok()?;
    let time = parse_rfc3339(stamp)?;
    match line.get(STAMP_LEN) {
        Some(b' ') => Some((time, &line[STAMP_LEN + 1..])),
        None => Some((time, &[])),
        Some(_) => None,
    }
}

/// Reads a duration: one or more numbers each with a unit (`ns`, `us`,
/// `ms`, `s`, `m`, `h`), as in `90s`, `1h30m`, `1.5h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let fail = || {
        format!("{text:?}: not a duration (a number and a unit, ns, us, ms, s, m or h, as in 90s or 1h30m)")
    };
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(fail());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(fail)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| fail())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            _ => return Err(fail()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| fail())
}

/// Reads Unix seconds with an optional fraction (`1796119200.5`) exactly,
/// as nanoseconds.
fn parse_unix_seconds(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let seconds: i64 = whole.parse().ok()?;
    let nanos: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    seconds.checked_mul(NANOS_PER_SECOND)?.checked_add(nanos)
}

/// Reads `--since`: a duration before `now_ns` (`10m`), an RFC 3339 time,
/// or Unix seconds (`1796119200`, `1796119200.5`).
pub fn parse_since(text: &str, now_ns: i64) -> Result<i64, String> {
    if let Some(at) = parse_rfc3339(text) {
        return Ok(at);
    }
    if let Some(at) = parse_unix_seconds(text) {
        return Ok(at);
    }
    match parse_duration(text) {
        Ok(ago) => {
            let ago = i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX);
            Ok(now_ns.saturating_sub(ago))
        }
        Err(_) => Err(format!(
            "{text:?}: must be a duration ago (10m, 1h30m), an RFC 3339 time (2026-12-01T10:00:00Z) or Unix seconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_times_read_and_print_as_the_calendar_says() {
        let second = NANOS_PER_SECOND;
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-01T10:00:00Z"),
            Some(1_796_119_200 * second)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59Z"),
            Some(951_868_799 * second)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-second));
        assert_eq!(
            parse_rfc3339("2024-03-10T12:30:45.25+02:00"),
            Some(1_710_066_645 * second + 250_000_000)
        );
        assert_eq!(
            parse_rfc3339("2024-03-10 10:30:45.25z"),
            Some(1_710_066_645 * second + 250_000_000)
        );
        assert_eq!(
            format_stamp(1_796_119_200 * second + 7),
            "2026-12-01T10:00:00.000000007Z"
        );
        assert_eq!(format_stamp(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn what_is_not_a_time_is_refused() {
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00:00.Z",
            "2026-12-01T10:00:00+0100",
            "2026-12-01T10:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn since_takes_a_duration_ago_a_time_or_unix_seconds_and_names_the_forms_otherwise() {
        let now = 1_796_119_200 * NANOS_PER_SECOND;
        assert_eq!(parse_since("90s", now), Ok(now - 90 * NANOS_PER_SECOND));
        assert_eq!(
            parse_since("1h30m", now),
            Ok(now - 5_400 * NANOS_PER_SECOND)
        );
        assert_eq!(parse_since("1.5h", now), Ok(now - 5_400 * NANOS_PER_SECOND));
        assert_eq!(
            parse_since("2026-12-01T09:00:00Z", now),
            Ok(now - 3_600 * NANOS_PER_SECOND)
        );
        assert_eq!(parse_since("1796119200", now), Ok(now));
        assert_eq!(
            parse_since("1796119200.123456789", now),
            Ok(now + 123_456_789)
        );
        assert_eq!(parse_since("1796119200.5", now), Ok(now + 500_000_000));
        // A bare number is Unix seconds, not a duration.
        assert_eq!(parse_since("10", now), Ok(10 * NANOS_PER_SECOND));
        for bad in ["", "ten minutes", "10d", "5m3", "h", "nan"] {
            let error = parse_since(bad, now).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_stamped_line_splits_into_its_time_and_its_text() {
        let line = b"2026-12-01T10:00:00.000000007Z hello world";
        assert_eq!(
            split_stamp(line),
            Some((1_796_119_200 * NANOS_PER_SECOND + 7, &b"hello world"[..]))
        );
        assert_eq!(
            split_stamp(b"2026-12-01T10:00:00.000000007Z"),
            Some((1_796_119_200 * NANOS_PER_SECOND + 7, &b""[..]))
        );
        assert_eq!(split_stamp(b"hello"), None);
        assert_eq!(split_stamp(b"2026-12-01T10:00:00.000000007Zx"), None);
    }

    proptest! {
        #[test]
        fn every_stamp_reads_back_as_the_time_it_was_made_from(
            ns in i64::MIN / 2..i64::MAX / 2
        ) {
            let stamp = format_stamp(ns);
            prop_assert_eq!(stamp.len(), STAMP_LEN);
            prop_assert_eq!(parse_rfc3339(&stamp), Some(ns));
        }

        #[test]
        fn days_and_dates_map_one_to_one(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
