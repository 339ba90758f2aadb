//! The `imagine` binary: a thin shell over the library's commands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    imagine::logging::init();
    let cli = imagine::cli::Cli::parse();
    match imagine::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Diffusion allocates and frees tensors of up to hundreds of megabytes in every layer. By
/// default glibc maps each one fresh from the kernel, which faults in and zeroes every page again
/// (15% of a VAE decode). Serving them from the heap, never trimmed, reuses the same pages; the
/// process keeps its peak footprint, which the weights dominate anyway.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
