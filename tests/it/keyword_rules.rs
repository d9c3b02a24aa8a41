//! The service's keyword rules (`wechat_notify::validation`) and the sandbox's
//! (`wechat_notify_sandbox::keywords`) are written separately, each from WeChat's table
//! (docs/wechat.md, section 2). Here both judge one corpus of values, and every value they
//! judge differently is reported, all in one failure: a disagreement means one of them reads
//! WeChat wrong (and the sandbox, playing WeChat, would otherwise hide it).
//!
//! The corpus: for every keyword type, values that pass, values on each limit and one past it,
//! and values that break the rule, with multi-byte characters, emoji, combining marks,
//! full-width forms and control characters; generated runs of each character at the lengths
//! around every limit; and WeChat's own examples, which both must accept.

use wechat_notify::validation::check_keyword_value;
use wechat_notify_sandbox::keywords;

/// Every keyword type with a rule, and a key of that type.
const TYPES: &[(&str, &str)] = &[
    ("thing", "thing1"),
    ("number", "number2"),
    ("letter", "letter3"),
    ("symbol", "symbol4"),
    ("character_string", "character_string5"),
    ("time", "time6"),
    ("date", "date7"),
    ("amount", "amount8"),
    ("phone_number", "phone_number9"),
    ("car_number", "car_number10"),
    ("name", "name11"),
    ("phrase", "phrase12"),
];

/// The examples in WeChat's table and its format notes: both must accept them.
const WECHATS_EXAMPLES: &[(&str, &str)] = &[
    ("time", "15:01"),
    ("time", "2019年10月1日 15:01"),
    ("date", "2019年10月1日"),
    ("date", "2019年10月1日 15:01"),
    ("date", "2018-01-01"),
    ("date", "2018/01/01"),
    ("date", "2018.01.01"),
    ("date", "2018-01"),
    ("date", "01-01"),
    ("date", "2019年10月"),
    ("date", "10月1日"),
    ("phone_number", "+86-0766-66888866"),
    ("car_number", "粤A8Z888挂"),
    ("phrase", "配送中"),
];

/// Values written for one type each (most are tried against every type as well).
const WRITTEN: &[(&str, &[&str])] = &[
    (
        "thing",
        &[
            "Math class",
            "数学课",
            "订单已发货 📦",
            "👨‍👩‍👧",
            "一二三四五六七八九十一二三四五六七八九十",
            "一二三四五六七八九十一二三四五六七八九十一",
            "12345678901234567890",
            "123456789012345678901",
            "line\nbreak",
            "tab\there",
            "carriage\r",
            "sep\u{2028}x",
            "nul\u{0}",
            "del\u{7f}",
            "zero\u{200b}width",
            "",
            " ",
            "  ",
            "\u{3000}",
            " leading",
            "trailing ",
        ],
    ),
    (
        "number",
        &[
            "42",
            "0",
            "3.14",
            "-7",
            "+7.5",
            ".5",
            "5.",
            "1.2.3",
            "1,000",
            "1e5",
            "12a",
            "-",
            ".",
            "--1",
            "一",
            "１２",
            "12345678901234567890123456789012",
            "123456789012345678901234567890123",
            "1234567890123456.7890123456789012",
            "1234567890123456.78901234567890123",
            " 42",
            "42 ",
        ],
    ),
    (
        "letter",
        &[
            "abcXYZ",
            "abcdefghijklmnopqrstuvwxyzABCDEF",
            "abcdefghijklmnopqrstuvwxyzABCDEFG",
            "ＡＢＣ",
            "café",
            "cafe\u{301}",
            "Жук",
            "αβγ",
            "あいう",
            "abc1",
            "ab cd",
            "ab-cd",
            "中",
        ],
    ),
    (
        "symbol",
        &[
            "!@#",
            "+-*/%",
            "+-*/%^",
            "★",
            "，。",
            "😀",
            "😀😀😀😀😀",
            "😀😀😀😀😀😀",
            "¥",
            " ",
            "a",
            "1",
            "中",
            "\n",
            "·",
            "、",
        ],
    ),
    (
        "character_string",
        &[
            "ORDER-2019-0001",
            "abc_123!@#",
            "SBX2019100100001",
            "12345678901234567890123456789012",
            "123456789012345678901234567890123",
            "订单123",
            "ａｂｃ",
            "a b",
            "x\n",
            "😀abc",
            "〇",
        ],
    ),
    (
        "time",
        &[
            "15:01",
            "9:05",
            "15:01:59",
            "00:00",
            "23:59:59",
            "24:00",
            "24:00:00",
            "24:01",
            "25:00",
            "15:60",
            "15:01:60",
            "15:1",
            "1501",
            "15:01:",
            "2019年10月1日 15:01",
            "2019年10月1日15:01",
            "2019-10-01 15:01",
            "2019/10/01 15:01:02",
            "2019.10.01 15:01",
            "10月1日 15:01",
            "10-01 15:01",
            "15:01~16:01",
            "15:01 ~ 16:01",
            "15:01～16:01",
            "15:01-16:01",
            "15:01至16:01",
            "2019年10月1日 15:01 ~ 2019年10月1日 16:01",
            "2019年10月1日 15:01 ~ 16:01",
            "2019-10-01 15:01~2019-10-02 09:00",
            " 15:01 ",
            "15:01 ~",
            "15:01 ~ 16:01 ~ 17:01",
            "~ 16:01",
            "2019年10月1日",
            "2019-10-01",
            "2019-10-0115:01",
            "下午3点",
            "15:01\n",
            "１５:０１",
        ],
    ),
    (
        "date",
        &[
            "2019年10月1日",
            "2019年10月",
            "10月1日",
            "19年10月1日",
            "2018-01-01",
            "2018/01/01",
            "2018.01.01",
            "2018-01",
            "01-01",
            "1/1",
            "2018-1-1",
            "2018-01-01 15:01",
            "2018-01-01 15:01:02",
            "2019年10月1日15:01",
            "2019年10月1日 ~ 2019年10月7日",
            "2019年10月1日~10月7日",
            "2018-01-01 ~ 2018-01-31",
            "2018-01-01~2018-01-31",
            "2018-01-01-2018-01-31",
            "2019年10月1日 15:01 ~ 17:00",
            "2019年10月1日 15:01 ~ 2019年10月2日 17:00",
            "2018-13-01",
            "2018-00-01",
            "2018-01-32",
            "2018-01-00",
            "13-01",
            "2019年13月1日",
            "2019年10月32日",
            "10月",
            "2019年",
            "2019",
            "01-01-2018",
            "2018-01/01",
            "20180101",
            "2018-01-01T15:01",
            "2018-01-01 25:00",
            "15:01",
            "tomorrow",
            "2019年10月1日\n",
            " 2019年10月1日",
            "二〇一九年十月一日",
        ],
    ),
    (
        "amount",
        &[
            "¥100",
            "¥100.00",
            "¥100元",
            "¥100.00元",
            "100元",
            "100",
            "100.5",
            "￥100",
            "$9.99",
            "€5",
            "£5.5",
            "₩1000",
            "HK$20",
            "US$20.00",
            "¥ 100",
            "-¥5.00",
            "¥-5.00",
            "¥1,000.00",
            "¥1234567890",
            "¥1234567890.99",
            "¥12345678901",
            "¥",
            "元",
            "¥100.",
            "¥.5",
            "¥1.2.3",
            "¥¥100",
            "RMB100",
            "一百元",
            "100 元",
            "¥１００",
        ],
    ),
    (
        "phone_number",
        &[
            "+86-0766-66888866",
            "13800138000",
            "(0766) 6688 8866",
            "+86-0766-668888661",
            "+86-0766-6688886",
            "400-800-8888 ext",
            "电话",
            "１３８００１３８０００",
            "138 0013 8000",
            "+86 138-0013-8000#1",
        ],
    ),
    (
        "car_number",
        &[
            "粤A8Z888挂",
            "粤AD12345",
            "京A12345",
            "粤A·8Z888",
            "ab12",
            "粤A8Z8889挂",
            "粤粤8Z888",
            "粤A 8Z888",
            "·A8Z888",
            "粤A8Z-88",
            "粤Ａ12345",
            "粤a12345",
            "使12345",
        ],
    ),
    (
        "name",
        &[
            "王小二",
            "欧阳一二三四五六七八",
            "欧阳一二三四五六七八九",
            "John Smith",
            "Jean-Luc O'Neil",
            "abcdefghijklmnopqrst",
            "abcdefghijklmnopqrstu",
            "王Tom",
            "王Tomabcdefg",
            "艾力·买买提",
            "Agent 47",
            "José Müller",
            "😀",
            "Li 李",
        ],
    ),
    (
        "phrase",
        &[
            "王小二",
            "配送中",
            "一二三四五",
            "一二三四五六",
            "配送中!",
            "abc",
            "配送 中",
            "𠀀",
            "〇",
            "配送中。",
            "Wang Xiao Er",
        ],
    ),
];

/// Characters whose runs (1, 2, 4, 5, 6, 8, 9, ... characters) go through every type, so each
/// length limit is met and passed by every kind of character.
const RUN_CHARACTERS: &[&str] = &[
    "a", "Z", "7", "中", "𠀀", "😀", "é", "e\u{301}", "Ａ", "１", "!", "，", " ", "\u{3000}", "·",
    "¥", "Ж", "あ", "한", "\u{200b}", "\t",
];
const RUN_LENGTHS: &[usize] = &[1, 2, 4, 5, 6, 8, 9, 10, 11, 16, 17, 18, 20, 21, 32, 33];

/// Whether each side accepts `value` for `key`: (service, sandbox).
fn verdicts(key: &str, value: &str) -> (Result<(), String>, Result<(), String>) {
    (check_keyword_value(key, value), keywords::check(key, value))
}

#[test]
fn the_service_and_the_sandbox_agree_on_every_value() {
    let mut corpus: Vec<String> = WRITTEN
        .iter()
        .flat_map(|(_, values)| values.iter().map(|value| (*value).to_owned()))
        .collect();
    for character in RUN_CHARACTERS {
        for &length in RUN_LENGTHS {
            corpus.push(character.repeat(length));
        }
    }
    corpus.sort();
    corpus.dedup();

    let mut disagreements = Vec::new();
    let mut judged = 0;
    for &(keyword_type, key) in TYPES {
        for value in &corpus {
            judged += 1;
            match verdicts(key, value) {
                (Ok(()), Ok(())) | (Err(_), Err(_)) => {}
                (Ok(()), Err(sandbox)) => disagreements.push(format!(
                    "{keyword_type} {value:?}: the service accepts it, the sandbox refuses it \
                     ({sandbox})"
                )),
                (Err(service), Ok(())) => disagreements.push(format!(
                    "{keyword_type} {value:?}: the sandbox accepts it, the service refuses it \
                     ({service})"
                )),
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {judged} verdicts differ:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

#[test]
fn both_accept_wechats_own_examples() {
    let mut refused = Vec::new();
    for &(keyword_type, value) in WECHATS_EXAMPLES {
        let key = format!("{keyword_type}1");
        let (service, sandbox) = verdicts(&key, value);
        for (side, verdict) in [("service", service), ("sandbox", sandbox)] {
            if let Err(why) = verdict {
                refused.push(format!(
                    "{keyword_type} {value:?}: the {side} refuses it ({why})"
                ));
            }
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

#[test]
fn the_corpus_covers_every_type_both_ways() {
    // Each type has values both sides accept and values both refuse, so agreement is not
    // reached by accepting (or refusing) everything.
    for &(keyword_type, key) in TYPES {
        let written = WRITTEN
            .iter()
            .find(|(name, _)| *name == keyword_type)
            .map(|(_, values)| *values)
            .unwrap_or_else(|| panic!("no values written for {keyword_type}"));
        let accepted = written
            .iter()
            .any(|value| matches!(verdicts(key, value), (Ok(()), Ok(()))));
        let refused = written
            .iter()
            .any(|value| matches!(verdicts(key, value), (Err(_), Err(_))));
        assert!(
            accepted && refused,
            "{keyword_type}: accepted {accepted}, refused {refused}"
        );
    }
}
