//! Event formatters for the `tidb` and `json` encoders (the `console` one is tracing's own).

use super::fields::{json_str, render_json, render_tidb, tidb_quote, Collected};
use std::fmt;
use std::path::Path;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// TiDB's unified log format: `[time] [LEVEL] [file:line] [message] [k=v]...`.
pub(crate) struct TidbFormat;
/// Pre-renders span fields as ` [k=v]` so each event only concatenates them.
pub(crate) struct TidbFields;
/// One JSON object per line: time, level, caller, message, then the fields.
pub(crate) struct JsonFormat;
/// Pre-renders span fields as `"k":v,...` JSON members.
pub(crate) struct JsonFields;

fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y/%m/%d %H:%M:%S%.3f %:z")
        .to_string()
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// `file.rs:123` from the event or, for `log`-crate records, from their fields;
/// falls back to the target so the column is never empty.
fn caller(event: &Event<'_>, c: &Collected) -> String {
    let meta = event.metadata();
    let file = meta
        .file()
        .map(str::to_string)
        .or_else(|| c.log_file.clone());
    let line = meta.line().map(u64::from).or(c.log_line);
    match file {
        Some(f) => {
            let base = Path::new(&f)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(&f)
                .to_string();
            match line {
                Some(l) => format!("{base}:{l}"),
                None => base,
            }
        }
        None => meta.target().to_string(),
    }
}

/// Span fields from the outermost span inwards, as rendered by the layer's field formatter.
fn span_fields<S, N>(ctx: &FmtContext<'_, S, N>) -> Vec<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut out = Vec::new();
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                if !f.fields.is_empty() {
                    out.push(f.fields.clone());
                }
            }
        }
    }
    out
}

impl<S, N> FormatEvent<S, N> for TidbFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut c = Collected::default();
        event.record(&mut c);
        let msg = c.message.clone().unwrap_or_default();
        write!(
            w,
            "[{}] [{}] [{}] [{}]",
            timestamp(),
            level_name(event.metadata().level()),
            caller(event, &c),
            tidb_quote(&msg)
        )?;
        render_tidb(&c.fields, &mut w)?;
        for f in span_fields(ctx) {
            w.write_str(&f)?;
        }
        writeln!(w)
    }
}

impl<'w> FormatFields<'w> for TidbFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut c = Collected::default();
        fields.record(&mut c);
        if let Some(m) = c.message.take() {
            c.fields
                .insert(0, ("message", super::fields::FieldValue::Str(m)));
        }
        render_tidb(&c.fields, &mut w)
    }

    // Each fragment already starts with its own space.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut c = Collected::default();
        event.record(&mut c);
        let mut line = format!(
            "{{\"time\":{},\"level\":{},\"caller\":{},\"message\":{}",
            json_str(&timestamp()),
            json_str(level_name(event.metadata().level())),
            json_str(&caller(event, &c)),
            json_str(c.message.as_deref().unwrap_or_default()),
        );
        if !c.fields.is_empty() {
            line.push(',');
            render_json(&c.fields, &mut line);
        }
        for f in span_fields(ctx) {
            line.push(',');
            line.push_str(&f);
        }
        line.push('}');
        writeln!(w, "{line}")
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut c = Collected::default();
        fields.record(&mut c);
        if let Some(m) = c.message.take() {
            c.fields
                .insert(0, ("message", super::fields::FieldValue::Str(m)));
        }
        let mut s = String::new();
        render_json(&c.fields, &mut s);
        w.write_str(&s)
    }

    // Members of one object are joined by commas, not the default space.
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut c = Collected::default();
        fields.record(&mut c);
        if c.fields.is_empty() {
            return Ok(());
        }
        if !current.fields.is_empty() {
            current.fields.push(',');
        }
        render_json(&c.fields, &mut current.fields);
        Ok(())
    }
}
