//! The `[[callers]]` tables, `trust_forwarded_client_cert`, `NOTIFY_REQUIRE_CALLERS` and the
//! TLS settings.

use super::*;
use crate::config::{Rpc, TokenDigest};

const APP: &str = "[[apps]]\nname = \"shop\"\nappid = \"wx-shop\"\nsecret = \"shop-secret\"\n";
const TOKEN: &str = "shop-bearer-token-0123456789";

#[test]
fn callers_are_read_with_every_key() {
    let digest: String = TokenDigest::of(TOKEN.as_bytes())
        .0
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let dir = ConfigDir::new(&format!(
        r#"trust_forwarded_client_cert = true
        {APP}
        [[callers]]
        name = "orders"
        token_sha256 = "{digest}"
        apps = ["shop"]
        templates = ["t1", "t2"]
        rpcs = ["send"]
        rate_per_sec = 5
        max_batch = 10

        [[callers]]
        name = "crm"
        token_env = "CRM_TOKEN"
        tls_subject = "crm"
        tls_san = ["spiffe://cluster/ns/crm/sa/crm", "crm.crm.svc"]
        apps = "wx-shop"

        [[callers]]
        name = "filed"
        token_file = "filed.token"
        apps = ["shop"]
        "#
    ));
    std::fs::write(dir.path().join("filed.token"), "filed-token-0123456789\n").unwrap();
    let env = |name: &str| (name == "CRM_TOKEN").then(|| "crm-token-0123456789ab".to_owned());
    let config = dir.load(&[], env).expect("valid");
    let callers = &config.callers;
    assert!(callers.trust_forwarded_client_cert);
    let [orders, crm, filed] = callers.callers.as_slice() else {
        panic!("three callers expected: {callers:?}");
    };
    assert_eq!(orders.token, Some(TokenDigest::of(TOKEN.as_bytes())));
    assert_eq!(
        orders.templates.as_deref(),
        Some(&["t1".to_owned(), "t2".to_owned()][..])
    );
    assert_eq!(orders.rpcs, vec![Rpc::Send]);
    assert_eq!((orders.rate_per_sec, orders.max_batch), (Some(5), Some(10)));
    assert_eq!(crm.token, Some(TokenDigest::of(b"crm-token-0123456789ab")));
    assert_eq!(crm.tls_subjects, vec!["crm"]);
    assert_eq!(crm.tls_sans.len(), 2);
    assert_eq!(crm.apps, vec!["wx-shop"]);
    assert_eq!(crm.rpcs, vec![Rpc::Send, Rpc::Batch, Rpc::Subscriptions]);
    assert_eq!(
        filed.token,
        Some(TokenDigest::of(b"filed-token-0123456789"))
    );
    // Debug shows no token or digest.
    let debug = format!("{config:?}");
    assert!(
        !debug.contains(&digest) && !debug.contains("crm-token"),
        "{debug}"
    );
}

#[test]
fn caller_errors_name_the_key() {
    let cases = [
        (
            "[[callers]]\nname = \"a\"\ntoken_sha256 = \"00\"\napps = [\"shop\"]\ntemplate = [\"t\"]\n",
            "callers[0].template: unknown key; expected one of name, token_sha256, token_env, \
             token_file, tls_subject, tls_san, apps, templates, rpcs, rate_per_sec, max_batch",
        ),
        (
            "[[callers]]\ntls_subject = \"a\"\napps = [\"shop\"]\n",
            "callers[0].name: required",
        ),
        (
            "[[callers]]\nname = \"a\"\napps = [\"shop\"]\n",
            "callers[0].name: this caller cannot identify itself: set one of token_sha256, \
             token_env, token_file, tls_subject or tls_san",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\n",
            "callers[0].apps: required: the apps (names or appids) this caller may use",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"blog\"]\n",
            "callers[0].apps: `blog` is not the name or appid of an app in this file",
        ),
        (
            "[[callers]]\nname = \"a\"\ntoken_sha256 = \"xyz\"\napps = [\"shop\"]\n",
            "callers[0].token_sha256: must be 64 hex digits, the SHA-256 of the token \
             (printf %s \"$TOKEN\" | sha256sum)",
        ),
        (
            "[[callers]]\nname = \"a\"\ntoken_env = \"NOPE\"\napps = [\"shop\"]\n",
            "callers[0].token_env: environment variable NOPE is not set",
        ),
        (
            "[[callers]]\nname = \"a\"\ntoken_env = \"SHORT\"\napps = [\"shop\"]\n",
            "callers[0].token_env: environment variable SHORT: the token is shorter than 16 bytes",
        ),
        (
            "[[callers]]\nname = \"a\"\ntoken_env = \"SHORT\"\ntoken_file = \"t\"\napps = [\"shop\"]\n",
            "callers[0].token_file: token_env and token_file exclude each other; set one",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"shop\"]\nrpcs = [\"push\"]\n",
            "callers[0].rpcs: `push` is not an RPC group; expected one of send, batch, subscriptions",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"shop\"]\nmax_batch = 0\n",
            "callers[0].max_batch: must be from 1 to 100000, got 0",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"shop\"]\ntemplates = []\n",
            "callers[0].templates: an empty list allows nothing; leave the key out to allow \
             every template",
        ),
        (
            "[[callers]]\nname = \"anonymous\"\ntls_subject = \"a\"\napps = [\"shop\"]\n",
            "callers[0].name: `anonymous` is what metrics call unidentified calls; choose another \
             name",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"shop\"]\n\
             [[callers]]\nname = \"a\"\ntls_subject = \"b\"\napps = [\"shop\"]\n",
            "callers[1].name: `a` names another caller too; each caller needs its own name",
        ),
        (
            "[[callers]]\nname = \"a\"\ntls_san = \"x\"\napps = [\"shop\"]\n\
             [[callers]]\nname = \"b\"\ntls_san = \"x\"\napps = [\"shop\"]\n",
            "callers[1].tls_san: `x` identifies callers[0] too",
        ),
    ];
    let env = |name: &str| (name == "SHORT").then(|| "short".to_owned());
    for (toml, expected) in cases {
        let dir = ConfigDir::new(&format!("{APP}{toml}"));
        assert_eq!(dir.error(env), expected, "for:\n{toml}");
    }
    // A top-level key goes before the first table (after it, TOML puts it in that table).
    let dir = ConfigDir::new(&format!("trust_forwarded_client_cert = \"yes\"\n{APP}"));
    assert_eq!(
        dir.error(no_env),
        "trust_forwarded_client_cert: must be true or false, got string"
    );
}

#[test]
fn a_token_never_shows_in_an_error() {
    let dir = ConfigDir::new(&format!(
        "{APP}[[callers]]\nname = \"a\"\ntoken_env = \"SPACED\"\napps = [\"shop\"]\n"
    ));
    let message = dir.error(|_| Some("secret token with spaces".to_owned()));
    assert!(!message.contains("secret token"), "{message}");
    assert!(message.contains("whitespace"), "{message}");
}

#[test]
fn the_sandbox_takes_a_file_of_callers_only() {
    let callers = "[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"sandbox\"]\n";
    let dir = ConfigDir::new(callers);
    let config = dir.load(&["--sandbox"], no_env).expect("valid");
    let names: Vec<&str> = config.apps.iter().map(|app| app.name.as_str()).collect();
    assert_eq!(names, ["sandbox"], "the sandbox's app only");
    assert_eq!(config.callers.callers.len(), 1);

    let dir = ConfigDir::new(&format!("{APP}{callers}"));
    let message = dir.load(&["--sandbox"], no_env).unwrap_err().to_string();
    assert!(
        message.ends_with(
            "apps: the sandbox configures its own apps; with NOTIFY_SANDBOX \
        (--sandbox) the file may hold only callers and [redis]"
        ),
        "{message}"
    );
}

#[test]
fn require_callers_refuses_an_open_service() {
    let message = error(&with_one_app(&["--require-callers"]));
    assert!(
        message.starts_with("--require-callers: no caller is configured"),
        "{message}"
    );
    let dir = ConfigDir::new(&format!(
        "{APP}[[callers]]\nname = \"a\"\ntls_subject = \"a\"\napps = [\"shop\"]\n"
    ));
    let config = dir.load(&["--require-callers"], no_env).expect("valid");
    assert!(config.callers.require_callers);
}

#[test]
fn tls_settings_come_in_pairs_and_must_load() {
    let message = error(&with_one_app(&["--tls-cert", "cert.pem"]));
    assert_eq!(
        message,
        "NOTIFY_TLS_KEY (--tls-key): not set, but NOTIFY_TLS_CERT (--tls-cert) is"
    );
    let message = error(&with_one_app(&["--tls-key", "key.pem"]));
    assert_eq!(
        message,
        "NOTIFY_TLS_CERT (--tls-cert): not set, but NOTIFY_TLS_KEY (--tls-key) is"
    );
    let message = error(&with_one_app(&["--tls-client-ca", "ca.pem"]));
    assert!(
        message.starts_with("--tls-client-ca: needs TLS"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let config = config(&with_one_app(&[
        "--tls-cert",
        cert_arg,
        "--tls-key",
        key_arg,
    ]))
    .unwrap();
    assert_eq!(config.tls.unwrap().cert, cert_path);

    // A key that is not PEM is named, and not quoted.
    std::fs::write(&key_path, "not-a-key-but-secret-looking").unwrap();
    let message = error(&with_one_app(&[
        "--tls-cert",
        cert_arg,
        "--tls-key",
        key_arg,
    ]));
    assert!(
        message.starts_with("--tls-key: not a PEM private key"),
        "{message}"
    );
    assert!(!message.contains("secret-looking"), "{message}");
    // The certificate file holding the key instead.
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let message = error(&with_one_app(&[
        "--tls-cert",
        key_arg,
        "--tls-key",
        key_arg,
    ]));
    assert!(
        message.starts_with("--tls-cert: holds no CERTIFICATE block"),
        "{message}"
    );
}
