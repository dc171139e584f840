//! The contact-center channel: a command becomes a task in the contact center's queue (an
//! assist task) or on an agent's list (the sales rep's outbound call), POSTed as JSON to a
//! webhook-style API.
//!
//! Owns the task's shape (from the command's `params`: `task`, `queue`, `assignee`, `note`)
//! and its checks: an outbound call needs an assignee. The command id is the task id and the
//! idempotency key; a `409 Conflict` (the task exists) counts as delivered. Also owns the
//! callback through which the contact center reports what became of a task
//! (`POST /callbacks/contact-center/tasks` on the sink's HTTP port), published as an outcome.
//! It must not consume Kafka or remember what was sent: that is the runner's.

use std::time::Duration;

use compact_str::CompactString;
use serde::Serialize;

use super::{DeliveryError, Provider};
use crate::config::ContactCenterConfig;
use crate::model::{Channel, InterventionCommand};

/// The JSON body of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task<'a> {
    /// The command id: stable, so a retried request cannot create a second task.
    pub task_id: &'a str,
    /// `assist`, `outbound-call`, … (`params.task`, default `assist`).
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Queue for unassigned tasks (`params.queue`).
    pub queue: Option<&'a str>,
    /// Agent the task is for (`params.assignee`, e.g. the customer's sales rep).
    pub assignee: Option<&'a str>,
    /// When it is due (the command's due time, RFC 3339).
    pub due_at: String,
    /// Free text for the agent (`params.note`).
    pub note: Option<&'a str>,
    /// The customer.
    pub customer_id: &'a str,
    /// Journey and action that asked for it.
    pub journey: &'a str,
    /// The action.
    pub action: &'a str,
    /// Customer attributes (email, phone, time zone, …) for the agent.
    pub customer: &'a std::collections::BTreeMap<CompactString, CompactString>,
}

/// Creates contact-center tasks over HTTP.
pub struct ContactCenterProvider {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl ContactCenterProvider {
    /// Builds the HTTP client for `cfg`.
    pub fn new(cfg: &ContactCenterConfig) -> Result<Self, native_tls::Error> {
        Ok(ContactCenterProvider {
            agent: super::http::agent(Duration::from_secs(cfg.timeout_secs))?,
            url: cfg.url.clone(),
            token: std::env::var("WAYMARK_CONTACT_CENTER_TOKEN")
                .ok()
                .or_else(|| cfg.token.clone()),
        })
    }
}

/// The task a command asks for; an outbound call without an assignee is refused.
pub fn task(command: &InterventionCommand) -> Result<Task<'_>, DeliveryError> {
    let param = |k: &str| {
        command
            .params
            .get(k)
            .map(CompactString::as_str)
            .filter(|v| !v.trim().is_empty())
    };
    let kind = param("task").unwrap_or("assist");
    let assignee = param("assignee");
    if kind == "outbound-call" && assignee.is_none() {
        return Err(DeliveryError::permanent(
            "no_assignee",
            format!(
                "outbound call {} for customer {} has no assignee: give the action `assignee: \"{{{{sales_rep}}}}\"` and the customer a `sales_rep` attribute",
                command.command_id, command.customer_id
            ),
        ));
    }
    Ok(Task {
        task_id: &command.command_id,
        kind,
        queue: param("queue"),
        assignee,
        due_at: crate::model::format_millis(command.due_at),
        note: param("note"),
        customer_id: &command.customer_id,
        journey: &command.journey,
        action: &command.action,
        customer: &command.attributes,
    })
}

impl Provider for ContactCenterProvider {
    fn channel(&self) -> Channel {
        Channel::ContactCenter
    }

    fn deliver(&self, command: &InterventionCommand) -> Result<String, DeliveryError> {
        let task = task(command)?;
        let body = serde_json::to_string(&task)
            .map_err(|e| DeliveryError::permanent("unbuildable", e.to_string()))?;
        let mut request = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("Idempotency-Key", &command.command_id);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        super::http::outcome(
            request.send_string(&body),
            &format!("the contact center at {}", self.url),
            true,
        )
    }
}

/// What the contact center reports about a task (the callback's JSON body). It echoes the
/// task's `task_id`, `customer_id`, `journey` and `action`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    /// The task (= command) id.
    pub task_id: String,
    /// The customer.
    pub customer_id: String,
    /// Journey of the command.
    pub journey: String,
    /// Action of the command.
    pub action: String,
    /// What happened: `completed`, `cancelled`, `no_answer`, … (lowercase letters and `_`).
    pub status: String,
    /// The agent's note.
    #[serde(default)]
    pub note: Option<String>,
}

impl TaskUpdate {
    /// The outcome it reports: status `task_<status>`, id stable per task and status (so a
    /// repeated callback is a duplicate downstream).
    pub fn outcome(
        &self,
        at: crate::model::Millis,
    ) -> Result<crate::model::InterventionOutcome, String> {
        let ok = |s: &str| !s.trim().is_empty();
        if !(ok(&self.task_id) && ok(&self.customer_id) && ok(&self.journey) && ok(&self.action)) {
            return Err("task_id, customer_id, journey and action must not be empty; echo them from the task".into());
        }
        if self.status.is_empty()
            || self.status.len() > 32
            || !self
                .status
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(format!(
                "status `{}` must be 1-32 lowercase letters or `_` (e.g. completed, no_answer)",
                self.status
            ));
        }
        let status = format!("task_{}", self.status);
        Ok(crate::model::InterventionOutcome {
            outcome_id: crate::engine::stable_id(&[&self.task_id, &status]),
            command_id: self.task_id.clone(),
            customer_id: self.customer_id.clone(),
            journey: self.journey.clone(),
            action: self.action.clone(),
            channel: Channel::ContactCenter,
            status,
            at,
            detail: self.note.clone(),
        })
    }
}

/// The callback route: a valid update is published to `intervention-outcomes` (202 once the
/// broker has it); a malformed one gets 400 with what is wrong; 503 when Kafka is not
/// reachable (the contact center should retry).
pub fn callback_routes(
    cfg: &crate::config::Config,
    wire: crate::registry::Wire,
) -> Result<axum::Router, rdkafka::error::KafkaError> {
    use axum::Json;
    use axum::extract::State;
    use axum::extract::rejection::JsonRejection;
    use axum::http::StatusCode;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    #[derive(Clone)]
    struct Callback {
        producer: FutureProducer,
        topic: String,
        wire: std::sync::Arc<crate::registry::Wire>,
    }
    async fn task_update(
        State(cb): State<Callback>,
        body: Result<Json<TaskUpdate>, JsonRejection>,
    ) -> (StatusCode, String) {
        let update = match body {
            Ok(Json(u)) => u,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let outcome = match update.outcome(crate::model::now_millis()) {
            Ok(o) => o,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let bytes = match cb.wire.encode(&cb.topic, &outcome) {
            Ok(b) => b,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        };
        let record = FutureRecord::to(&cb.topic)
            .key(&outcome.customer_id)
            .payload(&bytes);
        match cb.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => {
                tracing::info!(task_id = %update.task_id, status = %outcome.status, "Task update published.");
                (StatusCode::ACCEPTED, "accepted\n".into())
            }
            Err((e, _)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot publish the outcome, retry later: {e}\n"),
            ),
        }
    }
    let producer: FutureProducer =
        crate::kafka::producer_config(&cfg.kafka.brokers, &cfg.kafka.properties).create()?;
    Ok(axum::Router::new()
        .route(
            "/callbacks/contact-center/tasks",
            axum::routing::post(task_update),
        )
        .with_state(Callback {
            producer,
            topic: cfg.topics.intervention_outcomes.clone(),
            wire: std::sync::Arc::new(wire),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(params: &[(&str, &str)]) -> InterventionCommand {
        InterventionCommand {
            command_id: "c-1".into(),
            journey: "b2b-onboarding".into(),
            journey_version: 1,
            customer_id: "cust-1".into(),
            instance: 1,
            rule: "payment-account-nudge".into(),
            action: "sales-rep-call".into(),
            channel: Channel::ContactCenter,
            due_at: 0,
            template: None,
            variant: None,
            params: params
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn an_outbound_call_goes_to_the_sales_rep_and_needs_one() {
        let c = command(&[("task", "outbound-call"), ("assignee", "rep-3")]);
        let t = task(&c).unwrap();
        assert_eq!(
            (t.kind, t.assignee, t.task_id),
            ("outbound-call", Some("rep-3"), "c-1")
        );
        // `{{sales_rep}}` of a customer without one renders empty.
        let e = task(&command(&[("task", "outbound-call"), ("assignee", "")])).unwrap_err();
        assert!(
            e.permanent && e.code == "no_assignee" && e.message.contains("sales_rep"),
            "{e}"
        );
    }

    #[test]
    fn a_task_update_becomes_a_task_outcome_and_bad_ones_say_why() {
        let u = TaskUpdate {
            task_id: "c-1".into(),
            customer_id: "cust-1".into(),
            journey: "b2b-onboarding".into(),
            action: "sales-rep-call".into(),
            status: "completed".into(),
            note: Some("called, account set up".into()),
        };
        let o = u.outcome(5).unwrap();
        assert_eq!(
            (o.status.as_str(), o.command_id.as_str(), o.at),
            ("task_completed", "c-1", 5)
        );
        assert_eq!(
            o.outcome_id,
            u.outcome(9).unwrap().outcome_id,
            "stable per task and status"
        );
        let bad = TaskUpdate {
            status: "Done!".into(),
            ..u.clone()
        };
        assert!(bad.outcome(0).unwrap_err().contains("lowercase"));
        let empty = TaskUpdate {
            customer_id: " ".into(),
            ..u
        };
        assert!(empty.outcome(0).unwrap_err().contains("echo them"));
    }

    #[test]
    fn an_assist_task_goes_to_its_queue() {
        let c = command(&[
            ("task", "assist"),
            ("queue", "onboarding"),
            ("note", "help"),
        ]);
        let t = task(&c).unwrap();
        assert_eq!(
            (t.kind, t.queue, t.note),
            ("assist", Some("onboarding"), Some("help"))
        );
        assert_eq!(t.due_at, "1970-01-01T00:00:00.000Z");
    }
}
