//! Retrying with exponential backoff.

use std::time::Duration;

/// Exponential backoff, capped at 10 s, with up to 100 ms of jitter: for metadata polling, a
/// queue that fails to lease and a coordinator that cannot be reached yet.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);

    pub(crate) fn new() -> Self {
        Self {
            next: Self::FIRST,
            max: Duration::from_secs(10),
        }
    }
    /// How long to wait before the next try; each call doubles the one after, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
        let delay = self.next + jitter;
        self.next = (self.next * 2).min(self.max);
        delay
    }
    /// Sleeps for [`Self::next_delay`].
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
    /// After a success: the next failure waits the shortest time again.
    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_again_after_a_success() {
        let mut b = Backoff::new();
        for base in [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000] {
            let ms = b.next_delay().as_millis();
            assert!(
                (base..base + 100).contains(&ms),
                "{ms} ms, {base} ms + jitter expected"
            );
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(300));
    }
}
