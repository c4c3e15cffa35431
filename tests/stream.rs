//! A stream protocol (examples/echo.rs, a line echo) reloads like HTTP: 20
//! reloads while clients open short connections back to back and hold long
//! ones. No connection is refused or reset, every echoed line is right, and
//! every long connection ends with the handler's goodbye.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use graceful_dev::process::Service;
use graceful_dev::{built, TIMEOUT as T};
use nix::sys::signal::Signal;

const RELOADS: usize = 20;

/// One exchange on a new connection: a line out, the same line back.
fn exchange(addr: &str, line: &str) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream)
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = String::new();
    reader
        .read_line(&mut back)
        .map_err(|e| format!("read: {e}"))?;
    if back == format!("{line}\n") {
        Ok(())
    } else {
        // "goodbye": the worker drained between the accept and the line.
        // A real client retries; it is counted apart, and must be rare.
        Err(format!("answered {back:?} to {line:?}"))
    }
}

#[test]
fn twenty_reloads_lose_no_stream_connection() {
    let service = Service::start(&built("echo"), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|client| {
            let (addr, stop, done, errors) =
                (addr.clone(), stop.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match exchange(&addr, &format!("client {client} line {n}")) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    for reload in 0..RELOADS {
        // A long connection on the serving worker, held across the reload.
        let long = TcpStream::connect(&addr).unwrap();
        long.set_read_timeout(Some(T)).unwrap();
        let mut reader = BufReader::new(long.try_clone().unwrap());
        (&long).write_all(b"long\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "long\n");
        let before = done.load(Ordering::Relaxed);
        service.signal(Signal::SIGHUP);
        service.wait_line_n("reload finished", reload, T);
        // The long connection ends politely: the goodbye line, then EOF.
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "goodbye\n", "reload {}", reload + 1);
        line.clear();
        assert_eq!(reader.read_line(&mut line).unwrap(), 0);
        // Short connections kept flowing.
        let deadline = std::time::Instant::now() + T;
        while done.load(Ordering::Relaxed) < before + 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress after reload {}",
                reload + 1
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    let done = done.load(Ordering::Relaxed);
    println!(
        "{done} short connections echoed across {RELOADS} reloads; {} not: {errors:?}",
        errors.len()
    );
    assert!(done > 0);
    assert!(
        errors.is_empty(),
        "{} of {} short connections failed: {errors:?}",
        errors.len(),
        done + errors.len() as u64
    );
    assert_eq!(service.count_lines("reload failed"), 0);
}
