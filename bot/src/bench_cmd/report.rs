//! What `imagine bench` measures with, besides the clock: the process's peak resident memory,
//! and the table / JSON it reports.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One measured row at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Row name, the same on both sides of `tools/bench_compare.py`.
    pub row: &'static str,
    /// Image side in pixels (`None` for size-independent rows: text encoding).
    pub size: Option<usize>,
    /// Images (or prompts) in one call.
    pub batch: usize,
    /// Median wall-clock seconds of the timed runs.
    pub seconds: f64,
    /// Every timed run, in order.
    pub all_seconds: Vec<f64>,
    /// Work of one call in GFLOP (multiply-add = 2), when we know the architecture's cost.
    pub gflop: Option<f64>,
    /// `gflop / seconds`.
    pub gflops_per_s: Option<f64>,
    /// Peak resident set during this row (VmHWM after resetting it at the row's start), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The whole run, as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub model: String,
    pub threads: usize,
    /// What the model computed in: fp32, bf16 or fp16.
    pub precision: &'static str,
    /// Where: cpu, cuda:0, metal:0.
    pub device: String,
    pub flush_denormals: bool,
    /// The CPU kernel path (`avx512`, `avx2`, `neon`, `generic` or `candle`).
    pub kernels: &'static str,
    /// Loading the model (and TAESD): wall-clock seconds, and the process's peak resident
    /// memory by its end (MiB).
    pub load_seconds: f64,
    pub load_peak_rss_mib: Option<f64>,
    pub warmup: usize,
    pub runs: usize,
    pub grid_runs: usize,
    /// True when VmHWM could be reset per row; false means peak RSS is process-wide so far.
    pub peak_rss_per_row: bool,
    pub rows: Vec<Measurement>,
}

impl Report {
    pub fn print_table(&self) {
        println!(
            "\nimagine bench: {} | {} | {} | {} kernels | {} threads | flush-to-zero/denormals-are-zero {} | warm-up {}, median of {} runs (grid: {})",
            self.model,
            self.device,
            self.precision,
            self.kernels,
            self.threads,
            if self.flush_denormals { "ON" } else { "off" },
            self.warmup,
            self.runs,
            self.grid_runs
        );
        println!(
            "load: {:.3} s, peak {} MiB",
            self.load_seconds,
            self.load_peak_rss_mib
                .map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
        );
        println!(
            "{:<13} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10}",
            "row", "size", "batch", "seconds", "GFLOP", "GFLOP/s", "peak MiB"
        );
        for m in &self.rows {
            let opt = |v: Option<f64>, prec: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
            };
            let seconds = if m.seconds < 0.1 {
                format!("{:.6}", m.seconds)
            } else {
                format!("{:.3}", m.seconds)
            };
            println!(
                "{:<13} {:>5} {:>5} {:>10} {:>10} {:>10} {:>10}",
                m.row,
                m.size.map_or_else(|| "-".into(), |s| s.to_string()),
                m.batch,
                seconds,
                opt(m.gflop, 0),
                opt(m.gflops_per_s, 1),
                opt(m.peak_rss_mib, 0),
            );
        }
        if !self.peak_rss_per_row {
            println!("(peak MiB is the process-wide peak so far: /proc/self/clear_refs was not writable)");
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Median of a non-empty slice.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Resets the kernel's peak-RSS counter (VmHWM) of this process; false if not permitted.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM of this process in MiB (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
