//! The sandbox itself: its state and what a test, a demo or the console can tell it to do
//! (play the user, inject faults, revoke tokens, add templates, read what it received). It
//! knows no routes: `server` serves it, and the route modules take it as their state.

use std::{fmt, sync::Arc, sync::atomic::Ordering};

use tokio::time::Instant;

use crate::{
    config::SandboxConfig,
    events::{Changed, SandboxEvent},
    failures::FailedSend,
    faults::{ActiveFault, Fault},
    inbox::InboxMessage,
    push::{PushEvent, PushRecord, PushTarget, Pusher},
    state::{Grant, Inner, RecordedSend, SandboxStats, SubscriptionKey},
    templates::Template,
};

/// A sandbox: its state and the HTTP routes over it. Cheap to clone (all clones share state).
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
    /// WeChat's pushes to the apps' push URLs.
    pub(crate) pusher: Arc<Pusher>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("apps", &self.inner.config.apps)
            .finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(SandboxConfig::default())
    }
}

impl Sandbox {
    /// A sandbox with this configuration (trusted as is; see [`SandboxConfig::validate`]).
    pub fn new(config: SandboxConfig) -> Sandbox {
        Sandbox {
            inner: Arc::new(Inner::new(config)),
            pusher: Arc::default(),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Delivered messages, oldest first; only those to `openid` when given.
    pub fn inbox(&self, openid: Option<&str>) -> Vec<InboxMessage> {
        self.inner
            .lock()
            .inbox
            .iter()
            .filter(|m| openid.is_none_or(|o| m.openid == o))
            .cloned()
            .collect()
    }

    /// Empties the inbox; returns how many messages it held.
    pub fn clear_inbox(&self) -> usize {
        let cleared = {
            let mut state = self.inner.lock();
            let cleared = state.inbox.len();
            state.inbox.clear();
            cleared
        };
        self.changed(Changed::Inbox);
        cleared
    }

    /// Refused sends (errcode, errmsg, cause), oldest first; only those to `openid` when given.
    pub fn failed_sends(&self, openid: Option<&str>) -> Vec<FailedSend> {
        self.inner
            .lock()
            .failures
            .iter()
            .filter(|f| openid.is_none_or(|o| f.openid.as_deref() == Some(o)))
            .cloned()
            .collect()
    }

    /// Forgets the refused sends; returns how many there were.
    pub fn clear_failed_sends(&self) -> usize {
        let cleared = {
            let mut state = self.inner.lock();
            let cleared = state.failures.len();
            state.failures.clear();
            cleared
        };
        self.changed(Changed::Failures);
        cleared
    }

    /// Tells the console's live streams that a part of the sandbox changed.
    pub(crate) fn changed(&self, what: Changed) {
        self.inner.events.publish(|| SandboxEvent::Changed(what));
    }

    /// The counters.
    pub fn stats(&self) -> SandboxStats {
        self.inner.stats()
    }

    /// Records what the user answered in `wx.requestSubscribeMessage` for a template.
    pub fn subscribe(&self, appid: &str, openid: &str, template_id: &str, grant: Grant) {
        let kind = self.inner.template(appid, template_id).map(|t| t.kind);
        let key = SubscriptionKey {
            appid: appid.to_string(),
            openid: openid.to_string(),
            template_id: template_id.to_string(),
        };
        self.inner.lock().subscribe(key, kind, grant);
        self.changed(Changed::Subscriptions);
        // The popup push WeChat makes for the same answer: one per accepted message.
        let (status, pushes) = match grant {
            Grant::Accept { count } => ("accept", count),
            Grant::Reject => ("reject", 1),
        };
        for _ in 0..pushes {
            self.pusher
                .push(appid, openid, template_id, PushEvent::Popup { status });
        }
    }

    /// The user turns the template off from the settings: every grant is gone (as a reject),
    /// and WeChat pushes `subscribe_msg_change_event`.
    pub fn revoke(&self, appid: &str, openid: &str, template_id: &str) {
        let kind = self.inner.template(appid, template_id).map(|t| t.kind);
        let key = SubscriptionKey {
            appid: appid.to_string(),
            openid: openid.to_string(),
            template_id: template_id.to_string(),
        };
        self.inner.lock().subscribe(key, kind, Grant::Reject);
        self.changed(Changed::Subscriptions);
        self.pusher
            .push(appid, openid, template_id, PushEvent::Change);
    }

    /// Injects a fault; faults apply in injection order, the first matching one per call.
    ///
    /// # Panics
    /// If the fault can never do anything (see [`Fault::validate`]): a bug in the test.
    pub fn inject(&self, fault: Fault) {
        if let Err(problem) = fault.validate() {
            panic!("invalid sandbox fault {fault:?}: {problem}");
        }
        self.inner.lock().faults.add(fault);
        self.changed(Changed::Faults);
    }

    /// The injected faults still active.
    pub fn faults(&self) -> Vec<ActiveFault> {
        self.inner.lock().faults.list()
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.inner.lock().faults.clear();
        self.changed(Changed::Faults);
    }

    /// Makes every current token of `appid` (both families) answer 40001 from now on.
    pub fn revoke_tokens(&self, appid: &str) {
        self.revoke_app_tokens(appid);
    }

    pub(crate) fn revoke_app_tokens(&self, appid: &str) -> usize {
        let revoked = self.inner.lock().tokens.revoke_app(appid, Instant::now());
        tracing::info!(appid, revoked, "sandbox tokens revoked");
        self.changed(Changed::Tokens);
        revoked
    }

    /// Turns auto-accept on or off: a send with no subscription is delivered as if the user
    /// had just accepted once (an explicit reject still answers 43101).
    pub fn set_auto_accept(&self, on: bool) {
        self.inner.auto_accept.store(on, Ordering::SeqCst);
        self.changed(Changed::AutoAccept);
    }

    /// Whether auto-accept is on.
    pub fn auto_accept(&self) -> bool {
        self.inner.auto_accept.load(Ordering::SeqCst)
    }

    /// Adds a template while running, as if created in WeChat's console: the next
    /// `gettemplate` lists it and sends may use it. Refused (with the reason) when the template
    /// is malformed, names an unknown app or reuses an id of one of its apps.
    pub fn add_template(&self, template: Template) -> Result<(), String> {
        let id = template.id.clone();
        self.inner.add_template(template)?;
        tracing::info!(template_id = id, "sandbox template added");
        self.changed(Changed::Templates);
        Ok(())
    }

    /// Every send request as received (the last 10,000), oldest first.
    pub fn send_requests(&self) -> Vec<RecordedSend> {
        self.inner.lock().sends.iter().cloned().collect()
    }

    /// Pushes the app's events to `target` from now on (`None`: no more pushes).
    pub fn set_push_target(&self, appid: &str, target: Option<PushTarget>) {
        self.pusher.set_target(appid, target);
    }

    /// The pushes made so far (the last 1,000), oldest first; a push still being attempted is
    /// not listed yet.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.pusher.log()
    }
}
