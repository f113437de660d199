//! Medians and spreads of repeated measurements.

use serde::Serialize;

/// A repeated measurement: every sample, its median and its spread.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Sample {
    pub fn of(samples: &[f64]) -> Sample {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return Sample { median: f64::NAN, min: f64::NAN, max: f64::NAN, samples: samples.to_vec() };
        }
        s.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        Sample { median: median_sorted(&s), min: s[0], max: s[s.len() - 1], samples: samples.to_vec() }
    }

    /// Spread as +-% of the median (half the min..max range).
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 || !self.median.is_finite() {
            return 0.0;
        }
        (self.max - self.min) / 2.0 / self.median.abs() * 100.0
    }
}

pub fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The q-quantile (0..=1) of unsorted values (sorts them).
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((values.len() - 1) as f64 * q).round() as usize;
    values[idx.min(values.len() - 1)]
}

/// Human formatting of a number with a unit-appropriate precision.
pub fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `median ±spread%`.
pub fn fmt_sample(s: &Sample) -> String {
    if s.samples.len() > 1 { format!("{} ±{:.0}%", fmt(s.median), s.spread_pct()) } else { fmt(s.median) }
}

/// A ratio as `x1.23`.
pub fn fmt_ratio(r: f64) -> String {
    if r.is_finite() { format!("×{r:.2}") } else { "n/a".into() }
}
