//! Cost: the worker's price flags and `spotbatch cost`, which adds up the workers' ledgers beside a
//! job's output (`_cost/*.json`) and its done markers: dollars spent, saved against on-demand,
//! per 1000 items, and what interruptions cost (work redone, time lost).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use spotbatch_proto::Manifest;
use spotbatch_store::cost::report;
use spotbatch_store::ledger::{self as cost, Capacity, Ledger, Prices};
use spotbatch_store::{JobLayout, Prefix};

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

/// Reads a job's ledgers and done markers.
pub async fn read_job(
    prefix: &Prefix,
) -> anyhow::Result<(Vec<Ledger>, Vec<spotbatch_proto::DoneMarker>)> {
    let layout = JobLayout {
        prefix: prefix.clone(),
    };
    let files = layout.read_files().await?;
    Ok((files.ledgers, files.markers))
}

/// The job id and output prefix of a job named by its manifest, or by its id and `--output`.
pub fn job_prefix(job: &str, output: Option<&str>) -> anyhow::Result<(String, Prefix)> {
    Ok(match output {
        Some(out) => {
            let base = url::Url::parse(out)
                .or_else(|_| {
                    let p = std::path::absolute(PathBuf::from(out))?;
                    url::Url::from_directory_path(&p)
                        .map_err(|_| anyhow::anyhow!("--output {out}: not a folder or URL"))
                })
                .with_context(|| format!("--output {out}"))?;
            let url = base
                .join(&format!("{job}/"))
                .with_context(|| format!("job {job}"))?;
            (job.to_string(), Prefix::open(&url)?)
        }
        None => {
            let m =
                Manifest::load(std::path::Path::new(job)).map_err(|e| anyhow::anyhow!("{e}"))?;
            (m.job_id.clone(), JobLayout::for_manifest(&m)?.prefix)
        }
    })
}

pub async fn run(cmd: CostCmd) -> anyhow::Result<ExitCode> {
    let (job, prefix) = job_prefix(&cmd.job, cmd.output.as_deref())?;
    let (ledgers, markers) = read_job(&prefix).await?;
    let ledgers: Vec<Ledger> = ledgers.into_iter().filter(|l| l.priced).collect();
    if ledgers.is_empty() {
        anyhow::bail!(
            "{job}: no cost ledgers under {} (workers record cost only when given prices: \
             --price-per-hour and --on-demand-price-per-hour, or --instance-type)",
            prefix.url()
        );
    }
    let r = report(&job, &ledgers, &markers);
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {}: {} items ({} error rows), {} worker ledgers",
        r.job, r.items, r.error_rows, r.workers
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
        "  interruptions     {} items redone ({:.2} % of the job), {:.1} s and ${:.4} lost",
        r.items_redone,
        r.redone_fraction * 100.0,
        r.seconds_lost,
        r.dollars_lost
    );
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
        assert!(job_prefix("no-such-manifest.toml", None).is_err());
    }
}
