//! The `format`s a form schema may name, checked on every form the engine validates: JSON
//! Schema's own (`date`, `date-time`, `email`, `uri`, …, as the `jsonschema` crate checks
//! them) and the ones Vietnamese forms need, declared here once. An unknown format is an
//! error when the schema is compiled, so a misspelt one is never silently left unchecked.

use serde_json::Value;

/// Compiles a form schema with every format asserted.
pub fn form_validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .with_format("cccd", is_cccd)
        .with_format("phone-vn", is_phone_vn)
        .with_format("tax-code", is_tax_code)
        .build(schema)
        .map_err(|e| {
            let text = e.to_string();
            match text
                .strip_prefix("Unknown format: '")
                .and_then(|rest| rest.split_once('\''))
            {
                Some((format, _)) => format!(
                    "unknown format `{format}` at {}: use one of JSON Schema's formats (date, \
                     date-time, email, uri, ...) or tthc's cccd, phone-vn, tax-code \
                     (docs/authoring.md, Forms)",
                    e.schema_path()
                ),
                None => text,
            }
        })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// 12 digits; the first three are the province of birth registration (001-096).
pub fn is_cccd(s: &str) -> bool {
    s.len() == 12
        && all_digits(s)
        && s[..3]
            .parse::<u16>()
            .is_ok_and(|province| (1..=96).contains(&province))
}

/// A mobile (10 digits, 03/05/07/08/09) or landline (11 digits, 02x area code) number.
pub fn is_phone_vn(s: &str) -> bool {
    let mut digits: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-'))
        .collect();
    if let Some(rest) = digits.strip_prefix("+84") {
        digits = format!("0{rest}");
    }
    // Separators only between digits: not a number made of dashes.
    if !all_digits(&digits) || s.starts_with(['-', '.']) || s.ends_with(['-', '.', ' ']) {
        return false;
    }
    let b = digits.as_bytes();
    match b.len() {
        10 => b[0] == b'0' && matches!(b[1], b'3' | b'5' | b'7' | b'8' | b'9'),
        11 => b[0] == b'0' && b[1] == b'2',
        _ => false,
    }
}

/// A 10-digit tax code whose last digit checks the first nine (Decision 75/1998/QĐ-TCT), the
/// same with `-NNN` for a dependent unit, or a 12-digit personal identification number (the
/// tax code of individuals and household businesses since 1 July 2025, Circular 86/2024).
pub fn is_tax_code(s: &str) -> bool {
    let (main, branch) = match s.split_once('-') {
        Some((m, b)) => (m, Some(b)),
        None => (s, None),
    };
    if let Some(b) = branch
        && !(b.len() == 3 && all_digits(b))
    {
        return false;
    }
    match main.len() {
        10 if all_digits(main) => {
            const WEIGHTS: [u32; 9] = [31, 29, 23, 19, 17, 13, 7, 5, 3];
            let d: Vec<u32> = main.bytes().map(|b| u32::from(b - b'0')).collect();
            let sum: u32 = WEIGHTS.iter().zip(&d).map(|(w, x)| w * x).sum();
            let check = 10 - sum % 11;
            check < 10 && check == d[9]
        }
        12 if branch.is_none() => is_cccd(main),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vietnamese_formats_accept_real_shapes_and_refuse_the_rest() {
        for ok in ["001099012345", "079088001234", "096000000001"] {
            assert!(is_cccd(ok), "{ok}");
        }
        for bad in [
            "00109901234",
            "0010990123456",
            "000099012345",
            "097099012345",
            "00109901234a",
            "",
        ] {
            assert!(!is_cccd(bad), "{bad}");
        }
        for ok in [
            "0912345678",
            "091 234 5678",
            "0912.345.678",
            "+84912345678",
            "024 3825 3825",
            "02438253825",
        ] {
            assert!(is_phone_vn(ok), "{ok}");
        }
        for bad in [
            "0112345678",
            "091234567",
            "09123456789",
            "abc",
            "+1 212 555 0100",
            "0212345678",
            "-0912345678",
        ] {
            assert!(!is_phone_vn(bad), "{bad}");
        }
        for ok in ["0100109106", "0101243150", "0100109106-001", "001099012345"] {
            assert!(is_tax_code(ok), "{ok}");
        }
        for bad in [
            "0100109107",
            "010010910",
            "0100109106-01",
            "0100109106-",
            "01001091060",
            "abc",
            "001099012345-001",
        ] {
            assert!(!is_tax_code(bad), "{bad}");
        }
    }

    #[test]
    fn formats_are_asserted_and_unknown_ones_refused() {
        let v = form_validator(&json!({"type": "object", "properties": {
            "d": {"type": "string", "format": "date"},
            "e": {"type": "string", "format": "email"},
            "c": {"type": "string", "format": "cccd"},
        }}))
        .unwrap();
        assert!(v.is_valid(&json!({"d": "1990-05-17", "e": "an@example.vn", "c": "001099012345"})));
        for bad in [
            json!({"d": "17/05/1990"}),
            json!({"d": "1990-13-45"}),
            json!({"d": "2026-02-30"}),
            json!({"e": "abc"}),
            json!({"c": "12345"}),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
        let err = form_validator(&json!({"type": "string", "format": "cccd-typo"})).unwrap_err();
        assert!(err.contains("cccd-typo"), "{err}");
    }
}
