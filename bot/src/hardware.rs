//! The device and precision a command computes on, chosen once from its settings and logged
//! with the reason, so that a user can tell why a job ran where it did.

use anyhow::Result;
use candle_core::Device;
use imagine_engine::{device_name, DeviceChoice, LoadOptions, Precision, PrecisionChoice};

/// `--device` of `generate` and `bench`: one device.
pub fn parse_device(s: &str) -> std::result::Result<DeviceChoice, String> {
    if s.contains(',') {
        return Err(format!(
            "{s:?} names several devices; this command runs on one (the bot takes a list)"
        ));
    }
    DeviceChoice::parse(s).map_err(|e| e.to_string())
}

/// `--precision`: auto, fp32, bf16 or fp16.
pub fn parse_precision(s: &str) -> std::result::Result<PrecisionChoice, String> {
    PrecisionChoice::parse(s).map_err(|e| e.to_string())
}

/// An opened device and the precision jobs compute in on it.
#[derive(Debug, Clone)]
pub struct Hardware {
    pub device: Device,
    pub precision: Precision,
    /// Why these, in words ("auto: built without CUDA, without Metal").
    pub device_why: String,
    pub precision_why: String,
}

impl Hardware {
    /// Opens `device` and resolves `precision` for it, logging both choices and why.
    pub fn choose(device: DeviceChoice, precision: PrecisionChoice) -> Result<Hardware> {
        let (device, device_why) = device.open()?;
        let (precision, precision_why) = precision.resolve(&device)?;
        let hw = Hardware {
            device,
            precision,
            device_why,
            precision_why,
        };
        tracing::info!(
            device = hw.device_name(),
            device_why = hw.device_why,
            precision = precision.name(),
            precision_why = hw.precision_why,
            "compute device chosen"
        );
        Ok(hw)
    }

    pub fn device_name(&self) -> String {
        device_name(&self.device)
    }

    pub fn load_options(&self) -> LoadOptions {
        self.precision.load_options(&self.device)
    }
}
