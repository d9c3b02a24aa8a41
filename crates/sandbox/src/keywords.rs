//! The rules WeChat holds a subscribe message's `data` values to (47003 `argument invalid!` when
//! one breaks its keyword's rule), written from WeChat's own table, 参数值内容限制说明 on the
//! subscribeMessage.send page (docs/wechat.md, section 2), and its format notes.
//!
//! They are the sandbox's own on purpose: the service checks values before it sends with a table
//! of its own, and the root package's `tests/it/keyword_rules.rs` runs both over one corpus of
//! values, so a rule either gets wrong shows up as a disagreement instead of being wrong in both.
//!
//! The table, as WeChat words it:
//!
//! | type | rule |
//! | --- | --- |
//! | `thing` | 20 characters at most; Chinese characters, digits, letters or symbols |
//! | `number` | 32 digits at most; digits only, a decimal part allowed |
//! | `letter` | 32 letters at most; letters only |
//! | `symbol` | 5 symbols at most; symbols only |
//! | `character_string` | 32 characters at most; digits, letters or symbols |
//! | `time` | a 24-hour time, a date allowed in front; a period is two times joined by `~` |
//! | `date` | a date (年月日), a 24-hour time allowed after; a period is two joined by `~` |
//! | `amount` | one currency symbol and 10 digits at most, a decimal part allowed, `元` allowed at the end |
//! | `phone_number` | 17 characters at most; digits and symbols |
//! | `car_number` | 8 characters at most; Chinese allowed first and last, letters or digits between |
//! | `name` | 10 Chinese characters at most, or 20 letters or symbols; mixed counts as Chinese |
//! | `phrase` | 5 Chinese characters at most, nothing else |
//!
//! The format notes: a symbol is any common character that is not a Chinese character, a letter
//! or a digit, and no value may hold control characters such as newlines; a time is `HH:MM` or
//! `HH:MM:SS`; a date is `2019年10月1日`, `2019年10月`, `10月1日`, or written with `-`, `/` or
//! `.` (`2018-01-01`, `2018/01/01`, `2018.01.01`, `2018-01`, `01-01`). WeChat does not say how it
//! counts characters; here each Unicode scalar value counts one. Nor does it say whether spaces
//! around a time, a date or an amount count; here they are ignored.
//!
//! Where the table is silent the sandbox takes the reading that lets a value through, as WeChat
//! decides and the sandbox only imitates: refusing what WeChat might accept would fail a
//! service's test for nothing. Each such reading is noted at its rule.

/// Why a value breaks its keyword's rule: WeChat answers 47003 naming the keyword, and the
/// sandbox keeps this for its console and its failed-sends list.
pub type Broken = String;

/// The keyword type of a data key: the key less its trailing number (`thing1` -> `thing`,
/// `character_string13` -> `character_string`). `None` when the key is not a type name
/// (lowercase letters and `_`) followed by a number.
pub fn keyword_type(key: &str) -> Option<&str> {
    let name = key.trim_end_matches(|c: char| c.is_ascii_digit());
    let numbered = name.len() < key.len();
    let named = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    (numbered && named).then_some(name)
}

/// Checks `value` for the keyword `key`. A value must not be empty whatever its type (a blank
/// one is not empty: a space is a symbol, which most types take); a type with no rule here
/// (`enum`, whose values come from the template) takes anything else.
pub fn check(key: &str, value: &str) -> Result<(), Broken> {
    if value.is_empty() {
        return Err(format!("{key} is empty"));
    }
    let Some(keyword_type) = keyword_type(key) else {
        return Ok(());
    };
    let Some(rule) = RULES.iter().find(|rule| rule.keyword_type == keyword_type) else {
        return Ok(());
    };
    if let Some(control) = value.chars().find(|&c| classify(c) == Class::Control) {
        return Err(format!(
            "{keyword_type} holds the control character U+{:04X}",
            u32::from(control)
        ));
    }
    if (rule.obeys)(value) {
        Ok(())
    } else {
        Err(format!("{keyword_type} must be {}", rule.described))
    }
}

/// One row of WeChat's table.
struct Rule {
    keyword_type: &'static str,
    /// The rule in words, for the refusal.
    described: &'static str,
    obeys: fn(&str) -> bool,
}

const RULES: &[Rule] = &[
    Rule {
        keyword_type: "thing",
        described: "at most 20 characters",
        obeys: |value| length(value) <= 20,
    },
    Rule {
        keyword_type: "number",
        described: "at most 32 digits, with a decimal part allowed",
        obeys: is_number,
    },
    Rule {
        keyword_type: "letter",
        described: "at most 32 letters",
        obeys: |value| length(value) <= 32 && only(value, &[Class::Letter]),
    },
    Rule {
        keyword_type: "symbol",
        described: "at most 5 symbols",
        obeys: |value| length(value) <= 5 && only(value, &[Class::Symbol]),
    },
    Rule {
        keyword_type: "character_string",
        described: "at most 32 digits, letters or symbols",
        obeys: |value| {
            length(value) <= 32 && only(value, &[Class::Digit, Class::Letter, Class::Symbol])
        },
    },
    Rule {
        keyword_type: "time",
        described: "a 24-hour time, a date allowed in front, or two joined by ~",
        obeys: |value| is_period(value.trim(), Moment::Time),
    },
    Rule {
        keyword_type: "date",
        described: "a date, a 24-hour time allowed after, or two joined by ~",
        obeys: |value| is_period(value.trim(), Moment::Date),
    },
    Rule {
        keyword_type: "amount",
        described: "a currency symbol and at most 10 digits, a decimal part and 元 allowed",
        obeys: |value| is_amount(value.trim()),
    },
    Rule {
        keyword_type: "phone_number",
        described: "at most 17 digits and symbols",
        obeys: |value| length(value) <= 17 && only(value, &[Class::Digit, Class::Symbol]),
    },
    Rule {
        keyword_type: "car_number",
        described: "at most 8 characters: letters or digits, Chinese allowed first and last",
        obeys: is_car_number,
    },
    Rule {
        keyword_type: "name",
        described: "at most 10 characters with Chinese, or at most 20 letters or symbols",
        obeys: is_name,
    },
    Rule {
        keyword_type: "phrase",
        described: "at most 5 Chinese characters",
        obeys: |value| length(value) <= 5 && only(value, &[Class::Chinese]),
    },
];

// ---------------------------------------------------------------------------------------------
// Characters, in the table's four kinds.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// 汉字: a CJK ideograph.
    Chinese,
    /// 数字: a digit.
    Digit,
    /// 字母: a letter of an alphabet (Latin, Greek, Cyrillic, ..., full-width too).
    Letter,
    /// 符号: anything else a person can read: punctuation, spaces, currency signs, emoji.
    Symbol,
    /// Never allowed: newlines, tabs and the other control characters.
    Control,
}

fn classify(c: char) -> Class {
    if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
        Class::Control
    } else if is_chinese(c) {
        Class::Chinese
    } else if c.is_numeric() {
        // 0-9, and the digits of other forms and scripts (full-width ０, Arabic-Indic): a
        // reader sees digits. Only `number` and `amount` insist on 0-9.
        Class::Digit
    } else if c.is_alphabetic() {
        // The table says 字母 without naming an alphabet; the wider reading (é, Ж, Ａ) lets
        // through what WeChat might accept.
        Class::Letter
    } else {
        Class::Symbol
    }
}

/// The CJK ideograph blocks: unified ideographs and their extensions A to I, the compatibility
/// ideographs and their supplement, and 〇 (the ideographic zero, as in 二〇一九年).
fn is_chinese(c: char) -> bool {
    const IDEOGRAPHS: &[(char, char)] = &[
        ('\u{3007}', '\u{3007}'),
        ('\u{3400}', '\u{4DBF}'),
        ('\u{4E00}', '\u{9FFF}'),
        ('\u{F900}', '\u{FAFF}'),
        ('\u{20000}', '\u{2A6DF}'),
        ('\u{2A700}', '\u{2EE5F}'),
        ('\u{2F800}', '\u{2FA1F}'),
        ('\u{30000}', '\u{323AF}'),
    ];
    IDEOGRAPHS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

fn length(value: &str) -> usize {
    value.chars().count()
}

fn only(value: &str, allowed: &[Class]) -> bool {
    value.chars().all(|c| allowed.contains(&classify(c)))
}

// ---------------------------------------------------------------------------------------------
// The rules that are more than a length and a set of characters.

/// Digits, with one decimal point allowed; at most 32 digits. Nothing else: WeChat's table says
/// 只能数字 (digits only), so no sign and no thousands separator.
fn is_number(value: &str) -> bool {
    let mut parts = value.split('.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next().unwrap_or_default();
    let digits = whole.len() + fraction.len();
    parts.next().is_none()
        && (1..=32).contains(&digits)
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
}

/// One currency symbol, then at most 10 digits, a decimal part allowed, then `元` allowed.
fn is_amount(value: &str) -> bool {
    let Some(symbol) = value.chars().next() else {
        return false;
    };
    if !is_currency_symbol(symbol) {
        return false;
    }
    let figure = &value[symbol.len_utf8()..];
    let figure = figure.strip_suffix('元').unwrap_or(figure);
    let (units, cents) = figure.split_once('.').unwrap_or((figure, "0"));
    (1..=10).contains(&units.len())
        && !cents.is_empty()
        && units
            .bytes()
            .chain(cents.bytes())
            .all(|b| b.is_ascii_digit())
}

/// A currency sign: the Unicode currency symbols (¥ ￥ $ € £ ₩ ...).
fn is_currency_symbol(c: char) -> bool {
    matches!(
        c,
        '$' | '¢' | '£' | '¤' | '¥' | '₠'..='⃀' | '﹩' | '＄' | '￠' | '￡' | '￥' | '￦'
    )
}

/// At most 8 characters; a Chinese character may open and close it (粤A8Z888挂), letters and
/// digits fill the rest.
fn is_car_number(value: &str) -> bool {
    let count = length(value);
    count <= 8
        && value.chars().enumerate().all(|(index, c)| {
            let end = index == 0 || index + 1 == count;
            c.is_ascii_alphanumeric() || (end && is_chinese(c))
        })
}

/// A Chinese name of at most 10 characters (letters and symbols mixed in count as Chinese, as
/// in 艾力·买买提), or a name of letters and symbols of at most 20. No digits.
fn is_name(value: &str) -> bool {
    let allowed = only(value, &[Class::Chinese, Class::Letter, Class::Symbol]);
    let limit = if value.chars().any(is_chinese) {
        10
    } else {
        20
    };
    allowed && length(value) <= limit
}

// ---------------------------------------------------------------------------------------------
// Times and dates.

/// What a period's first moment is: a time (a date allowed in front) or a date (a time allowed
/// after). The second moment, after `~`, may be either, as in `2019年10月1日 15:01~16:01`.
#[derive(Clone, Copy)]
enum Moment {
    Time,
    Date,
}

/// One moment of the kind, or two joined by `~` (spaces allowed around it). The full-width `～`,
/// which a Chinese keyboard types for `~`, joins too.
fn is_period(value: &str, first: Moment) -> bool {
    let (start, end) = match value.split_once(['~', '～']) {
        Some((start, end)) => (start.trim_end(), Some(end.trim_start())),
        None => (value, None),
    };
    is_moment(start, first)
        && end.is_none_or(|end| is_moment(end, Moment::Date) || is_moment(end, Moment::Time))
}

fn is_moment(text: &str, kind: Moment) -> bool {
    match kind {
        Moment::Time => {
            is_clock(text)
                || split_date(text).is_some_and(|(date, clock)| is_date(date) && is_clock(clock))
        }
        Moment::Date => {
            is_date(text)
                || split_date(text).is_some_and(|(date, clock)| is_date(date) && is_clock(clock))
        }
    }
}

/// A date and the time after it: split at the last space, or right after a 日 (`10月1日15:01`).
fn split_date(text: &str) -> Option<(&str, &str)> {
    if let Some((date, clock)) = text.rsplit_once(' ') {
        return Some((date.trim_end(), clock));
    }
    let day_end = text.find('日')? + '日'.len_utf8();
    Some(text.split_at(day_end))
}

/// `HH:MM` or `HH:MM:SS` on a 24-hour clock (the hour may be one digit: `9:05`), up to
/// `24:00`, the end of a day.
fn is_clock(text: &str) -> bool {
    let fields: Vec<&str> = text.split(':').collect();
    let [hour, minute, second @ ..] = fields.as_slice() else {
        return false;
    };
    let two_digits = |field: &str| field.len() == 2 && field.bytes().all(|b| b.is_ascii_digit());
    let hour_ok = (1..=2).contains(&hour.len()) && hour.bytes().all(|b| b.is_ascii_digit());
    let seconds = match second {
        [] => Some(0),
        [second] if two_digits(second) => second.parse::<u32>().ok(),
        _ => None,
    };
    if !(hour_ok && two_digits(minute)) {
        return false;
    }
    let (Ok(hour), Ok(minute), Some(second)) =
        (hour.parse::<u32>(), minute.parse::<u32>(), seconds)
    else {
        return false;
    };
    (hour < 24 && minute < 60 && second < 60) || (hour, minute, second) == (24, 0, 0)
}

/// The date forms of WeChat's notes: `2019年10月1日`, `2019年10月`, `10月1日`, and
/// `2018-01-01`, `2018-01`, `01-01` with `-`, `/` or `.` (one separator throughout).
fn is_date(text: &str) -> bool {
    is_chinese_date(text) || is_separated_date(text)
}

fn is_chinese_date(text: &str) -> bool {
    let (year, rest) = match text.split_once('年') {
        Some((year, rest)) => (Some(year), rest),
        None => (None, text),
    };
    let Some((month, day)) = rest.split_once('月') else {
        return false;
    };
    let day = match day.strip_suffix('日') {
        Some(day) => Some(day),
        None if day.is_empty() => None,
        None => return false,
    };
    let year_ok = year.is_none_or(|year| number_of(year, 2..=4).is_some());
    // A date names a day: a month needs its year (2019年10月) or its day (10月1日).
    let whole = year.is_some() || day.is_some();
    year_ok && whole && is_month(month) && day.is_none_or(is_day)
}

fn is_separated_date(text: &str) -> bool {
    let Some(separator) = text.chars().find(|c| matches!(c, '-' | '/' | '.')) else {
        return false;
    };
    match text.split(separator).collect::<Vec<_>>().as_slice() {
        [year, month, day] => number_of(year, 4..=4).is_some() && is_month(month) && is_day(day),
        [year, month] if year.len() == 4 => number_of(year, 4..=4).is_some() && is_month(month),
        [month, day] => is_month(month) && is_day(day),
        _ => false,
    }
}

fn is_month(text: &str) -> bool {
    number_of(text, 1..=2).is_some_and(|month| (1..=12).contains(&month))
}

fn is_day(text: &str) -> bool {
    number_of(text, 1..=2).is_some_and(|day| (1..=31).contains(&day))
}

/// The number written with `digits` ASCII digits (a count in that range), else `None`.
fn number_of(text: &str, digits: std::ops::RangeInclusive<usize>) -> Option<u32> {
    let written = digits.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    written.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_is_the_key_less_its_number() {
        assert_eq!(keyword_type("thing1"), Some("thing"));
        assert_eq!(keyword_type("character_string13"), Some("character_string"));
        assert_eq!(keyword_type("number01"), Some("number"));
        for not_typed in ["thing", "Thing1", "1thing", "thing1x", "_1", ""] {
            assert_eq!(keyword_type(not_typed), None, "{not_typed}");
        }
    }

    #[test]
    fn wechats_examples_pass() {
        // The examples of WeChat's table and notes.
        for (key, value) in [
            ("thing1", "可汉字、数字、字母或符号组合"),
            ("number1", "3.14"),
            ("letter1", "abc"),
            ("symbol1", "%"),
            ("character_string1", "SBX2019100100001"),
            ("time1", "15:01"),
            ("time1", "2019年10月1日 15:01"),
            ("date1", "2019年10月1日"),
            ("date1", "2019年10月1日 15:01"),
            ("date1", "2018-01-01"),
            ("date1", "2018/01/01"),
            ("date1", "2018.01.01"),
            ("date1", "2018-01"),
            ("date1", "01-01"),
            ("amount1", "¥100"),
            ("phone_number1", "+86-0766-66888866"),
            ("car_number1", "粤A8Z888挂"),
            ("name1", "王小二"),
            ("phrase1", "配送中"),
        ] {
            assert_eq!(check(key, value), Ok(()), "{key} = {value}");
        }
    }

    #[test]
    fn refusals_name_the_rule() {
        assert_eq!(
            check("phrase1", "配送中ing"),
            Err("phrase must be at most 5 Chinese characters".to_owned())
        );
        assert_eq!(check("thing1", ""), Err("thing1 is empty".to_owned()));
        assert_eq!(check("thing1", "  "), Ok(()), "spaces are symbols");
        assert_eq!(
            check("thing1", "a\nb"),
            Err("thing holds the control character U+000A".to_owned())
        );
        // A type without a rule here takes any value that is not blank.
        assert_eq!(check("enum_string2", "anything"), Ok(()));
        assert!(check("enum_string2", "").is_err());
    }
}
