//! Waiting between attempts: exponential backoff with jitter, cut short when the sink is told
//! to abort.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::Retry;

/// The task ended because it was told to abort.
#[derive(Debug)]
pub(super) struct Aborted;

/// Waits between retries: exponential from `initial_backoff` up to `max_backoff`, each wait
/// drawn from the upper half of its step so that shippers that failed together (a log store
/// restart) do not all come back in the same instant.
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits that start at `retry`'s initial backoff.
    pub(super) fn new(retry: Retry) -> Backoff {
        Backoff {
            step: retry.initial_backoff,
            max: retry.max_backoff,
        }
    }

    /// The next wait, which doubles the step.
    pub(super) fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(fastrand::u64(0..(half.as_nanos() as u64).max(1)))
    }
}

/// Sleeps `d`, or less when `abort` turns true.
pub(super) async fn sleep_or_abort(
    abort: &mut watch::Receiver<bool>,
    d: Duration,
) -> Result<(), Aborted> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        r = abort.wait_for(|a| *a) => match r {
            Ok(_) | Err(_) => Err(Aborted),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(Retry {
            initial_backoff: ms(100),
            max_backoff: ms(1000),
        });
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        let waits: Vec<Duration> = steps.iter().map(|_| b.next_wait()).collect();
        for (wait, step) in waits.iter().zip(steps) {
            assert!(
                *wait >= ms(step) / 2 && *wait < ms(step),
                "{wait:?} outside [{step}/2, {step}) ms"
            );
        }
        // Jitter: many retries at the cap do not all wait the same.
        let capped: std::collections::HashSet<Duration> = (0..20).map(|_| b.next_wait()).collect();
        assert!(capped.len() > 10, "{capped:?}");
    }
}
