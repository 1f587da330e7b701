//! spotbatch-fleet: how many spot and on-demand workers a job needs to finish by its deadline at
//! the least expected cost, and how big its shards should be for the interruption rate it sees.
//!
//! Pure functions over what the coordinator already measures, no I/O and no async:
//!
//! - [`policy::decide`]: desired spot and on-demand workers, projected finish, risk of missing
//!   the deadline (queue-depth scaling, today's behaviour, without a deadline);
//! - [`shard::suggest`]: shard size and visibility timeout by the Young–Daly rule from the
//!   hard-kill rate (what `queue.shard_size = "auto"` picks at plan time);
//! - [`interruption`]: the prior rate by instance type, region and weekday, its gamma-Poisson
//!   posterior, the spike test;
//! - [`rates`]: items per second per worker by capacity and device, from heartbeats;
//! - [`prices`]: the capacity kinds and the built-in instance price table.
//!
//! The `fleet-sim` binary (`make bench-fleet`) runs the same policy in a simulated fleet against
//! all-on-demand, a fixed spot fleet and queue-depth scaling.

pub mod interruption;
pub mod policy;
pub mod prices;
pub mod rates;
pub mod shard;
mod stats;

pub use interruption::{Exposure, InterruptionPrior, Posterior};
pub use policy::{decide, Decision, Mode, Observation, PolicyConfig, PolicyState, Triggers};
pub use prices::{Capacity, Prices};
pub use rates::WorkerRate;
pub use shard::{suggest, ShardInputs, ShardLimits, ShardSuggestion};
