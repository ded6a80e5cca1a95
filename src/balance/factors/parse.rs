//! Reads the few series the load factors need out of a Prometheus text exposition, summing
//! a series over its labels. Unknown lines, comments and malformed values are skipped.

/// The raw figures of one `/metrics` reading; `None` where the TiDB did not export the series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: Option<f64>,
    /// `tidb_server_maxprocs`: the CPUs the TiDB may use.
    pub maxprocs: Option<f64>,
    /// `process_resident_memory_bytes`.
    pub resident_bytes: Option<f64>,
    /// `tidb_server_memory_quota_bytes`.
    pub memory_quota_bytes: Option<f64>,
    /// `tidb_server_query_total`, every result.
    pub queries: Option<f64>,
    /// `tidb_server_query_total{result="Error"}`.
    pub query_errors: Option<f64>,
}

pub fn parse(text: &str) -> Sample {
    let mut s = Sample::default();
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => match line[open..].find('}') {
                Some(close) => (
                    &line[..open],
                    &line[open + 1..open + close],
                    &line[open + close + 1..],
                ),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, "", r),
                None => continue,
            },
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        match name {
            "process_cpu_seconds_total" => add(&mut s.cpu_seconds, value),
            "tidb_server_maxprocs" => add(&mut s.maxprocs, value),
            "process_resident_memory_bytes" => add(&mut s.resident_bytes, value),
            "tidb_server_memory_quota_bytes" => add(&mut s.memory_quota_bytes, value),
            "tidb_server_query_total" => {
                add(&mut s.queries, value);
                if labels.split(',').any(|l| l.trim() == "result=\"Error\"") {
                    add(&mut s.query_errors, value);
                } else if s.query_errors.is_none() {
                    s.query_errors = Some(0.0);
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_factor_series_and_sums_labels() {
        let text = "# HELP process_cpu_seconds_total CPU\n\
            # TYPE process_cpu_seconds_total counter\n\
            process_cpu_seconds_total 12.5\n\
            tidb_server_maxprocs 8\n\
            process_resident_memory_bytes 1.5e+09\n\
            tidb_server_memory_quota_bytes 4e9\n\
            tidb_server_query_total{result=\"OK\",type=\"Query\"} 90\n\
            tidb_server_query_total{result=\"Error\",type=\"Query\"} 7 1700000000\n\
            tidb_server_query_total{result=\"Error\",type=\"Execute\"} 3\n\
            go_goroutines 55\n\
            broken{ 1\n\
            process_cpu_seconds_total NaN\n";
        let s = parse(text);
        assert_eq!(s.cpu_seconds, Some(12.5));
        assert_eq!(s.maxprocs, Some(8.0));
        assert_eq!(s.resident_bytes, Some(1.5e9));
        assert_eq!(s.memory_quota_bytes, Some(4e9));
        assert_eq!((s.queries, s.query_errors), (Some(100.0), Some(10.0)));
    }

    #[test]
    fn a_server_without_tidb_series_gives_only_process_figures() {
        let s = parse("process_resident_memory_bytes 100\n");
        assert_eq!(s.resident_bytes, Some(100.0));
        assert_eq!((s.maxprocs, s.queries, s.query_errors), (None, None, None));
        assert_eq!(parse(""), Sample::default());
    }
}
