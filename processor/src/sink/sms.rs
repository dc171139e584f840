//! The SMS channel: a command becomes one request to an HTTP provider API shaped like
//! Twilio's Messages API (`POST …/Accounts/<sid>/Messages.json`, form-encoded `To`, `From`,
//! `Body`, HTTP basic auth).
//!
//! Owns the number check (E.164), the request (with the command id as idempotency key, so a
//! provider that honours it never sends twice) and the classification of answers: 2xx
//! delivered, 429 and 5xx and connection trouble transient, other 4xx permanent. It must not
//! consume Kafka or remember what was sent: that is the runner's.

use std::path::PathBuf;
use std::time::Duration;

use super::{DeliveryError, Provider};
use crate::config::SmsConfig;
use crate::model::{Channel, InterventionCommand};

/// Why the SMS sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SmsSetupError {
    /// A required setting is missing or malformed.
    #[error("sinks.sms.{field}: {message}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// TLS could not be set up.
    #[error("sinks.sms: cannot set up TLS: {0}")]
    Tls(#[from] native_tls::Error),
}

/// Whether `number` is an E.164 phone number: `+`, a non-zero digit, at most 15 digits.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Delivers SMS commands through the provider API.
pub struct SmsProvider {
    agent: ureq::Agent,
    url: String,
    account_sid: String,
    auth_token: String,
    from: String,
    templates: PathBuf,
}

impl SmsProvider {
    /// Checks the settings and builds the HTTP client.
    pub fn new(cfg: &SmsConfig) -> Result<Self, SmsSetupError> {
        let invalid = |field, message: &str| SmsSetupError::Invalid {
            field,
            message: message.to_owned(),
        };
        if cfg.account_sid.trim().is_empty() {
            return Err(invalid(
                "account-sid",
                "is required: the provider account the messages are sent from",
            ));
        }
        if !is_e164(&cfg.from) {
            return Err(invalid(
                "from",
                &format!("`{}` is not an E.164 number (e.g. +15005550006)", cfg.from),
            ));
        }
        if !cfg.templates.is_dir() {
            return Err(invalid(
                "templates",
                &format!(
                    "{} is not a directory; it holds one folder per template with body.txt",
                    cfg.templates.display()
                ),
            ));
        }
        let auth_token = std::env::var("WAYMARK_SMS_AUTH_TOKEN")
            .ok()
            .or_else(|| cfg.auth_token.clone())
            .unwrap_or_default();
        let agent = super::http::agent(Duration::from_secs(cfg.timeout_secs))?;
        Ok(SmsProvider {
            agent,
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                cfg.base_url.trim_end_matches('/'),
                cfg.account_sid
            ),
            account_sid: cfg.account_sid.clone(),
            auth_token,
            from: cfg.from.clone(),
            templates: cfg.templates.clone(),
        })
    }

    /// The recipient (the `phone` attribute, E.164) and the rendered body of a command.
    pub fn message(
        &self,
        command: &InterventionCommand,
    ) -> Result<(String, String), DeliveryError> {
        let to = command
            .attributes
            .get("phone")
            .or_else(|| command.params.get("phone"))
            .ok_or_else(|| {
                DeliveryError::permanent(
                    "no_address",
                    format!(
                        "command {} for customer {} has no `phone` attribute; add `phone` to the journey's `profile` and to the customer's events",
                        command.command_id, command.customer_id
                    ),
                )
            })?;
        if !is_e164(to) {
            return Err(DeliveryError::permanent(
                "bad_number",
                format!(
                    "`{to}` (customer {}) is not an E.164 number (`+` and country code, e.g. +16125550100); fix the upstream `phone` attribute",
                    command.customer_id
                ),
            ));
        }
        let dir = super::templates::dir_for(&self.templates, command, "body.txt")?;
        let body = super::templates::render(&dir, "body.txt", command)?.ok_or_else(|| {
            DeliveryError::permanent(
                "no_template",
                format!("{} is missing", dir.join("body.txt").display()),
            )
        })?;
        Ok((to.to_string(), body.trim().to_owned()))
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

impl Provider for SmsProvider {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn deliver(&self, command: &InterventionCommand) -> Result<String, DeliveryError> {
        let (to, body) = self.message(command)?;
        let response = self
            .agent
            .post(&self.url)
            .set(
                "Authorization",
                &basic_auth(&self.account_sid, &self.auth_token),
            )
            .set("Idempotency-Key", &command.command_id)
            .set("I-Twilio-Idempotency-Token", &command.command_id)
            .send_form(&[("To", &to), ("From", &self.from), ("Body", &body)]);
        super::http::outcome(
            response,
            &format!("the SMS provider at {}", self.url),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_are_plus_country_code_and_at_most_15_digits() {
        for ok in ["+16125550100", "+491701234567", "+44"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "16125550100",
            "+0612555",
            "+1 612 555 0100",
            "+1234567890123456",
            "+",
            "",
            "+1-612",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn basic_auth_is_rfc_7617() {
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth("a", ""), "Basic YTo=");
    }
}
