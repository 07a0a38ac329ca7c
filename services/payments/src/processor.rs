//! A simulated card processor: it waits like a network call, and fails or declines
//! at configured rates so that callers can exercise their retry and decline paths.

use std::time::Duration;

use crate::domain::DeclineReason;

/// Settings of the simulated card processor.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorSettings {
    /// The fixed part of every call's delay. Default 2 ms.
    pub latency: Duration,
    /// The upper bound of a uniformly random delay added to `latency`. Zero adds
    /// none. Default 3 ms.
    pub latency_jitter: Duration,
    /// The probability, from 0.0 to 1.0, that a call fails, which the service returns
    /// as gRPC `UNAVAILABLE` without recording anything. Default 0.0.
    pub error_rate: f64,
    /// The probability, from 0.0 to 1.0, that a call which did not fail declines the
    /// card. Default 0.0.
    pub decline_rate: f64,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(2),
            latency_jitter: Duration::from_millis(3),
            error_rate: 0.0,
            decline_rate: 0.0,
        }
    }
}

/// A processor setting outside its accepted range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {setting} {value}: expected a probability from 0.0 to 1.0")]
pub struct SettingsError {
    /// The setting's name, such as `processor.error_rate`.
    pub setting: &'static str,
    /// The rejected value.
    pub value: f64,
}

impl ProcessorSettings {
    /// Checks that both rates are probabilities.
    ///
    /// # Errors
    ///
    /// Names the first rate that is NaN or outside 0.0 to 1.0.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (setting, value) in [
            ("processor.error_rate", self.error_rate),
            ("processor.decline_rate", self.decline_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SettingsError { setting, value });
            }
        }
        Ok(())
    }
}

/// The processor's decision about a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approved,
    Declined(DeclineReason),
}

/// The processor could not be reached or failed, so nothing was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the card processor is unavailable")]
pub(crate) struct ProcessorUnavailable;

/// The simulated processor.
#[derive(Debug, Clone)]
pub(crate) struct Processor {
    settings: ProcessorSettings,
}

impl Processor {
    pub(crate) fn new(settings: ProcessorSettings) -> Self {
        Self { settings }
    }

    /// Waits `latency` plus up to `latency_jitter`, then fails with probability
    /// `error_rate`, else declines with probability `decline_rate`, else approves.
    pub(crate) async fn authorize(&self) -> Result<Decision, ProcessorUnavailable> {
        tokio::time::sleep(self.delay()).await;

        // fastrand::f64 is in [0, 1), so a rate of 0.0 never fires and 1.0 always does.
        if fastrand::f64() < self.settings.error_rate {
            return Err(ProcessorUnavailable);
        }
        if fastrand::f64() < self.settings.decline_rate {
            let reason = if fastrand::bool() {
                DeclineReason::InsufficientFunds
            } else {
                DeclineReason::CardDeclined
            };
            return Ok(Decision::Declined(reason));
        }
        Ok(Decision::Approved)
    }

    fn delay(&self) -> Duration {
        let max_jitter_nanos =
            u64::try_from(self.settings.latency_jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(fastrand::u64(0..=max_jitter_nanos));
        self.settings.latency.saturating_add(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_rejected() {
        for (error_rate, decline_rate, setting) in [
            (1.5, 0.0, "processor.error_rate"),
            (-0.1, 0.0, "processor.error_rate"),
            (f64::NAN, 0.0, "processor.error_rate"),
            (0.0, 2.0, "processor.decline_rate"),
        ] {
            let settings = ProcessorSettings {
                error_rate,
                decline_rate,
                ..ProcessorSettings::default()
            };

            let error = settings.validate().expect_err("rate out of range");

            assert_eq!(
                error.setting, setting,
                "error_rate {error_rate}, decline_rate {decline_rate}"
            );
        }
    }

    #[test]
    fn rate_bounds_are_accepted() {
        let settings = ProcessorSettings {
            error_rate: 1.0,
            decline_rate: 0.0,
            ..ProcessorSettings::default()
        };

        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn delay_stays_within_jitter() {
        let processor = Processor::new(ProcessorSettings {
            latency: Duration::from_millis(10),
            latency_jitter: Duration::from_millis(5),
            ..ProcessorSettings::default()
        });

        for _ in 0..1_000 {
            let delay = processor.delay();

            assert!(
                delay >= Duration::from_millis(10),
                "{delay:?} below latency"
            );
            assert!(
                delay <= Duration::from_millis(15),
                "{delay:?} above latency plus jitter"
            );
        }
    }
}
