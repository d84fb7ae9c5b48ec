//! What `/proc` says about a process: resident memory, CPU time, open
//! file descriptors. For the benchmarks that watch the runtimes they load.

/// A `kB` field of `/proc/<pid>/status` (`"VmRSS:"`, `"RssAnon:"`,
/// `"RssShmem:"`, `"VmHWM:"` …); 0 when the process or the field is gone.
pub fn status_kb(pid: u32, key: &str) -> u64 {
    status_field(format!("/proc/{pid}/status"), key)
}

/// The number after `key` in a `status` file; 0 when it or the file is gone.
fn status_field(path: impl AsRef<std::path::Path>, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The calling thread's time on a CPU in nanoseconds
/// (`/proc/thread-self/schedstat`) and its voluntary context switches;
/// zeros when they cannot be read.
pub fn this_thread() -> (u64, u64) {
    let cpu_ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (
        cpu_ns,
        status_field("/proc/thread-self/status", "voluntary_ctxt_switches:"),
    )
}

/// User plus system CPU time of the process, in clock ticks (see
/// [`ticks_per_sec`]); 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100
/// when that cannot be asked).
pub fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Open file descriptors of the process (entries of `/proc/<pid>/fd`); 0
/// when it is gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Voluntary context switches of all the process's threads (each one a
/// thread that blocked and had to be woken again); 0 when it is gone.
pub fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| status_field(t.path().join("status"), "voluntary_ctxt_switches:"))
        .sum()
}
