//! The service's metrics in the Prometheus text format (version 0.0.4): what
//! `graceful metrics` prints and the [`metrics`] handler serves. A master
//! renders them from its status and counters; a single-mode process has no
//! master and renders what it knows of itself.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use http::{Request, Response, StatusCode};

use crate::status::{Status, RELOAD_BUCKETS_MS};

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the handler waits for the master's answer.
#[cfg(unix)]
const MASTER_ANSWER: Duration = Duration::from_secs(3);

/// One metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics of a service whose serving process, or master, is `pid`,
/// with `status`; the counters are left out where there are none (single
/// mode).
/// `text` as a label value of the text format: a backslash and a double
/// quote escaped (a version has no line breaks).
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub(crate) fn render(pid: u32, status: &Status) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "graceful_info",
        "gauge",
        "The graceful version, and the PID of the master (or of the single-mode process).",
    );
    let _ = writeln!(
        out,
        "graceful_info{{version=\"{}\",pid=\"{pid}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let workers = [
        ("starting", usize::from(status.starting.is_some())),
        ("serving", usize::from(status.serving.is_some())),
        ("draining", status.draining.len()),
    ];
    family(&mut out, "graceful_workers", "gauge", "Workers by state.");
    for (state, count) in workers {
        let _ = writeln!(out, "graceful_workers{{state=\"{state}\"}} {count}");
    }
    family(
        &mut out,
        "graceful_open_connections",
        "gauge",
        "Open connections of each worker, by generation, as it answered just now.",
    );
    let all = status
        .serving
        .iter()
        .chain(&status.starting)
        .chain(&status.draining);
    for worker in all {
        if let Some(connections) = worker.connections {
            let _ = writeln!(
                out,
                "graceful_open_connections{{generation=\"{}\"}} {connections}",
                worker.generation
            );
        }
    }
    // (state, generation, build) of each worker that said its build.
    let builds: Vec<(&str, u64, &str)> =
        [("serving", &status.serving), ("starting", &status.starting)]
            .into_iter()
            .filter_map(|(state, worker)| Some((state, worker.as_ref()?)))
            .chain(status.draining.iter().map(|worker| ("draining", worker)))
            .filter_map(|(state, worker)| {
                Some((state, worker.generation, worker.build.as_deref()?))
            })
            .collect();
    if !builds.is_empty() {
        family(
            &mut out,
            "graceful_worker_build_info",
            "gauge",
            "The application's build each worker reported (its version option), by generation and state.",
        );
    }
    for (state, generation, build) in builds {
        let _ = writeln!(
            out,
            "graceful_worker_build_info{{generation=\"{generation}\",state=\"{state}\",version=\"{}\"}} 1",
            label_value(build)
        );
    }
    let Some(counters) = &status.counters else {
        return out;
    };
    family(
        &mut out,
        "graceful_reloads_total",
        "counter",
        "Reloads, by how they ended.",
    );
    let _ = writeln!(
        out,
        "graceful_reloads_total{{outcome=\"succeeded\"}} {}",
        counters.reloads_succeeded()
    );
    let _ = writeln!(
        out,
        "graceful_reloads_total{{outcome=\"failed\"}} {}",
        counters.reloads_failed
    );
    let plain = [
        (
            "graceful_worker_starts_total",
            "Workers started.",
            counters.worker_starts,
        ),
        (
            "graceful_worker_crashes_total",
            "Serving workers that exited without being told to stop.",
            counters.worker_crashes,
        ),
        (
            "graceful_connections_drained_total",
            "Connections that ended in a worker's drain.",
            counters.connections_drained,
        ),
        (
            "graceful_connections_cut_total",
            "Connections cut at stop_timeout.",
            counters.connections_cut,
        ),
    ];
    for (name, help, value) in plain {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "graceful_reload_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "How long each successful reload's new worker took to be ready.",
    );
    let mut cumulative = 0;
    for (i, count) in counters.reload_buckets.iter().enumerate() {
        cumulative += count;
        let le = match RELOAD_BUCKETS_MS.get(i) {
            Some(ms) => seconds(Duration::from_millis(*ms)),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let sum = seconds(Duration::from_millis(counters.reload_ms_sum));
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {cumulative}");
    out
}

/// A duration in seconds as the text format writes it: `0.025`, `1`.
fn seconds(duration: Duration) -> String {
    let text = format!("{:.3}", duration.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// A handler that serves the service's metrics in the Prometheus text
/// format, for a scrape route:
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use http::{Request, Response};
/// # use hyper::body::Incoming;
/// async fn admin(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
///     match req.uri().path() {
///         "/metrics" => graceful::metrics(req).await,
///         _ => graceful::health(req).await,
///     }
/// }
///
/// #[graceful::main]
/// async fn main() {
///     graceful::register!(":8081", admin);
/// }
/// ```
///
/// In a worker it asks the master, which answers for the whole service (as
/// `graceful metrics` does): reloads by outcome, worker starts and crashes,
/// workers by state, open connections and builds by generation, reload durations,
/// connections drained and cut, and `graceful_info` with the version and
/// the master's PID. A single-mode process answers for itself: the info,
/// itself as the serving worker, and its open connections. `503` if the
/// master does not answer within 3 s, or is a build without metrics.
pub async fn metrics(_req: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
    let (status, body) = match collect().await {
        Ok(text) => (StatusCode::OK, text),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    };
    Ok(crate::health::uncached(status, CONTENT_TYPE, body))
}

/// The metrics text, from the master or from this process.
async fn collect() -> Result<String, String> {
    #[cfg(unix)]
    if let Some(answer) = crate::worker::request_metrics() {
        let answer = answer?;
        return match tokio::time::timeout(MASTER_ANSWER, answer).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(_)) => Err("the master is gone".into()),
            Err(_) => Err(format!(
                "the master did not answer within {MASTER_ANSWER:?}"
            )),
        };
    }
    Ok(render(std::process::id(), &local_status()))
}

/// This process as the one serving worker, with its open connections.
fn local_status() -> Status {
    let now = std::time::Instant::now();
    Status {
        state: if crate::health::is_ready() {
            "serving"
        } else {
            "stopping"
        },
        serving: Some(crate::status::WorkerStatus {
            generation: crate::log::generation(),
            pid: Some(std::process::id()),
            build: None,
            since: now,
            connections: Some(crate::drain::global().active() as u64),
        }),
        starting: None,
        draining: Vec::new(),
        last_reload: None,
        reloads_queued: false,
        counters: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Counters, WorkerStatus};

    fn status() -> Status {
        let now = std::time::Instant::now();
        let worker = |generation, connections| WorkerStatus {
            generation,
            pid: Some(100 + generation as u32),
            build: None,
            since: now,
            connections,
        };
        Status {
            state: "reloading",
            serving: Some(worker(4, Some(12))),
            starting: Some(worker(5, None)),
            draining: vec![worker(3, Some(2))],
            last_reload: None,
            reloads_queued: false,
            counters: None,
        }
    }

    #[test]
    fn the_text_format_has_every_family_with_its_labels() {
        let mut counters = Counters {
            reloads_failed: 1,
            worker_starts: 6,
            worker_crashes: 1,
            connections_drained: 40,
            connections_cut: 2,
            ..Counters::default()
        };
        counters.reloaded(Duration::from_millis(7));
        counters.reloaded(Duration::from_millis(40));
        counters.reloaded(Duration::from_secs(60));
        let text = render(
            42,
            &Status {
                counters: Some(counters),
                ..status()
            },
        );
        for line in [
            "graceful_info{version=\"0.1.0\",pid=\"42\"} 1",
            "graceful_workers{state=\"starting\"} 1",
            "graceful_workers{state=\"serving\"} 1",
            "graceful_workers{state=\"draining\"} 1",
            "graceful_open_connections{generation=\"4\"} 12",
            "graceful_open_connections{generation=\"3\"} 2",
            "graceful_reloads_total{outcome=\"succeeded\"} 3",
            "graceful_reloads_total{outcome=\"failed\"} 1",
            "graceful_worker_starts_total 6",
            "graceful_worker_crashes_total 1",
            "graceful_connections_drained_total 40",
            "graceful_connections_cut_total 2",
            "graceful_reload_duration_seconds_bucket{le=\"0.01\"} 1",
            "graceful_reload_duration_seconds_bucket{le=\"0.025\"} 1",
            "graceful_reload_duration_seconds_bucket{le=\"0.05\"} 2",
            "graceful_reload_duration_seconds_bucket{le=\"30\"} 2",
            "graceful_reload_duration_seconds_bucket{le=\"+Inf\"} 3",
            "graceful_reload_duration_seconds_sum 60.047",
            "graceful_reload_duration_seconds_count 3",
            "# TYPE graceful_reload_duration_seconds histogram",
            "# TYPE graceful_reloads_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A worker that did not answer has no connection count.
        assert!(!text.contains("generation=\"5\""), "{text}");
        // Nor any build info, when no worker said its build.
        assert!(!text.contains("graceful_worker_build_info"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn each_workers_build_is_an_info_sample_with_its_label_escaped() {
        let mut status = status();
        if let Some(serving) = &mut status.serving {
            serving.build = Some("app \"2\" \\ 1".into());
        }
        status.draining[0].build = Some("app 1".into());
        let text = render(7, &status);
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("graceful_worker_build_info"))
            .collect();
        assert_eq!(
            samples,
            [
                "graceful_worker_build_info{generation=\"4\",state=\"serving\",version=\"app \\\"2\\\" \\\\ 1\"} 1",
                "graceful_worker_build_info{generation=\"3\",state=\"draining\",version=\"app 1\"} 1",
            ]
        );
        assert!(text.contains("# TYPE graceful_worker_build_info gauge\n"));
    }

    #[test]
    fn without_counters_only_what_a_process_knows_of_itself() {
        let text = render(7, &status());
        assert!(text.contains("graceful_info{"));
        assert!(text.contains("graceful_open_connections{generation=\"4\"} 12"));
        assert!(!text.contains("graceful_reloads_total"), "{text}");
    }

    #[test]
    fn seconds_are_written_short() {
        assert_eq!(seconds(Duration::from_millis(25)), "0.025");
        assert_eq!(seconds(Duration::from_millis(1000)), "1");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.5");
        assert_eq!(seconds(Duration::ZERO), "0");
    }
}
