//! Typed condition values: numbers, dates and booleans. Each parser returns
//! `None` for text that is not of its type; a comparison with such a value
//! never matches (see the condition module).

/// A decimal number: optional sign, digits with an optional fraction, an
/// optional exponent. No `inf`, `NaN`, hex or surrounding spaces.
pub(crate) fn number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut digits = i - int_start;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// `true` or `false`, in any case.
pub(crate) fn boolean(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A point in time as nanoseconds since the Unix epoch.
pub(crate) type Instant = i128;

const NANOS: i128 = 1_000_000_000;

/// A date: epoch seconds (`1546257599`, `1546257599.5`, `-10`) or a W3C
/// profile of ISO 8601: `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm`,
/// `YYYY-MM-DDThh:mm:ss`, `YYYY-MM-DDThh:mm:ss.s...`, each time followed by
/// `Z`, `+hh:mm` or `-hh:mm` (UTC when omitted). A text of digits alone is
/// epoch seconds, not a year.
pub(crate) fn date(text: &str) -> Option<Instant> {
    if let Some(t) = epoch_seconds(text) {
        return Some(t);
    }
    iso8601(text)
}

fn epoch_seconds(text: &str) -> Option<Instant> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() || int.len() > 18 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (body.contains('.') && frac.is_empty()) {
        return None;
    }
    let secs: i128 = int.parse().ok()?;
    let nanos = fraction_nanos(frac);
    let t = secs * NANOS + nanos;
    Some(if neg { -t } else { t })
}

/// The nanoseconds of a decimal fraction's digits (beyond 9 are dropped).
fn fraction_nanos(digits: &str) -> i128 {
    let mut n: i128 = 0;
    for (i, b) in digits.bytes().take(9).enumerate() {
        n += i128::from(b - b'0') * 10_i128.pow(8 - i as u32);
    }
    n
}

fn iso8601(text: &str) -> Option<Instant> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = b.get(from..from + len)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let mut day = 1;
    let mut i = 7;
    if b.len() > 7 {
        if b.get(7) != Some(&b'-') {
            return None;
        }
        day = num(8, 2)?;
        if day < 1 || day > days_in_month(year, month) {
            return None;
        }
        i = 10;
    }
    let mut secs_of_day: i64 = 0;
    let mut nanos: i128 = 0;
    let mut offset: i64 = 0;
    if i < b.len() {
        if i != 10 || !matches!(b[10], b'T' | b't') {
            return None;
        }
        let hour = num(11, 2)?;
        if b.get(13) != Some(&b':') {
            return None;
        }
        let minute = num(14, 2)?;
        i = 16;
        let mut second = 0;
        if b.get(16) == Some(&b':') {
            second = num(17, 2)?;
            i = 19;
            if b.get(19) == Some(&b'.') {
                let start = 20;
                let mut end = start;
                while b.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
                if end == start {
                    return None;
                }
                nanos = fraction_nanos(std::str::from_utf8(&b[start..end]).ok()?);
                i = end;
            }
        }
        // 24:00:00 is not accepted; 60 seconds (a leap second) is.
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        secs_of_day = hour * 3600 + minute * 60 + second;
        match b.get(i) {
            None => {}
            Some(b'Z' | b'z') if i + 1 == b.len() => {}
            Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
                let oh = num(i + 1, 2)?;
                if b.get(i + 3) != Some(&b':') {
                    return None;
                }
                let om = num(i + 4, 2)?;
                if oh > 23 || om > 59 {
                    return None;
                }
                offset = (oh * 3600 + om * 60) * if *sign == b'+' { 1 } else { -1 };
            }
            _ => return None,
        }
    }
    let days = days_from_civil(year, month, day);
    let secs = i128::from(days) * 86_400 + i128::from(secs_of_day - offset);
    Some(secs * NANOS + nanos)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("10"), Some(10.0));
        assert_eq!(number("-1.5"), Some(-1.5));
        assert_eq!(number("+.5"), Some(0.5));
        assert_eq!(number("5."), Some(5.0));
        assert_eq!(number("1546257599.0"), Some(1_546_257_599.0));
        assert_eq!(number("1e3"), Some(1000.0));
        for bad in [
            "", " 1", "1 ", "abc", "1a", ".", "-", "inf", "NaN", "0x10", "1e", "1e+", "1e999",
            "1,5",
        ] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean("true"), Some(true));
        assert_eq!(boolean("FALSE"), Some(false));
        assert_eq!(boolean("yes"), None);
        assert_eq!(boolean("1"), None);
    }

    #[test]
    fn dates() {
        let s = |secs: i128| Some(secs * NANOS);
        assert_eq!(date("0"), s(0));
        assert_eq!(date("1546257599"), s(1_546_257_599));
        assert_eq!(
            date("1546257599.5"),
            Some(1_546_257_599 * NANOS + NANOS / 2)
        );
        assert_eq!(date("-86400"), s(-86_400));
        assert_eq!(date("1970-01-01T00:00:00Z"), s(0));
        assert_eq!(date("2018-12-31T23:59:59Z"), s(1_546_300_799));
        assert_eq!(date("2018-12-31T23:59:59+01:00"), s(1_546_297_199));
        assert_eq!(date("2018-12-31T23:59:59-00:30"), s(1_546_302_599));
        assert_eq!(date("2018-12-31T23:59:59"), s(1_546_300_799));
        assert_eq!(date("2018-12-31T23:59Z"), s(1_546_300_740));
        assert_eq!(date("2018-12-31"), s(1_546_214_400));
        assert_eq!(date("2018-12"), s(1_543_622_400));
        assert_eq!(date("2020-02-29"), s(1_582_934_400));
        assert_eq!(date("1969-12-31T23:59:59Z"), s(-1));
        assert_eq!(
            date("2020-01-01T00:00:01.25Z"),
            Some(1_577_836_801 * NANOS + NANOS / 4)
        );
        for bad in [
            "",
            "yesterday",
            "2018-13-01",
            "2019-02-29",
            "2018-12-32",
            "2018-12-31T24:00:00Z",
            "2018-12-31T23:59:59X",
            "2018-12-31T23:59:59+0100",
            "2018-12-31 23:59:59Z",
            "2018-12-31T23:59:59.Z",
            "2018-1-1",
            "1.",
            "1e5",
            "99999999999999999999999",
        ] {
            assert_eq!(date(bad), None, "{bad:?}");
        }
        // "2018" alone is epoch seconds, not a year.
        assert_ne!(date("2018"), date("2018-01-01"));
    }
}
