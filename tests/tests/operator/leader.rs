//! Two replicas never act at once: one holds the Lease, the other waits, and takes over when
//! the first goes.

use std::time::Duration;

use vramkeeper_e2e::{ApiServerDouble, wait::DEADLINE, wait_until};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_goes() {
    let double = ApiServerDouble::start().await;
    let a = Operator::start(&double, "replica-a").await;
    wait_until("replica-a to lead", DEADLINE, || async { a.leads() }).await;
    let b = Operator::start(&double, "replica-b").await;
    // Over several renewals (1 s each, lease 3 s), never both.
    for _ in 0..20 {
        assert!(!(a.leads() && b.leads()), "both replicas lead");
        assert!(a.leads(), "replica-a lost the lease it renews");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let holder = |d: &ApiServerDouble| {
        d.get(
            "coordination.k8s.io",
            "leases",
            Some(NS),
            "vramkeeper-operator",
        )
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    assert_eq!(holder(&double).as_deref(), Some("replica-a"));

    a.stop().await.expect("a clean stop");
    wait_until("replica-b to lead", DEADLINE, || async { b.leads() }).await;
    assert_eq!(holder(&double).as_deref(), Some("replica-b"));
    b.stop().await.expect("a clean stop");
    assert_rbac_covers(&double);
}
