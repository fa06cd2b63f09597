//! `[route]`: how events become records: the topic and key templates (checked with the sink's
//! topic rules), the event filter and the payload mode.

use super::ConfigError;
use crate::route::{EventFilter, PayloadMode, Template};
use serde::{Deserialize, Serialize};
use voxsig_sinks::SinkConfig;

/// How events become records.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Topic template; defaults to the sink's (`voxsig/{account}/{event}` for MQTT,
    /// `voxsig.{account}.{event}` for Kafka). Variables: `{account}`, `{event}`, `{user}`,
    /// `{conversation}`, `{inbox}`, `{label.NAME}`.
    pub topic: Option<String>,
    /// Key template (Kafka partitioning), default `{account}/{conversation}`.
    pub key: String,
    /// Only events matching one of these patterns (`*` matches any run), when not empty.
    pub include: Vec<String>,
    /// Never events matching one of these patterns.
    pub exclude: Vec<String>,
    /// `raw` (the event's `data`, byte-identical), `envelope`
    /// (`{"event","account_id","received_at","data"}`) or `cloudevents` (CloudEvents 1.0 in
    /// the sink's binding mode).
    pub payload: PayloadMode,
    /// With `payload = "cloudevents"`: the prefix of the `type` attribute
    /// (`com.voxsig.message.created`). Default `com.voxsig.`.
    pub cloudevents_type_prefix: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            topic: None,
            key: voxsig_sinks::kafka::DEFAULT_KEY.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            payload: PayloadMode::Raw,
            cloudevents_type_prefix: voxsig_sinks::cloudevents::DEFAULT_TYPE_PREFIX.into(),
        }
    }
}

/// The route, parsed and checked against the sink.
#[derive(Debug, Clone)]
pub(super) struct Route {
    pub(super) topic: Template,
    pub(super) key: Template,
    pub(super) filter: EventFilter,
}

impl RouteConfig {
    /// Parses the templates and the filter, checking the topic with the sink's rules.
    pub(super) fn resolve(&self, sink: &SinkConfig) -> Result<Route, ConfigError> {
        Ok(Route {
            topic: self.topic(sink)?,
            key: self.key(sink)?,
            filter: self.filter()?,
        })
    }

    /// The topic template: `route.topic` or, sink-style, `sink.topic` (not both, unless equal),
    /// else the sink's default.
    fn topic(&self, sink: &SinkConfig) -> Result<Template, ConfigError> {
        let text = match (&self.topic, sink.topic_template()) {
            (Some(route), from_sink)
                if from_sink != sink.default_topic_template() && from_sink != route =>
            {
                return Err(ConfigError::new(
                    "route.topic",
                    "conflicts with sink.topic: set the topic template in one place",
                ))
            }
            (Some(route), _) => route.as_str(),
            (None, from_sink) => from_sink,
        };
        sink.topic_rules()
            .parse_template(text)
            .map_err(|e| ConfigError::new("route.topic", e.to_string()))
    }

    /// The key template: `route.key` when changed from the default, else the sink's.
    fn key(&self, sink: &SinkConfig) -> Result<Template, ConfigError> {
        let text = if self.key == RouteConfig::default().key {
            sink.key_template()
        } else {
            self.key.as_str()
        };
        Template::parse(text).map_err(|e| ConfigError::new("route.key", e.to_string()))
    }

    fn filter(&self) -> Result<EventFilter, ConfigError> {
        EventFilter::new(&self.include, &self.exclude)
            .map_err(|e| ConfigError::new(e.key(), e.to_string()))
    }
}
