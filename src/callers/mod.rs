//! Who is calling, and what that caller may do.
//!
//! [`Callers`] is built once from the `[[callers]]` tables. [`layer::CallersLayer`] identifies
//! every `notify.v1.*` call (bearer token, client certificate, or a trusted
//! `x-forwarded-client-cert`), refuses one without an identity or outside its caller's RPCs,
//! and hands the handler a [`Grant`] in the request extensions; the handler then checks the
//! app, template, batch size and rate with [`Caller::check`] once it has read the body.
//!
//! With no caller configured every call is let through as `anonymous` (the service is open,
//! as it was before callers existed). Health and reflection are never looked at.
//!
//! Refusals are [`Refusal`]s; `crate::status` turns them into statuses. A refusal names the
//! caller and what it lacks, never which apps or templates exist.

pub mod layer;
pub mod xfcc;

use std::{collections::HashSet, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter, clock::Clock};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::{
    config::{CallerConfig, CallersConfig, Rpc, TokenDigest},
    service::CallerRef,
    telemetry::CallerRpcMetrics,
    tls::PeerCertificate,
};

/// Every configured caller.
pub struct Callers {
    callers: Vec<Arc<Caller>>,
    /// Each caller's token digest with its index in `callers`.
    tokens: Vec<(TokenDigest, u64)>,
    trust_forwarded_client_cert: bool,
}

/// One configured caller and what it may do.
pub struct Caller {
    /// Its configured name.
    pub name: Arc<str>,
    attribution: CallerRef,
    subjects: Vec<String>,
    sans: Vec<String>,
    /// Allowed apps, by name and by appid (both as configured and as resolved).
    apps: HashSet<String>,
    templates: Option<HashSet<String>>,
    rpcs: Vec<Rpc>,
    rate: Option<(u32, DefaultDirectRateLimiter)>,
    max_batch: Option<usize>,
    rpc_metrics: Arc<CallerRpcMetrics>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("name", &self.name).finish()
    }
}

/// What the layer found out about a call, for its handler.
#[derive(Clone, Debug)]
pub enum Grant {
    /// No caller is configured: anything goes, counted as `anonymous`. (The layer puts
    /// nothing in the extensions then; a handler reads no grant as this.)
    Open,
    /// The call is this caller's; its RPC is allowed, the rest is for the handler to check.
    Caller(Arc<Caller>),
}

impl Grant {
    /// The caller, if any.
    pub fn caller(&self) -> Option<&Arc<Caller>> {
        match self {
            Grant::Open => None,
            Grant::Caller(caller) => Some(caller),
        }
    }
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No identity, or one that names no caller: UNAUTHENTICATED.
    Unauthenticated(&'static str),
    /// The caller may not do this: PERMISSION_DENIED.
    NotAllowed {
        /// The caller's name.
        caller: Arc<str>,
        /// What it lacks, e.g. `rpc batch`, `app shop`, `template t1`.
        lacks: String,
    },
    /// The caller's own rate is used up: RESOURCE_EXHAUSTED.
    RateLimited {
        /// The caller's name.
        caller: Arc<str>,
        /// When it may try again; `None` when the request can never fit its rate.
        retry_after: Option<Duration>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unauthenticated(why) => f.write_str(why),
            Refusal::NotAllowed { caller, lacks } => {
                write!(f, "caller {caller} is not allowed {lacks}")
            }
            Refusal::RateLimited {
                caller,
                retry_after: Some(_),
            } => write!(f, "caller {caller} is over its rate_per_sec"),
            Refusal::RateLimited {
                caller,
                retry_after: None,
            } => write!(
                f,
                "caller {caller}: the batch has more recipients than its rate_per_sec allows \
                 in one second"
            ),
        }
    }
}

impl Callers {
    /// The callers of `config`. `apps` are the configured apps as (name, appid): a caller
    /// allowed an app by either is allowed it by both.
    pub fn new(config: &CallersConfig, apps: &[(String, String)]) -> Self {
        let callers: Vec<Arc<Caller>> = config
            .callers
            .iter()
            .enumerate()
            .map(|(index, caller)| Arc::new(Caller::new(index, caller, apps)))
            .collect();
        let tokens = config
            .callers
            .iter()
            .enumerate()
            .filter_map(|(index, caller)| caller.token.map(|token| (token, index as u64)))
            .collect();
        for caller in &config.callers {
            for app in &caller.apps {
                if !apps.iter().any(|(name, appid)| name == app || appid == app) {
                    tracing::warn!(caller = %caller.name, app = %app, "caller allowed an app that is not configured");
                }
            }
        }
        Self {
            callers,
            tokens,
            trust_forwarded_client_cert: config.trust_forwarded_client_cert,
        }
    }

    /// True when no caller is configured: the service is open.
    pub fn is_open(&self) -> bool {
        self.callers.is_empty()
    }

    /// How many callers there are (the size of per-caller tables).
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller a call proves to be, from its `authorization` value, its verified client
    /// certificate and its `x-forwarded-client-cert` value (believed only when configured).
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<&PeerCertificate>,
        forwarded: Option<&str>,
    ) -> Result<Arc<Caller>, Refusal> {
        let by_token = authorization.map(|value| self.by_token(value));
        let by_certificate = match peer {
            Some(peer) => self.by_names(&peer.common_names, &peer.sans)?,
            None if self.trust_forwarded_client_cert => match forwarded {
                Some(header) => {
                    let Some(element) = xfcc::last_element(header) else {
                        return Err(Refusal::Unauthenticated(
                            "x-forwarded-client-cert is malformed",
                        ));
                    };
                    let common_names: Vec<&str> =
                        element.subject_common_name().into_iter().collect();
                    let sans: Vec<&str> = element
                        .uris
                        .iter()
                        .chain(&element.dns)
                        .map(|name| name.as_ref())
                        .collect();
                    self.by_names(&common_names, &sans)?
                }
                None => None,
            },
            None => None,
        };
        match (by_token, by_certificate) {
            (Some(Ok(token)), Some(certificate)) if !Arc::ptr_eq(&token, &certificate) => {
                Err(Refusal::Unauthenticated(
                    "the bearer token and the certificate name different callers",
                ))
            }
            (Some(Ok(caller)), _) => Ok(caller),
            // A certificate names the caller; an `authorization` value that names no caller is
            // not for us (an end user's JWT that a mesh passes along, say).
            (_, Some(caller)) => Ok(caller),
            (Some(Err(refusal)), None) => Err(refusal),
            (None, None) => Err(Refusal::Unauthenticated(
                "no caller identity: send `authorization: Bearer <token>` or a client certificate \
                 of a configured caller",
            )),
        }
    }

    /// The caller whose token `authorization` (`Bearer <token>`) carries. Every configured
    /// digest is compared, in constant time, whatever matches.
    fn by_token(&self, authorization: &[u8]) -> Result<Arc<Caller>, Refusal> {
        let token = authorization
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| authorization[7..].trim_ascii())
            .ok_or(Refusal::Unauthenticated(
                "authorization must be `Bearer <token>`",
            ))?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = u64::MAX;
        for (known, index) in &self.tokens {
            let equal = known.0.ct_eq(&digest);
            found = u64::conditional_select(&found, index, equal);
        }
        usize::try_from(found)
            .ok()
            .and_then(|index| self.callers.get(index))
            .cloned()
            .ok_or(Refusal::Unauthenticated("the bearer token names no caller"))
    }

    /// The one caller a certificate's names identify, if any.
    fn by_names(
        &self,
        common_names: &[impl AsRef<str>],
        sans: &[impl AsRef<str>],
    ) -> Result<Option<Arc<Caller>>, Refusal> {
        let mut found: Option<&Arc<Caller>> = None;
        for caller in &self.callers {
            let matches = common_names
                .iter()
                .any(|name| caller.subjects.iter().any(|known| known == name.as_ref()))
                || sans
                    .iter()
                    .any(|name| caller.sans.iter().any(|known| known == name.as_ref()));
            if !matches {
                continue;
            }
            if found.is_some() {
                return Err(Refusal::Unauthenticated(
                    "the certificate's names identify more than one caller",
                ));
            }
            found = Some(caller);
        }
        Ok(found.cloned())
    }
}

/// What one call asks for, checked against its caller.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// The configured name the request's `app` resolves to, or `None` when it names no app.
    pub app: Option<&'a str>,
    /// The `app` field as sent (used in the refusal only when it resolves to nothing).
    pub requested_app: &'a str,
    /// The template, when the call sends one.
    pub template_id: Option<&'a str>,
    /// Messages the call would send (1, or a batch's recipients).
    pub messages: usize,
    /// True for BatchSend: `max_batch` applies.
    pub batch: bool,
}

impl Caller {
    fn new(index: usize, config: &CallerConfig, apps: &[(String, String)]) -> Self {
        let name: Arc<str> = config.name.as_str().into();
        // Allowed by name or appid: both spellings go in, so either in a request matches.
        let mut allowed = HashSet::new();
        for app in &config.apps {
            allowed.insert(app.clone());
            for (app_name, appid) in apps {
                if app == app_name || app == appid {
                    allowed.insert(app_name.clone());
                    allowed.insert(appid.clone());
                }
            }
        }
        Self {
            attribution: CallerRef {
                index,
                name: name.clone(),
            },
            rpc_metrics: Arc::new(CallerRpcMetrics::new(&config.name)),
            name,
            subjects: config.tls_subjects.clone(),
            sans: config.tls_sans.clone(),
            apps: allowed,
            templates: config
                .templates
                .as_ref()
                .map(|templates| templates.iter().cloned().collect()),
            rpcs: config.rpcs.clone(),
            rate: config.rate_per_sec.map(|rate| {
                let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
                (rate, RateLimiter::direct(Quota::per_second(per_second)))
            }),
            max_batch: config.max_batch,
        }
    }

    /// Who the service's metrics and idempotency records say sent a message.
    pub fn attribution(&self) -> &CallerRef {
        &self.attribution
    }

    /// The RPC metric handles labelled with this caller.
    pub fn rpc_metrics(&self) -> &Arc<CallerRpcMetrics> {
        &self.rpc_metrics
    }

    /// Whether the caller may call `rpc`.
    pub fn check_rpc(&self, rpc: Rpc) -> Result<(), Refusal> {
        if self.rpcs.contains(&rpc) {
            return Ok(());
        }
        Err(self.lacks(format!("rpc {}", rpc.name())))
    }

    /// Whether the caller may make the call `ask` describes: its app, its template, its batch
    /// size, and (last, so a refused call uses none of it) its rate.
    pub fn check(&self, ask: Ask<'_>) -> Result<(), Refusal> {
        let app_allowed = ask.app.is_some_and(|app| self.apps.contains(app));
        if !app_allowed {
            // What the caller sent, not what it resolved to: nothing about other apps.
            let shown = ask.app.unwrap_or(ask.requested_app);
            return Err(self.lacks(format!("app `{}`", shown.escape_debug())));
        }
        if let (Some(templates), Some(template_id)) = (&self.templates, ask.template_id)
            && !templates.contains(template_id)
        {
            return Err(self.lacks(format!("template `{}`", template_id.escape_debug())));
        }
        if ask.batch
            && let Some(max_batch) = self.max_batch
            && ask.messages > max_batch
        {
            return Err(self.lacks(format!(
                "a batch of {} recipients (its max_batch is {max_batch})",
                ask.messages
            )));
        }
        self.admit(ask.messages)
    }

    /// Takes `messages` from the caller's own rate, all or nothing.
    fn admit(&self, messages: usize) -> Result<(), Refusal> {
        let Some((_, limiter)) = &self.rate else {
            return Ok(());
        };
        let limited = |retry_after| Refusal::RateLimited {
            caller: self.name.clone(),
            retry_after,
        };
        let Some(cells) = u32::try_from(messages).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiter.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let clock = governor::clock::DefaultClock::default();
                Err(limited(Some(not_until.wait_time_from(clock.now()))))
            }
            Err(_insufficient) => Err(limited(None)),
        }
    }

    fn lacks(&self, what: String) -> Refusal {
        Refusal::NotAllowed {
            caller: self.name.clone(),
            lacks: what,
        }
    }
}

/// The RPC group a `notify.v1` path belongs to; `None` for another method (which tonic answers
/// UNIMPLEMENTED) or a path outside `notify.v1`.
pub fn rpc_of(path: &str) -> Option<Rpc> {
    match path {
        "/notify.v1.NotifyService/SendSubscribe" => Some(Rpc::Send),
        "/notify.v1.NotifyService/BatchSend" => Some(Rpc::Batch),
        _ if path.starts_with("/notify.v1.SubscriptionService/") => Some(Rpc::Subscriptions),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
