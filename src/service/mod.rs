//! The service decides: it resolves the app, validates, deduplicates, delivers with the
//! interface's retry rules and fans batches out. It knows nothing of tonic; `crate::grpc`
//! translates to and from protobuf and `crate::status` picks status codes.

mod batch;
mod check;
mod error;
mod sender;
mod subscriptions;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use batch::{BatchRequest, RecipientInput, RecipientOutcome};
pub use error::{ErrorKind, NotStarted, SendError};
pub use sender::AppSender;
use sender::{Admission, SEND_ADMISSION_WAIT};
pub use subscriptions::{MAX_QUERIED_TEMPLATES, MAX_REPORTED_TEMPLATES};

use self::check::Violations;
use crate::{
    idempotency::{IdempotencyStore, Keyed, Record, Riders},
    subscriptions::{Ledger, SubscriptionCheck},
    telemetry::catalog::{MessageCounters, Outcome},
    validation::MAX_ID_BYTES,
    wechat::{MiniprogramState, SubscribeMessage},
};

/// One message to one user, as the caller asked for it.
#[derive(Clone, Debug, Default)]
pub struct SendRequest {
    /// App name or appid; may be empty when exactly one app is configured.
    pub app: String,
    /// Recipient openid.
    pub touser: String,
    /// Template id.
    pub template_id: String,
    /// Page opened from the card; empty for none.
    pub page: String,
    /// Keyword -> value.
    pub data: BTreeMap<String, String>,
    /// Which build the card opens.
    pub miniprogram_state: MiniprogramState,
    /// Card language; empty for WeChat's default.
    pub lang: String,
    /// Optional idempotency key; empty for none.
    pub idempotency_key: String,
    /// The configured caller that asked; `None` when the service is open (`anonymous`).
    pub caller: Option<CallerRef>,
}

/// A configured caller, as the service sees it: a label for its metrics and a scope for its
/// idempotency keys, so two callers' keys never meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerRef {
    /// Its position among the configured callers (the row of per-caller tables).
    pub index: usize,
    /// Its configured name.
    pub name: Arc<str>,
}

/// The idempotency record key of `parts` (the RPC's kind, the key, ...) for `app` and
/// `caller`: a key is scoped to both, so one caller can neither collide with nor read another
/// caller's records (a caller name cannot hold `\n`; anonymous calls use the empty name,
/// which no configured caller has).
fn scoped_key(appid: &str, caller: Option<&CallerRef>, parts: &[&str]) -> String {
    let caller = caller.map_or("", |caller| &caller.name);
    let mut key = format!("{appid}\n{caller}");
    for part in parts {
        key.push('\n');
        key.push_str(part);
    }
    key
}

/// A delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// WeChat's message id, when it gave one.
    pub msgid: Option<u64>,
    /// Upstream send attempts made.
    pub attempts: u32,
    /// True when answered from an earlier request with the same idempotency key.
    pub deduplicated: bool,
}

/// The message's outcome in `wechat_notify_messages_total`.
fn outcome(result: &Result<Receipt, SendError>) -> Outcome {
    match result {
        Ok(receipt) if receipt.deduplicated => Outcome::Deduplicated,
        Ok(_) => Outcome::Sent,
        Err(error) => match &error.kind {
            ErrorKind::Invalid(_) | ErrorKind::UnknownApp(_) => Outcome::Invalid,
            // Refused for the ledger's reasons, as WeChat would have with 43101.
            ErrorKind::NotSubscribed(_) => Outcome::Rejected,
            _ if error.wechat_errcode().is_some() => Outcome::Rejected,
            _ => Outcome::Failed,
        },
    }
}

/// The notification service: the configured apps and the idempotency records.
pub struct Notifier {
    apps: HashMap<String, Arc<AppSender>>,
    only_app: Option<Arc<AppSender>>,
    idempotency: Arc<dyn IdempotencyStore<SendError>>,
    max_batch_recipients: usize,
    /// What users granted; `None` leaves sends unchecked and the subscription RPCs unavailable.
    ledger: Option<Arc<dyn Ledger>>,
    /// Sends whose caller went away finish as tasks of their own, so a request to WeChat is
    /// never cut in half (its outcome would become unknown and unrecorded); so do batches.
    /// Shutdown waits for them.
    tasks: TaskTracker,
}

impl Notifier {
    /// A service over `apps`, reachable by name and by appid.
    pub fn new(
        apps: Vec<Arc<AppSender>>,
        idempotency: Arc<dyn IdempotencyStore<SendError>>,
        max_batch_recipients: usize,
    ) -> Self {
        let only_app = (apps.len() == 1).then(|| apps[0].clone());
        let mut by_key = HashMap::new();
        for app in &apps {
            by_key.insert(app.appid.clone(), app.clone());
            by_key.insert(app.name.clone(), app.clone());
        }
        Self {
            apps: by_key,
            only_app,
            idempotency,
            max_batch_recipients,
            ledger: None,
            tasks: TaskTracker::new(),
        }
    }

    /// The same service keeping subscriptions in `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Every configured app, once each.
    pub fn apps(&self) -> Vec<Arc<AppSender>> {
        let mut apps: Vec<_> = self.apps.values().cloned().collect();
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        apps.dedup_by(|a, b| Arc::ptr_eq(a, b));
        apps
    }

    /// Stops accepting new background sends and waits for the running ones.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The configured name of the app `requested` resolves to (empty: the only app), for logs.
    /// Borrowed: it is recorded on every call's span, and resolving it must not allocate.
    pub fn app_name(&self, requested: &str) -> Option<&str> {
        if requested.len() > MAX_ID_BYTES {
            return None;
        }
        let app = if requested.is_empty() {
            self.only_app.as_ref()
        } else {
            self.apps.get(requested)
        };
        app.map(|app| app.name.as_str())
    }

    /// The app a request names.
    fn resolve(&self, app: &str) -> Result<Arc<AppSender>, SendError> {
        if app.len() > MAX_ID_BYTES {
            return Err(SendError::invalid_field(
                "app",
                format!("is {} bytes, at most {MAX_ID_BYTES} allowed", app.len()),
            ));
        }
        if app.is_empty() {
            return self.only_app.clone().ok_or_else(|| {
                SendError::invalid_field("app", "is required: several apps are configured")
            });
        }
        self.apps
            .get(app)
            .cloned()
            .ok_or_else(|| SendError::new(ErrorKind::UnknownApp(app.to_owned()), 0))
    }

    /// Sends one message. `deadline` is the caller's, if it set one.
    pub async fn send(
        self: &Arc<Self>,
        request: SendRequest,
        deadline: Option<Instant>,
    ) -> Result<Receipt, SendError> {
        match self.resolve(&request.app) {
            Ok(app) => {
                let caller = request.caller.clone();
                let result = self.send_checked(&app, request, deadline).await;
                app.count_message(caller.as_ref(), outcome(&result));
                result
            }
            Err(error) => {
                let result = Err(error);
                MessageCounters::unknown_app().count(outcome(&result));
                result
            }
        }
    }

    async fn send_checked(
        self: &Arc<Self>,
        app: &Arc<AppSender>,
        request: SendRequest,
        deadline: Option<Instant>,
    ) -> Result<Receipt, SendError> {
        let mut violations = Violations::default();
        violations.required_id("touser", &request.touser);
        violations.required_id("template_id", &request.template_id);
        violations.page("page", &request.page);
        violations.lang(&request.lang);
        violations.idempotency_key(&request.idempotency_key);
        violations.data_count("data", request.data.len());
        for (key, value) in &request.data {
            violations.data_entry("data", key, value);
        }
        if !violations.is_empty() {
            return Err(SendError::invalid(violations.into_vec()));
        }
        // Only a message that passed the checks above is worth the app's template list.
        if let Some(template) = check::listed_template(app, &request.template_id, deadline).await? {
            violations.template_values("data", &template, &request.data);
            violations
                .template_keywords_present("data", &template, |key| request.data.contains_key(key));
            if !violations.is_empty() {
                return Err(SendError::invalid(violations.into_vec()));
            }
        }
        let message = SubscribeMessage {
            touser: request.touser,
            template_id: request.template_id,
            page: non_empty(request.page),
            data: request.data,
            miniprogram_state: request.miniprogram_state,
            lang: non_empty(request.lang),
        };
        let key = non_empty(request.idempotency_key)
            .map(|key| scoped_key(&app.appid, request.caller.as_ref(), &["send", &key]));
        let notifier = self.clone();
        let app = app.clone();
        let admission = Admission::new(deadline, SEND_ADMISSION_WAIT);
        // If the caller goes away mid-send, the request to WeChat still completes (on a task
        // of its own) and its outcome is recorded under the idempotency key.
        FinishOnDrop::new(
            async move {
                notifier
                    .deliver_recorded(&app, message, key, &admission)
                    .await
            },
            &self.tasks,
        )
        .await
    }

    /// Delivers `message` unless the ledger refuses it (under `enforce`), and records what the
    /// send taught the ledger: under `observe`, the ledger's lookup is taken with that record,
    /// after the send, and for a keyed send both ride on the idempotency record (one round trip
    /// to a shared store for all three).
    async fn deliver_recorded(
        self: &Arc<Self>,
        app: &Arc<AppSender>,
        message: SubscribeMessage,
        key: Option<String>,
        admission: &Admission,
    ) -> Result<Receipt, SendError> {
        if !self.tracks_subscriptions(app) {
            return Ok(self
                .deliver_once(app, message, key, admission, None, None)
                .await?
                .0);
        }
        let enforce = app.subscription_check == SubscriptionCheck::Enforce;
        let (touser, template_id) = (message.touser.clone(), message.template_id.clone());
        let (lookup, record) = match &key {
            Some(_) => (
                self.lookup_rider(app, &touser, &template_id),
                self.delivered_rider(app, &touser, &template_id),
            ),
            None => (None, None),
        };
        // Under `enforce` the ledger is read before the send: with the claim when the lookup
        // rides on it (then inside the send, once the key is claimed), else here.
        if enforce && lookup.is_none() {
            self.check_subscription(app, &touser, &template_id).await?;
        }
        let result = self
            .deliver_once(app, message, key, admission, lookup, record)
            .await;
        let (outcome, ridden) = match result {
            Ok((receipt, ridden)) => (Ok(receipt), ridden),
            Err(error) => (Err(error), None),
        };
        self.record_send_outcome(
            app,
            &touser,
            &template_id,
            outcome.as_ref().map(|receipt| !receipt.deduplicated),
            ridden,
            !enforce,
        )
        .await;
        outcome
    }

    /// Delivers `message`, at most once per idempotency key (scoped by [`scoped_key`]). A keyed
    /// send's claim carries the ledger's `lookup` (then checked before the send), and its record
    /// the ledger's `record` of the outcome, whose answer comes back beside the receipt.
    async fn deliver_once(
        self: &Arc<Self>,
        app: &Arc<AppSender>,
        message: SubscribeMessage,
        key: Option<String>,
        admission: &Admission,
        lookup: Option<crate::store::Rider>,
        mut record: Option<crate::store::Rider>,
    ) -> Result<(Receipt, Option<crate::store::RiderAnswer>), SendError> {
        let Some(key) = key else {
            let record = app.deliver(&message, admission).await?;
            return Ok((receipt(&record, false), None));
        };
        let (touser, template_id) = (message.touser.clone(), message.template_id.clone());
        let scoped_key = key;
        let message = Arc::new(message);
        let mut joins = 0;
        let keyed = loop {
            let ran_here = Arc::new(AtomicBool::new(false));
            // The lookup's answer, put here by the store when this caller claims the key.
            let looked_up = Arc::new(OnceLock::new());
            let send = {
                let (app, message, admission) = (app.clone(), message.clone(), admission.clone());
                let ran_here = ran_here.clone();
                let check = lookup.is_some().then(|| (self.clone(), looked_up.clone()));
                Box::pin(async move {
                    ran_here.store(true, Ordering::Relaxed);
                    if let Some((notifier, looked_up)) = check {
                        let answer = looked_up.get().cloned();
                        notifier
                            .check_claimed(&app, &message.touser, &message.template_id, answer)
                            .await?;
                    }
                    app.deliver(&message, &admission).await
                })
            };
            let riders = Riders {
                claim: lookup.clone().map(|rider| (rider, looked_up)),
                record: record.take(),
            };
            match self
                .idempotency
                .once(scoped_key.clone(), send, riders)
                .await
            {
                Ok(keyed) => break keyed,
                // A failure is shared with every caller waiting on the key. One that says the
                // send never started (that caller's deadline, cancellation or wait limit) is
                // not an outcome for us: try again under our own admission.
                Err(shared)
                    if !ran_here.load(Ordering::Relaxed)
                        && never_sent(&shared)
                        && joins < MAX_KEY_JOINS =>
                {
                    joins += 1;
                }
                Err(shared) => return Err(SendError::clone(&shared)),
            }
        };
        if keyed.record.touser != touser || keyed.record.template_id != template_id {
            return Err(SendError::invalid_field(
                "idempotency_key",
                "was already used for a different recipient or template",
            ));
        }
        Ok((keyed_receipt(&keyed), keyed.ridden))
    }
}

/// A future run in place by whoever awaits it, finished on a tracked task of its own if that
/// awaiter is dropped first (the gRPC caller hung up or its deadline passed): a request to
/// WeChat is never cut in half, so its outcome is known and recorded. Cheaper than spawning
/// every send: the common case, a caller that waits, costs no task and no cross-task wake-up.
struct FinishOnDrop<T: Send + 'static> {
    future: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    tasks: TaskTracker,
    /// The caller's span (its request id), kept for the lines logged once on a task of its
    /// own; in place, the future runs inside it anyway.
    span: tracing::Span,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    fn new(future: impl Future<Output = T> + Send + 'static, tasks: &TaskTracker) -> Self {
        Self {
            future: Some(Box::pin(future)),
            tasks: tasks.clone(),
            span: tracing::Span::current(),
        }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = self
            .future
            .as_mut()
            .expect("FinishOnDrop polled after it finished");
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        // Dropped on a runtime thread (the server drops the call's future); without a runtime
        // (the process is going down) there is nothing left to finish it on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let span = std::mem::replace(&mut self.span, tracing::Span::none());
            runtime.spawn(
                self.tasks.track_future(
                    async move {
                        future.await;
                    }
                    .instrument(span),
                ),
            );
        }
    }
}

/// How often a keyed send may join another caller's attempt that never started before it
/// answers that caller's failure as its own.
const MAX_KEY_JOINS: u32 = 3;

/// True when the send was never made because of its caller's own limits (deadline,
/// cancellation, wait limit): nothing that tells another caller with the same key anything.
fn never_sent(error: &SendError) -> bool {
    matches!(
        error.kind,
        ErrorKind::NotStarted(_) | ErrorKind::Throttled { .. }
    )
}

fn receipt(record: &Record, deduplicated: bool) -> Receipt {
    Receipt {
        msgid: record.msgid,
        attempts: record.attempts,
        deduplicated,
    }
}

fn keyed_receipt(keyed: &Keyed) -> Receipt {
    receipt(&keyed.record, keyed.deduplicated)
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}
