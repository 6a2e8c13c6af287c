//! A process's CPU time and resident memory, read from `/proc` before, during and after a run.

use std::future::Future;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second on
/// every architecture it exposes to user space (the kernel's own HZ may differ).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User plus system CPU time, in ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// What a process used while a run was going on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU seconds (user plus system) spent between the first and the last reading.
    pub cpu_s: f64,
    /// Resident memory before the run, KiB.
    pub rss_before_kib: u64,
    /// Resident memory after the run, KiB.
    pub rss_after_kib: u64,
    /// Largest resident memory seen, KiB.
    pub rss_peak_kib: u64,
    /// Readings taken, the first and last included.
    pub samples: u64,
    /// Context switches (voluntary and not) of the process's threads between the first and
    /// the last reading; threads that ended in between are not counted.
    #[serde(default)]
    pub context_switches: u64,
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status`; `pid` may be `self`.
pub fn read(pid: &str) -> io::Result<Sample> {
    // Plain blocking reads: /proc files are generated in memory, never wait on a disk.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let invalid = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    Ok(Sample {
        cpu_ticks: parse_cpu_ticks(&stat).ok_or_else(|| invalid("unreadable /proc stat"))?,
        rss_kib: parse_rss_kib(&status).ok_or_else(|| invalid("no VmRSS in /proc status"))?,
    })
}

/// Context switches of every thread of `pid`, summed from `/proc/{pid}/task/*/status`.
pub fn context_switches(pid: &str) -> io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        total += parse_context_switches(&status);
    }
    Ok(total)
}

fn parse_context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|line| {
            line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|line| line.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2, the command name, is in parentheses and may contain spaces or parentheses:
    // count fields from the last `)`, which is followed by field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Runs `work` while reading `pid` every `interval`: returns its output and the usage between
/// a reading just before and one just after it. Fails only if the process cannot be read
/// before the work starts; readings that fail later (the process died) are skipped.
pub async fn measure<T>(
    pid: &str,
    interval: Duration,
    work: impl Future<Output = T>,
) -> io::Result<(T, Usage)> {
    let before = read(pid)?;
    let switches_before = context_switches(pid)?;
    let mut peak = before.rss_kib;
    let mut samples = 1;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    let output = loop {
        tokio::select! {
            output = &mut work => break output,
            _ = ticker.tick() => {
                if let Ok(sample) = read(pid) {
                    peak = peak.max(sample.rss_kib);
                    samples += 1;
                }
            }
        }
    };
    let after = read(pid).unwrap_or(before);
    let switches_after = context_switches(pid).unwrap_or(switches_before);
    let usage = Usage {
        cpu_s: seconds(after.cpu_ticks.saturating_sub(before.cpu_ticks)),
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        rss_peak_kib: peak.max(after.rss_kib),
        samples: samples + 1,
        context_switches: switches_after.saturating_sub(switches_before),
    };
    Ok((output, usage))
}

/// CPU ticks of every process whose real user ID is `uid`, its reaped children's
/// included (`cutime` and `cstime`): a process that exits between two readings still
/// counts, in its parent's. Processes that cannot be read are skipped.
pub fn user_cpu_ticks(uid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let owned = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| parse_uid(&status))
            == Some(uid);
        if !owned {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            total += parse_cpu_ticks_with_children(&stat).unwrap_or(0);
        }
    }
    total
}

/// The real user ID of a `/proc/PID/status`.
fn parse_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// utime + stime + cutime + cstime (fields 14 to 17) of a `/proc/PID/stat` line.
fn parse_cpu_ticks_with_children(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = after_name
        .split_ascii_whitespace()
        .skip(14 - 3)
        .take(4)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 4).then(|| fields.iter().sum())
}

/// Ticks as seconds.
pub fn seconds(ticks: u64) -> f64 {
    // Tick counts stay far below 2^52, so the cast is exact.
    ticks as f64 / TICKS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 8 0 123 456789 1234 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn children_ticks_and_uids_are_read() {
        let stat = "4242 (postgres) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 30 5 20 0 8 0 123 456789 1234 18446744073709551615";
        assert_eq!(parse_cpu_ticks_with_children(stat), Some(360));
        assert_eq!(parse_uid("Name:\tx\nUid:\t108\t108\t108\t108\n"), Some(108));
        assert_eq!(parse_uid("Name:\tx\n"), None);
        // This test's own process counts under its user.
        let uid = parse_uid(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
        assert!(user_cpu_ticks(uid) > 0);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tagentstream\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn context_switches_add_both_kinds() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_context_switches(status), 123);
        assert_eq!(parse_context_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn reads_this_process() {
        let sample = read("self").unwrap();
        assert!(sample.rss_kib > 0);
        // The test harness has switched at least once to start this test's thread.
        assert!(context_switches("self").unwrap() > 0);
    }

    #[tokio::test]
    async fn measure_counts_cpu_spent_during_the_work() {
        let start = read("self").unwrap().cpu_ticks;
        let (spins, usage) = measure("self", Duration::from_millis(5), async {
            // Spin until this process has used 20 ticks (0.2 s) of CPU, however busy the
            // machine is.
            let mut spins = 0u64;
            while read("self").unwrap().cpu_ticks < start + 20 {
                spins = std::hint::black_box(spins + 1);
            }
            spins
        })
        .await
        .unwrap();
        assert!(spins > 0);
        assert!(usage.cpu_s >= 0.2, "{usage:?}");
        assert!(usage.rss_peak_kib >= usage.rss_before_kib);
        assert!(usage.samples >= 2);
    }
}
