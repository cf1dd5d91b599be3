//! Figures as they are measured: printed as a table row each, and written as JSON.

use std::{path::Path, time::Duration};

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub workload: &'static str,
    pub db: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
}

/// Every figure of a run, in the order measured.
#[derive(Debug, Default)]
pub struct Results(Vec<Figure>);

impl Results {
    /// The table's header line.
    pub fn header() {
        println!(
            "{:<4} {:<9} {:<44} {:>12} unit",
            "load", "db", "metric", "value"
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
        let f = Figure {
            workload,
            db,
            metric: metric.into(),
            value,
            unit,
        };
        println!(
            "{:<4} {:<9} {:<44} {:>12.2} {}",
            f.workload, f.db, f.metric, f.value, f.unit
        );
        self.0.push(f);
    }

    /// Records the p50, p99 and p99.9 of `l`.
    pub fn latencies(
        &mut self,
        workload: &'static str,
        db: &'static str,
        what: &str,
        mut l: Vec<Duration>,
    ) {
        if l.is_empty() {
            return;
        }
        l.sort();
        let pct = |p: f64| {
            l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1].as_secs_f64() * 1000.0
        };
        self.add(workload, db, format!("{what} p50"), pct(0.50), "ms");
        self.add(workload, db, format!("{what} p99"), pct(0.99), "ms");
        self.add(workload, db, format!("{what} p99.9"), pct(0.999), "ms");
    }

    /// Writes every figure as a JSON array.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|f| serde_json::json!({"workload": f.workload, "db": f.db, "metric": f.metric, "value": f.value, "unit": f.unit}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json).expect("json"))
    }
}
