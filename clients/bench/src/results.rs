//! Figures as they are measured: printed as a table row each, and written as JSON.
//!
//! Once R (raw JetStream) has run, every rate and latency figure is also given as a
//! ratio to R's of the same run (`of_raw`): a rate as a share of R's throughput, a
//! latency percentile as a multiple of R's round trip at that percentile. These
//! machines vary twofold from run to run; the ratios vary far less.

use std::{path::Path, time::Duration};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub workload: &'static str,
    pub db: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    /// The figure over R's of the same run, if it has one.
    pub of_raw: Option<f64>,
}

/// Every figure of a run, in the order measured.
#[derive(Debug, Default)]
pub struct Results(Vec<Figure>);

/// R's figures a rate or latency is read against.
const RAW_THROUGHPUT: &str = "publish+consume+ack throughput";
const RAW_ROUND_TRIP: &str = "round trip";

impl Results {
    /// The table's header line.
    pub fn header() {
        println!(
            "{:<4} {:<9} {:<44} {:>12} {:<8} of raw",
            "load", "db", "metric", "value", "unit"
        );
    }

    /// Records and prints one figure.
    pub fn add(
        &mut self,
        workload: &'static str,
        db: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        let metric = metric.into();
        let of_raw = (workload != "R")
            .then(|| self.raw_for(&metric, unit))
            .flatten()
            .map(|raw| value / raw);
        let ratio = match (of_raw, unit) {
            (Some(x), "ms") => format!("{x:.1}x"),
            (Some(x), _) => format!("{:.1} %", x * 100.0),
            (None, _) => String::new(),
        };
        println!(
            "{:<4} {:<9} {:<44} {:>12.2} {:<8} {ratio}",
            workload, db, metric, value, unit
        );
        self.0.push(Figure {
            workload,
            db,
            metric,
            value,
            unit,
            of_raw,
        });
    }

    /// R's figure that `metric` (in `unit`) is read against: its throughput for a
    /// rate, its round trip at the same percentile for a latency.
    fn raw_for(&self, metric: &str, unit: &str) -> Option<f64> {
        let raw = |m: &str| {
            self.0
                .iter()
                .find(|f| f.workload == "R" && f.metric == m)
                .map(|f| f.value)
        };
        if unit.ends_with("/s") {
            raw(RAW_THROUGHPUT)
        } else if unit == "ms" {
            let pct = metric.rsplit_once(' ')?.1;
            raw(&format!("{RAW_ROUND_TRIP} {pct}"))
        } else {
            None
        }
    }

    /// Records the p50, p99 and p99.9 of `l`.
    pub fn latencies(
        &mut self,
        workload: &'static str,
        db: &'static str,
        what: &str,
        l: Vec<Duration>,
    ) {
        self.percentiles(
            workload,
            db,
            what,
            l,
            &[("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999)],
        );
    }

    /// Records the p50 of `l`.
    pub fn median(
        &mut self,
        workload: &'static str,
        db: &'static str,
        what: &str,
        l: Vec<Duration>,
    ) {
        self.percentiles(workload, db, what, l, &[("p50", 0.50)]);
    }

    fn percentiles(
        &mut self,
        workload: &'static str,
        db: &'static str,
        what: &str,
        mut l: Vec<Duration>,
        which: &[(&str, f64)],
    ) {
        if l.is_empty() {
            return;
        }
        l.sort();
        for (name, p) in which {
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
            let ms = l[i].as_secs_f64() * 1000.0;
            self.add(workload, db, format!("{what} {name}"), ms, "ms");
        }
    }

    /// Writes every figure as a JSON array.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|f| serde_json::json!({"workload": f.workload, "db": f.db, "metric": f.metric, "value": f.value, "unit": f.unit, "of_raw": f.of_raw}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
    }
}
