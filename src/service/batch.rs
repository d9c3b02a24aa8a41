//! BatchSend: one template to many recipients, with bounded concurrency per app, one result per
//! recipient in request order, and memory that grows with the concurrency rather than the batch.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    AppSender, CallerRef, Notifier, Receipt, SendError,
    check::{self, Violations},
    non_empty, outcome,
    sender::{Admission, BATCH_ADMISSION_WAIT, BatchStop},
};
use crate::wechat::{MiniprogramState, SubscribeMessage, TemplateInfo};

/// One recipient of a batch, with its overrides.
#[derive(Clone, Debug, Default)]
pub struct RecipientInput {
    /// Recipient openid.
    pub touser: String,
    /// Overrides the shared data key by key.
    pub data: BTreeMap<String, String>,
    /// Overrides the shared page when non-empty.
    pub page: String,
}

/// One template to many recipients.
#[derive(Clone, Debug, Default)]
pub struct BatchRequest {
    /// App name or appid; may be empty when exactly one app is configured.
    pub app: String,
    /// Template id shared by all recipients.
    pub template_id: String,
    /// Page shared by all recipients unless overridden.
    pub page: String,
    /// Data shared by all recipients, overridden key by key.
    pub data: BTreeMap<String, String>,
    /// The recipients.
    pub recipients: Vec<RecipientInput>,
    /// Which build the cards open.
    pub miniprogram_state: MiniprogramState,
    /// Card language; empty for WeChat's default.
    pub lang: String,
    /// Batch idempotency key; each recipient's key is derived from it and the openid.
    pub idempotency_key: String,
    /// The configured caller that asked; `None` when the service is open.
    pub caller: Option<CallerRef>,
}

/// The outcome for one recipient.
#[derive(Clone, Debug)]
pub struct RecipientOutcome {
    /// The recipient's openid, as given.
    pub touser: String,
    /// Its delivery, or why it failed.
    pub result: Result<Receipt, SendError>,
}

/// What every recipient of one batch shares.
struct Shared {
    app: Arc<AppSender>,
    template_id: String,
    /// The template as WeChat lists it; `None` when unchecked.
    template: Option<Arc<TemplateInfo>>,
    page: String,
    data: BTreeMap<String, String>,
    miniprogram_state: MiniprogramState,
    lang: Option<String>,
    idempotency_key: Option<String>,
    caller: Option<CallerRef>,
    caller_deadline: Option<Instant>,
    /// Cancelled when the caller goes away; set on the first 45009: no further sends then.
    stop: BatchStop,
}

impl Notifier {
    /// Sends one template to every recipient. Fails as a whole only when the call itself is
    /// malformed (nothing is sent then); otherwise answers one outcome per recipient, in order.
    pub async fn batch_send(
        self: &Arc<Self>,
        request: BatchRequest,
        deadline: Option<Instant>,
    ) -> Result<Vec<RecipientOutcome>, SendError> {
        let app = self.resolve(&request.app)?;
        self.check_batch(&request)?;
        let template = check::listed_template(&app, &request.template_id, deadline).await?;
        if let Some(template) = &template {
            // Shared data that does not fit the template is a malformed call, as above.
            let mut violations = Violations::default();
            violations.template_values("data", template, &request.data);
            if !violations.is_empty() {
                return Err(SendError::invalid(violations.into_vec()));
            }
        }
        let cancel = CancellationToken::new();
        // Dropped when the caller goes away (cancel or deadline): no new sends start, the ones
        // in flight finish and are recorded under their idempotency keys.
        let stop_on_drop = cancel.clone().drop_guard();
        let notifier = self.clone();
        let recipients = request.recipients;
        let shared = Arc::new(Shared {
            app,
            template_id: request.template_id,
            template,
            page: request.page,
            data: request.data,
            miniprogram_state: request.miniprogram_state,
            lang: non_empty(request.lang),
            idempotency_key: non_empty(request.idempotency_key),
            caller: request.caller,
            caller_deadline: deadline,
            stop: BatchStop {
                cancel,
                daily_quota_exhausted: Arc::default(),
            },
        });
        // Contiguous stripes of recipients, one task each, so a large batch uses every runtime
        // worker (one task would run all its recipients' work on one core at a time). Each
        // stripe answers its recipients in order; the app's `max_in_flight` still bounds them
        // all together.
        let total = recipients.len();
        let concurrency = shared.app.max_in_flight.max(1);
        let stripes = stripe_count(total, concurrency);
        let width = concurrency.div_ceil(stripes);
        let mut recipients = recipients.into_iter();
        let mut running = Vec::with_capacity(stripes);
        let mut first = 0;
        for stripe in 0..stripes {
            let len = (total - first) / (stripes - stripe);
            let part: Vec<_> = recipients.by_ref().take(len).collect();
            let (notifier, shared) = (notifier.clone(), shared.clone());
            // `in_current_span`: the call's log lines keep its request id on those tasks.
            running.push(self.tasks.spawn(
                async move { notifier.fan_out(shared, first, part, width).await }.in_current_span(),
            ));
            first += len;
        }
        let mut outcomes = Vec::with_capacity(total);
        for stripe in running {
            outcomes.extend(
                stripe.await.unwrap_or_else(|join_error| {
                    std::panic::resume_unwind(join_error.into_panic())
                }),
            );
        }
        stop_on_drop.disarm();
        Ok(outcomes)
    }

    fn check_batch(&self, request: &BatchRequest) -> Result<(), SendError> {
        let mut violations = Violations::default();
        violations.required_id("template_id", &request.template_id);
        violations.page("page", &request.page);
        violations.lang(&request.lang);
        violations.idempotency_key(&request.idempotency_key);
        if request.recipients.is_empty() {
            violations.push("recipients", "is required: at least one recipient");
        } else if request.recipients.len() > self.max_batch_recipients {
            violations.push(
                "recipients",
                format!(
                    "has {} recipients, at most {} allowed per call",
                    request.recipients.len(),
                    self.max_batch_recipients
                ),
            );
        }
        // Shared data reaches every recipient that does not override it: a bad shared value is
        // a malformed call, not one bad recipient.
        if request.data.len() > crate::validation::MAX_DATA_KEYS {
            violations.data_count("data", request.data.len());
        }
        for (key, value) in &request.data {
            violations.data_entry("data", key, value);
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(SendError::invalid(violations.into_vec()))
        }
    }

    /// Runs at most `concurrency` of `recipients` (the batch's from `first_index` on) at a time
    /// and puts each outcome in its place.
    /// Unordered, so one slow recipient (backing off after -1, waiting out a pause) does not
    /// hold back the ones behind it; only the in-flight recipients and the outcomes (the
    /// response itself) are held in memory.
    async fn fan_out(
        self: Arc<Self>,
        shared: Arc<Shared>,
        first_index: usize,
        recipients: Vec<RecipientInput>,
        concurrency: usize,
    ) -> Vec<RecipientOutcome> {
        let mut outcomes: Vec<Option<RecipientOutcome>> = Vec::new();
        outcomes.resize_with(recipients.len(), || None);
        let mut finished = futures::stream::iter(recipients.into_iter().enumerate())
            .map(|(offset, recipient)| {
                let notifier = self.clone();
                let shared = shared.clone();
                async move {
                    let touser = recipient.touser.clone();
                    let result = notifier
                        .send_recipient(&shared, first_index + offset, recipient)
                        .await;
                    shared
                        .app
                        .count_message(shared.caller.as_ref(), outcome(&result));
                    (offset, RecipientOutcome { touser, result })
                }
            })
            .buffer_unordered(concurrency);
        while let Some((offset, outcome)) = finished.next().await {
            outcomes[offset] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every recipient has an outcome"))
            .collect()
    }

    async fn send_recipient(
        self: &Arc<Self>,
        shared: &Shared,
        index: usize,
        recipient: RecipientInput,
    ) -> Result<Receipt, SendError> {
        let message = recipient_message(shared, index, recipient)?;
        // The admission stops this send if the deadline passed, the caller went away or a 45009
        // came back for an earlier recipient: checked before the send and again once admitted.
        let admission = Admission::new(shared.caller_deadline, BATCH_ADMISSION_WAIT)
            .in_batch(shared.stop.clone());
        // One key per recipient: a retried batch with the same key delivers each openid once.
        let key = shared.idempotency_key.as_ref().map(|key| {
            super::scoped_key(
                &shared.app.appid,
                shared.caller.as_ref(),
                &["batch", key, &message.touser],
            )
        });
        self.deliver_recorded(&shared.app, message, key, &admission)
            .await
    }
}

/// Recipients per stripe at least: smaller batches are not worth a second task.
const MIN_STRIPE: usize = 64;

/// How many stripes a batch of `total` runs in: one per runtime worker, within reason.
fn stripe_count(total: usize, concurrency: usize) -> usize {
    let workers = tokio::runtime::Handle::try_current()
        .map(|runtime| runtime.metrics().num_workers())
        .unwrap_or(1);
    workers.min(total / MIN_STRIPE).min(concurrency).max(1)
}

/// The message for one recipient: shared fields with its overrides, checked on its own.
fn recipient_message(
    shared: &Shared,
    index: usize,
    recipient: RecipientInput,
) -> Result<SubscribeMessage, SendError> {
    // Field paths are rendered only for a violation (see `check`).
    let data_field = RecipientField(index, "data");
    let mut violations = Violations::default();
    violations.required_id(RecipientField(index, "touser"), &recipient.touser);
    violations.page(RecipientField(index, "page"), &recipient.page);
    for (key, value) in &recipient.data {
        violations.data_entry(data_field, key, value);
    }
    if let Some(template) = &shared.template {
        violations.template_values(data_field, template, &recipient.data);
        violations.template_keywords_present(data_field, template, |key| {
            recipient.data.contains_key(key) || shared.data.contains_key(key)
        });
    }
    let mut data = shared.data.clone();
    data.extend(recipient.data);
    violations.data_count(data_field, data.len());
    if !violations.is_empty() {
        return Err(SendError::invalid(violations.into_vec()));
    }
    let page = if recipient.page.is_empty() {
        shared.page.clone()
    } else {
        recipient.page
    };
    Ok(SubscribeMessage {
        touser: recipient.touser,
        template_id: shared.template_id.clone(),
        page: non_empty(page),
        data,
        miniprogram_state: shared.miniprogram_state,
        lang: shared.lang.clone(),
    })
}

/// The path of a recipient's field, `recipients[3].data`, rendered only when reported.
#[derive(Clone, Copy)]
struct RecipientField(usize, &'static str);

impl std::fmt::Display for RecipientField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recipients[{}].{}", self.0, self.1)
    }
}
