//! The compute thread count, settled once per process before any tensor op runs.
//!
//! candle asks `utils::get_num_threads()` on EVERY matmul. That reads `RAYON_NUM_THREADS` and,
//! when it is unset, counts the physical cores by reading and parsing `/proc/cpuinfo` again
//! (num_cpus). Measured with `perf` on `bench_serve` (tiny preset, one decision at a time): 13 %
//! of all samples were the kernel formatting `/proc/cpuinfo`, and the mean decision took 165 ms
//! against 120 ms with the variable set. Setting it once here makes that an environment lookup.
//!
//! `CANDLE_NUM_THREADS` (the setting this project documents) also decides the matmul threads
//! when it is set; otherwise the count is what candle would have computed itself.

/// Sets `RAYON_NUM_THREADS` when it is unset.
///
/// Call it first thing in `main`, before any thread is spawned (changing the environment while
/// other threads may read it is undefined behaviour on Linux).
pub fn init() {
    let parse =
        |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
    if parse("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = parse("CANDLE_NUM_THREADS").unwrap_or_else(default_threads);
    // SAFETY: called at the start of `main`, while the process has a single thread.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// candle's own default: the physical cores, within the CPUs this process may run on.
fn default_threads() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    num_cpus::get_physical().clamp(1, allowed.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_is_within_the_cpus_this_process_may_use() {
        let n = super::default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().map_or(1, usize::from), "{n}");
    }
}
