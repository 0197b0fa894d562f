//! Units the agent reports in: MiB for memory, milliseconds for time.

use std::time::Duration;

/// Bytes in a MiB.
pub(crate) const MIB: f64 = (1u64 << 20) as f64;

/// Bytes to MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(mib(3 << 20), 3.0);
        assert_eq!(ms(Duration::from_micros(2500)), 2.5);
    }
}
