//! Leader election with a `coordination.k8s.io` Lease, so that two operator replicas can run and
//! only one acts. Written here rather than taken from a crate: the leader-election crates on
//! crates.io today target older kube major versions (kube-leader-election 0.43 needs kube 3,
//! kube-coordinate 2.0 kube 2), and the protocol is small.
//!
//! Every `retry` the candidate reads the Lease: it renews it when it holds it, takes it when it
//! is free or its holder has not renewed for `duration`, and otherwise waits. Writes carry the
//! Lease's `resourceVersion`, so of two candidates racing for an expired Lease exactly one
//! succeeds. A leader that cannot renew within its renew deadline (two thirds of `duration`, as
//! client-go's defaults have it) stops leading — the process exits, and Kubernetes restarts it
//! as a candidate — well before a standby may take the Lease (`duration` after the last
//! renewal), so two replicas never act at once; every round is bounded by that deadline, so a
//! hanging API call cannot stretch it. A leader that stops releases the Lease so that the other
//! takes over at once.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::sync::watch;

/// A candidate for the Lease `name` in `namespace`.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    retry: Duration,
    renew_deadline: Duration,
}

/// What a Lease says about a candidate at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It holds the Lease: renew.
    Holder,
    /// Nobody holds it, or the holder's renewal is older than its duration: take it.
    Free,
    /// Another holds it.
    Other,
}

/// The pure rule: who may write the Lease.
pub fn standing(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Standing {
    let Some(spec) = spec else { return Standing::Free };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Standing::Holder,
        None | Some("") => Standing::Free,
        Some(_) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
            match renewed {
                Some(t) if t + SignedDuration::from_secs(seconds) > now => Standing::Other,
                _ => Standing::Free,
            }
        }
    }
}

impl Elector {
    /// A candidate named `identity` (the pod's name) for a Lease held `duration` at a time.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            retry: duration / 5,
            renew_deadline: duration * 2 / 3,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp, taking: bool) -> LeaseSpec {
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: if taking { Some(MicroTime(now)) } else { previous.and_then(|p| p.acquire_time.clone()) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if taking && previous.is_some() { transitions + 1 } else { transitions }),
            ..LeaseSpec::default()
        }
    }

    /// One round: `Ok(true)` when this candidate holds the Lease afterwards.
    async fn round(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                    spec: Some(self.spec(None, now, true)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let standing = standing(lease.spec.as_ref(), &self.identity, now);
                if standing == Standing::Other {
                    return Ok(false);
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), now, standing == Standing::Free));
                // `replace` sends the resourceVersion read above: a concurrent write makes it 409.
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Campaign until `stop`: `leading` follows whether this candidate leads. Returns when
    /// stopped (after releasing a held Lease) or when leadership was lost (`false`).
    pub async fn run(self, leading: watch::Sender<bool>, stop: tokio_util::sync::CancellationToken) -> bool {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            // A leader's round may take only what is left of its renew deadline.
            let budget = match last_renewal {
                Some(t) => self.renew_deadline.saturating_sub(t.elapsed()).min(self.retry),
                None => self.retry,
            };
            let result = match tokio::time::timeout(budget, self.round()).await {
                Ok(r) => r,
                Err(_) => Err(kube::Error::Service(format!("no answer within {budget:?}").into())),
            };
            match result {
                Ok(true) => {
                    if last_renewal.is_none() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                    leading.send_replace(true);
                }
                Ok(false) if last_renewal.is_some() => {
                    tracing::error!(lease = %self.name, "the Lease was taken by another replica: stopping");
                    leading.send_replace(false);
                    return false;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "Lease round failed");
                    if last_renewal.is_some_and(|t| t.elapsed() + self.retry / 4 >= self.renew_deadline) {
                        tracing::error!(lease = %self.name, "could not renew the Lease in time: stopping");
                        leading.send_replace(false);
                        return false;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = stop.cancelled() => break,
            }
        }
        if last_renewal.is_some() {
            self.release().await;
        }
        true
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.name, "released the Lease"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "releasing the Lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn who_may_write_the_lease() {
        let now: Timestamp = "2026-01-01T00:00:20Z".parse().unwrap();
        assert_eq!(standing(None, "a", now), Standing::Free);
        assert_eq!(standing(Some(&spec(Some("a"), "2026-01-01T00:00:00Z")), "a", now), Standing::Holder);
        assert_eq!(standing(Some(&spec(Some("b"), "2026-01-01T00:00:10Z")), "a", now), Standing::Other);
        assert_eq!(standing(Some(&spec(Some("b"), "2026-01-01T00:00:04Z")), "a", now), Standing::Free, "expired");
        assert_eq!(standing(Some(&spec(None, "2026-01-01T00:00:19Z")), "a", now), Standing::Free, "released");
    }
}
