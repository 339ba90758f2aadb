//! Peak resident memory while loading memory-mapped weights: candle's own mmap loader (the
//! file pages it reads stay mapped, and resident, until the whole file is loaded) against
//! `imagine_engine::load::mapped` (each tensor's pages released once copied out), which the
//! engine loads every folder, TAESD, ESRGAN and single file through. Linux only (VmHWM).
//!
//! ```sh
//! cargo run --release -p imagine-engine --example load_peak -- /tmp/load-peak 1024
//! ```
//!
//! Writes `/tmp/load-peak/weights.safetensors` (the size in MiB, as 16 MiB f32 tensors),
//! then loads every tensor both ways, each in a fresh process, keeping them all, as a model
//! load does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map_or("/tmp/load-peak", |s| s.as_str()));
    let mib: usize = args
        .get(1)
        .map_or(1024, |s| s.parse().expect("size in MiB"));
    let path = dir.join("weights.safetensors");
    let count = (mib / 16).max(1);
    if let Some(way) = args.get(2) {
        return measure(&path, count, way);
    }
    std::fs::create_dir_all(&dir)?;
    let tensors: HashMap<String, Tensor> = (0..count)
        .map(|i| {
            (
                format!("w{i}"),
                Tensor::full(i as f32, SHAPE, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, &path)?;
    drop(tensors);
    println!(
        "{count} tensors, {} MiB in {} (in the page cache: just written)",
        count * 16,
        path.display()
    );
    // Each way in a fresh process: freed heap memory would otherwise flatter the second.
    for way in ["candle", "mapped"] {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args([&dir.display().to_string(), &mib.to_string(), way])
            .status()?;
        assert!(status.success(), "{way}: {status}");
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

const SHAPE: (usize, usize) = (2048, 2048); // 16 MiB of f32

/// Loads every tensor of the file one way, keeping them all (as a model load does), and
/// prints the time and the peak resident memory it added.
fn measure(path: &Path, count: usize, way: &str) -> candle_core::Result<()> {
    let base = reset_peak();
    let started = Instant::now();
    // SAFETY: nothing writes the file while it is mapped.
    let vb = unsafe {
        match way {
            "candle" => VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu)?,
            "mapped" => {
                imagine_engine::load::mapped::var_builder(&[path], DType::F32, &Device::Cpu)?
            }
            _ => panic!("the way is candle or mapped, not {way}"),
        }
    };
    let tensors = (0..count)
        .map(|i| vb.get(SHAPE, &format!("w{i}")))
        .collect::<candle_core::Result<Vec<Tensor>>>()?;
    drop(vb);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{way:>6}: {seconds:.2} s, peak {:.0} MiB above the {base:.0} MiB before ({} tensors kept)",
        peak_mib() - base,
        tensors.len()
    );
    Ok(())
}

/// Resets VmHWM to the current RSS and returns that, in MiB.
fn reset_peak() -> f64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM (Linux only)");
    peak_mib()
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}
