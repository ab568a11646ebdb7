//! Pass/fail objectives, as pure code: `METRIC OP VALUE` expressions ([`Objective::parse`]),
//! resolved against a report's flattened fields ([`flatten`], [`resolve`]) and judged
//! ([`evaluate`]).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Comparison of an objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

/// One pass/fail objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// As written.
    pub expr: String,
    /// Metric name (resolved against the report by [`resolve`]).
    pub metric: String,
    /// Comparison.
    pub op: Op,
    /// Threshold, in the metric's unit (ms for durations, % for `_pct`).
    pub value: f64,
}

impl Objective {
    /// Parses `METRIC OP VALUE[UNIT]`; units: `us`, `ms`, `s` (converted to ms), `%`.
    pub fn parse(expr: &str) -> Result<Objective> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, tok, op) = ops
            .iter()
            .filter_map(|(t, o)| expr.find(t).map(|i| (i, *t, *o)))
            .min_by_key(|(i, t, _)| (*i, usize::MAX - t.len()))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "objective '{expr}': no comparison (<, <=, >, >=, ==)"
                ))
            })?;
        let metric = expr[..at].trim();
        let raw = expr[at + tok.len()..].trim();
        if metric.is_empty() || raw.is_empty() {
            return Err(Error::invalid(format!(
                "objective '{expr}': expected METRIC OP VALUE"
            )));
        }
        let (num, scale) = if let Some(n) = raw.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = raw.strip_suffix("us").or_else(|| raw.strip_suffix("µs")) {
            (n, 0.001)
        } else if let Some(n) = raw.strip_suffix('s') {
            (n, 1000.0)
        } else if let Some(n) = raw.strip_suffix('%') {
            (n, 1.0)
        } else {
            (raw, 1.0)
        };
        let value: f64 = num
            .trim()
            .parse()
            .map_err(|_| Error::invalid(format!("objective '{expr}': '{raw}' is not a number")))?;
        Ok(Objective {
            expr: expr.trim().to_owned(),
            metric: metric.to_owned(),
            op,
            value: value * scale,
        })
    }

    /// Whether `actual` meets the objective.
    pub fn holds(&self, actual: f64) -> bool {
        match self.op {
            Op::Lt => actual < self.value,
            Op::Le => actual <= self.value,
            Op::Gt => actual > self.value,
            Op::Ge => actual >= self.value,
            Op::Eq => (actual - self.value).abs() < 1e-9,
        }
    }
}

/// How one objective fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveResult {
    /// As written.
    pub expr: String,
    /// The report field it was judged on (`null` if none matched).
    pub field: Option<String>,
    /// The measured value.
    pub actual: Option<f64>,
    /// Whether it held.
    pub passed: bool,
}

/// Every numeric field of a JSON object by dotted path (`ttfa_ms.p99`); booleans are 0/1.
pub fn flatten(v: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_owned(), f);
                }
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), *b as u8 as f64);
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// Finds `metric` among `fields`: the exact path; else `X_pNN`, `X_max`, `X_mean` as
/// `X_ms.pNN` (so `ttfa_p99` is `ttfa_ms.p99`, `e2e_latency_p99` is `e2e_latency_ms.p99`);
/// else `e2e_pNN`/`latency_pNN` as `e2e_latency_ms.pNN`, `worst_gap_pNN` as
/// `worst_gap_ms.pNN`; else a top-level name under `listeners.` (`failed`, `joined_pct`).
pub fn resolve(metric: &str, fields: &BTreeMap<String, f64>) -> Option<(String, f64)> {
    let mut tries = vec![metric.to_owned()];
    if let Some((base, stat)) = metric.rsplit_once('_') {
        if stat.starts_with('p') || stat == "max" || stat == "mean" {
            tries.push(format!("{base}_ms.{stat}"));
            if base == "e2e" || base == "latency" {
                tries.push(format!("e2e_latency_ms.{stat}"));
            }
        }
    }
    tries.push(format!("listeners.{metric}"));
    tries
        .into_iter()
        .find_map(|k| fields.get(&k).map(|v| (k, *v)))
}

/// Judges every objective against `fields`.
pub fn evaluate(objs: &[Objective], fields: &BTreeMap<String, f64>) -> Vec<ObjectiveResult> {
    objs.iter()
        .map(|o| match resolve(&o.metric, fields) {
            Some((field, actual)) => ObjectiveResult {
                expr: o.expr.clone(),
                field: Some(field),
                actual: Some(actual),
                passed: o.holds(actual),
            },
            None => ObjectiveResult {
                expr: o.expr.clone(),
                field: None,
                actual: None,
                passed: false,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_units_and_operators() {
        let o = Objective::parse("ttfa_p99 < 500ms").unwrap();
        assert_eq!(
            (o.metric.as_str(), o.op, o.value),
            ("ttfa_p99", Op::Lt, 500.0)
        );
        let o = Objective::parse("e2e_latency_p99<=1.5s").unwrap();
        assert_eq!((o.op, o.value), (Op::Le, 1500.0));
        let o = Objective::parse("delivered_ratio>0.999").unwrap();
        assert_eq!((o.op, o.value), (Op::Gt, 0.999));
        let o = Objective::parse("listeners_with_stall_pct < 0.1%").unwrap();
        assert_eq!(o.value, 0.1);
        assert_eq!(Objective::parse("failed == 0").unwrap().op, Op::Eq);
        assert!(Objective::parse("ttfa_p99 500").is_err());
        assert!(Objective::parse("ttfa_p99 < fast").is_err());
        assert!(Objective::parse("< 3").is_err());
    }

    #[test]
    fn objectives_resolve_aliases_and_fail_on_unknown_metrics() {
        let v = serde_json::json!({
            "ttfa_ms": {"p99": 420.0},
            "e2e_latency_ms": {"p99": 80.0},
            "delivered_ratio": 0.9995,
            "listeners": {"failed": 0},
            "valid": true
        });
        let f = flatten(&v);
        let objs: Vec<Objective> = [
            "ttfa_p99 < 500ms",
            "e2e_p99 < 100ms",
            "delivered_ratio > 0.999",
            "failed == 0",
            "valid == 1",
            "ttfa_p99 < 0.4s",
            "no_such_metric < 1",
        ]
        .iter()
        .map(|e| Objective::parse(e).unwrap())
        .collect();
        let r = evaluate(&objs, &f);
        let passed: Vec<bool> = r.iter().map(|x| x.passed).collect();
        assert_eq!(passed, [true, true, true, true, true, false, false]);
        assert_eq!(r[0].field.as_deref(), Some("ttfa_ms.p99"));
        assert_eq!(r[1].field.as_deref(), Some("e2e_latency_ms.p99"));
        assert_eq!(r[6].field, None);
    }
}
