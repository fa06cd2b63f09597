//! The one template type: `{variable}` templates of topics and keys, parsed once and rendered per
//! event with every value sanitised for the destination's [`Charset`].

use std::collections::BTreeMap;

use super::Charset;

/// A variable of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// The event's account (`data.account_id`, else the subscription's).
    Account,
    /// The event name.
    Event,
    /// The user of the subscription that received it (`contact` for a contact token).
    User,
    /// The conversation id (`none` when the event has none).
    Conversation,
    /// The inbox id (`none` when the event has none).
    Inbox,
    /// A label of the subscription's account entry (`none` when unset).
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Var),
}

/// What a missing value renders as.
pub const NONE: &str = "none";

/// A parsed `{variable}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

/// Why a template is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` with an unknown name.
    #[error("unknown variable `{{{0}}}` (known: {{account}}, {{event}}, {{user}}, {{conversation}}, {{inbox}}, {{label.NAME}})")]
    UnknownVariable(String),
    /// A `{` without its `}`, or a stray `}`.
    #[error("unbalanced braces")]
    Unbalanced,
    /// Nothing at all.
    #[error("is empty")]
    Empty,
}

impl Template {
    /// Parses a template such as `voxsig/{account}/{event}`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => return Err(TemplateError::Unbalanced),
                Some(i) => {
                    if i > 0 {
                        segments.push(Segment::Literal(rest[..i].to_owned()));
                    }
                    let close = rest[i..].find('}').ok_or(TemplateError::Unbalanced)? + i;
                    let name = &rest[i + 1..close];
                    if name.contains('{') {
                        return Err(TemplateError::Unbalanced);
                    }
                    segments.push(Segment::Var(match name {
                        "account" => Var::Account,
                        "event" => Var::Event,
                        "user" => Var::User,
                        "conversation" => Var::Conversation,
                        "inbox" => Var::Inbox,
                        _ => match name.strip_prefix("label.") {
                            Some(label) if !label.is_empty() => Var::Label(label.to_owned()),
                            _ => return Err(TemplateError::UnknownVariable(name.to_owned())),
                        },
                    }));
                    rest = &rest[close + 1..];
                }
                None => {
                    segments.push(Segment::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        Ok(Template {
            text: text.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The variables whose values come from the receiving subscription (`{user}`,
    /// `{label.NAME}`), in order of use.
    pub fn receiver_vars(&self) -> impl Iterator<Item = &Var> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(v @ (Var::User | Var::Label(_))) => Some(v),
            _ => None,
        })
    }

    /// Whether the template uses a variable.
    pub fn uses(&self, var: &Var) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Var(v) if v == var))
    }

    /// Renders with typical values, as written (for `check`'s output).
    pub fn sample(&self) -> String {
        self.sample_in(Charset::Any)
    }

    /// Renders with typical values sanitised for `charset`, to check a template against a
    /// sink's topic rules ([`super::TopicRules::check_template`]).
    pub fn sample_in(&self, charset: Charset) -> String {
        let labels = BTreeMap::new();
        let ctx = Context {
            account: 1,
            event: "conversation.status_changed",
            user: Some(7),
            conversation: Some(100078),
            inbox: Some(3),
            labels: &labels,
        };
        self.render(&ctx, charset)
    }

    /// Renders for one event, sanitising every value for `charset`.
    pub fn render(&self, ctx: &Context<'_>, charset: Charset) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Var(var) => {
                    let start = out.len();
                    match var {
                        Var::Account => write_id(&mut out, Some(ctx.account)),
                        Var::Event => out.push_str(ctx.event),
                        Var::User => match ctx.user {
                            Some(user) => write_id(&mut out, Some(user)),
                            None => out.push_str("contact"),
                        },
                        Var::Conversation => write_id(&mut out, ctx.conversation),
                        Var::Inbox => write_id(&mut out, ctx.inbox),
                        Var::Label(name) => {
                            out.push_str(ctx.labels.get(name).map_or(NONE, String::as_str))
                        }
                    }
                    charset.sanitise(&mut out, start);
                }
            }
        }
        out
    }
}

fn write_id(out: &mut String, id: Option<u64>) {
    match id {
        Some(id) => out.push_str(itoa::Buffer::new().format(id)),
        None => out.push_str(NONE),
    }
}

/// The values a template is rendered with.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The event's account.
    pub account: u64,
    /// The event name.
    pub event: &'a str,
    /// The receiving subscription's user.
    pub user: Option<u64>,
    /// The conversation.
    pub conversation: Option<u64>,
    /// The inbox.
    pub inbox: Option<u64>,
    /// The receiving subscription's labels.
    pub labels: &'a BTreeMap<String, String>,
}
