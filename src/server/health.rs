//! `grpc.health.v1.Health` that lets go of its Watch streams when shutdown begins.
//!
//! tonic-health's Watch streams never end on their own, and a graceful shutdown waits for every
//! open stream: one client watching health (gRPC client-side health checking does) would hold
//! the process for the whole grace period. Here, once draining starts, each Watch stream sends
//! NOT_SERVING (unless that was its last word already) and ends, so only real work is waited for.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

type Updates = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// The health service answering from `reporter`, whose Watch streams end once `draining` is
/// cancelled.
pub(crate) fn draining_health(
    reporter: &HealthReporter,
    draining: CancellationToken,
) -> HealthServer<DrainingHealth> {
    HealthServer::new(DrainingHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        draining,
    })
}

/// See [`draining_health`].
pub(crate) struct DrainingHealth {
    inner: HealthService,
    draining: CancellationToken,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Updates;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates: Updates = Box::pin(self.inner.watch(request).await?.into_inner());
        Ok(Response::new(Box::pin(until_draining(
            updates,
            self.draining.clone(),
        ))))
    }
}

/// Forwards `updates` until `draining` is cancelled, then says NOT_SERVING (if it has not just
/// said so) and ends.
fn until_draining(
    updates: Updates,
    draining: CancellationToken,
) -> impl Stream<Item = Result<HealthCheckResponse, Status>> + Send {
    let not_serving = ServingStatus::NotServing as i32;
    futures::stream::unfold(
        (updates, draining, None::<i32>, false),
        move |(mut updates, draining, last_sent, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                // A status already queued (NOT_SERVING is set before draining starts) goes first.
                biased;
                update = updates.next() => {
                    let update = update?;
                    let last_sent = update.as_ref().ok().map(|sent| sent.status).or(last_sent);
                    Some((update, (updates, draining, last_sent, false)))
                }
                () = draining.cancelled() => {
                    if last_sent == Some(not_serving) {
                        return None;
                    }
                    let last_word = HealthCheckResponse { status: not_serving };
                    Some((Ok(last_word), (updates, draining, last_sent, true)))
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_streams_say_not_serving_and_end_when_draining() {
        let reporter = HealthReporter::new();
        reporter
            .set_service_status("svc", tonic_health::ServingStatus::Serving)
            .await;
        let draining = CancellationToken::new();
        let health = DrainingHealth {
            inner: HealthService::from_health_reporter(reporter.clone()),
            draining: draining.clone(),
        };
        let request = || {
            Request::new(HealthCheckRequest {
                service: "svc".into(),
            })
        };
        let mut first = health.watch(request()).await.unwrap().into_inner();
        let mut second = health.watch(request()).await.unwrap().into_inner();
        let serving = ServingStatus::Serving as i32;
        let not_serving = ServingStatus::NotServing as i32;
        assert_eq!(first.next().await.unwrap().unwrap().status, serving);
        assert_eq!(second.next().await.unwrap().unwrap().status, serving);

        // The shutdown order: NOT_SERVING, then draining.
        reporter
            .set_service_status("svc", tonic_health::ServingStatus::NotServing)
            .await;
        assert_eq!(first.next().await.unwrap().unwrap().status, not_serving);
        draining.cancel();
        assert!(first.next().await.is_none(), "ends after its NOT_SERVING");
        // A stream that had not yet been polled for the change still says it once, then ends.
        assert_eq!(second.next().await.unwrap().unwrap().status, not_serving);
        assert!(second.next().await.is_none());
        // Check keeps answering.
        let checked = health.check(request()).await.unwrap().into_inner();
        assert_eq!(checked.status, not_serving);
    }
}
