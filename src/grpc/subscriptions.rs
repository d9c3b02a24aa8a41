//! `notify.v1.SubscriptionService` over tonic: translates protobuf to the service's calls and
//! back. No business rules here; `crate::status` picks the status codes.

use std::{pin::Pin, sync::Arc, time::SystemTime};

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    callers::{Ask, Grant},
    pb::{self, subscription_service_server::SubscriptionService},
    service::{Notifier, SendError},
    status::{refusal_status, status_of},
    subscriptions::{Kind, LedgerEvent, Source, Status as Granted, Subscription, WatchItem},
};

/// The gRPC face of the service's subscriptions.
#[derive(Clone)]
pub struct SubscriptionsGrpc {
    notifier: Arc<Notifier>,
    /// Cancelled when shutdown begins: WatchEvents streams end then, so they never hold the
    /// drain up until its grace period runs out.
    shutdown: CancellationToken,
}

impl SubscriptionsGrpc {
    /// Serves `notifier`'s ledger; watch streams end once `shutdown` is cancelled.
    pub fn new(notifier: Arc<Notifier>, shutdown: CancellationToken) -> Self {
        Self { notifier, shutdown }
    }

    /// Refuses the call unless its caller may use `app` (the `rpcs` permission was checked by
    /// the callers layer already). Open when no callers are configured.
    fn admit<T>(&self, request: &Request<T>, app: &str) -> Result<(), Status> {
        let grant = request
            .extensions()
            .get::<Grant>()
            .cloned()
            .unwrap_or(Grant::Open);
        let Some(caller) = grant.caller() else {
            return Ok(());
        };
        let ask = Ask {
            app: self.notifier.app_name(app),
            requested_app: app,
            template_id: None,
            messages: 0,
            batch: false,
        };
        caller.check(ask).map_err(|refusal| {
            tracing::info!(error = %refusal, "call refused");
            refusal_status(&refusal)
        })
    }

    /// The tonic service, ready to add to a router.
    pub fn into_server(self) -> pb::subscription_service_server::SubscriptionServiceServer<Self> {
        pb::subscription_service_server::SubscriptionServiceServer::new(self)
    }
}

fn failed(error: &SendError) -> Status {
    tracing::info!(error = %error, "subscription call failed");
    status_of(error)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl SubscriptionService for SubscriptionsGrpc {
    async fn record_subscriptions(
        &self,
        request: Request<pb::RecordSubscriptionsRequest>,
    ) -> Result<Response<pb::RecordSubscriptionsResponse>, Status> {
        self.admit(&request, &request.get_ref().app)?;
        let request = request.into_inner();
        let (_app, subscriptions) = self
            .notifier
            .record_subscriptions(&request.app, &request.openid, &request.results)
            .await
            .map_err(|error| failed(&error))?;
        Ok(Response::new(pb::RecordSubscriptionsResponse {
            subscriptions: subscriptions.iter().map(subscription).collect(),
        }))
    }

    async fn get_subscriptions(
        &self,
        request: Request<pb::GetSubscriptionsRequest>,
    ) -> Result<Response<pb::GetSubscriptionsResponse>, Status> {
        self.admit(&request, &request.get_ref().app)?;
        let request = request.into_inner();
        let known = self
            .notifier
            .get_subscriptions(&request.app, &request.openid, &request.template_ids)
            .await
            .map_err(|error| failed(&error))?;
        let subscriptions = if request.template_ids.is_empty() {
            known.iter().map(subscription).collect()
        } else {
            // Every id asked for is answered, those never heard of as UNKNOWN.
            let mut ids = request.template_ids.clone();
            ids.sort();
            ids.dedup();
            ids.into_iter()
                .map(
                    |id| match known.iter().find(|entry| entry.template_id == id) {
                        Some(entry) => subscription(entry),
                        None => pb::Subscription {
                            template_id: id,
                            status: pb::SubscriptionStatus::Unknown as i32,
                            ..Default::default()
                        },
                    },
                )
                .collect()
        };
        Ok(Response::new(pb::GetSubscriptionsResponse {
            subscriptions,
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.admit(&request, &request.get_ref().app)?;
        let request = request.into_inner();
        let (app, watcher) = self
            .notifier
            .watch_events(&request.app)
            .map_err(|error| failed(&error))?;
        let name = app.name.clone();
        let stream = futures::stream::unfold(watcher, move |mut watcher| {
            let name = name.clone();
            async move {
                let item = watcher.next().await?;
                Some((Ok(event(&name, &item)), watcher))
            }
        });
        Ok(Response::new(Box::pin(
            stream.take_until(self.shutdown.clone().cancelled_owned()),
        )))
    }
}

fn event(app: &str, item: &WatchItem) -> pb::Event {
    let event = match item {
        WatchItem::Lost(count) => pb::event::Event::Lost(pb::EventsLost { count: *count }),
        WatchItem::Event(event) => match &**event {
            LedgerEvent::Changed {
                openid,
                subscription: entry,
            } => pb::event::Event::SubscriptionChanged(pb::SubscriptionChanged {
                openid: openid.clone(),
                subscription: Some(subscription(entry)),
            }),
            LedgerEvent::Delivery {
                openid,
                template_id,
                msgid,
                errcode,
                status,
            } => pb::event::Event::DeliveryResult(pb::DeliveryResult {
                openid: openid.clone(),
                template_id: template_id.clone(),
                msgid: *msgid,
                errcode: *errcode,
                status: status.clone(),
            }),
        },
    };
    pb::Event {
        app: app.to_owned(),
        event: Some(event),
    }
}

fn subscription(entry: &Subscription) -> pb::Subscription {
    pb::Subscription {
        template_id: entry.template_id.clone(),
        kind: match entry.kind {
            Kind::Unspecified => pb::SubscriptionKind::Unspecified,
            Kind::OneTime => pb::SubscriptionKind::OneTime,
            Kind::LongTerm => pb::SubscriptionKind::LongTerm,
        } as i32,
        status: match entry.status {
            Granted::Unknown => pb::SubscriptionStatus::Unknown,
            Granted::Accepted => pb::SubscriptionStatus::Accepted,
            Granted::Rejected => pb::SubscriptionStatus::Rejected,
            Granted::Banned => pb::SubscriptionStatus::Banned,
            Granted::Filtered => pb::SubscriptionStatus::Filtered,
        } as i32,
        remaining: entry.remaining,
        updated_at: Some(timestamp(entry.updated_at)),
        source: match entry.source {
            Source::ClientReport => pb::SubscriptionSource::ClientReport,
            Source::PopupEvent => pb::SubscriptionSource::PopupEvent,
            Source::ChangeEvent => pb::SubscriptionSource::ChangeEvent,
            Source::SendOutcome => pb::SubscriptionSource::SendOutcome,
        } as i32,
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}
