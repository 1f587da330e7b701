//! Cost: the worker's price flags and `spotbatch cost`, which adds up the workers' ledgers beside a
//! job's output (`_cost/*.json`) and its done markers: dollars spent, saved against on-demand,
//! per 1000 items, and what interruptions cost (work redone, time lost).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use spotbatch_coordinator::{JobLayout, Prefix};
use spotbatch_proto::{DoneMarker, Manifest};
use spotbatch_worker::cost::{self, Capacity, Ledger, Prices};

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

/// The cost report of a job.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub job: String,
    pub workers: usize,
    pub items: u64,
    pub error_rows: u64,
    pub machine_seconds: f64,
    pub dollars: f64,
    pub on_demand_dollars: f64,
    pub saved_dollars: f64,
    pub saved_fraction: f64,
    pub dollars_per_1k_items: f64,
    pub items_inferred: u64,
    pub items_redone: u64,
    pub redone_fraction: f64,
    pub seconds_lost: f64,
    pub dollars_lost: f64,
    pub by_capacity: std::collections::BTreeMap<String, f64>,
    pub per_worker: Vec<Ledger>,
}

/// Adds up ledgers and markers.
pub fn report(job: &str, ledgers: &[Ledger], markers: &[DoneMarker]) -> Report {
    let items: u64 = markers.iter().map(|m| m.items).sum();
    let error_rows: u64 = markers.iter().map(|m| m.errors).sum();
    let dollars: f64 = ledgers.iter().map(|l| l.dollars).sum();
    let on_demand: f64 = ledgers.iter().map(|l| l.on_demand_dollars).sum();
    let seconds: f64 = ledgers.iter().map(|l| l.seconds).sum();
    let inferred: u64 = ledgers.iter().map(|l| l.items).sum();
    let redone: u64 = ledgers
        .iter()
        .map(|l| l.items_redone)
        .sum::<u64>()
        .min(inferred);
    let per_item = |total: f64| {
        if inferred > 0 {
            total / inferred as f64
        } else {
            0.0
        }
    };
    let mut by_capacity = std::collections::BTreeMap::new();
    for l in ledgers {
        *by_capacity.entry(l.capacity.clone()).or_insert(0.0) += l.dollars;
    }
    Report {
        job: job.to_string(),
        workers: ledgers.len(),
        items,
        error_rows,
        machine_seconds: seconds,
        dollars,
        on_demand_dollars: on_demand,
        saved_dollars: on_demand - dollars,
        saved_fraction: if on_demand > 0.0 {
            (on_demand - dollars) / on_demand
        } else {
            0.0
        },
        dollars_per_1k_items: if items > 0 {
            dollars / items as f64 * 1000.0
        } else {
            0.0
        },
        items_inferred: inferred,
        items_redone: redone,
        redone_fraction: if items > 0 {
            redone as f64 / items as f64
        } else {
            0.0
        },
        seconds_lost: redone as f64 * per_item(seconds),
        dollars_lost: redone as f64 * per_item(dollars),
        by_capacity,
        per_worker: ledgers.to_vec(),
    }
}

/// Reads a job's ledgers and done markers.
pub async fn read_job(prefix: &Prefix) -> anyhow::Result<(Vec<Ledger>, Vec<DoneMarker>)> {
    let mut ledgers = Vec::new();
    let mut markers = Vec::new();
    for item in prefix.list().await? {
        let key = item.key;
        let is_cost = key.starts_with("_cost/") && key.ends_with(".json");
        let is_done = key.starts_with("_done/") && key.ends_with(".json");
        if !is_cost && !is_done {
            continue;
        }
        let bytes = prefix
            .get(&key, 1 << 20)
            .await
            .with_context(|| format!("reading {key}"))?;
        if is_cost {
            ledgers.push(
                serde_json::from_slice(&bytes).with_context(|| format!("{key}: not a ledger"))?,
            );
        } else {
            markers.push(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{key}: not a done marker"))?,
            );
        }
    }
    Ok((ledgers, markers))
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
