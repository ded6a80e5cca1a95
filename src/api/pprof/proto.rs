//! The pprof profile format (perftools `profile.proto`, as `go tool pprof` reads it): the
//! messages we fill, and the gzip'd encoding of a sampled CPU report. Only the fields we set
//! are declared; protobuf readers skip the rest.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::collections::HashMap;
use std::io::Write;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Innermost first: every entry but the last was inlined into the one after it.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// One resolved stack frame: its symbols, innermost (inlined) first, as (name, raw name, file, line).
pub type Frame = Vec<(String, String, String, i64)>;

/// Strings, functions and locations, each stored once and referred to by index or id.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Vec<(u64, i64)>, u64>,
}

impl Tables {
    fn new() -> Self {
        let mut t = Tables::default();
        t.string(""); // index 0 must be the empty string
        t
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        let mut lines = Vec::with_capacity(frame.len());
        for (name, raw, file, line) in frame {
            let key = (self.string(name), self.string(raw), self.string(file));
            let next = self.functions.len() as u64 + 1;
            let id = *self.function_ids.entry(key).or_insert(next);
            if id == next {
                self.functions.push(Function {
                    id,
                    name: key.0,
                    system_name: key.1,
                    filename: key.2,
                });
            }
            lines.push((id, *line));
        }
        let next = self.locations.len() as u64 + 1;
        let id = *self.location_ids.entry(lines.clone()).or_insert(next);
        if id == next {
            self.locations.push(Location {
                id,
                line: lines
                    .into_iter()
                    .map(|(function_id, line)| Line { function_id, line })
                    .collect(),
            });
        }
        id
    }
}

/// What a CPU profile is made of once its stacks are resolved.
pub struct CpuReport {
    /// Each distinct stack (leaf first), the thread it ran on, and how many samples hit it.
    pub stacks: Vec<(Vec<Frame>, String, i64)>,
    pub hz: i64,
    pub start_unix_nanos: i64,
    pub duration_nanos: i64,
    pub comment: String,
}

/// The profile as Go serves it: sample types samples/count and cpu/nanoseconds, a `thread`
/// label on each sample, gzip'd.
pub fn encode_cpu(report: &CpuReport) -> std::io::Result<Vec<u8>> {
    let mut t = Tables::new();
    let period = 1_000_000_000 / report.hz.max(1);
    let samples_type = ValueType {
        r#type: t.string("samples"),
        unit: t.string("count"),
    };
    let cpu_type = ValueType {
        r#type: t.string("cpu"),
        unit: t.string("nanoseconds"),
    };
    let thread_key = t.string("thread");
    let mut sample = Vec::with_capacity(report.stacks.len());
    for (frames, thread, count) in &report.stacks {
        let location_id = frames.iter().map(|f| t.location(f)).collect();
        let thread = t.string(thread);
        sample.push(Sample {
            location_id,
            value: vec![*count, count * period],
            label: vec![Label {
                key: thread_key,
                str: thread,
            }],
        });
    }
    let comment = vec![t.string(&report.comment)];
    let profile = Profile {
        sample_type: vec![samples_type, cpu_type.clone()],
        sample,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos: report.start_unix_nanos,
        duration_nanos: report.duration_nanos,
        period_type: Some(cpu_type),
        period,
        comment,
    };
    gzip(&prost::Message::encode_to_vec(&profile))
}

fn gzip(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(raw)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use prost::Message;
    use std::io::Read;

    fn frame(name: &str, line: i64) -> Frame {
        vec![(name.into(), format!("_ZN{name}"), "src/x.rs".into(), line)]
    }

    #[test]
    fn encodes_shared_tables_and_round_trips() {
        let report = CpuReport {
            stacks: vec![
                (vec![frame("leaf", 3), frame("main", 9)], "w-0".into(), 5),
                (vec![frame("other", 4), frame("main", 9)], "w-1".into(), 2),
            ],
            hz: 100,
            start_unix_nanos: 1,
            duration_nanos: 2_000_000_000,
            comment: "test".into(),
        };
        let gz = encode_cpu(&report).unwrap();
        let mut raw = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
        let p = Profile::decode(&raw[..]).unwrap();
        assert_eq!(p.string_table[0], "");
        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|v| (s(v.r#type), s(v.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, [5, 50_000_000]);
        // "main" at line 9 is one location and one function, shared by both stacks.
        assert_eq!(p.location.len(), 3);
        assert_eq!(p.function.len(), 3);
        assert_eq!(p.sample[0].location_id[1], p.sample[1].location_id[1]);
        let thread = &p.sample[1].label[0];
        assert_eq!((s(thread.key), s(thread.str)), ("thread", "w-1"));
    }
}
