//! gRPC through graceful: a tonic client calls the health service of
//! examples/grpc.rs while it is reloaded 10 times. No call fails. Two kinds
//! of call were never processed and are retried and counted apart: those
//! the server refused with GOAWAY (RFC 9113 §8.1.4), and those tonic had
//! queued on a connection that closed before it wrote them (tonic reports
//! them as `Cancelled`, from hyper's `Canceled`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use graceful_dev::process::Service;
use graceful_dev::{built, TIMEOUT as T};
use nix::sys::signal::Signal;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const RELOADS: usize = 10;

/// Whether the call was refused by the server's GOAWAY before it was
/// processed (the stream is above the last-stream-id, or refused).
/// Whether hyper never sent the call: it was queued on a connection that
/// closed first.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(e) = s.downcast_ref::<hyper::Error>() {
            return e.is_canceled();
        }
        source = s.source();
    }
    false
}

fn refused_by_goaway(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return (h2.is_go_away()
                && h2.is_remote()
                && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

#[test]
fn ten_reloads_under_grpc_load_fail_no_call() {
    let service = Service::start(&built("grpc"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let unsent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let channel = runtime.block_on(async {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            let (stop, ok, retried, unsent, failures) = (
                stop.clone(),
                ok.clone(),
                retried.clone(),
                unsent.clone(),
                failures.clone(),
            );
            runtime.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = HealthCheckRequest {
                        service: String::new(),
                    };
                    match client.check(request).await {
                        Ok(response)
                            if response.get_ref().status == ServingStatus::Serving as i32 =>
                        {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => failures.lock().unwrap().push(format!("{response:?}")),
                        Err(status) if refused_by_goaway(&status) => {
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) if never_sent(&status) => {
                            unsent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => failures.lock().unwrap().push(format!("{status:?}")),
                    }
                }
            })
        })
        .collect();
    for reload in 0..RELOADS {
        let before = ok.load(Ordering::Relaxed);
        service.signal(Signal::SIGHUP);
        service.wait_line_n("reload finished", reload, T);
        service.wait_line_n("after draining", reload, T);
        let deadline = std::time::Instant::now() + T;
        while ok.load(Ordering::Relaxed) < before + 300 {
            assert!(
                std::time::Instant::now() < deadline,
                "no calls after reload {}",
                reload + 1
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for caller in callers {
            caller.await.unwrap();
        }
    });
    let failures = failures.lock().unwrap();
    let (ok, retried) = (ok.load(Ordering::Relaxed), retried.load(Ordering::Relaxed));
    let unsent = unsent.load(Ordering::Relaxed);
    println!(
        "grpc: {ok} calls answered SERVING across {RELOADS} reloads; retried: {retried} refused by GOAWAY, {unsent} never sent; {} failed",
        failures.len()
    );
    assert!(ok > 0);
    assert!(retried + unsent < ok, "more calls retried than answered");
    assert!(
        failures.is_empty(),
        "{} calls failed: {failures:?}",
        failures.len()
    );
    assert_eq!(service.count_lines("reload failed"), 0);
}
