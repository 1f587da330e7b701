//! The conformance suite against the in-memory backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use spotbatch_queue::conformance::{Allowances, QueueFactory};
use spotbatch_queue::memory::MemoryQueue;
use spotbatch_queue::{LeaseQueue, QueueConfig};

struct Memory;

static NEXT: AtomicUsize = AtomicUsize::new(0);

#[async_trait]
impl QueueFactory for Memory {
    async fn fresh(&self, config: QueueConfig) -> Box<dyn LeaseQueue> {
        let name = format!("mem-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        Box::new(MemoryQueue::new(&name, config))
    }
    fn allowances(&self) -> Allowances {
        Allowances {
            short_visibility: Duration::from_millis(300),
            expiry_slack: Duration::from_millis(100),
            extend_after_expiry_may_succeed: false,
        }
    }
}

spotbatch_queue::conformance_tests!(Memory);
