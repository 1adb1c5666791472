//! Waiting for a condition with a deadline, never a fixed sleep: poll, back off, and on timeout
//! say what was awaited and what was last seen.

use std::{
    thread,
    time::{Duration, Instant},
};

/// A point in time a wait gives up at.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// Polls `check` until it returns `Ok(true)` or `timeout` passes. `check` returns `Ok(false)` or
/// `Err(observation)` while the condition does not hold; the last observation is in the error.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Deadline::after(timeout);
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => "condition not met".to_string(),
            Err(observation) => observation,
        };
        if deadline.passed() {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            Ok(calls >= 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn times_out_with_the_last_observation() {
        let err = wait_until("the impossible", Duration::from_millis(30), || {
            Err("still nothing".into())
        })
        .unwrap_err();
        assert!(err.contains("the impossible"), "{err}");
        assert!(err.contains("still nothing"), "{err}");
    }
}
