//! The reference point the service is compared with: a bare tonic SendSubscribe handler that
//! posts each message to the upstream with one shared reqwest client and nothing else (no
//! validation, token cache, limiter, idempotency, metrics, spans or log lines). Same allocator,
//! same release profile, same TCP_NODELAY, so the difference with `serve` is what the service
//! adds.

use std::{collections::BTreeMap, future::Future, net::SocketAddr};

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

use crate::pb::{self, notify_service_server::NotifyService};
use crate::upstream::BENCH_TOKEN;

/// The body of WeChat's send call, as the service writes it for a message with no page, state
/// or lang: `data` values wrapped as `{"value": ...}`.
#[derive(Serialize)]
struct SubscribeMessage {
    touser: String,
    template_id: String,
    data: BTreeMap<String, Value>,
}

#[derive(Serialize)]
struct Value {
    value: String,
}

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

    /// The tonic service, ready to add to a server.
    pub fn into_server(self) -> pb::notify_service_server::NotifyServiceServer<Self> {
        pb::notify_service_server::NotifyServiceServer::new(self)
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
            data: request
                .data
                .into_iter()
                .map(|(key, value)| (key, Value { value }))
                .collect(),
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
        .add_service(forwarder.into_server())
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|error| error.to_string())
}
