//! The reference point the service is compared with: a bare tonic SendSubscribe handler that
//! posts each message to the upstream with one shared reqwest client and nothing else (no
//! validation, token cache, limiter, idempotency, metrics, spans or log lines). Same binary,
//! same allocator, same TCP_NODELAY, so the difference with `serve` is what the service adds.

use std::{future::Future, net::SocketAddr};

use serde::Deserialize;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use super::upstream::BENCH_TOKEN;
use crate::{
    pb::{self, notify_service_server::NotifyService},
    wechat::{MiniprogramState, SubscribeMessage},
};

/// The bare forwarder.
#[derive(Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    send_url: reqwest::Url,
}

#[derive(Deserialize)]
struct Answer {
    errcode: i64,
    #[serde(default)]
    msgid: u64,
}

impl Forwarder {
    /// Forwards to the send endpoint under `upstream` (the fixed-answer token in the query).
    pub fn new(upstream: &reqwest::Url) -> Result<Self, String> {
        let mut send_url = upstream
            .join("cgi-bin/message/subscribe/send")
            .map_err(|error| format!("--upstream {upstream}: {error}"))?;
        send_url
            .query_pairs_mut()
            .append_pair("access_token", BENCH_TOKEN);
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|error| format!("cannot build the http client: {error}"))?;
        Ok(Self { http, send_url })
    }
}

#[tonic::async_trait]
impl NotifyService for Forwarder {
    async fn send_subscribe(
        &self,
        request: Request<pb::SendSubscribeRequest>,
    ) -> Result<Response<pb::SendSubscribeResponse>, Status> {
        let request = request.into_inner();
        let message = SubscribeMessage {
            touser: request.touser,
            template_id: request.template_id,
            page: None,
            data: request.data.into_iter().collect(),
            miniprogram_state: MiniprogramState::Unspecified,
            lang: None,
        };
        let sent = self
            .http
            .post(self.send_url.clone())
            .json(&message)
            .send()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let body = sent
            .bytes()
            .await
            .map_err(|error| Status::unknown(error.to_string()))?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|error| Status::unknown(format!("bad answer: {error}")))?;
        if answer.errcode != 0 {
            return Err(Status::unknown(format!("errcode {}", answer.errcode)));
        }
        Ok(Response::new(pb::SendSubscribeResponse {
            msgid: answer.msgid,
            attempts: 1,
            deduplicated: false,
        }))
    }

    async fn batch_send(
        &self,
        _request: Request<pb::BatchSendRequest>,
    ) -> Result<Response<pb::BatchSendResponse>, Status> {
        Err(Status::unimplemented(
            "the bare forwarder only forwards SendSubscribe",
        ))
    }
}

/// Serves the forwarder on `listen` until `stop` resolves.
pub async fn serve_forwarder(
    listen: SocketAddr,
    upstream: &reqwest::Url,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let forwarder = Forwarder::new(upstream)?;
    let incoming = TcpIncoming::bind(listen)
        .map_err(|error| format!("cannot listen on {listen}: {error}"))?
        .with_nodelay(Some(true));
    eprintln!("bare forwarder listening on {listen}, forwarding to {upstream}");
    tonic::transport::Server::builder()
        .add_service(pb::notify_service_server::NotifyServiceServer::new(
            forwarder,
        ))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|error| error.to_string())
}
