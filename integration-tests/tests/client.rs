//! The request client against a real broker.

use jobcast_client::{Client, ClientConfig};
use jobcast_integration_tests::*;
use jobcast_protocol::{AdminRequest, Reply, Secret};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_made_while_the_broker_is_down_are_all_delivered_in_order() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.parked]\npool = \"nobody\"\ncommand = \"true\"\n");
    tokio::task::block_in_place(|| cluster.kill_broker());
    let client = Client::connect_in_background(ClientConfig {
        endpoint: cluster.router.clone(),
        name: "admin".into(),
        secret: Secret::new(ADMIN_SECRET),
        connect_timeout: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(30),
    });
    // More than libzmq queues at once (its high-water mark is 1,000), none waited for,
    // all made while nothing listens: they wait in the client's own queue.
    for _ in 0..3_000 {
        drop(client.submit(AdminRequest::Enqueue {
            job: "parked".into(),
            key: None,
            params: Default::default(),
            priority: None,
        }));
    }
    let status = client.submit(AdminRequest::Status);
    tokio::task::block_in_place(|| cluster.start_broker());
    // Requests on one connection are handled in order: when this one is answered, every
    // enqueue before it has been, and none was refused for being older than the broker.
    let Reply::Status(status) = status.wait(Duration::from_secs(30)).await.expect("status") else {
        panic!("not a status reply");
    };
    assert_eq!(status.total_runs, 3_000);
}
