use super::*;
use crate::config::{CallerConfig, CallersConfig, Rpc, TokenDigest};

const SHOP_TOKEN: &str = "shop-token-0123456789abcdef";
const CRM_TOKEN: &str = "crm-token-0123456789abcdef";

fn caller(name: &str) -> CallerConfig {
    CallerConfig {
        name: name.to_owned(),
        token: None,
        tls_subjects: Vec::new(),
        tls_sans: Vec::new(),
        apps: vec!["demo".to_owned()],
        templates: None,
        rpcs: vec![Rpc::Send, Rpc::Batch, Rpc::Subscriptions],
        rate_per_sec: None,
        max_batch: None,
    }
}

fn callers(trust_forwarded_client_cert: bool) -> Callers {
    let config = CallersConfig {
        callers: vec![
            CallerConfig {
                token: Some(TokenDigest::of(SHOP_TOKEN.as_bytes())),
                tls_subjects: vec!["shop".to_owned()],
                ..caller("shop")
            },
            CallerConfig {
                token: Some(TokenDigest::of(CRM_TOKEN.as_bytes())),
                tls_sans: vec!["spiffe://cluster/ns/crm/sa/crm".to_owned()],
                apps: vec!["wxsecond".to_owned()],
                templates: Some(vec!["t1".to_owned()]),
                rpcs: vec![Rpc::Send],
                rate_per_sec: Some(2),
                max_batch: Some(3),
                ..caller("crm")
            },
        ],
        trust_forwarded_client_cert,
        require_callers: false,
    };
    Callers::new(
        &config,
        &[
            ("demo".to_owned(), "wxdemo".to_owned()),
            ("second".to_owned(), "wxsecond".to_owned()),
        ],
    )
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

#[test]
fn a_bearer_token_names_its_caller_and_nothing_else_does() {
    let callers = callers(false);
    let shop = callers
        .identify(Some(&bearer(SHOP_TOKEN)), None, None)
        .unwrap();
    assert_eq!(&*shop.name, "shop");
    let crm = callers
        .identify(Some(b"bearer crm-token-0123456789abcdef"), None, None)
        .unwrap();
    assert_eq!(&*crm.name, "crm");
    for wrong in [
        bearer("shop-token-0123456789abcdeX"),
        bearer(""),
        b"Basic c2hvcDpzaG9w".to_vec(),
        SHOP_TOKEN.as_bytes().to_vec(),
    ] {
        assert!(matches!(
            callers.identify(Some(&wrong), None, None),
            Err(Refusal::Unauthenticated(_))
        ));
    }
    assert!(matches!(
        callers.identify(None, None, None),
        Err(Refusal::Unauthenticated(_))
    ));
}

#[test]
fn certificate_names_identify_by_subject_or_san() {
    let callers = callers(false);
    let by_cn = PeerCertificate {
        common_names: vec!["shop".to_owned()],
        sans: vec!["shop.example".to_owned()],
    };
    assert_eq!(
        &*callers.identify(None, Some(&by_cn), None).unwrap().name,
        "shop"
    );
    let by_san = PeerCertificate {
        common_names: vec!["whatever".to_owned()],
        sans: vec!["spiffe://cluster/ns/crm/sa/crm".to_owned()],
    };
    assert_eq!(
        &*callers.identify(None, Some(&by_san), None).unwrap().name,
        "crm"
    );
    let stranger = PeerCertificate {
        common_names: vec!["stranger".to_owned()],
        sans: Vec::new(),
    };
    assert!(callers.identify(None, Some(&stranger), None).is_err());
    // A token and a certificate of two different callers: no guessing.
    assert!(
        callers
            .identify(Some(&bearer(CRM_TOKEN)), Some(&by_cn), None)
            .is_err()
    );
    // A token that names nobody beside a certificate that names a caller: not ours (an end
    // user's JWT a mesh passes along); the certificate decides.
    assert_eq!(
        &*callers
            .identify(
                Some(b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
                Some(&by_cn),
                None
            )
            .unwrap()
            .name,
        "shop"
    );
    // Both of one caller: fine.
    assert!(
        callers
            .identify(Some(&bearer(SHOP_TOKEN)), Some(&by_cn), None)
            .is_ok()
    );
}

#[test]
fn the_forwarded_certificate_counts_only_when_trusted() {
    let header = "By=spiffe://cluster/ns/notify/sa/notify;Hash=abcd;Subject=\"CN=nobody\";URI=spiffe://cluster/ns/crm/sa/crm";
    assert!(callers(false).identify(None, None, Some(header)).is_err());
    let trusted = callers(true);
    assert_eq!(
        &*trusted.identify(None, None, Some(header)).unwrap().name,
        "crm"
    );
    let by_subject = "Hash=abcd;Subject=\"CN=shop,O=Example\"";
    assert_eq!(
        &*trusted.identify(None, None, Some(by_subject)).unwrap().name,
        "shop"
    );
    assert!(
        trusted
            .identify(None, None, Some("Subject=\"CN=shop"))
            .is_err()
    );
}

fn ask<'a>(app: Option<&'a str>, template_id: &'a str, messages: usize, batch: bool) -> Ask<'a> {
    Ask {
        app,
        requested_app: app.unwrap_or("nope"),
        template_id: Some(template_id),
        messages,
        batch,
    }
}

#[test]
fn permissions_refuse_what_the_caller_lacks_and_nothing_more() {
    let callers = callers(false);
    let crm = callers
        .identify(Some(&bearer(CRM_TOKEN)), None, None)
        .unwrap();
    assert!(crm.check_rpc(Rpc::Send).is_ok());
    let lacks = |refusal: Refusal| match refusal {
        Refusal::NotAllowed { caller, lacks } => {
            assert_eq!(&*caller, "crm");
            lacks
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(lacks(crm.check_rpc(Rpc::Batch).unwrap_err()), "rpc batch");
    // Allowed by appid, asked by name (the resolved name) works.
    assert!(crm.check(ask(Some("second"), "t1", 1, false)).is_ok());
    assert_eq!(
        lacks(crm.check(ask(Some("demo"), "t1", 1, false)).unwrap_err()),
        "app `demo`"
    );
    // An app that does not exist is refused the same way, not NOT_FOUND.
    assert_eq!(
        lacks(crm.check(ask(None, "t1", 1, false)).unwrap_err()),
        "app `nope`"
    );
    assert_eq!(
        lacks(crm.check(ask(Some("second"), "t2", 1, false)).unwrap_err()),
        "template `t2`"
    );
    assert!(
        lacks(crm.check(ask(Some("second"), "t1", 4, true)).unwrap_err())
            .contains("max_batch is 3")
    );
    // Rate 2 per second: the one above and one more pass, the next is refused with a delay.
    assert!(crm.check(ask(Some("second"), "t1", 1, false)).is_ok());
    match crm.check(ask(Some("second"), "t1", 1, false)) {
        Err(Refusal::RateLimited {
            retry_after: Some(_),
            ..
        }) => {}
        other => panic!("expected the rate to refuse, got {other:?}"),
    }
    // A batch larger than a second's worth can never pass.
    let shop = callers
        .identify(Some(&bearer(SHOP_TOKEN)), None, None)
        .unwrap();
    assert!(shop.check(ask(Some("demo"), "any", 1_000, true)).is_ok());
}

#[test]
fn rpcs_are_grouped_by_path() {
    assert_eq!(
        rpc_of("/notify.v1.NotifyService/SendSubscribe"),
        Some(Rpc::Send)
    );
    assert_eq!(
        rpc_of("/notify.v1.NotifyService/BatchSend"),
        Some(Rpc::Batch)
    );
    assert_eq!(
        rpc_of("/notify.v1.SubscriptionService/WatchEvents"),
        Some(Rpc::Subscriptions)
    );
    assert_eq!(rpc_of("/notify.v1.NotifyService/Other"), None);
    assert_eq!(rpc_of("/grpc.health.v1.Health/Check"), None);
}
