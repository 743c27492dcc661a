//! What the benchmarks read off the machine.

/// CPU time (user + system) a process has used so far, in seconds; 0 when
/// it cannot be read (not Linux, process gone).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) end with ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // Clock ticks are 100 a second on Linux for every architecture we run on.
    ticks / 100.0
}

/// The most resident memory a process has had (VmHWM), in KiB; 0 when it
/// cannot be read.
pub fn peak_rss_kb(pid: Option<u32>) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// A process's resident memory now (VmRSS), in KiB; 0 when it cannot be
/// read.
#[allow(dead_code)] // not every benchmark reads it
pub fn rss_kb(pid: Option<u32>) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn status_kb(pid: Option<u32>, field: &str) -> u64 {
    let Some(status) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
    else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
