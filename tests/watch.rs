//! `watch`: the master reloads when its executable is replaced, once the
//! file has been quiet, and rolls a broken build back like any failed
//! reload. The development loop: rebuild, and the new code serves.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::{temp_dir, testapp, write_executable, TIMEOUT as T};

#[test]
fn a_replaced_executable_is_reloaded_once_and_a_broken_build_rolled_back() {
    let dir = temp_dir("watch");
    let app = dir.join("app");
    graceful_dev::copy_executable(&testapp(), &app);
    let service = Service::start(&app, &["127.0.0.1:0"], &[("GRACEFUL_WATCH", "1")]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    service.wait_line("for a new build to reload", T);

    // A build renamed over the path: one reload.
    graceful_dev::copy_executable(&testapp(), &dir.join("app.new"));
    std::fs::rename(dir.join("app.new"), &app).unwrap();
    service.wait_line("reload started (the executable changed)", T);
    service.ready_worker(2, T);
    service.wait_line("worker 1 (pid", T);
    service.wait_line_n("after draining", 0, T);
    assert_eq!(
        service.count_lines("reload started"),
        1,
        "{}",
        service.log_text()
    );

    // A build written slowly in place of a removed file (as a linker or a
    // copy does), with pauses longer than the master's quiet window (a
    // busy machine, a slow disk): one reload, once the writer closes the
    // file, and none of a file still open (it cannot run: ETXTBSY).
    std::fs::remove_file(&app).unwrap();
    let bytes = std::fs::read(testapp()).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&app)
        .unwrap();
    for chunk in bytes.chunks(bytes.len() / 3 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    drop(file);
    service.ready_worker(3, T);
    service.wait_line_n("after draining", 1, T);
    assert_eq!(
        service.count_lines("reload started"),
        2,
        "{}",
        service.log_text()
    );
    assert_eq!(
        service.count_lines("reload failed"),
        0,
        "{}",
        service.log_text()
    );
    // The master upgraded in place on each reload and carried its watch
    // across the exec. Waited for before the broken build is written, so
    // that its reload is the next one (a build written during the
    // master's check is left for the next reload:
    // tests/upgrade.rs checks that).
    service.wait_line_n("master upgraded in place", 1, T);
    assert_eq!(
        service.count_lines("did not survive"),
        0,
        "{}",
        service.log_text()
    );

    // A broken build: rolled back, worker 3 keeps serving.
    std::fs::remove_file(&app).unwrap();
    write_executable("#!/bin/sh\nexit 3\n", &app);
    let failed = service.wait_line("reload failed", T);
    assert!(
        failed.contains("exited with status 3 before it was ready"),
        "{failed}"
    );
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    drop(service);
}
