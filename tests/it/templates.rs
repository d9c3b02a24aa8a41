//! Template-aware validation end to end: the server learns each app's templates from the
//! sandbox's `gettemplate` and refuses data that cannot match before anything is sent.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::common::*;
use tonic::Code;
use wechat_notify::pb;
use wechat_notify_sandbox::{Fault, SandboxConfig, Template, TemplateKind};

const ORDER_STATUS: &str = "sandbox-order-status";

fn order_status(status_value: &str) -> pb::SendSubscribeRequest {
    pb::SendSubscribeRequest {
        touser: OPENID.to_owned(),
        template_id: ORDER_STATUS.to_owned(),
        data: BTreeMap::from([
            (
                "character_string1".to_owned(),
                "SBX2019100100001".to_owned(),
            ),
            ("enum_string2".to_owned(), status_value.to_owned()),
            ("thing3".to_owned(), "请注意查收".to_owned()),
        ]),
        ..Default::default()
    }
}

async fn refused(harness: &mut Harness, request: pb::SendSubscribeRequest) -> tonic::Status {
    let status = harness.client.send_subscribe(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(errcode(&status), None, "refused locally, not by wechat");
    status
}

#[tokio::test]
async fn data_that_cannot_match_its_template_is_refused_without_a_send() {
    let mut harness = Harness::start().await;

    let mut missing = course_request(OPENID);
    missing.data.remove("phrase4");
    let status = refused(&mut harness, missing).await;
    assert_eq!(
        violations(&status),
        [(
            "data.phrase4".to_owned(),
            "is required by template sandbox-course-reminder".to_owned()
        )]
    );

    let mut extra = course_request(OPENID);
    extra.data.insert("thing7".into(), "多余".into());
    let status = refused(&mut harness, extra).await;
    assert_eq!(
        violations(&status),
        [(
            "data.thing7".to_owned(),
            "is not a keyword of template sandbox-course-reminder (its keywords: phrase1, \
             date5, phrase4)"
                .to_owned()
        )]
    );

    let status = refused(&mut harness, order_status("丢失")).await;
    assert_eq!(
        violations(&status),
        [(
            "data.enum_string2".to_owned(),
            "must be one of the values template sandbox-order-status lists for it: 待发货, \
             已发货, 已签收"
                .to_owned()
        )]
    );

    let status = refused(
        &mut harness,
        pb::SendSubscribeRequest {
            template_id: "no-such-template".into(),
            ..course_request(OPENID)
        },
    )
    .await;
    assert_eq!(
        violations(&status),
        [(
            "template_id".to_owned(),
            "is not one of the app's templates".to_owned()
        )]
    );

    let stats = harness.sandbox().stats();
    assert_eq!(stats.send_requests, 0, "nothing reached wechat");

    // Messages that fit still go, enum values included.
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent");
    harness
        .client
        .send_subscribe(order_status("已签收"))
        .await
        .expect("sent");
    let stats = harness.sandbox().stats();
    assert_eq!(stats.send_requests, 2);
    assert_eq!(stats.delivered, 2);
    // The first send loaded the list; the unknown id reloaded it once (it might have just been
    // added); everything else was checked against the list in memory.
    assert_eq!(stats.template_requests, 2);
}

#[tokio::test]
async fn batch_recipients_are_checked_against_the_template() {
    let mut harness = Harness::start().await;
    let shared = BTreeMap::from([
        ("date5".to_owned(), "2019年10月1日 15:01".to_owned()),
        ("phrase4".to_owned(), "李老师".to_owned()),
    ]);
    let recipient = |index: usize, data: &[(&str, &str)]| pb::Recipient {
        touser: openid(index),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let response = harness
        .client
        .batch_send(pb::BatchSendRequest {
            template_id: COURSE_REMINDER.into(),
            data: shared.clone(),
            recipients: vec![
                recipient(0, &[("phrase1", "王小二")]),
                recipient(1, &[]),
                recipient(2, &[("phrase1", "李小三"), ("thing9", "多余")]),
                recipient(3, &[("phrase1", "张三")]),
            ],
            ..Default::default()
        })
        .await
        .expect("answered")
        .into_inner();
    let outcomes: Vec<_> = response
        .results
        .iter()
        .map(|r| (r.code, r.message.clone()))
        .collect();
    assert_eq!(outcomes[0].0, 0);
    assert_eq!(outcomes[1].0, Code::InvalidArgument as i32);
    assert!(
        outcomes[1]
            .1
            .contains("recipients[1].data.phrase1: is required by template"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2].0, Code::InvalidArgument as i32);
    assert!(
        outcomes[2]
            .1
            .contains("recipients[2].data.thing9: is not a keyword of template"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3].0, 0);
    assert_eq!(harness.sandbox().stats().send_requests, 2);

    // Shared data that does not fit, or a template the app lacks: the whole call is malformed.
    let mut bad_shared = shared.clone();
    bad_shared.insert("thing9".into(), "多余".into());
    for (template_id, data, field) in [
        (COURSE_REMINDER, bad_shared, "data.thing9"),
        ("no-such-template", shared, "template_id"),
    ] {
        let status = harness
            .client
            .batch_send(pb::BatchSendRequest {
                template_id: template_id.into(),
                data,
                recipients: vec![recipient(5, &[("phrase1", "王小二")])],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), [field]);
    }
    assert_eq!(harness.sandbox().stats().send_requests, 2);
}

#[tokio::test]
async fn a_template_added_in_the_console_is_picked_up_by_its_first_send() {
    let mut harness = Harness::start().await;
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent; the list is loaded");
    assert_eq!(harness.sandbox().stats().template_requests, 1);

    harness
        .sandbox()
        .add_template(Template::new(
            "arrival-notice",
            "到货提醒",
            "商品:{{thing1.DATA}}\n到货时间:{{date2.DATA}}\n",
            TemplateKind::OneTime,
        ))
        .unwrap();
    let arrival = |data: &[(&str, &str)]| pb::SendSubscribeRequest {
        touser: OPENID.into(),
        template_id: "arrival-notice".into(),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    harness
        .client
        .send_subscribe(arrival(&[("thing1", "牛奶"), ("date2", "2019年10月1日")]))
        .await
        .expect("the missing id reloaded the list");
    assert_eq!(harness.sandbox().stats().template_requests, 2);
    // And it is checked like any other from then on.
    let status = refused(&mut harness, arrival(&[("thing1", "牛奶")])).await;
    assert_eq!(bad_fields(&status), ["data.date2"]);
    assert_eq!(harness.sandbox().stats().template_requests, 2);
    assert_eq!(harness.sandbox().stats().send_requests, 2);
}

#[tokio::test]
async fn without_a_template_list_sends_go_unchecked() {
    // An app name of this test's own: the metrics recorder is shared by the whole test binary.
    let mut harness = Harness::start_with(SandboxConfig::default(), |config| {
        config.apps[0].name = "unlisted".to_owned();
    })
    .await;
    // The account lacks the template API: every gettemplate answers 48001.
    harness
        .sandbox()
        .inject(Fault::errcode(48001).on_templates_endpoint());
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent unchecked");
    // Unchecked: a key the template lacks reaches wechat, which answers 47003.
    let mut extra = course_request(OPENID);
    extra.data.insert("thing7".into(), "多余".into());
    let status = harness.client.send_subscribe(extra).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(errcode(&status), Some(47003));
    let stats = harness.sandbox().stats();
    assert_eq!(stats.send_requests, 2);
    assert_eq!(
        stats.template_requests, 1,
        "a failed list is retried later, not per send"
    );
    // Operators see it: the failed list request and WeChat's errcode for it.
    let metrics = reqwest::get(format!("http://{}/metrics", harness.server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"wechat_notify_template_fetches_total{app="unlisted",result="rejected"} 1"#,
        r#"wechat_notify_wechat_errors_total{app="unlisted",endpoint="templates",errcode="48001"} 1"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("# HELP wechat_notify_template_fetches_total"));
}

#[tokio::test]
async fn a_slow_template_list_holds_a_send_back_for_two_seconds_at_most() {
    let mut harness = Harness::start().await;
    harness.sandbox().inject(
        Fault::errcode(-1)
            .with_latency(Duration::from_secs(10))
            .on_templates_endpoint(),
    );
    let started = Instant::now();
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent unchecked");
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(harness.sandbox().stats().delivered, 1);
}

#[tokio::test]
async fn with_template_checks_off_no_template_list_is_asked_for() {
    let sandbox_config = SandboxConfig::default();
    let mut harness = Harness::start_with(sandbox_config, |config| {
        config.template_checks = false;
    })
    .await;
    harness
        .client
        .send_subscribe(course_request(OPENID))
        .await
        .expect("sent");
    let mut extra = course_request(OPENID);
    extra.data.insert("thing7".into(), "多余".into());
    let status = harness.client.send_subscribe(extra).await.unwrap_err();
    assert_eq!(errcode(&status), Some(47003), "left to wechat");
    let batch = harness
        .client
        .batch_send(pb::BatchSendRequest {
            template_id: "no-such-template".into(),
            data: course_data(),
            recipients: vec![pb::Recipient {
                touser: openid(1),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(batch.results[0].wechat_errcode, 40037);
    assert_eq!(harness.sandbox().stats().template_requests, 0);
}
