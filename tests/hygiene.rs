//! Resource hygiene across many reloads, and descriptor hygiene in workers.

use graceful_dev::http::get;
use graceful_dev::process::Service;
use graceful_dev::procfs::{children_of, fd_count, status_value, zombies_of};
use graceful_dev::testapp;
use nix::sys::signal::Signal;

use graceful_dev::TIMEOUT as T;

#[test]
fn a_thousand_reloads_leak_nothing_in_the_master() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let addr = service.addr(T);
    service.ready_worker(1, T);
    // Each reload ends when the old worker has exited and the master has
    // upgraded itself in place: until then the master may hold the state's
    // pipe, or be a new image still loading.
    let reload = |n: usize| {
        service.signal(Signal::SIGHUP);
        service.wait_line_n("after draining", n, T);
        service.wait_line_n("master upgraded in place", n, T);
    };
    // Warm up: the first reloads allocate the master's tables.
    for n in 0..10 {
        reload(n);
    }
    let master = service.pid();
    // The anonymous memory of each new image (its heap and stacks, where a
    // leak carried from image to image would show), read once after each of
    // 11 reloads; the median is compared. Not VmRSS: its file-backed part
    // is the pages of the executable the image has run so far, which moved
    // by 272 KiB between two medians on a busy machine with nothing leaked.
    // The file-backed part's own median is printed beside it.
    let rss_median = |reloads: std::ops::Range<usize>| {
        let (mut anon, mut file): (Vec<u64>, Vec<u64>) = reloads
            .map(|n| {
                reload(n);
                (
                    status_value(master, "RssAnon:").expect("RssAnon"),
                    status_value(master, "RssFile:").expect("RssFile"),
                )
            })
            .unzip();
        anon.sort_unstable();
        file.sort_unstable();
        (anon[anon.len() / 2], file[file.len() / 2])
    };
    let fds = fd_count(master);
    let (anon, file) = rss_median(10..21);
    for n in 21..989 {
        reload(n);
    }
    let (anon_after, file_after) = rss_median(989..1000);
    assert_eq!(get(&addr, "/").unwrap().0, 200);
    let fds_after = fd_count(master);
    println!(
        "master after 1000 reloads: fds {fds} -> {fds_after}, anonymous memory (median of 11 reloads) {anon} KiB -> {anon_after} KiB, file-backed {file} KiB -> {file_after} KiB"
    );
    assert_eq!(fds_after, fds, "the master's open descriptors changed");
    assert!(
        anon_after <= anon + 256,
        "the master's anonymous memory grew from {anon} KiB to {anon_after} KiB"
    );
    assert_eq!(zombies_of(master), Vec::<i32>::new(), "unreaped workers");
    assert_eq!(children_of(master).len(), 1, "one worker is left");
    assert_eq!(service.count_lines("reload finished"), 1000);
}

#[test]
fn worker_sockets_are_close_on_exec() {
    let service = Service::start(&testapp(), &["127.0.0.1:0"], &[]);
    let worker = service.ready_worker(1, T);
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        sockets += 1;
        let fd = entry.file_name().into_string().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{worker}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim();
        let flags = u32::from_str_radix(flags, 8).unwrap();
        assert_ne!(
            flags & 0o2000000,
            0,
            "socket fd {fd} of worker {worker} is not CLOEXEC"
        );
    }
    // The listener and the control socket, at least.
    assert!(sockets >= 2, "found {sockets} sockets");
}
