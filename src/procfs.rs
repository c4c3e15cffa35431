//! Reading `/proc`: whether a process lives, its children, zombies, CPU
//! time, memory and descriptors.

use std::time::{Duration, Instant};

/// The fields of `/proc/PID/stat` after the command name: `[0]` state,
/// `[1]` parent PID, `[11]` user and `[12]` system CPU ticks.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit(')').next()?;
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

/// Every process, as `(pid, stat fields)`.
fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?)))
        .collect()
}

fn is_live_state(fields: &[String]) -> bool {
    fields
        .first()
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| is_live_state(&fields))
}

/// Waits until `pid` has exited (or is a zombie), up to `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !is_alive(pid)
}

/// Live children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    processes()
        .into_iter()
        .filter(|(_, f)| f.get(1) == Some(&parent) && is_live_state(f))
        .map(|(child, _)| child)
        .collect()
}

/// Unreaped (zombie) children of `pid`, from /proc.
pub fn zombies_of(pid: i32) -> Vec<i32> {
    let parent = pid.to_string();
    processes()
        .into_iter()
        .filter(|(_, f)| f.get(1) == Some(&parent) && f.first().is_some_and(|s| s == "Z"))
        .map(|(child, _)| child)
        .collect()
}

/// User + system CPU time of a process, from /proc (zero if it is gone).
pub fn cpu_time(pid: i32) -> Duration {
    let fields = stat_fields(pid).unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// The time a process's threads have run on a CPU, to the nanosecond
/// (the first field of each `/proc/PID/task/TID/schedstat`), where
/// [`cpu_time`] counts clock ticks (10 ms). Zero if it is gone.
pub fn run_time(pid: i32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// The rest of the `/proc/PID/status` line that starts with `key`, such as
/// `"NSpid:"`.
pub fn status_line(pid: i32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line[key.len()..].trim().to_string())
}

/// A numeric field of `/proc/PID/status`, such as `"VmRSS:"` (KiB) or `"Threads:"`.
pub fn status_value(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
