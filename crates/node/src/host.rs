//! What this machine is: hostname, platform, CPUs and memory, as the node's
//! description shows them.

use shoal_api::{NodeDescription, Platform, Resources};

/// Reads the host's description from the OS.
pub fn describe_host() -> NodeDescription {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mut warnings = Vec::new();
    let memory_bytes = match total_memory_bytes() {
        Some(m) => m,
        None => {
            warnings.push("could not read total memory from /proc/meminfo".to_string());
            0
        }
    };
    NodeDescription {
        hostname,
        platform: Some(Platform {
            os: std::env::consts::OS.to_string(),
            architecture: std::env::consts::ARCH.to_string(),
        }),
        resources: Some(Resources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes,
            pids: 0,
        }),
        // The Docker Engine's, once found (`find_engine`).
        engine_version: String::new(),
        warnings,
        engine_labels: Default::default(),
        shoal_version: shoal_api::VERSION.to_string(),
    }
}

fn total_memory_bytes() -> Option<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_description_has_platform_cpus_and_memory() {
        let d = describe_host();
        assert!(!d.hostname.is_empty());
        assert_eq!(d.platform.as_ref().unwrap().os, std::env::consts::OS);
        let r = d.resources.unwrap();
        assert!(r.nano_cpus >= 1_000_000_000);
        if cfg!(target_os = "linux") {
            assert!(r.memory_bytes > 0);
        }
    }
}
