//! Percentiles, the text/CSV report and a dependency-free SVG plotter.

use std::fmt::Write as _;
use std::time::Duration;

use crate::membership_scenario::{StandardOptions, StandardResult};

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; `NaN` if
/// empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One row of the report.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Cluster size.
    pub nodes: usize,
    /// Loss rate.
    pub loss: f64,
    /// Seed.
    pub seed: u64,
    /// Measured simulated seconds.
    pub duration_s: f64,
    /// Crashes injected.
    pub crashes: usize,
    /// Detection delay p50 / p99 / max over (crash, observer), seconds;
    /// never-detected pairs count as +inf.
    pub detect_p50_s: f64,
    /// See `detect_p50_s`.
    pub detect_p99_s: f64,
    /// See `detect_p50_s`.
    pub detect_max_s: f64,
    /// (crash, observer) pairs never detected.
    pub undetected: usize,
    /// Distinct healthy members declared dead by anyone.
    pub false_positives: usize,
    /// Number of such declarations.
    pub false_positive_events: usize,
    /// Updates tracked.
    pub updates: usize,
    /// Time until an update reached every member: p50 / p99 over updates
    /// (updates that never reached everyone count as +inf).
    pub dissemination_p50_s: f64,
    /// See `dissemination_p50_s`.
    pub dissemination_p99_s: f64,
    /// Per-(update, observer) delay p99.
    pub dissemination_observer_p99_s: f64,
    /// Payload bytes sent per member per second.
    pub bytes_per_member_per_s: f64,
    /// Of which reliable (push-pull).
    pub reliable_bytes_per_member_per_s: f64,
    /// Messages sent per member per second.
    pub msgs_per_member_per_s: f64,
    /// Simulated time at which the cluster first converged.
    pub warmup_s: f64,
    /// Wall-clock time of the run.
    pub wall_s: f64,
    /// Raw detection samples (for plots).
    pub detect_samples: Vec<f64>,
    /// Raw coverage samples (for plots).
    pub coverage_samples: Vec<f64>,
}

impl Summary {
    /// Builds the summary of a standard run.
    pub fn new(o: &StandardOptions, r: &StandardResult, wall: Duration) -> Self {
        let mut detect = r.detect.clone();
        detect.extend(std::iter::repeat_n(f64::INFINITY, r.undetected));
        let mut cov = r.coverage.clone();
        cov.extend(std::iter::repeat_n(f64::INFINITY, r.incomplete));
        Summary {
            nodes: o.nodes,
            loss: o.loss,
            seed: o.seed,
            duration_s: o.duration.as_secs_f64(),
            crashes: o.crashes,
            detect_p50_s: percentile(&detect, 50.0),
            detect_p99_s: percentile(&detect, 99.0),
            detect_max_s: percentile(&detect, 100.0),
            undetected: r.undetected,
            false_positives: r.false_positives.0,
            false_positive_events: r.false_positives.1,
            updates: cov.len(),
            dissemination_p50_s: percentile(&cov, 50.0),
            dissemination_p99_s: percentile(&cov, 99.0),
            dissemination_observer_p99_s: percentile(&r.per_observer, 99.0),
            bytes_per_member_per_s: r.bytes_per_member_per_s,
            reliable_bytes_per_member_per_s: r.reliable_bytes_per_member_per_s,
            msgs_per_member_per_s: r.msgs_per_member_per_s,
            warmup_s: r.warmup.as_secs_f64(),
            wall_s: wall.as_secs_f64(),
            detect_samples: r.detect.clone(),
            coverage_samples: r.coverage.clone(),
        }
    }

    /// Human-readable report; ends with the four machine-readable lines
    /// `detect_p99_s`, `false_positives`, `dissemination_p99_s`,
    /// `bytes_per_member_per_s`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "membership: nodes={} loss={} seed={} measured={}s crashes={} updates={} (converged at {:.1}s, wall {:.1}s)",
            self.nodes,
            self.loss,
            self.seed,
            self.duration_s,
            self.crashes,
            self.updates,
            self.warmup_s,
            self.wall_s
        );
        let _ = writeln!(
            s,
            "  detection (crash -> marked dead, per observer): p50 {:.2}s p99 {:.2}s max {:.2}s, undetected pairs {}",
            self.detect_p50_s, self.detect_p99_s, self.detect_max_s, self.undetected
        );
        let _ = writeln!(
            s,
            "  false positives: {} healthy members declared dead ({} declarations)",
            self.false_positives, self.false_positive_events
        );
        let _ = writeln!(
            s,
            "  dissemination (update -> every member): p50 {:.2}s p99 {:.2}s; per observer p99 {:.2}s",
            self.dissemination_p50_s, self.dissemination_p99_s, self.dissemination_observer_p99_s
        );
        let _ = writeln!(
            s,
            "  traffic: {:.0} payload bytes per member per second ({:.0} of them push-pull), {:.1} messages per member per second",
            self.bytes_per_member_per_s,
            self.reliable_bytes_per_member_per_s,
            self.msgs_per_member_per_s
        );
        let _ = writeln!(s, "detect_p99_s: {:.3}", self.detect_p99_s);
        let _ = writeln!(s, "false_positives: {}", self.false_positives);
        let _ = writeln!(s, "dissemination_p99_s: {:.3}", self.dissemination_p99_s);
        let _ = write!(
            s,
            "bytes_per_member_per_s: {:.1}",
            self.bytes_per_member_per_s
        );
        s
    }

    /// CSV header matching [`Summary::csv_row`].
    pub fn csv_header() -> &'static str {
        "nodes,loss,seed,duration_s,crashes,detect_p50_s,detect_p99_s,detect_max_s,undetected,false_positives,false_positive_events,updates,dissemination_p50_s,dissemination_p99_s,dissemination_observer_p99_s,bytes_per_member_per_s,warmup_s,wall_s"
    }

    /// One CSV line.
    pub fn csv_row(&self) -> String {
        format!(
            "{},{},{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1}",
            self.nodes,
            self.loss,
            self.seed,
            self.duration_s,
            self.crashes,
            self.detect_p50_s,
            self.detect_p99_s,
            self.detect_max_s,
            self.undetected,
            self.false_positives,
            self.false_positive_events,
            self.updates,
            self.dissemination_p50_s,
            self.dissemination_p99_s,
            self.dissemination_observer_p99_s,
            self.bytes_per_member_per_s,
            self.warmup_s,
            self.wall_s
        )
    }

    /// Markdown table row (see [`markdown_header`]).
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.0}% | {:.0} s | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.0} |",
            self.nodes,
            self.loss * 100.0,
            self.duration_s,
            self.crashes,
            self.detect_p50_s,
            self.detect_p99_s,
            self.false_positives,
            self.dissemination_p50_s,
            self.dissemination_p99_s,
            self.bytes_per_member_per_s
        )
    }
}

/// Header of the markdown table.
pub fn markdown_header() -> &'static str {
    "| N | loss | measured | crashes | detect p50 (s) | detect p99 (s) | false positives | dissemination p50 (s) | dissemination p99 (s) | bytes/member/s |\n|---|---|---|---|---|---|---|---|---|---|"
}

/// A panel of empirical CDFs.
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub xlabel: String,
    /// (label, samples).
    pub series: Vec<(String, Vec<f64>)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// Renders panels of empirical CDFs side by side as a standalone SVG.
pub fn svg_cdf(panels: &[Panel]) -> String {
    let (pw, ph) = (460.0, 320.0);
    let (ml, mr, mt, mb) = (55.0, 15.0, 30.0, 45.0);
    let width = pw * panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (pi, p) in panels.iter().enumerate() {
        let x0 = pi as f64 * pw + ml;
        let (w, h) = (pw - ml - mr, ph - mt - mb);
        let y0 = mt;
        let xmax = p
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied().filter(|x| x.is_finite()))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let xmax = nice_ceil(xmax);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="18" text-anchor="middle" font-weight="bold">{}</text>"#,
            x0 + w / 2.0,
            esc(&p.title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>"##
        );
        for i in 0..=5 {
            let fx = i as f64 / 5.0;
            let gx = x0 + fx * w;
            let gy = y0 + h - fx * h;
            let _ = writeln!(
                s,
                r##"<line x1="{gx}" y1="{y0}" x2="{gx}" y2="{}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + h,
                y0 + h + 15.0,
                trim(fx * xmax)
            );
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{gy}" x2="{}" y2="{gy}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.1}</text>"##,
                x0 + w,
                x0 - 5.0,
                gy + 4.0,
                fx
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x0 + w / 2.0,
            ph - 8.0,
            esc(&p.xlabel)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">fraction ≤ x</text>"#,
            x0 - 40.0,
            y0 + h / 2.0,
            x0 - 40.0,
            y0 + h / 2.0
        );
        for (si, (label, v)) in p.series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let mut v: Vec<f64> = v.clone();
            v.sort_by(f64::total_cmp);
            // Keep the file small: at most ~500 evenly spaced quantiles.
            if v.len() > 500 {
                let step = v.len() as f64 / 500.0;
                v = (0..500)
                    .map(|k| v[((k as f64 + 1.0) * step) as usize - 1])
                    .collect();
            }
            let n = v.len().max(1) as f64;
            let mut pts = String::new();
            let _ = write!(pts, "{:.1},{:.1} ", x0, y0 + h);
            for (k, x) in v.iter().enumerate() {
                if !x.is_finite() {
                    break;
                }
                let px = x0 + (x / xmax).min(1.0) * w;
                let py_before = y0 + h - (k as f64 / n) * h;
                let py = y0 + h - ((k + 1) as f64 / n) * h;
                let _ = write!(pts, "{px:.1},{py_before:.1} {px:.1},{py:.1} ");
            }
            let _ = writeln!(
                s,
                r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"/>"#
            );
            let ly = y0 + h - 12.0 - 15.0 * si as f64;
            let lx = x0 + w - 120.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 22.0,
                ly + 4.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceil(x: f64) -> f64 {
    let mag = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= x {
            return m * mag;
        }
    }
    10.0 * mag
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn svg_renders() {
        let s = svg_cdf(&[Panel {
            title: "t".into(),
            xlabel: "s".into(),
            series: vec![("a".into(), vec![1.0, 2.0, f64::INFINITY])],
        }]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
    }
}
