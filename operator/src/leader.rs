//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas
//! can run and only one reconciles. Updates use the Lease's resourceVersion
//! (optimistic concurrency): of two replicas racing for an expired Lease, one wins.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{PostParams, ResourceExt};
use kube::Api;
use std::time::Duration;
use tracing::{info, warn};

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration, renew: Duration) -> Self {
        LeaderElector { api, name, identity, duration, renew }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => warn!(lease = %self.name, %error, "leader election: API error"),
            }
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Renews the Lease until a renewal fails for longer than the Lease lasts
    /// (another replica may then take over), and returns then.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership taken by another replica");
                    return;
                }
                Err(error) => warn!(lease = %self.name, %error, "could not renew the Lease"),
            }
            if last_renewed.elapsed() >= self.duration {
                warn!(lease = %self.name, "Lease expired without renewal");
                return;
            }
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            warn!(lease = %self.name, %error, "could not release the Lease");
        }
    }

    /// One attempt: create, renew or take over an expired Lease. `Ok(false)` when
    /// another live holder has it or another replica won the race.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec_for(now, now, 0)),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() && !expired(&spec, now) {
            return Ok(false);
        }
        let new_spec = if mine {
            LeaseSpec { renew_time: Some(MicroTime(now)), ..spec }
        } else {
            self.spec_for(now, now, spec.lease_transitions.unwrap_or(0) + 1)
        };
        lease.spec = Some(new_spec);
        // replace() sends the resourceVersion we read: a concurrent change makes it fail with 409.
        conflict_is_false(self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await)
    }

    fn spec_for(&self, acquired: jiff::Timestamp, renewed: jiff::Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn expired(spec: &LeaseSpec, now: jiff::Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else { return true };
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() > renewed.as_second() + seconds
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}
