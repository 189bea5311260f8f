//! Duration strings such as `24h`, `90d` or `1h30m`.

use time::Duration;

use crate::error::CaError;

/// Units accepted in a duration string, in the order they must appear, with
/// their length in seconds. A year is 365 days.
const UNITS: [(char, i64); 5] = [
    ('y', 365 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// Parses a duration string made of one or more `<number><unit>` parts with
/// units `y` (365 days), `d`, `h`, `m` and `s`, such as `30s`, `90d` or
/// `1h30m`.
///
/// Each unit may appear once, from the largest to the smallest. The result is
/// positive: a zero total, a sign, a missing unit or a value that overflows
/// is rejected with an error naming the input.
pub fn parse_ttl(input: &str) -> Result<Duration, CaError> {
    let invalid = |reason: &str| CaError::InvalidTtl {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };

    if input.is_empty() {
        return Err(invalid(
            "empty; expected a duration such as 24h, 90d or 1h30m",
        ));
    }

    let mut total: i64 = 0;
    // Index into UNITS of the next unit that may still appear.
    let mut next_unit = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(invalid(
                "expected a number followed by a unit (y, d, h, m or s), such as 24h or 1h30m",
            ));
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let Some(unit) = after_digits.chars().next() else {
            return Err(invalid(
                "the number has no unit; append y, d, h, m or s, such as 24h",
            ));
        };
        let Some(position) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(invalid(&format!(
                "unknown unit {unit:?}; expected y, d, h, m or s"
            )));
        };
        if position < next_unit {
            return Err(invalid(
                "units must appear once each, from the largest to the smallest (y, d, h, m, s)",
            ));
        }
        next_unit = position + 1;

        let overflow = || invalid("the duration is too large");
        let value: i64 = digits.parse().map_err(|_| overflow())?;
        let seconds = value.checked_mul(UNITS[position].1).ok_or_else(overflow)?;
        total = total.checked_add(seconds).ok_or_else(overflow)?;
        rest = &after_digits[unit.len_utf8()..];
    }

    if total == 0 {
        return Err(invalid("the duration must be greater than zero"));
    }
    Ok(Duration::seconds(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_units_parse() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::seconds(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::minutes(15)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::hours(24)));
        assert_eq!(parse_ttl("90d"), Ok(Duration::days(90)));
        assert_eq!(parse_ttl("5y"), Ok(Duration::days(5 * 365)));
        assert_eq!(parse_ttl("87600h"), Ok(Duration::days(3650)));
    }

    #[test]
    fn combined_units_parse() {
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::minutes(90)));
        assert_eq!(
            parse_ttl("1y2d3h4m5s"),
            Ok(Duration::seconds(
                365 * 86_400 + 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5
            ))
        );
        assert_eq!(parse_ttl("0h1m"), Ok(Duration::minutes(1)));
    }

    #[test]
    fn bad_inputs_are_rejected() {
        for input in [
            "", "30", "h", "-1h", "+1h", "1.5h", "1w", "1H", " 1h", "1h ", "1h 30m", "30m1h",
            "1h1h", "0s", "0h0m", "1hm", "１h",
        ] {
            let error = parse_ttl(input).expect_err(input);
            assert!(
                matches!(&error, CaError::InvalidTtl { input: named, .. } if named == input),
                "{input:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn overflow_is_rejected() {
        let error = parse_ttl("99999999999999999999y").unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
        let error = parse_ttl("9223372036854775807y").unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
    }

    #[test]
    fn error_names_the_input() {
        let error = parse_ttl("10 days").unwrap_err();
        assert!(error.to_string().contains("\"10 days\""), "{error}");
    }
}
