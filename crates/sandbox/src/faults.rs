//! Injected faults: an errcode, an HTTP status with a non-JSON body, a connection reset, or
//! latency, on the send,
//! the token or the template list endpoint, for the next N calls or until cleared, optionally for one openid or app.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The endpoint a fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultEndpoint {
    /// `POST /cgi-bin/message/subscribe/send`.
    #[default]
    Send,
    /// `GET /cgi-bin/token` and `POST /cgi-bin/stable_token`.
    Token,
    /// `GET /wxaapi/newtmpl/gettemplate`.
    Templates,
}

/// A fault to inject. Build one with [`Fault::errcode`], [`Fault::http_status`],
/// [`Fault::reset`] or [`Fault::latency`] and narrow it with the chained helpers.
///
/// A matching call first waits `latency` (if any); then, with `reset`, its connection is closed
/// without an answer; with `http_status`, it is answered with that status and a non-JSON body;
/// else, with `errcode`, with that errcode; else (latency
/// only) the call is processed normally and its answer held back by `latency`, so a client
/// that times out sees "outcome unknown" while the sandbox did act on the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Which endpoint.
    pub endpoint: FaultEndpoint,
    /// Answer this errcode (HTTP 200), with `errmsg` or the usual message for the code.
    pub errcode: Option<i32>,
    /// The errmsg for `errcode` (the ` rid: ...` suffix is added).
    pub errmsg: Option<String>,
    /// Answer this HTTP status with `body` (default: an nginx-style HTML page).
    pub http_status: Option<u16>,
    /// Body for `http_status`.
    pub body: Option<String>,
    /// Close the connection without an answer (the request was read; nothing is delivered),
    /// as a reset or a proxy dropping the connection does.
    pub reset: bool,
    /// Delay before answering.
    pub latency: Option<Duration>,
    /// Apply to this many matching calls, then disappear; `None`: until cleared.
    pub times: Option<u32>,
    /// Only sends to this openid (send endpoint only).
    pub openid: Option<String>,
    /// Only calls for this app.
    pub appid: Option<String>,
}

impl Fault {
    /// Answer `errcode` on the send endpoint, until cleared.
    pub fn errcode(errcode: i32) -> Self {
        Self {
            errcode: Some(errcode),
            ..Self::default()
        }
    }

    /// Answer HTTP `status` with a non-JSON body on the send endpoint, until cleared.
    pub fn http_status(status: u16) -> Self {
        Self {
            http_status: Some(status),
            ..Self::default()
        }
    }

    /// Close the connection of send calls without an answer, until cleared.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::default()
        }
    }

    /// Delay answers of the send endpoint by `latency`, until cleared.
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }

    /// Also delay the answer by `latency`.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Use this errmsg instead of the usual one for the errcode.
    pub fn with_errmsg(mut self, errmsg: impl Into<String>) -> Self {
        self.errmsg = Some(errmsg.into());
        self
    }

    /// Use this body for the HTTP status.
    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Apply to the next `n` matching calls only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Apply only to sends to `openid`.
    pub fn for_openid(mut self, openid: impl Into<String>) -> Self {
        self.openid = Some(openid.into());
        self
    }

    /// Apply only to calls for `appid`.
    pub fn for_app(mut self, appid: impl Into<String>) -> Self {
        self.appid = Some(appid.into());
        self
    }

    /// Apply to the token endpoints instead of the send endpoint.
    pub fn on_token_endpoint(mut self) -> Self {
        self.endpoint = FaultEndpoint::Token;
        self
    }

    /// Apply to the template list (`gettemplate`) instead of the send endpoint.
    pub fn on_templates_endpoint(mut self) -> Self {
        self.endpoint = FaultEndpoint::Templates;
        self
    }

    /// Checks the fault can ever do something.
    pub fn validate(&self) -> Result<(), String> {
        if self.errcode.is_none()
            && self.http_status.is_none()
            && !self.reset
            && self.latency.is_none()
        {
            return Err("a fault needs an errcode, an http_status, reset or a latency".to_string());
        }
        if self.reset && (self.errcode.is_some() || self.http_status.is_some()) {
            return Err("reset answers nothing: it takes no errcode or http_status".to_string());
        }
        if self.errcode == Some(0) {
            return Err("errcode 0 is not a fault".to_string());
        }
        if self.http_status.is_some_and(|s| !(100..=599).contains(&s)) {
            return Err("http_status must be between 100 and 599".to_string());
        }
        if self.times == Some(0) {
            return Err("times must be at least 1".to_string());
        }
        if self.openid.is_some() && self.endpoint != FaultEndpoint::Send {
            return Err("openid only applies to the send endpoint".to_string());
        }
        Ok(())
    }

    fn matches(&self, endpoint: FaultEndpoint, appid: Option<&str>, openid: Option<&str>) -> bool {
        self.endpoint == endpoint
            && self.appid.as_deref().is_none_or(|want| Some(want) == appid)
            && self
                .openid
                .as_deref()
                .is_none_or(|want| Some(want) == openid)
    }
}

/// What a matching fault makes the sandbox do with one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FaultAction {
    pub latency: Option<Duration>,
    /// `Some` when the call is answered by the fault instead of processed.
    pub answer: Option<FaultAnswer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FaultAnswer {
    /// Close the connection without an answer.
    Reset,
    Http {
        status: u16,
        body: Option<String>,
    },
    Errcode {
        errcode: i32,
        errmsg: Option<String>,
    },
}

/// An injected fault and its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActiveFault {
    /// Id, for listings.
    pub id: u64,
    /// The fault; `times` counts down as it is used.
    #[serde(flatten, with = "fault_json")]
    pub fault: Fault,
}

/// The injected faults, in injection order.
#[derive(Default)]
pub(crate) struct FaultSet {
    faults: Vec<ActiveFault>,
    next_id: u64,
}

impl FaultSet {
    pub fn add(&mut self, fault: Fault) -> u64 {
        self.next_id += 1;
        self.faults.push(ActiveFault {
            id: self.next_id,
            fault,
        });
        self.next_id
    }

    pub fn clear(&mut self) -> usize {
        std::mem::take(&mut self.faults).len()
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        self.faults.clone()
    }

    /// The first fault (in injection order) matching the call, used up by one.
    pub fn take(
        &mut self,
        endpoint: FaultEndpoint,
        appid: Option<&str>,
        openid: Option<&str>,
    ) -> Option<FaultAction> {
        if self.faults.is_empty() {
            return None;
        }
        let index = self
            .faults
            .iter()
            .position(|f| f.fault.matches(endpoint, appid, openid))?;
        let fault = &mut self.faults[index].fault;
        let action = FaultAction {
            latency: fault.latency,
            answer: match (fault.http_status, fault.errcode) {
                _ if fault.reset => Some(FaultAnswer::Reset),
                (Some(status), _) => Some(FaultAnswer::Http {
                    status,
                    body: fault.body.clone(),
                }),
                (None, Some(errcode)) => Some(FaultAnswer::Errcode {
                    errcode,
                    errmsg: fault.errmsg.clone(),
                }),
                (None, None) => None,
            },
        };
        if let Some(times) = &mut fault.times {
            *times -= 1;
            if *times == 0 {
                self.faults.remove(index);
            }
        }
        Some(action)
    }
}

/// The JSON form of a fault, shared by `POST /sandbox/faults` and listings: durations in ms.
pub(crate) mod fault_json {
    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FaultJson {
        #[serde(default)]
        pub endpoint: FaultEndpoint,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub errcode: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub errmsg: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub http_status: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub body: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub reset: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub latency_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub times: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub openid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub appid: Option<String>,
    }

    impl From<FaultJson> for Fault {
        fn from(json: FaultJson) -> Self {
            Fault {
                endpoint: json.endpoint,
                errcode: json.errcode,
                errmsg: json.errmsg,
                http_status: json.http_status,
                body: json.body,
                reset: json.reset,
                latency: json.latency_ms.map(Duration::from_millis),
                times: json.times,
                openid: json.openid,
                appid: json.appid,
            }
        }
    }

    pub fn serialize<S: serde::Serializer>(
        fault: &Fault,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        FaultJson {
            endpoint: fault.endpoint,
            errcode: fault.errcode,
            errmsg: fault.errmsg.clone(),
            http_status: fault.http_status,
            body: fault.body.clone(),
            reset: fault.reset,
            latency_ms: fault.latency.map(|d| d.as_millis() as u64),
            times: fault.times,
            openid: fault.openid.clone(),
            appid: fault.appid.clone(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_disappear_after_n_uses() {
        let mut set = FaultSet::default();
        set.add(Fault::errcode(-1).times(2));
        for _ in 0..2 {
            let action = set.take(FaultEndpoint::Send, None, None).unwrap();
            assert_eq!(
                action.answer,
                Some(FaultAnswer::Errcode {
                    errcode: -1,
                    errmsg: None
                })
            );
        }
        assert_eq!(set.take(FaultEndpoint::Send, None, None), None);
    }

    #[test]
    fn faults_match_endpoint_openid_and_app() {
        let mut set = FaultSet::default();
        set.add(Fault::errcode(43101).for_openid("u1").for_app("a1"));
        set.add(Fault::http_status(502).on_token_endpoint());
        assert!(
            set.take(FaultEndpoint::Send, Some("a1"), Some("u2"))
                .is_none()
        );
        assert!(
            set.take(FaultEndpoint::Send, Some("a2"), Some("u1"))
                .is_none()
        );
        assert!(
            set.take(FaultEndpoint::Send, Some("a1"), Some("u1"))
                .is_some()
        );
        let token = set.take(FaultEndpoint::Token, Some("a1"), None).unwrap();
        assert!(matches!(
            token.answer,
            Some(FaultAnswer::Http { status: 502, .. })
        ));
        assert_eq!(set.list().len(), 2);
        assert_eq!(set.clear(), 2);
    }

    #[test]
    fn latency_only_faults_do_not_answer() {
        let mut set = FaultSet::default();
        set.add(Fault::latency(Duration::from_secs(3)));
        let action = set.take(FaultEndpoint::Send, None, None).unwrap();
        assert_eq!(action.latency, Some(Duration::from_secs(3)));
        assert_eq!(action.answer, None);
    }

    #[test]
    fn useless_faults_are_refused() {
        assert!(Fault::default().validate().is_err());
        assert!(Fault::errcode(0).validate().is_err());
        assert!(Fault::http_status(99).validate().is_err());
        assert!(Fault::errcode(1).times(0).validate().is_err());
        assert!(
            Fault::errcode(1)
                .on_token_endpoint()
                .for_openid("x")
                .validate()
                .is_err()
        );
        assert!(Fault::http_status(502).validate().is_ok());
        assert!(Fault::reset().validate().is_ok());
        assert!(
            Fault {
                errcode: Some(-1),
                ..Fault::reset()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn a_reset_fault_answers_nothing() {
        let mut set = FaultSet::default();
        set.add(Fault::reset().on_token_endpoint().times(1));
        let action = set.take(FaultEndpoint::Token, None, None).unwrap();
        assert_eq!(action.answer, Some(FaultAnswer::Reset));
        assert_eq!(set.take(FaultEndpoint::Token, None, None), None);
    }
}
