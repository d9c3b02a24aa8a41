//! Pure checks of request fields and template keyword values, before anything is sent.
//!
//! The keyword rules follow WeChat's table (docs/wechat.md, section 2): what the table states is
//! checked as stated, and where it is silent or vague the check is permissive and leaves the
//! final word to WeChat (which answers 47003), so that **a value WeChat would accept is never
//! rejected here**. Characters are counted as Unicode scalar values (`str::chars`).
//!
//! The sandbox, playing WeChat, checks values with a table of its own written from the same
//! documentation (`wechat_notify_sandbox::keywords`); `tests/it/keyword_rules.rs` runs both over
//! one corpus and fails on every value they judge differently.
//!
//! Key names: a data key is `<type><digits>` (`thing1`, `character_string13`). A key of any other
//! shape (`thing`, `Thing1`, `1thing`) has no keyword type; its value is passed through unchecked,
//! like a value of a type with no known rule (`enum_string2`). Such keys are almost certainly not
//! template keywords, but rejecting them is WeChat's call, not ours.

/// One bad field: `field` is a path such as `data["thing1"]` or `recipients[3].touser`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request.
    pub field: String,
    /// What is wrong, lowercase, naming the rule.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`, described by `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// `data` holds at most this many keys.
pub const MAX_DATA_KEYS: usize = 32;
/// A `data` key is at most this many bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// A `data` value is at most this many bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// `touser`, `template_id` and `app` are at most this many bytes.
pub const MAX_ID_BYTES: usize = 128;
/// `page` is at most this many bytes.
pub const MAX_PAGE_BYTES: usize = 1024;
/// `idempotency_key` is at most this many bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// The languages WeChat accepts for `lang`.
pub const LANGS: &[&str] = &["zh_CN", "en_US", "zh_HK", "zh_TW"];

/// The keyword type of a data key: the key without its trailing digits (`thing1` -> `thing`).
///
/// The key must be a lowercase ASCII letter, then lowercase ASCII letters or underscores, then at
/// least one ASCII digit, and nothing else. Any other key (`thing`, `1thing`, `Thing1`,
/// `thing1x`, `_1`, ``) gives `None`; [`check_keyword_value`] passes such keys through unchecked.
pub fn keyword_type(key: &str) -> Option<&str> {
    let prefix = key.trim_end_matches(|c: char| c.is_ascii_digit());
    let has_digits = prefix.len() < key.len();
    let mut chars = prefix.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_is_word = chars.all(|c| c.is_ascii_lowercase() || c == '_');
    (has_digits && starts_with_letter && rest_is_word).then_some(prefix)
}

/// Checks one value against its keyword type's WeChat rule. Unknown types pass.
///
/// For a known type the value must be non-empty (WeChat answers 47003 on empty) and free of
/// control characters (WeChat forbids newlines and the like). The error names the rule,
/// lowercase, e.g. `thing allows at most 20 characters, got 23`.
pub fn check_keyword_value(key: &str, value: &str) -> Result<(), String> {
    let Some(rule) = keyword_type(key).and_then(rule_for) else {
        return Ok(());
    };
    let name = rule.keyword_type;
    if value.is_empty() {
        return Err(format!("{name} must not be empty"));
    }
    if let Some(c) = value.chars().find(|&c| is_control(c)) {
        return Err(format!(
            "{name} must not contain control characters such as newlines, got U+{:04X}",
            u32::from(c)
        ));
    }
    (rule.check)(value)
}

/// One keyword type with a known WeChat rule. The value reaching `check` is non-empty and free
/// of control characters.
struct KeywordRule {
    keyword_type: &'static str,
    check: fn(&str) -> Result<(), String>,
}

/// The WeChat rules, one per keyword type (docs/wechat.md, section 2). `enum` values come from the
/// template's own list (checked by `service` when the app's template list is to be had), so
/// `enum`/`enum_string` are not here.
const RULES: &[KeywordRule] = &[
    KeywordRule {
        keyword_type: "thing",
        check: check_thing,
    },
    KeywordRule {
        keyword_type: "number",
        check: check_number,
    },
    KeywordRule {
        keyword_type: "letter",
        check: check_letter,
    },
    KeywordRule {
        keyword_type: "symbol",
        check: check_symbol,
    },
    KeywordRule {
        keyword_type: "character_string",
        check: check_character_string,
    },
    KeywordRule {
        keyword_type: "time",
        check: check_time,
    },
    KeywordRule {
        keyword_type: "date",
        check: check_date,
    },
    KeywordRule {
        keyword_type: "amount",
        check: check_amount,
    },
    KeywordRule {
        keyword_type: "phone_number",
        check: check_phone_number,
    },
    KeywordRule {
        keyword_type: "car_number",
        check: check_car_number,
    },
    KeywordRule {
        keyword_type: "name",
        check: check_name,
    },
    KeywordRule {
        keyword_type: "phrase",
        check: check_phrase,
    },
];

fn rule_for(keyword_type: &str) -> Option<&'static KeywordRule> {
    RULES.iter().find(|rule| rule.keyword_type == keyword_type)
}

// ---------------------------------------------------------------------------------------------
// The rules.

/// ≤ 20 characters, anything.
fn check_thing(value: &str) -> Result<(), String> {
    max_chars("thing", value, 20)
}

/// ≤ 32 digits; digits with one optional decimal point (只能数字，可带小数: "digits only, a
/// decimal part allowed", so no sign); the limit counts digits only.
fn check_number(value: &str) -> Result<(), String> {
    const RULE: &str = "number allows only digits and one decimal point";
    let mut digits = 0usize;
    let mut points = 0usize;
    for c in value.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' => points += 1,
            _ => return Err(format!("{RULE}, got {}", quote(c))),
        }
    }
    if digits == 0 || points > 1 {
        return Err(RULE.to_owned());
    }
    if digits > 32 {
        return Err(format!("number allows at most 32 digits, got {digits}"));
    }
    Ok(())
}

/// ≤ 32 letters only. Any alphabetic character other than a Chinese one counts as a letter
/// (ASCII, full-width `Ａ`, accented `é`): WeChat does not say "ASCII", so we do not either.
fn check_letter(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| !is_letter(c)) {
        return Err(format!("letter allows only letters, got {}", quote(c)));
    }
    max_chars("letter", value, 32)
}

/// ≤ 5 symbols only: anything that is not a letter, a digit or a Chinese character. Spaces and
/// emoji count as symbols.
fn check_symbol(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| c.is_alphanumeric()) {
        return Err(format!(
            "symbol allows only symbols (no letters, digits or chinese characters), got {}",
            quote(c)
        ));
    }
    max_chars("symbol", value, 5)
}

/// ≤ 32 characters; digits, letters and symbols, no Chinese characters.
fn check_character_string(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| is_han(c)) {
        return Err(format!(
            "character_string allows digits, letters and symbols but no chinese characters, got {}",
            quote(c)
        ));
    }
    max_chars("character_string", value, 32)
}

/// A 24-hour time, optionally after a date; or a range of two.
fn check_time(value: &str) -> Result<(), String> {
    if is_range_of(value.trim(), parse_time_point) {
        return Ok(());
    }
    Err(
        "time must be a 24-hour time (HH:MM or HH:MM:SS), optionally after a date, \
         or a range of two joined by '~'"
            .to_owned(),
    )
}

/// A date, optionally followed by a 24-hour time; or a range of two.
fn check_date(value: &str) -> Result<(), String> {
    if is_range_of(value.trim(), parse_date_point) {
        return Ok(());
    }
    Err(
        "date must be a date such as 2019年10月1日, 2019年10月, 10月1日, 2019-10-01, 2019/10/01, \
         2019.10.01, 2019-10 or 10-01, optionally followed by a 24-hour time, \
         or a range of two joined by '~'"
            .to_owned(),
    )
}

/// One currency symbol, up to 10 integer digits, optional decimals, optionally `元` at the end;
/// see [`parse_amount`].
fn check_amount(value: &str) -> Result<(), String> {
    match parse_amount(value.trim()) {
        Ok(()) => Ok(()),
        Err(AmountError::TooManyDigits(digits)) => Err(format!(
            "amount allows at most 10 integer digits, got {digits}"
        )),
        Err(AmountError::Format) => Err(
            "amount must be one currency symbol such as ¥ or $, then digits \
             (at most 10 before the decimal point), optionally ending in 元"
                .to_owned(),
        ),
    }
}

/// ≤ 17 characters, digits and symbols (`+86-0766-66888866`): no letters, no Chinese.
fn check_phone_number(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| c.is_alphabetic()) {
        return Err(format!(
            "phone_number allows only digits and symbols, got {}",
            quote(c)
        ));
    }
    max_chars("phone_number", value, 17)
}

/// ≤ 8 characters; the first and last may be Chinese, the rest are ASCII letters or digits
/// (`粤A8Z888挂`). Nothing else: a middle dot (`粤A·8Z888`) is neither letter nor digit.
fn check_car_number(value: &str) -> Result<(), String> {
    const RULE: &str =
        "car_number allows chinese characters only first and last, and letters or digits elsewhere";
    let count = value.chars().count();
    for (index, c) in value.chars().enumerate() {
        let at_end = index == 0 || index + 1 == count;
        let allowed = c.is_ascii_alphanumeric() || (at_end && is_han(c));
        if !allowed {
            return Err(format!("{RULE}, got {}", quote(c)));
        }
    }
    max_chars("car_number", value, 8)
}

/// ≤ 10 characters when the name contains any Chinese character, else ≤ 20; letters, Chinese
/// characters and symbols (spaces, `·`, `-`, `'`), but no digits (`〇` is a Chinese character).
fn check_name(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| c.is_numeric() && !is_han(c)) {
        return Err(format!(
            "name allows only letters, chinese characters and symbols, got {}",
            quote(c)
        ));
    }
    if value.chars().any(is_han) {
        max_chars_with("name", value, 10, " with chinese characters")
    } else {
        max_chars("name", value, 20)
    }
}

/// ≤ 5 characters, Chinese only (`配送中`).
fn check_phrase(value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|&c| !is_han(c)) {
        return Err(format!(
            "phrase allows only chinese characters, got {}",
            quote(c)
        ));
    }
    max_chars("phrase", value, 5)
}

// ---------------------------------------------------------------------------------------------
// Helpers: lengths and character classes.

fn max_chars(name: &str, value: &str, max: usize) -> Result<(), String> {
    max_chars_with(name, value, max, "")
}

fn max_chars_with(name: &str, value: &str, max: usize, context: &str) -> Result<(), String> {
    let count = value.chars().count();
    if count > max {
        return Err(format!(
            "{name} allows at most {max} characters{context}, got {count}"
        ));
    }
    Ok(())
}

/// Control characters (newline, tab, DEL, C1) and the Unicode line/paragraph separators.
fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A Chinese (Han) character: the CJK unified and compatibility ideograph blocks, and `〇`.
fn is_han(c: char) -> bool {
    matches!(
        u32::from(c),
        0x3007
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xF900..=0xFAFF
            | 0x20000..=0x2FA1F
            | 0x30000..=0x323AF
    )
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic() && !is_han(c)
}

/// A character for an error message: quoted, or as a code point when it would not show.
fn quote(c: char) -> String {
    if c.is_whitespace() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

// ---------------------------------------------------------------------------------------------
// Date and time grammar. Each parser takes the front of its input and returns the rest.

/// Joins the two points of a range: WeChat's `~` (用“~”符号连接), half- or full-width (the
/// full-width `～` is what a Chinese keyboard types for it). Not `-` or `至`: the rule names `~`.
const RANGE_JOINERS: &[char] = &['~', '～'];

/// One point, or two joined by a range joiner (surrounding spaces allowed). The first point is
/// of the value's own kind; the second may be a date point or a time point, so both
/// `2019年10月1日 15:01 ~ 16:01` and `15:01~2019年10月2日 09:00` pass.
fn is_range_of(value: &str, first_point: fn(&str) -> Option<&str>) -> bool {
    let Some(rest) = first_point(value) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.trim_start().strip_prefix(RANGE_JOINERS) else {
        return false;
    };
    let end = rest.trim_start();
    parse_date_point(end) == Some("") || parse_time_point(end) == Some("")
}

/// A date optionally followed by a time.
fn parse_date_point(s: &str) -> Option<&str> {
    let rest = parse_date(s)?;
    Some(parse_time_after_date(s, rest).unwrap_or(rest))
}

/// A time optionally preceded by a date.
fn parse_time_point(s: &str) -> Option<&str> {
    parse_date(s)
        .and_then(|rest| parse_time_after_date(s, rest))
        .or_else(|| parse_time(s))
}

/// The time following a date (`s` minus `rest`): after whitespace, or directly after `日`/`月`.
fn parse_time_after_date<'a>(s: &str, rest: &'a str) -> Option<&'a str> {
    let date = &s[..s.len() - rest.len()];
    let trimmed = rest.trim_start();
    let separated = trimmed.len() < rest.len() || date.ends_with(['日', '月']);
    if separated { parse_time(trimmed) } else { None }
}

/// `H:MM` or `HH:MM`, optionally `:SS`; hours 0-23, or exactly `24:00[:00]` (end of day).
fn parse_time(s: &str) -> Option<&str> {
    let (hour, rest) = take_digits(s, 1, 2)?;
    let (minute, rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
    let (second, rest) = match rest.strip_prefix(':') {
        Some(after_colon) => take_digits(after_colon, 2, 2)?,
        None => (0, rest),
    };
    let valid =
        (hour <= 23 && minute <= 59 && second <= 59) || (hour == 24 && minute == 0 && second == 0);
    valid.then_some(rest)
}

/// `y年m月d日`, `y年m月`, `m月d日`, or `YYYY-MM-DD`, `YYYY-MM`, `MM-DD` with `-`, `/` or `.`.
fn parse_date(s: &str) -> Option<&str> {
    parse_chinese_date(s).or_else(|| parse_separated_date(s))
}

fn parse_chinese_date(s: &str) -> Option<&str> {
    if let Some((_, after_year)) = take_digits(s, 2, 4)
        && let Some(after_year) = after_year.strip_prefix('年')
    {
        let (month, after_month) = take_digits(after_year, 1, 2)?;
        let after_month = after_month.strip_prefix('月').filter(|_| is_month(month))?;
        // The day is optional: `2019年10月` (maybe followed directly by a time, `2019年10月15:01`).
        if let Some((day, after_day)) = take_digits(after_month, 1, 2)
            && let Some(after_day) = after_day.strip_prefix('日')
        {
            return is_day(day).then_some(after_day);
        }
        return Some(after_month);
    }
    let (month, after_month) = take_digits(s, 1, 2)?;
    let after_month = after_month.strip_prefix('月').filter(|_| is_month(month))?;
    let (day, after_day) = take_digits(after_month, 1, 2)?;
    after_day.strip_prefix('日').filter(|_| is_day(day))
}

fn parse_separated_date(s: &str) -> Option<&str> {
    let year_digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (first, rest) = take_digits(s, 1, 4)?;
    let separator = rest
        .chars()
        .next()
        .filter(|c| matches!(c, '-' | '/' | '.'))?;
    let (second, rest) = take_digits(&rest[1..], 1, 2)?;
    match year_digits {
        4 => {
            if !is_month(second) {
                return None;
            }
            match rest.strip_prefix(separator) {
                Some(after) => {
                    let (day, rest) = take_digits(after, 1, 2)?;
                    is_day(day).then_some(rest)
                }
                None => Some(rest),
            }
        }
        1 | 2 => {
            let valid = is_month(first) && is_day(second) && !rest.starts_with(separator);
            valid.then_some(rest)
        }
        _ => None,
    }
}

/// Leading ASCII digits, between `min` and `max` of them (no more: `2019` is not two digits).
fn take_digits(s: &str, min: usize, max: usize) -> Option<(u32, &str)> {
    let count = s.bytes().take_while(u8::is_ascii_digit).count();
    if count < min || count > max {
        return None;
    }
    let value = s[..count].parse().ok()?;
    Some((value, &s[count..]))
}

fn is_month(month: u32) -> bool {
    (1..=12).contains(&month)
}

fn is_day(day: u32) -> bool {
    (1..=31).contains(&day)
}

// ---------------------------------------------------------------------------------------------
// Amount grammar.

enum AmountError {
    Format,
    TooManyDigits(usize),
}

/// `symbol digits [.digits] [元]`: one currency symbol (`¥100`, `$9.99`, `¥100.00元`), at most
/// 10 integer digits. That is all WeChat's rule (1个币种符号+10位以内纯数字，可带小数，结尾可带“元”)
/// allows: no sign, no currency code (`HK$`), no thousands separator, no space.
fn parse_amount(value: &str) -> Result<(), AmountError> {
    let rest = value
        .strip_prefix(is_currency_symbol)
        .ok_or(AmountError::Format)?;
    let rest = rest.strip_suffix('元').unwrap_or(rest);
    let (integer, fraction) = match rest.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (rest, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return Err(AmountError::Format);
    }
    if integer.len() > 10 {
        return Err(AmountError::TooManyDigits(integer.len()));
    }
    Ok(())
}

/// The common currency signs, half- and full-width, and the Unicode currency symbols block.
fn is_currency_symbol(c: char) -> bool {
    matches!(
        c,
        '$' | '¢' | '£' | '¤' | '¥' | '￥' | '＄' | '￡' | '￠' | '￦' | '﹩' | '฿' | '₠'..='⃀'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_type_strips_trailing_digits() {
        let cases = [
            ("thing1", Some("thing")),
            ("thing01", Some("thing")),
            ("number01", Some("number")),
            ("character_string13", Some("character_string")),
            ("phone_number2", Some("phone_number")),
            ("enum_string2", Some("enum_string")),
            ("car_number7", Some("car_number")),
            ("date5", Some("date")),
            ("x9", Some("x")),
            ("thing", None),
            ("1thing", None),
            ("Thing1", None),
            ("thing1x", None),
            ("thing_1a2", None),
            ("_1", None),
            ("12", None),
            ("", None),
            ("thing-1", None),
            ("thing 1", None),
            ("事物1", None),
            ("thing１", None), // full-width digit
        ];
        for (key, expected) in cases {
            assert_eq!(keyword_type(key), expected, "key {key:?}");
        }
    }

    /// (key, value, accepted)
    const CASES: &[(&str, &str, bool)] = &[
        // thing: <= 20 of anything, CJK counted one each.
        ("thing1", "Math class", true),
        ("thing1", "数学课", true),
        ("thing1", "12345678901234567890", true),
        ("thing1", "123456789012345678901", false),
        ("thing1", "一二三四五六七八九十一二三四五六七八九十", true),
        (
            "thing1",
            "一二三四五六七八九十一二三四五六七八九十一",
            false,
        ),
        ("thing1", "订单已发货 📦", true),
        ("thing1", "👨‍👩‍👧", true),
        ("thing1", "line\nbreak", false),
        ("thing1", "tab\there", false),
        ("thing1", "carriage\r", false),
        ("thing1", "sep\u{2028}x", false),
        ("thing1", "", false),
        ("thing1", " ", true),
        // number
        ("number1", "42", true),
        ("number01", "3.14", true),
        ("number2", "-7", false),
        ("number2", "+7.5", false),
        ("number2", "0", true),
        ("number2", ".5", true),
        ("number2", "5.", true),
        ("number2", "12345678901234567890123456789012", true),
        ("number2", "123456789012345678901234567890123", false),
        ("number2", "1234567890123456.7890123456789012", true),
        ("number2", "1.2.3", false),
        ("number2", "1,000", false),
        ("number2", "12a", false),
        ("number2", "-", false),
        ("number2", ".", false),
        ("number2", "--1", false),
        ("number2", "一", false),
        ("number2", "", false),
        // letter
        ("letter1", "abcXYZ", true),
        ("letter1", "ＡＢＣ", true),
        ("letter1", "café", true),
        ("letter1", "abcdefghijklmnopqrstuvwxyzABCDEF", true),
        ("letter1", "abcdefghijklmnopqrstuvwxyzABCDEFG", false),
        ("letter1", "abc1", false),
        ("letter1", "ab cd", false),
        ("letter1", "ab-cd", false),
        ("letter1", "中", false),
        // symbol
        ("symbol1", "!@#", true),
        ("symbol1", "+-*/%", true),
        ("symbol1", "+-*/%^", false),
        ("symbol1", "★", true),
        ("symbol1", "，。", true),
        ("symbol1", "a", false),
        ("symbol1", "1", false),
        ("symbol1", "中", false),
        ("symbol1", "\n", false),
        // character_string
        ("character_string13", "ORDER-2019-0001", true),
        ("character_string13", "abc_123!@#", true),
        (
            "character_string13",
            "12345678901234567890123456789012",
            true,
        ),
        (
            "character_string13",
            "123456789012345678901234567890123",
            false,
        ),
        ("character_string13", "订单123", false),
        ("character_string13", "ａｂｃ", true),
        ("character_string13", "a b", true),
        ("character_string13", "x\n", false),
        // time
        ("time1", "15:01", true),
        ("time1", "9:05", true),
        ("time1", "15:01:59", true),
        ("time1", "00:00", true),
        ("time1", "23:59:59", true),
        ("time1", "24:00", true),
        ("time1", "24:00:00", true),
        ("time1", "24:01", false),
        ("time1", "25:00", false),
        ("time1", "15:60", false),
        ("time1", "15:01:60", false),
        ("time1", "15:1", false),
        ("time1", "1501", false),
        ("time1", "15:01:", false),
        ("time1", "2019年10月1日 15:01", true),
        ("time1", "2019年10月1日15:01", true),
        ("time1", "2019-10-01 15:01", true),
        ("time1", "2019/10/01 15:01:02", true),
        ("time1", "2019.10.01 15:01", true),
        ("time1", "10月1日 15:01", true),
        ("time1", "10-01 15:01", true),
        ("time1", "15:01~16:01", true),
        ("time1", "15:01 ~ 16:01", true),
        ("time1", "15:01 ～ 16:01", true),
        ("time1", "15:01-16:01", false),
        ("time1", "15:01至16:01", false),
        ("time1", "2019年10月1日 15:01 ~ 2019年10月1日 16:01", true),
        ("time1", "2019年10月1日 15:01 ~ 16:01", true),
        ("time1", "2019-10-01 15:01~2019-10-02 09:00", true),
        ("time1", " 15:01 ", true),
        ("time1", "15:01 ~", false),
        ("time1", "15:01 ~ 16:01 ~ 17:01", false),
        ("time1", "~ 16:01", false),
        ("time1", "2019年10月1日", false),
        ("time1", "2019-10-01", false),
        ("time1", "2019-10-0115:01", false),
        ("time1", "下午3点", false),
        ("time1", "15:01\n", false),
        ("time1", "", false),
        // date
        ("date5", "2019年10月1日 15:01", true),
        ("date1", "2019年10月1日", true),
        ("date1", "2019年10月", true),
        ("date1", "10月1日", true),
        ("date1", "19年10月1日", true),
        ("date1", "2018-01-01", true),
        ("date1", "2018/01/01", true),
        ("date1", "2018.01.01", true),
        ("date1", "2018-01", true),
        ("date1", "01-01", true),
        ("date1", "1/1", true),
        ("date1", "2018-1-1", true),
        ("date1", "2018-01-01 15:01", true),
        ("date1", "2018-01-01 15:01:02", true),
        ("date1", "2019年10月1日15:01", true),
        ("date1", "2019年10月1日 ~ 2019年10月7日", true),
        ("date1", "2019年10月1日~10月7日", true),
        ("date1", "2018-01-01 ~ 2018-01-31", true),
        ("date1", "2018-01-01-2018-01-31", false),
        ("date1", "2019年10月1日 15:01 ~ 17:00", true),
        ("date1", "2019年10月1日 15:01 ~ 2019年10月2日 17:00", true),
        ("date1", "2018-13-01", false),
        ("date1", "2018-00-01", false),
        ("date1", "2018-01-32", false),
        ("date1", "2018-01-00", false),
        ("date1", "13-01", false),
        ("date1", "2019年13月1日", false),
        ("date1", "2019年10月32日", false),
        ("date1", "10月", false),
        ("date1", "2019年", false),
        ("date1", "2019", false),
        ("date1", "01-01-2018", false),
        ("date1", "2018-01/01", false),
        ("date1", "20180101", false),
        ("date1", "2018-01-01T15:01", false),
        ("date1", "2018-01-01 25:00", false),
        ("date1", "15:01", false),
        ("date1", "tomorrow", false),
        ("date1", "2019年10月1日\n", false),
        ("date1", "", false),
        // amount
        ("amount1", "¥100.00", true),
        ("amount1", "100元", false),
        ("amount1", "￥100", true),
        ("amount1", "$9.99", true),
        ("amount1", "€5", true),
        ("amount1", "£5.5", true),
        ("amount1", "₩1000", true),
        ("amount1", "HK$20", false),
        ("amount1", "US$20.00", false),
        ("amount1", "¥100.00元", true),
        ("amount1", "¥ 100", false),
        ("amount1", "100", false),
        ("amount1", "-¥5.00", false),
        ("amount1", "¥-5.00", false),
        ("amount1", "¥1,000.00", false),
        ("amount1", "¥1234567890", true),
        ("amount1", "¥1234567890.99", true),
        ("amount1", "¥12345678901", false),
        ("amount1", "¥1,234,567,890,1", false),
        ("amount1", "¥", false),
        ("amount1", "元", false),
        ("amount1", "¥100.", false),
        ("amount1", "¥.5", false),
        ("amount1", "¥1.2.3", false),
        ("amount1", "¥1,,000", false),
        ("amount1", "¥,100", false),
        ("amount1", "¥¥100", false),
        ("amount1", "-¥-5", false),
        ("amount1", "RMB100", false),
        ("amount1", "一百元", false),
        ("amount1", "100 元", false),
        ("amount1", "", false),
        // phone_number
        ("phone_number1", "+86-0766-66888866", true),
        ("phone_number1", "13800138000", true),
        ("phone_number1", "(0766) 6688 8866", true),
        ("phone_number1", "+86-0766-668888661", false),
        ("phone_number1", "+86-0766-6688886", true),
        ("phone_number1", "400-800-8888 ext", false),
        ("phone_number1", "电话", false),
        ("phone_number1", "", false),
        // car_number
        ("car_number1", "粤A8Z888挂", true),
        ("car_number1", "粤AD12345", true),
        ("car_number1", "京A12345", true),
        ("car_number1", "粤A·8Z888", false),
        ("car_number1", "ab12", true),
        ("car_number1", "粤A8Z8889挂", false),
        ("car_number1", "粤粤8Z888", false),
        ("car_number1", "粤A 8Z888", false),
        ("car_number1", "·A8Z888", false),
        ("car_number1", "粤A8Z-88", false),
        ("car_number1", "", false),
        // name
        ("name1", "王小二", true),
        ("name1", "欧阳一二三四五六七八", true),
        ("name1", "欧阳一二三四五六七八九", false),
        ("name1", "John Smith", true),
        ("name1", "Jean-Luc O'Neil", true),
        ("name1", "abcdefghijklmnopqrst", true),
        ("name1", "abcdefghijklmnopqrstu", false),
        ("name1", "王Tom", true),
        ("name1", "王Tomabcdefg", false),
        ("name1", "艾力·买买提", true),
        ("name1", "王〇", true),
        ("name1", "Agent 47", false),
        ("name1", "", false),
        // phrase
        ("phrase1", "王小二", true),
        ("phrase1", "配送中", true),
        ("phrase1", "一二三四五", true),
        ("phrase1", "一二三四五六", false),
        ("phrase1", "配送中!", false),
        ("phrase1", "abc", false),
        ("phrase1", "配送 中", false),
        ("phrase1", "𠀀", true), // extension B ideograph
        ("phrase1", "", false),
        // types without a rule, and keys without a type, pass through untouched
        ("enum_string2", "", true),
        ("enum_string2", "any\nthing", true),
        (
            "enum1",
            "anything at all, even longer than twenty characters",
            true,
        ),
        ("whatever3", "\n", true),
        ("thing", "", true),
        ("Thing1", "line\nbreak", true),
        ("thing1x", "123456789012345678901", true),
    ];

    #[test]
    fn values_follow_their_keyword_rule() {
        let mut failures = Vec::new();
        for &(key, value, accepted) in CASES {
            let result = check_keyword_value(key, value);
            if result.is_ok() != accepted {
                failures.push(format!(
                    "{key} = {value:?}: expected accepted={accepted}, got {result:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_rule_is_exercised() {
        for rule in RULES {
            let tested = |accepted: bool| {
                CASES.iter().any(|&(key, _, ok)| {
                    keyword_type(key) == Some(rule.keyword_type) && ok == accepted
                })
            };
            assert!(
                tested(true) && tested(false),
                "{} lacks a passing or failing case",
                rule.keyword_type
            );
        }
    }

    #[test]
    fn errors_are_lowercase_and_name_the_rule() {
        let cases = [
            (
                "thing1",
                "一二三四五六七八九十一二三四五六七八九十一二三",
                "thing allows at most 20 characters, got 23",
            ),
            ("thing1", "", "thing must not be empty"),
            (
                "thing1",
                "a\nb",
                "thing must not contain control characters such as newlines, got U+000A",
            ),
            (
                "number1",
                "123456789012345678901234567890123",
                "number allows at most 32 digits, got 33",
            ),
            (
                "phrase1",
                "配送a",
                "phrase allows only chinese characters, got 'a'",
            ),
            (
                "name1",
                "欧阳一二三四五六七八九",
                "name allows at most 10 characters with chinese characters, got 11",
            ),
            (
                "amount1",
                "¥12345678901",
                "amount allows at most 10 integer digits, got 11",
            ),
            (
                "symbol1",
                "a b",
                "symbol allows only symbols (no letters, digits or chinese characters), got 'a'",
            ),
        ];
        for (key, value, expected) in cases {
            assert_eq!(check_keyword_value(key, value).unwrap_err(), expected);
        }
        for &(key, value, accepted) in CASES {
            if accepted {
                continue;
            }
            let message = check_keyword_value(key, value).unwrap_err();
            let keyword_type = keyword_type(key).unwrap();
            assert!(
                message.starts_with(keyword_type),
                "{message:?} should start with {keyword_type}"
            );
            assert!(!message.chars().next().unwrap().is_uppercase());
        }
    }

    #[test]
    fn langs_are_wechats() {
        assert!(LANGS.contains(&"zh_CN"));
        assert_eq!(LANGS.len(), 4);
    }
}
