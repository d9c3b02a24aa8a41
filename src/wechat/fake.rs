//! A fake WeChat for the client's and the service's unit tests: a local HTTP server answering
//! every request from a closure (after an optional delay) and remembering what it saw, and a
//! base on which nothing listens.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{Method, StatusCode, Uri},
};
use serde_json::Value;
use url::Url;

use super::{Endpoint, WechatError};

/// WeChat's answer `errcode` on `endpoint`, as the client returns it (errmsg `errmsg N rid:
/// 1-2-3`, rid `1-2-3`).
pub fn answered(endpoint: Endpoint, errcode: i32) -> WechatError {
    WechatError::Api {
        endpoint,
        errcode,
        errmsg: format!("errmsg {errcode} rid: 1-2-3"),
        rid: Some("1-2-3".into()),
    }
}

/// One request the responder saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn query_pairs(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }
}

type Reply = Arc<dyn Fn(&Seen) -> (StatusCode, String) + Send + Sync>;

#[derive(Clone)]
struct Responder {
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Reply,
    delay: Duration,
}

/// A local HTTP server answering every request with `reply` after `delay`.
pub struct Fake {
    pub base: Url,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub async fn start(
        delay: Duration,
        reply: impl Fn(&Seen) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Fake {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Responder {
            seen: seen.clone(),
            reply: Arc::new(reply),
            delay,
        };
        let router = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Fake { base, seen }
    }

    pub async fn json(body: Value) -> Fake {
        let body = body.to_string();
        Fake::start(Duration::ZERO, move |_| (StatusCode::OK, body.clone())).await
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(state): State<Responder>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> (StatusCode, String) {
    let seen = Seen {
        method,
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        body: body.to_vec(),
    };
    state.seen.lock().unwrap().push(seen.clone());
    tokio::time::sleep(state.delay).await;
    (state.reply)(&seen)
}

/// A base URL on which nothing listens, so connections to it are refused: its port is bound
/// (never listened on) and held until the test process ends, so no other socket can take it.
pub async fn closed_base() -> Url {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    HELD.lock().unwrap().push(socket);
    Url::parse(&format!("http://{addr}")).unwrap()
}
