//! Subscriptions in the service: the RPCs' decisions (RecordSubscriptions, GetSubscriptions,
//! WatchEvents), WeChat's pushes applied to the ledger, and the send gate: under `enforce` a
//! send the ledger knows cannot be delivered is refused before any call, and under `observe`
//! and `enforce` every send's outcome is recorded.

use std::sync::Arc;

use super::{AppSender, ErrorKind, Notifier, SendError, check::Violations};
use crate::{
    push::{EventKind, PushEvent},
    store::{Rider, RiderAnswer},
    subscriptions::{
        Answer, Kind, Ledger, LedgerError, LedgerEvent, Source, Subscription, SubscriptionCheck,
        Update, Verdict, Watcher, verdict,
    },
    telemetry::catalog::{self, LedgerLookup, PushEventKind},
    wechat::{ErrorClass, TemplateKind},
};

/// Templates in one RecordSubscriptions at most.
pub const MAX_REPORTED_TEMPLATES: usize = 32;
/// Template ids in one GetSubscriptions at most.
pub const MAX_QUERIED_TEMPLATES: usize = 100;
/// `wx.requestSubscribeMessage` puts this key beside the template ids; it is not one.
const ERRMSG_KEY: &str = "errMsg";

impl Notifier {
    fn ledger(&self) -> Result<&Arc<dyn Ledger>, SendError> {
        self.ledger.as_ref().ok_or_else(|| {
            SendError::new(
                ErrorKind::LedgerUnavailable("no subscription ledger is configured".into()),
                0,
            )
        })
    }

    /// Records one `wx.requestSubscribeMessage` result; answers the touched entries.
    pub async fn record_subscriptions(
        &self,
        app: &str,
        openid: &str,
        results: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Arc<AppSender>, Vec<Subscription>), SendError> {
        let app = self.resolve(app)?;
        let mut violations = Violations::default();
        violations.required_id("openid", openid);
        let results: Vec<(&String, &String)> = results
            .iter()
            .filter(|(template_id, _)| template_id.as_str() != ERRMSG_KEY)
            .collect();
        if results.is_empty() {
            violations.push("results", "is required: at least one template id");
        } else if results.len() > MAX_REPORTED_TEMPLATES {
            violations.push(
                "results",
                format!(
                    "has {} templates, at most {MAX_REPORTED_TEMPLATES} allowed",
                    results.len()
                ),
            );
        }
        let mut updates = Vec::with_capacity(results.len());
        for (template_id, value) in results.iter().take(MAX_REPORTED_TEMPLATES) {
            violations.required_id(format!("results[{template_id:?}]"), template_id);
            match Answer::parse(value) {
                Some(answer) => updates.push(Update::Answered {
                    template_id: (*template_id).clone(),
                    answer,
                    kind: kind_of(&app, template_id),
                    source: Source::ClientReport,
                }),
                None => violations.push(
                    format!("results[{template_id:?}]"),
                    format!(
                        "is {:?}; expected accept (or any accept*), reject, ban or filter",
                        value.chars().take(32).collect::<String>()
                    ),
                ),
            }
        }
        if !violations.is_empty() {
            return Err(SendError::invalid(violations.into_vec()));
        }
        let ledger = self.ledger()?;
        let subscriptions = ledger
            .apply(&app.appid, openid, updates)
            .await
            .map_err(|error| SendError::new(ErrorKind::LedgerUnavailable(error.0), 0))?;
        Ok((app, subscriptions))
    }

    /// What the ledger knows about `openid` for `template_ids` (all when empty).
    pub async fn get_subscriptions(
        &self,
        app: &str,
        openid: &str,
        template_ids: &[String],
    ) -> Result<Vec<Subscription>, SendError> {
        let app = self.resolve(app)?;
        let mut violations = Violations::default();
        violations.required_id("openid", openid);
        if template_ids.len() > MAX_QUERIED_TEMPLATES {
            violations.push(
                "template_ids",
                format!(
                    "has {} ids, at most {MAX_QUERIED_TEMPLATES} allowed",
                    template_ids.len()
                ),
            );
        }
        for (index, template_id) in template_ids.iter().enumerate() {
            violations.required_id(format!("template_ids[{index}]"), template_id);
        }
        if !violations.is_empty() {
            return Err(SendError::invalid(violations.into_vec()));
        }
        self.ledger()?
            .get(&app.appid, openid, template_ids)
            .await
            .map_err(|error| SendError::new(ErrorKind::LedgerUnavailable(error.0), 0))
    }

    /// A watcher of the app's events, and the app.
    pub fn watch_events(&self, app: &str) -> Result<(Arc<AppSender>, Watcher), SendError> {
        let app = self.resolve(app)?;
        Ok((app.clone(), self.ledger()?.watch(&app.appid)))
    }

    /// True the first time a push is seen for `app`, false for WeChat's retries of it.
    pub async fn claim_push(
        &self,
        app: &AppSender,
        event: &PushEvent,
    ) -> Result<bool, crate::subscriptions::LedgerError> {
        match &self.ledger {
            Some(ledger) => ledger.claim_push(&app.appid, &event.dedupe_key()).await,
            None => Ok(true),
        }
    }

    /// Applies a push WeChat made for `app` (already verified and deduplicated).
    pub async fn apply_push(&self, app: &AppSender, event: PushEvent) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let (kind, result) = match event.kind {
            EventKind::Popup(items) => (
                PushEventKind::Popup,
                self.apply_answers(ledger, app, &event.openid, items, Source::PopupEvent)
                    .await,
            ),
            EventKind::Change(items) => (
                PushEventKind::Change,
                self.apply_answers(ledger, app, &event.openid, items, Source::ChangeEvent)
                    .await,
            ),
            EventKind::Sent(items) => {
                for item in items {
                    ledger
                        .publish(
                            &app.appid,
                            LedgerEvent::Delivery {
                                openid: event.openid.clone(),
                                template_id: item.template_id,
                                msgid: item.msgid,
                                errcode: item.errcode,
                                status: item.status,
                            },
                        )
                        .await;
                }
                (PushEventKind::Sent, Ok(()))
            }
            EventKind::Other(_) => (PushEventKind::Other, Ok(())),
        };
        catalog::count_push_event(&app.name, kind);
        if let Err(error) = result {
            tracing::warn!(app = %app.name, %error, "push not applied: the ledger is unavailable");
        }
    }

    async fn apply_answers(
        &self,
        ledger: &Arc<dyn Ledger>,
        app: &AppSender,
        openid: &str,
        items: Vec<(String, String)>,
        source: Source,
    ) -> Result<(), crate::subscriptions::LedgerError> {
        let updates: Vec<Update> = items
            .into_iter()
            .filter_map(|(template_id, status)| {
                let Some(answer) = Answer::parse(&status) else {
                    tracing::debug!(app = %app.name, status, "push status not understood; skipped");
                    return None;
                };
                Some(Update::Answered {
                    kind: kind_of(app, &template_id),
                    template_id,
                    answer,
                    source,
                })
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        ledger.apply(&app.appid, openid, updates).await.map(drop)
    }

    /// Under `enforce`, refuses a send the ledger knows cannot be delivered (and counts what it
    /// knew). A ledger that cannot be read never stops a send.
    pub(crate) async fn check_subscription(
        &self,
        app: &AppSender,
        touser: &str,
        template_id: &str,
    ) -> Result<(), SendError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let entry = ledger
            .get(&app.appid, touser, &[template_id.to_owned()])
            .await
            .map(|mut entries| entries.pop());
        judge(app, template_id, entry)
    }

    /// [`Notifier::check_subscription`] from the answer of [`Notifier::lookup_rider`]'s step,
    /// which rode on a keyed send's claim; looks the entry up itself when there is none (a
    /// retry after another caller's claim failed).
    pub(crate) async fn check_claimed(
        &self,
        app: &AppSender,
        touser: &str,
        template_id: &str,
        answer: Option<RiderAnswer>,
    ) -> Result<(), SendError> {
        match (&self.ledger, answer) {
            (Some(ledger), Some(answer)) => {
                judge(app, template_id, ledger.looked_up(template_id, answer))
            }
            _ => self.check_subscription(app, touser, template_id).await,
        }
    }

    /// The ledger's lookup of the pair under `enforce`, as a step riding on a keyed send's
    /// claim, when the ledger can run it so.
    pub(crate) fn lookup_rider(
        &self,
        app: &AppSender,
        touser: &str,
        template_id: &str,
    ) -> Option<Rider> {
        if app.subscription_check != SubscriptionCheck::Enforce {
            return None;
        }
        self.ledger
            .as_ref()?
            .lookup_rider(&app.appid, touser, template_id)
    }

    /// True when the app's sends consult and update the ledger.
    pub(crate) fn tracks_subscriptions(&self, app: &AppSender) -> bool {
        self.ledger.is_some() && app.subscription_check != SubscriptionCheck::Off
    }

    /// The ledger's record of a delivered send, as a step riding on a keyed send's
    /// idempotency record, when the ledger can run it so.
    pub(crate) fn delivered_rider(
        &self,
        app: &AppSender,
        touser: &str,
        template_id: &str,
    ) -> Option<crate::store::Rider> {
        let update = Update::Delivered {
            template_id: template_id.to_owned(),
            kind: kind_of(app, template_id),
        };
        self.ledger
            .as_ref()?
            .send_rider(&app.appid, touser, template_id, Some(&update))
    }

    /// Records what a send taught: a delivered message used a grant; 43101 means none is left.
    /// `outcome` is `Ok(true)` for a send made, `Ok(false)` for a deduplicated answer;
    /// `ridden` the answer of [`Notifier::delivered_rider`]'s step when it rode on the send's
    /// record. With `count_lookup` (`observe`), counts whether the ledger knew the pair.
    pub(crate) async fn record_send_outcome(
        &self,
        app: &AppSender,
        touser: &str,
        template_id: &str,
        outcome: Result<bool, &SendError>,
        ridden: Option<crate::store::RiderAnswer>,
        count_lookup: bool,
    ) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let kind = kind_of(app, template_id);
        let update = match outcome {
            // A deduplicated answer made no send.
            Ok(false) => None,
            Ok(true) => Some(Update::Delivered {
                template_id: template_id.to_owned(),
                kind,
            }),
            Err(error) if refused(error) => Some(Update::Refused {
                template_id: template_id.to_owned(),
                kind,
            }),
            Err(_) => None,
        };
        if update.is_none() && !count_lookup {
            return;
        }
        let known = match ridden {
            Some(answer) => {
                ledger
                    .rider_answered(&app.appid, touser, template_id, update, answer)
                    .await
            }
            None => {
                ledger
                    .record_send(&app.appid, touser, template_id, update)
                    .await
            }
        };
        match known {
            Ok(known) if count_lookup => catalog::count_ledger_lookup(
                &app.name,
                if known {
                    LedgerLookup::Hit
                } else {
                    LedgerLookup::Miss
                },
            ),
            Ok(_) => {}
            // Only a shared store fails, and it logs its outages once, not once per send.
            Err(error) => {
                tracing::debug!(app = %app.name, %error, "send outcome not recorded in the ledger");
            }
        }
    }
}

/// Counts what the ledger knew of the pair (`entry`, or why it could not be read) and, under
/// `enforce`, refuses a send it knows cannot be delivered.
fn judge(
    app: &AppSender,
    template_id: &str,
    entry: Result<Option<Subscription>, LedgerError>,
) -> Result<(), SendError> {
    let mode = app.subscription_check;
    let entry = match entry {
        Ok(entry) => entry.map(|mut entry| {
            // Learned since the entry was written (the list loads on the first send).
            if entry.kind == Kind::Unspecified {
                entry.kind = kind_of(app, template_id);
            }
            entry
        }),
        Err(error) => {
            // Only a shared store fails, and it logs its outages once, not once per send.
            tracing::debug!(app = %app.name, %error, "ledger unavailable; sending unchecked");
            return Ok(());
        }
    };
    let lookup = if entry.is_some() {
        LedgerLookup::Hit
    } else {
        LedgerLookup::Miss
    };
    catalog::count_ledger_lookup(&app.name, lookup);
    match verdict(entry.as_ref()) {
        Verdict::Undeliverable(reason) if mode == SubscriptionCheck::Enforce => {
            catalog::count_send_saved(&app.name);
            Err(SendError::new(ErrorKind::NotSubscribed(reason), 0))
        }
        _ => Ok(()),
    }
}

/// True for WeChat's 43101 on a send.
fn refused(error: &SendError) -> bool {
    matches!(&error.kind, ErrorKind::Upstream(upstream) if upstream.class() == Some(ErrorClass::NotSubscribed))
}

/// The template's kind, as the app's last loaded template list says.
fn kind_of(app: &AppSender, template_id: &str) -> Kind {
    let listed = app
        .templates()
        .and_then(|templates| templates.cached(template_id));
    match listed.map(|template| template.kind) {
        Some(TemplateKind::OneTime) => Kind::OneTime,
        Some(TemplateKind::LongTerm) => Kind::LongTerm,
        _ => Kind::Unspecified,
    }
}
