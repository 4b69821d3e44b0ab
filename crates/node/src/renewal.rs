//! When a node renews its certificate (DESIGN.md §6): at a random point
//! between 50 % and 80 % of its lifetime, drawn from the daemon's seeded
//! generator, so a fleet issued at once does not renew at once.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use shoal_manager::certificate_authority::CLOCK_SKEW;
use tokio::sync::watch;

use crate::certificates::NodeCertificates;

/// The shortest wait before a retry when renewing failed.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Keeps the certificate in `dir` renewed until `stop`: at each point
/// [`renew_in`] draws, `renew` is given the current files, and a failure is
/// retried with backoff ([`RETRY_MIN`] to [`RETRY_MAX`]). `who` names the
/// node in the log.
pub async fn keep_renewed<F, Fut>(
    dir: &Path,
    who: &str,
    mut rng: impl Rng,
    mut stop: watch::Receiver<bool>,
    mut renew: F,
) where
    F: FnMut(NodeCertificates) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut retry = RETRY_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(current) = NodeCertificates::read(dir) else {
            tracing::error!("{who}'s certificates are gone from {}", dir.display());
            return;
        };
        let wait = renew_in(&current.cert_pem, SystemTime::now(), &mut rng);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew(current).await {
            Ok(()) => {
                tracing::info!("{who}'s certificate was renewed");
                retry = RETRY_MIN;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing {who}'s certificate failed; retrying");
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// How long from `now` until the certificate `cert_pem` is renewed; zero
/// when that point has passed (or the certificate cannot be read).
pub fn renew_in(cert_pem: &str, now: SystemTime, rng: &mut impl Rng) -> Duration {
    let Ok((not_before, not_after)) = shoal_ca::certificate_validity(cert_pem) else {
        return Duration::ZERO;
    };
    // Certificates are valid from CLOCK_SKEW before they were issued.
    let issued = not_before + CLOCK_SKEW.as_secs() as i64;
    let lifetime = (not_after - issued).max(0) as f64;
    let at = issued as f64 + lifetime * rng.gen_range(0.5..0.8);
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Duration::from_secs_f64((at - now).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use shoal_ca::{NodeIdentity, NodeKey, Role, RootCa};

    fn certificate(issued: SystemTime, lifetime: Duration) -> String {
        let ca = RootCa::create("c1", issued).unwrap();
        let key = NodeKey::generate("n1").unwrap();
        let identity = NodeIdentity {
            node_id: "n1".into(),
            role: Role::Worker,
            cluster_id: "c1".into(),
        };
        ca.issue(
            key.request_pem(),
            &identity,
            &[],
            issued - CLOCK_SKEW,
            issued + lifetime,
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_is_renewed_between_half_and_four_fifths_of_its_life() {
        let issued = SystemTime::now();
        let lifetime = Duration::from_secs(1_000);
        let cert = certificate(issued, lifetime);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = Vec::new();
        for _ in 0..200 {
            let wait = renew_in(&cert, issued, &mut rng);
            // Whole seconds in the certificate: a second either way.
            assert!(wait >= Duration::from_secs(499), "{wait:?}");
            assert!(wait <= Duration::from_secs(801), "{wait:?}");
            seen.push(wait.as_secs());
        }
        // Spread over the window, not one point.
        let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        assert!(hi - lo > 200, "{lo}..{hi}");
    }

    #[test]
    fn a_certificate_past_its_renewal_point_is_renewed_at_once() {
        let issued = SystemTime::now() - Duration::from_secs(900);
        let cert = certificate(issued, Duration::from_secs(1_000));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(renew_in(&cert, SystemTime::now(), &mut rng), Duration::ZERO);
        assert_eq!(
            renew_in("not a certificate", SystemTime::now(), &mut rng),
            Duration::ZERO
        );
    }
}
