//! Plain-text tables of the API's JSON answers for people at a terminal.

use serde_json::Value;

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) if x.is_empty() => "-".into(),
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    }
}

fn f(v: &Value, key: &str, scale: f64, digits: usize, unit: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or("-".into(), |x| format!("{:.*}{unit}", digits, x * scale))
}

/// Left-aligned columns separated by two spaces.
fn render(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `2 x the session holds a temporary table; 1 x ...`: sessions that should move and have not.
fn blocked(b: &Value) -> String {
    let Some(map) = b.get("blocked").and_then(Value::as_object) else {
        return "-".into();
    };
    let parts: Vec<String> = map
        .iter()
        .map(|(why, n)| format!("{} x {why}", n.as_u64().unwrap_or(0)))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

pub fn backends(v: &Value) -> String {
    let rows = list(v, "backends")
        .iter()
        .map(|b| {
            vec![
                s(b, "addr"),
                s(b, "status"),
                s(b, "sessions"),
                f(b, "qps", 1.0, 1, ""),
                f(b, "error_rate", 100.0, 2, "%"),
                f(b, "p99_ms", 1.0, 1, "ms"),
                blocked(b),
                s(b, "last_error"),
            ]
        })
        .collect();
    render(
        &[
            "ADDRESS", "HEALTH", "SESSIONS", "QPS", "ERRORS", "P99", "BLOCKED", "WHY",
        ],
        rows,
    )
}

pub fn connections(v: &Value) -> String {
    let rows = list(v, "connections")
        .iter()
        .map(|c| {
            vec![
                s(c, "id"),
                s(c, "client"),
                s(c, "user"),
                s(c, "backend"),
                s(c, "state"),
                f(c, "age_seconds", 1.0, 0, "s"),
            ]
        })
        .collect();
    render(&["ID", "CLIENT", "USER", "BACKEND", "STATE", "AGE"], rows)
}

pub fn events(v: &Value) -> String {
    let rows = list(v, "events")
        .iter()
        .map(|e| {
            let ms = e.get("time_ms").and_then(Value::as_i64).unwrap_or(0);
            let t = chrono::DateTime::from_timestamp_millis(ms)
                .map(|d| d.with_timezone(&chrono::Local).format("%F %T").to_string())
                .unwrap_or_default();
            vec![t, s(e, "kind"), s(e, "message")]
        })
        .collect();
    render(&["TIME", "KIND", "MESSAGE"], rows)
}

pub fn reload_report(v: &Value) -> String {
    let keys = |k: &str| -> String {
        let l: Vec<String> = list(v, k)
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        if l.is_empty() {
            "none".into()
        } else {
            l.join(", ")
        }
    };
    let mut out = format!(
        "applied: {}\nneeds a restart: {}\nconfig checksum: {}\n",
        keys("applied"),
        keys("restart_required"),
        s(v, "config_checksum")
    );
    for w in list(v, "warnings").iter().filter_map(Value::as_str) {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_show_dashes_for_missing_values() {
        let v = serde_json::json!({"backends": [
            {"addr": "127.0.0.1:3306", "status": "up", "sessions": 2, "qps": 10.0,
             "error_rate": 0.5, "p99_ms": null, "last_error": "",
             "blocked": {"the session holds a temporary table": 2}}]});
        let t = backends(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ADDRESS         HEALTH"));
        assert!(lines[1].contains("127.0.0.1:3306  up"));
        assert!(lines[1].contains("50.00%"));
        assert!(lines[1].contains("2 x the session holds a temporary table"));
        assert!(lines[1].ends_with('-'));
    }
}
