//! The compute device comes from one place: the `--device` flag, parsed here. `auto` picks the first
//! CUDA device when libtorch sees one, the CPU otherwise.

use tch::Device;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("unknown device {0:?}: use cpu, cuda, cuda:N or auto")]
    Unknown(String),
    #[error(
        "device {requested} requested but libtorch sees {available} CUDA device(s) (is this a CUDA build of libtorch?)"
    )]
    Unavailable { requested: String, available: i64 },
}

/// Parse `cpu`, `cuda`, `cuda:N` or `auto` and check the device exists.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let available = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
    let cuda = |index: i64| {
        if index < available {
            Ok(Device::Cuda(index as usize))
        } else {
            Err(DeviceError::Unavailable { requested: spec.to_string(), available })
        }
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if available > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cuda" => cuda(0),
        _ => match spec.strip_prefix("cuda:").and_then(|i| i.parse::<i64>().ok()) {
            Some(index) if index >= 0 => cuda(index),
            _ => Err(DeviceError::Unknown(spec.to_string())),
        },
    }
}

/// A short human description, e.g. `cpu (2 threads)` or `cuda:0`.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Whether `device` computes bfloat16 natively: on the CPU, AVX-512 BF16 or AMX (x86) or the BF16
/// extension (Arm), read from `/proc/cpuinfo`; CUDA devices are assumed to (Ampere and later have
/// bf16 tensor cores). Without it libtorch emulates bf16, slower than fp32.
pub fn has_bf16(device: Device) -> bool {
    match device {
        Device::Cpu => {
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            info.lines()
                .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
                .flat_map(|l| l.split_whitespace())
                .any(|f| matches!(f, "avx512_bf16" | "amx_bf16" | "bf16"))
        }
        _ => true,
    }
}

/// Whether to compute in bf16 on `device` when asked: where it has bf16 instructions, or
/// anywhere with `FREQSWEEP_ALLOW_EMULATED_BF16=1` (libtorch then emulates bf16, many times
/// slower than fp32: for checking bf16 results on a machine without it, as the tests do).
pub fn bf16_allowed(device: Device) -> bool {
    has_bf16(device) || std::env::var("FREQSWEEP_ALLOW_EMULATED_BF16").is_ok_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert!(matches!(parse_device("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(parse_device("cuda:x"), Err(DeviceError::Unknown(_))));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto"), Ok(Device::Cpu));
            assert!(matches!(parse_device("cuda:0"), Err(DeviceError::Unavailable { available: 0, .. })));
        }
    }
}
