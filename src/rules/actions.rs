//! A rule's actions, compiled from `[[rules]] actions`: every argument a `${…}` template over
//! the rule's output, rendered into what the action does.

use bytes::Bytes;
use serde_json::{Map, Value};

use keelmq_rules::eval::text;
use keelmq_rules::template::Template;

use crate::broker::local::LocalPublish;
use crate::codec::{PublishProperties, QoS};
use crate::config::{ActionSpec, RepublishSpec, TemplateOr};
use crate::session::RuleReach;

/// A compiled action.
#[derive(Debug)]
pub enum Action {
    Republish(Box<Republish>),
    Console,
    /// Written by the sink of this name: a topic rule's through the sink's own durable
    /// subscriber (`crate::bridges`), an event rule's handed to the sink as it happens.
    Sink(String),
}

/// A compiled republish.
#[derive(Debug)]
pub struct Republish {
    topic: Template,
    qos: Either<u8>,
    retain: Either<bool>,
    payload: Template,
    user_properties: Option<Template>,
    properties: Vec<(String, Template)>,
    direct_dispatch: bool,
}

#[derive(Debug)]
enum Either<T> {
    Value(T),
    Template(Template),
}

fn template(text: &str) -> Result<Template, String> {
    Template::parse(text).map_err(|e| e.to_string())
}

fn either<T: Copy>(t: &TemplateOr<T>) -> Result<Either<T>, String> {
    Ok(match t {
        TemplateOr::Value(v) => Either::Value(*v),
        TemplateOr::Template(s) => Either::Template(template(s)?),
    })
}

impl Action {
    pub fn is_sink(&self) -> bool {
        matches!(self, Action::Sink(_))
    }

    pub fn compile(spec: &ActionSpec) -> Result<Action, String> {
        Ok(match spec {
            ActionSpec::Console => Action::Console,
            ActionSpec::Sink { name } => Action::Sink(name.clone()),
            ActionSpec::Republish(r) => Action::Republish(Box::new(Republish::compile(r)?)),
        })
    }
}

impl Republish {
    fn compile(r: &RepublishSpec) -> Result<Republish, String> {
        let user_properties = match r.user_properties.is_empty() {
            true => None,
            false => Some(template(&r.user_properties)?),
        };
        let mut properties = Vec::new();
        for (name, value) in &r.mqtt_properties {
            properties.push((name.clone(), template(value)?));
        }
        Ok(Republish {
            topic: template(&r.topic)?,
            qos: either(&r.qos)?,
            retain: either(&r.retain)?,
            payload: template(&r.payload)?,
            user_properties,
            properties,
            direct_dispatch: r.direct_dispatch,
        })
    }

    /// The message for one output, or why there is none (the action is discarded for it).
    pub fn render(&self, out: &Map<String, Value>) -> Result<LocalPublish, String> {
        let qos = match &self.qos {
            Either::Value(q) => *q,
            Either::Template(t) => parse_qos(&t.render(out))?,
        };
        let qos = QoS::from_u8(qos).ok_or_else(|| format!("qos {qos} is not 0, 1 or 2"))?;
        let retain = match &self.retain {
            Either::Value(r) => *r,
            Either::Template(t) => parse_flag(&t.render(out))?,
        };
        let mut p = LocalPublish::new(self.topic.render(out), self.payload.render(out), qos);
        p.retain = retain;
        p.rules = match self.direct_dispatch {
            true => RuleReach::None,
            false => RuleReach::All,
        };
        p.properties = self.properties(out)?;
        Ok(p)
    }

    fn properties(&self, out: &Map<String, Value>) -> Result<PublishProperties, String> {
        let mut p = PublishProperties::default();
        if let Some(t) = &self.user_properties {
            p.user_properties = user_properties(&t.render(out))?;
        }
        for (name, t) in &self.properties {
            let v = t.render(out);
            if v.is_empty() {
                continue;
            }
            let number = || {
                v.parse::<u32>()
                    .map_err(|_| format!("{name} `{v}` is not a number"))
            };
            match name.as_str() {
                "Payload-Format-Indicator" => {
                    p.payload_format_indicator = Some(u8::from(number()? != 0))
                }
                "Message-Expiry-Interval" => p.message_expiry_interval = Some(number()?),
                "Content-Type" => p.content_type = Some(v),
                "Response-Topic" => p.response_topic = Some(v),
                "Correlation-Data" => p.correlation_data = Some(Bytes::from(v)),
                other => return Err(format!("unknown property {other}")),
            }
        }
        Ok(p)
    }
}

/// A rendered QoS: empty (the field is missing, as for most events) means 0.
fn parse_qos(s: &str) -> Result<u8, String> {
    match s.trim() {
        "" => Ok(0),
        t => t.parse().map_err(|_| format!("qos `{t}` is not 0, 1 or 2")),
    }
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim() {
        "" | "false" | "0" => Ok(false),
        "true" | "1" => Ok(true),
        t => Err(format!("retain `{t}` is not true or false")),
    }
}

/// Rendered user properties: a JSON object (`${pub_props.'User-Property'}`), nothing when empty.
fn user_properties(s: &str) -> Result<Vec<(String, String)>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        Ok(Value::Null) => Ok(Vec::new()),
        _ => Err(format!("user_properties `{s}` is not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn republish(toml: &str) -> Republish {
        let spec: RepublishSpec = toml::from_str(toml).expect("spec");
        Republish::compile(&spec).expect("compiles")
    }

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn emqx_defaults_forward_the_message() {
        let r = republish("topic = 'copy/${topic}'");
        let out = fields(json!({"topic": "a/b", "qos": 1, "payload": "hi",
                                "flags": {"retain": true}}));
        let p = r.render(&out).expect("renders");
        assert_eq!(p.topic, "copy/a/b");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(p.retain && p.rules == RuleReach::None);
        assert_eq!(&p.payload[..], b"hi");
    }

    #[test]
    fn properties_render_from_templates() {
        let r = republish(
            "topic = 'x'\nqos = 2\nretain = false\nuser_properties = \"${pub_props.'User-Property'}\"\n\
             mqtt_properties = { Content-Type = 'application/json', Message-Expiry-Interval = '${ttl}' }",
        );
        let out = fields(json!({"ttl": 30, "pub_props": {"User-Property": {"k": "v"}}}));
        let p = r.render(&out).expect("renders");
        assert_eq!(p.qos, QoS::ExactlyOnce);
        assert_eq!(p.properties.user_properties, [("k".into(), "v".into())]);
        assert_eq!(
            p.properties.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(p.properties.message_expiry_interval, Some(30));
    }

    #[test]
    fn bad_renderings_say_why() {
        let r = republish("topic = 'x'\nqos = '${q}'");
        assert!(r.render(&fields(json!({"q": 7}))).is_err());
        assert!(r.render(&fields(json!({"q": "one"}))).is_err());
        let r = republish("topic = 'x'\nuser_properties = '${u}'");
        assert!(r.render(&fields(json!({"u": [1]}))).is_err());
        let r = republish("topic = 'x'\nretain = '${r}'");
        assert!(r.render(&fields(json!({"r": "maybe"}))).is_err());
    }
}
