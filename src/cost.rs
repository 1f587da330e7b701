//! Cost: the worker's price flags and `spotbatch cost`, which adds up the workers' ledgers beside a
//! job's output (`_cost/*.json`) and its done markers: dollars spent, saved against on-demand,
//! per 1000 items, and what interruptions cost (work redone, time lost).

use std::process::ExitCode;

use anyhow::Context;
use spotbatch_proto::Manifest;
use spotbatch_store::cost::report;
use spotbatch_store::ledger::{self as cost, Capacity, Ledger, Prices};
use spotbatch_store::{JobLayout, Prefix};

use crate::say::count;

/// What this machine costs (for cost accounting; without prices nothing is accounted).
#[derive(clap::Args, Debug, Clone)]
pub struct CostArgs {
    /// What this machine pays, $/hour.
    #[arg(long, env = "SPOTBATCH_PRICE_PER_HOUR")]
    price_per_hour: Option<f64>,
    /// What the same capacity costs on demand, $/hour.
    #[arg(long, env = "SPOTBATCH_ON_DEMAND_PRICE_PER_HOUR")]
    on_demand_price_per_hour: Option<f64>,
    /// spot or on-demand.
    #[arg(long, env = "SPOTBATCH_CAPACITY", value_enum, default_value_t = CapacityArg::Spot)]
    capacity: CapacityArg,
    /// Instance type, for prices from the built-in table (e.g. g5.xlarge) when none are given.
    #[arg(long, env = "SPOTBATCH_INSTANCE_TYPE")]
    instance_type: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CapacityArg {
    Spot,
    OnDemand,
}

impl CostArgs {
    /// `spot` or `on_demand` (`--capacity`), as the coordinator's fleet policy counts workers.
    pub fn capacity_label(&self) -> &'static str {
        match self.capacity {
            CapacityArg::Spot => "spot",
            CapacityArg::OnDemand => "on_demand",
        }
    }

    /// The prices, or why the flags do not make sense.
    pub fn prices(&self) -> anyhow::Result<Option<Prices>> {
        let capacity = match self.capacity {
            CapacityArg::Spot => Capacity::Spot,
            CapacityArg::OnDemand => Capacity::OnDemand,
        };
        cost::resolve(
            capacity,
            self.price_per_hour,
            self.on_demand_price_per_hour,
            self.instance_type.as_deref(),
        )
        .map_err(anyhow::Error::msg)
    }
}

/// `spotbatch cost`.
#[derive(clap::Args, Debug)]
pub struct CostCmd {
    /// The job: its manifest, or its id with --output.
    job: String,
    /// The output location (`output.uri`) when JOB is a job id.
    #[arg(long)]
    output: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Reads a job's ledgers and done markers; a job folder with neither is an error that says where
/// it looked.
pub async fn read_job(
    job: &str,
    prefix: &Prefix,
) -> anyhow::Result<(Vec<Ledger>, Vec<spotbatch_proto::DoneMarker>)> {
    let layout = JobLayout {
        prefix: prefix.clone(),
    };
    let files = layout.read_files().await?;
    if files.ledgers.is_empty() && files.markers.is_empty() {
        anyhow::bail!(
            "{job}: no worker ledgers or done shards under {}: nothing of this job ran there \
             (is it the job's output.uri? without --output, JOB is the manifest)",
            prefix.url()
        );
    }
    Ok((files.ledgers, files.markers))
}

/// The job id and output prefix of a job named by its manifest, or by its id and `--output`.
pub fn job_prefix(job: &str, output: Option<&str>) -> anyhow::Result<(String, Prefix)> {
    Ok(match output {
        Some(out) => {
            // A folder or prefix, with or without its trailing slash, as the manifest's
            // output.uri takes it.
            let cwd = std::env::current_dir().context("the current folder")?;
            let base = spotbatch_proto::manifest::resolve_dir(out, &cwd)
                .map_err(|e| anyhow::anyhow!("--output {out}: {e}"))?;
            let url = base
                .join(&format!("{job}/"))
                .with_context(|| format!("job {job}"))?;
            (job.to_string(), Prefix::open(&url)?)
        }
        None => {
            let path = std::path::Path::new(job);
            if !path.exists() {
                anyhow::bail!(
                    "{job}: no such manifest file; to name a job by its id, add --output with \
                     the job's output.uri"
                );
            }
            let m = Manifest::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            (m.job_id.clone(), JobLayout::for_manifest(&m)?.prefix)
        }
    })
}

pub async fn run(cmd: CostCmd) -> anyhow::Result<ExitCode> {
    let (job, prefix) = job_prefix(&cmd.job, cmd.output.as_deref())?;
    let (ledgers, markers) = read_job(&job, &prefix).await?;
    let all = ledgers.len();
    let ledgers: Vec<Ledger> = ledgers.into_iter().filter(|l| l.priced).collect();
    if ledgers.is_empty() {
        anyhow::bail!(
            "{job}: {} under {}, none with prices: workers record cost only when given prices \
             (--price-per-hour and --on-demand-price-per-hour, or --instance-type)",
            count(all as u64, "worker ledger"),
            prefix.url()
        );
    }
    let r = report(&job, &ledgers, &markers);
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {}: {} ({}), {}",
        r.job,
        count(r.items, "item"),
        count(r.error_rows, "error row"),
        count(r.workers as u64, "worker ledger")
    );
    println!(
        "  spent             ${:.4}  ({:.0} machine-seconds)",
        r.dollars, r.machine_seconds
    );
    for (cap, d) in &r.by_capacity {
        println!("    on {cap:<9}     ${d:.4}");
    }
    println!("  on-demand would be ${:.4}", r.on_demand_dollars);
    println!(
        "  saved             ${:.4}  ({:.1} %)",
        r.saved_dollars,
        r.saved_fraction * 100.0
    );
    println!("  per 1000 items    ${:.4}", r.dollars_per_1k_items);
    println!(
        "  interruptions     {} redone ({:.2} % of the job), {:.1} s and ${:.4} lost",
        count(r.items_redone, "item"),
        r.redone_fraction * 100.0,
        r.seconds_lost,
        r.dollars_lost
    );
    if r.failed_attempts > 0 {
        println!(
            "  failures          {}; {} not done (dead-lettered unless retried)",
            count(r.failed_attempts, "failed attempt"),
            count(r.shards_failed, "shard")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_id_with_an_output_folder_names_the_jobs_prefix() {
        let (job, prefix) = job_prefix("digits-1", Some("/tmp/some out")).unwrap();
        assert_eq!(job, "digits-1");
        assert_eq!(prefix.url().as_str(), "file:///tmp/some%20out/digits-1/");
        let (_, s3) = job_prefix("j", Some("s3://bucket/results/")).unwrap();
        assert_eq!(s3.url().as_str(), "s3://bucket/results/j/");
        // Without the trailing slash: the same folder, not its parent.
        let (_, bare) = job_prefix("j", Some("file:///tmp/results")).unwrap();
        assert_eq!(bare.url().as_str(), "file:///tmp/results/j/");
        let (_, s3) = job_prefix("j", Some("s3://bucket/results")).unwrap();
        assert_eq!(s3.url().as_str(), "s3://bucket/results/j/");
        let err = job_prefix("no-such-manifest.toml", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such manifest file") && err.contains("--output"),
            "{err}"
        );
    }
}
