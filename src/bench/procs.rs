//! CPU time and peak memory of the processes on this machine, from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// CPU ticks (user plus system) of every process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    processes: HashMap<u32, Process>,
}

#[derive(Debug, Clone)]
struct Process {
    name: String,
    ticks: u64,
}

impl Snapshot {
    /// Reads every process's CPU ticks. Processes that exit while being read are
    /// skipped.
    pub fn take() -> Self {
        let mut processes = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self::default();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(process) = read_stat(pid) {
                processes.insert(pid, process);
            }
        }
        Self { processes }
    }
}

/// Parses `/proc/PID/stat`: the name sits in parentheses and may contain spaces,
/// so the fields are counted from the closing one.
fn read_stat(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After the name: state is field 0, utime field 11 and stime field 12.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(Process {
        name,
        ticks: user + system,
    })
}

/// Returns the clock ticks per second that `/proc` counts in.
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Returns CPU seconds per group between `before` and `after`. `own` names the
/// processes of the system under test; the rest are grouped by engine from their
/// process names.
pub fn cpu_by_group(
    before: &Snapshot,
    after: &Snapshot,
    own: &HashMap<u32, String>,
) -> BTreeMap<String, f64> {
    let per_second = ticks_per_second();
    let mut groups = BTreeMap::new();
    for (pid, process) in &after.processes {
        let start = before
            .processes
            .get(pid)
            .filter(|earlier| earlier.name == process.name)
            .map_or(0, |earlier| earlier.ticks);
        let used = process.ticks.saturating_sub(start);
        if used == 0 {
            continue;
        }
        let group = match own.get(pid) {
            Some(name) => name.clone(),
            None => engine(&process.name).to_owned(),
        };
        *groups.entry(group).or_default() += used as f64 / per_second;
    }
    groups
}

/// Names the engine a process belongs to.
fn engine(name: &str) -> &'static str {
    match name {
        "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => "rabbitmq",
        "postgres" => "postgresql",
        "nats-server" => "nats",
        "tansu" => "kafka (tansu)",
        "wrk" => "wrk",
        "node" => "node",
        _ => "other",
    }
}

/// Returns the peak resident memory of `pid` in bytes (`VmHWM`), or 0 when it has
/// exited.
pub fn peak_rss(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:") * 1024
}

/// Reads the value of the line starting with `key` in `path`, a `/proc` file of
/// lines such as `VmHWM:   1234 kB`, or 0 when the file or the line is missing.
fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Returns the proportional set size of `pid` in bytes (`Pss` of
/// `/proc/PID/smaps_rollup`), or 0 when it has exited. A page shared by several
/// processes, such as the code of the binary they all run, counts in each as its
/// share, so the sizes of processes add up to the memory they use together.
pub fn proportional_set(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:") * 1024
}

/// Samples the summed proportional set size of some processes on a thread of its
/// own, because the kernel keeps a peak only of each process's resident size,
/// which counts shared pages in every process.
#[derive(Debug)]
pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl MemorySampler {
    /// Starts sampling `pids` every `interval`.
    pub fn start(pids: Vec<u32>, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                let total = pids.iter().map(|pid| proportional_set(*pid)).sum();
                peak = u64::max(peak, total);
                if stopped.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(interval);
            }
        });
        Self { stop, thread }
    }

    /// Takes a last sample and returns the highest sum in bytes.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_read() {
        let snapshot = Snapshot::take();

        let own = snapshot.processes.get(&std::process::id());

        assert!(own.is_some(), "this test process is in /proc");
    }

    #[test]
    fn busy_loop_shows_in_own_group() {
        let before = Snapshot::take();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = Snapshot::take();
        let own = HashMap::from([(std::process::id(), "test".to_owned())]);

        let groups = cpu_by_group(&before, &after, &own);

        assert!(
            groups.get("test").copied().unwrap_or(0.0) > 0.1,
            "{groups:?}"
        );
    }

    #[test]
    fn peak_rss_of_self_is_positive() {
        assert!(peak_rss(std::process::id()) > 0);
    }

    #[test]
    fn proportional_set_within_resident_size() {
        let pid = std::process::id();

        let proportional = proportional_set(pid);

        assert!(proportional > 0);
        assert!(proportional <= peak_rss(pid));
    }

    #[test]
    fn sampler_sums_its_processes() {
        let pid = std::process::id();
        let sampler = MemorySampler::start(vec![pid, pid], Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(50));

        let peak = sampler.stop();

        assert!(peak > proportional_set(pid), "{peak}");
    }
}
