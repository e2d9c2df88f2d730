//! Log output: human-readable lines by default, one JSON object per line on request, and the node id on every
//! line either way, so the logs of several instances can be merged (PM2, journald) and still be told apart.

use std::{fmt, io::IsTerminal};

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    filter::{FilterFn, filter_fn},
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// The default filter when `RUST_LOG` is unset: our logs at info, the libraries' warnings.
const DEFAULT_FILTER: &str = "info,socketioxide=warn,engineioxide=warn,fred=warn";

/// Installs the global subscriber; call once, before anything logs.
pub fn init(format: LogFormat, node: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stdout().is_terminal())
            .event_format(WithNode::new(node, format::Format::default(), false))
            .finish()
            .with(without_payloads())
            .init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithNode::new(
                node,
                format::Format::default().json().flatten_event(true),
                true,
            ))
            .finish()
            .with(without_payloads())
            .init(),
    }
}

/// Leaves out, whatever `RUST_LOG` asks, the log lines that print what clients send: tungstenite's trace lines
/// hold every websocket message, so a handshake's password or token. (socketioxide's and engineioxide's own
/// payload logs are not compiled in: see Cargo.toml.)
fn without_payloads() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|meta| !(meta.target().starts_with("tungstenite") && *meta.level() == Level::TRACE))
}

/// Wraps a formatter and adds the node id: a `node` field in JSON, a `[node]` prefix in human lines.
pub struct WithNode<F> {
    node: String,
    inner: F,
    json: bool,
}

impl<F> WithNode<F> {
    pub fn new(node: &str, inner: F, json: bool) -> Self {
        let node = match json {
            true => serde_json::to_string(node).expect("a string serializes"),
            false => format!("[{node}]"),
        };
        Self { node, inner, json }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !self.json {
            write!(writer, "{} ", self.node)?;
            return self.inner.format_event(ctx, writer, event);
        }
        // JSON: the object is only complete once written, so write it aside and add the field in front.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"node\":{},{rest}", self.node),
            None => writer.write_str(&line),
        }
    }
}
