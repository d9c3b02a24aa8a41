//! What meshes and operators rely on: health for both names, and reflection in both versions
//! (grpcurl 1.8 speaks only v1alpha).

use crate::common::*;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn channel(harness: &Harness) -> Channel {
    Channel::from_shared(format!("http://{}", harness.server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_answers_serving_for_the_server_and_the_service() {
    let harness = Harness::start().await;
    let mut health = HealthClient::new(channel(&harness).await);
    for service in ["", "notify.v1.NotifyService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Lists services through one reflection version.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new($channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection answers")
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|service| service.name)
                .collect::<Vec<_>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let harness = Harness::start().await;
    let v1 = list_services!(v1, channel(&harness).await);
    let v1alpha = list_services!(v1alpha, channel(&harness).await);
    for services in [&v1, &v1alpha] {
        assert!(
            services.contains(&"notify.v1.NotifyService".to_owned()),
            "{services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health".to_owned()),
            "{services:?}"
        );
    }
}
