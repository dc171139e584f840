//! The contact-center channel: a command becomes a task in the contact center's queue (an
//! assist task) or on an agent's list (the sales rep's outbound call), POSTed as JSON to a
//! webhook-style API.
//!
//! Owns the task's shape (from the command's `params`: `task`, `queue`, `assignee`, `note`)
//! and its checks: an outbound call needs an assignee. The command id is the task id and the
//! idempotency key; a `409 Conflict` (the task exists) counts as delivered. It must not consume
//! Kafka or remember what was sent: that is the runner's.

use std::time::Duration;

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
    pub customer: &'a std::collections::BTreeMap<String, String>,
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
            .map(String::as_str)
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
                .map(|(k, v)| (k.to_string(), v.to_string()))
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
