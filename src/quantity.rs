//! Kubernetes resource quantities as exact numbers.
//!
//! The same grammar the API server accepts: an optional sign, digits with an optional fraction,
//! then a binary suffix (`Ki`..`Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`,
//! `E`) or an exponent (`e3`, `E-2`). Values are kept in thousandths ("milli units"), rounded
//! up like the API server rounds up to three decimal places, in an `i128` so that the largest
//! legal quantity (2^63-1 units) still fits with room to add.

use std::fmt;

/// A parsed quantity, in thousandths of the base unit (millicores for CPU, millibytes for
/// memory).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i128);

impl Milli {
    pub const ZERO: Milli = Milli(0);

    pub fn from_units(units: i128) -> Milli {
        Milli(units * 1000)
    }

    /// Whole units, rounded up (bytes for memory, cores for CPU).
    pub fn ceil_units(self) -> i128 {
        self.0.div_euclid(1000) + i128::from(self.0.rem_euclid(1000) != 0)
    }

    pub fn millis(self) -> i128 {
        self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity is empty")]
    Empty,
    #[error("quantity {0:?} is not a number with an optional unit suffix")]
    Malformed(String),
    #[error("quantity {0:?} has an unknown unit suffix")]
    UnknownSuffix(String),
    #[error("quantity {0:?} is larger than Kubernetes allows")]
    OutOfRange(String),
}

/// Largest magnitude Kubernetes stores: 2^63-1 units.
const MAX_UNITS: i128 = i64::MAX as i128;

enum Scale {
    /// Multiply by 1024^n.
    Binary(u32),
    /// Multiply by 10^n (n may be negative).
    Decimal(i32),
}

/// Parses a quantity string such as `500m`, `1.5`, `2Gi`, `1e3` or `+4k`.
pub fn parse(text: &str) -> Result<Milli, QuantityError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed(text.to_string());
    let (negative, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(malformed());
    }
    let scale = parse_suffix(suffix).ok_or_else(|| {
        if suffix.starts_with(['e', 'E']) {
            malformed()
        } else {
            QuantityError::UnknownSuffix(text.to_string())
        }
    })?;

    // digits = whole ++ fraction, value = digits * 10^-len(fraction) * scale * 1000 (milli).
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 40 {
        return Err(QuantityError::OutOfRange(text.to_string()));
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| malformed())?
    };
    let mut decimal_exponent = 3 - fraction.len() as i32;
    let mut numerator = mantissa;
    match scale {
        Scale::Binary(power) => {
            numerator = numerator
                .checked_mul(1024_i128.pow(power))
                .ok_or_else(|| QuantityError::OutOfRange(text.to_string()))?;
        }
        Scale::Decimal(exponent) => decimal_exponent += exponent,
    }
    let millis = apply_decimal_exponent(numerator, decimal_exponent)
        .ok_or_else(|| QuantityError::OutOfRange(text.to_string()))?;
    if millis > MAX_UNITS * 1000 {
        return Err(QuantityError::OutOfRange(text.to_string()));
    }
    Ok(Milli(if negative { -millis } else { millis }))
}

/// `value * 10^exponent`, rounding up when the exponent is negative.
fn apply_decimal_exponent(value: i128, exponent: i32) -> Option<i128> {
    if value == 0 {
        return Some(0);
    }
    if exponent >= 0 {
        let factor = 10_i128.checked_pow(u32::try_from(exponent).ok()?)?;
        value.checked_mul(factor)
    } else {
        let divisor = match 10_i128.checked_pow(exponent.unsigned_abs()) {
            Some(divisor) => divisor,
            // Far below one thousandth: rounds up to the smallest step.
            None => return Some(1),
        };
        Some(value / divisor + i128::from(value % divisor != 0))
    }
}

fn parse_suffix(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::Decimal(0),
        "Ki" => Scale::Binary(1),
        "Mi" => Scale::Binary(2),
        "Gi" => Scale::Binary(3),
        "Ti" => Scale::Binary(4),
        "Pi" => Scale::Binary(5),
        "Ei" => Scale::Binary(6),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        exponent if exponent.starts_with(['e', 'E']) => {
            let digits = &exponent[1..];
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Scale::Decimal(digits.parse().ok().filter(|e: &i32| e.abs() <= 60)?)
        }
        _ => return None,
    };
    Some(scale)
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix_kind() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("1", 1000),
            ("500m", 500),
            ("0.5", 500),
            (".5", 500),
            ("1.5", 1500),
            ("+2", 2000),
            ("-1", -1000),
            ("1k", 1_000_000),
            ("1Ki", 1_024_000),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("2Gi", 2 * 1024 * 1024 * 1024 * 1000),
            ("1Ti", 1024_i128.pow(4) * 1000),
            ("1Pi", 1024_i128.pow(5) * 1000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("1T", 1_000_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("100u", 1),
            ("1n", 1),
            ("1.0001", 1001),
            ("64", 64_000),
            ("1000m", 1000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(Milli(*expected)), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_values_with_the_reason() {
        assert_eq!(parse(""), Err(QuantityError::Empty));
        assert!(matches!(parse("lots"), Err(QuantityError::Malformed(_))));
        assert!(matches!(parse("1.2.3"), Err(QuantityError::Malformed(_))));
        assert!(matches!(parse("2GB"), Err(QuantityError::UnknownSuffix(_))));
        assert!(matches!(parse("1e"), Err(QuantityError::Malformed(_))));
        assert!(matches!(parse("."), Err(QuantityError::Malformed(_))));
        assert!(matches!(parse("9Ei"), Err(QuantityError::OutOfRange(_))));
        assert!(matches!(parse("1e99"), Err(QuantityError::Malformed(_))));
    }

    #[test]
    fn ceil_units_rounds_up() {
        assert_eq!(Milli(1).ceil_units(), 1);
        assert_eq!(Milli(1000).ceil_units(), 1);
        assert_eq!(Milli(1001).ceil_units(), 2);
        assert_eq!(Milli(0).ceil_units(), 0);
    }

    proptest::proptest! {
        #[test]
        fn binary_and_decimal_forms_agree(units in 0i64..1_000_000) {
            let units = i128::from(units);
            proptest::prop_assert_eq!(parse(&format!("{units}Ki")), Ok(Milli(units * 1024 * 1000)));
            proptest::prop_assert_eq!(parse(&format!("{units}k")), Ok(Milli(units * 1_000_000)));
            proptest::prop_assert_eq!(parse(&format!("{units}000m")), Ok(Milli(units * 1000)));
        }

        #[test]
        fn never_panics(text in "\\PC{0,24}") {
            let _ = parse(&text);
        }
    }
}
