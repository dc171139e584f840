//! The email channel: a command becomes a message over SMTP.
//!
//! Owns the message (subject, text and HTML parts rendered from the command's template) and
//! the SMTP exchange (lettre), and the
//! classification of SMTP answers into transient (4xx, connection trouble: retry) and
//! permanent (5xx: dead letter) failures. It must not consume Kafka or remember what was sent:
//! that is the runner's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};

use super::{DeliveryError, Provider};
use crate::config::{EmailConfig, SmtpTls};
use crate::model::{Channel, InterventionCommand};

/// Why the email sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    /// The sender address does not parse.
    #[error("sinks.email.from `{0}` is not a mailbox (e.g. `Onboarding <onboarding@example.com>`)")]
    From(String),
    /// The SMTP transport cannot be built (TLS setup).
    #[error("sinks.email: cannot set up SMTP to {host}: {message}")]
    Transport {
        /// The server.
        host: String,
        /// lettre's message.
        message: String,
    },
    /// The templates directory is missing.
    #[error(
        "sinks.email.templates: {0} is not a directory; it holds one folder per template (subject.txt, body.txt, optional body.html)"
    )]
    Templates(PathBuf),
}

/// Delivers email commands over SMTP.
pub struct EmailProvider {
    transport: SmtpTransport,
    from: Mailbox,
    templates: PathBuf,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part, when the template has one.
    pub html: Option<String>,
}

impl EmailProvider {
    /// Connects lazily (the first delivery opens the connection) per `cfg`.
    pub fn new(cfg: &EmailConfig) -> Result<Self, EmailSetupError> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|_| EmailSetupError::From(cfg.from.clone()))?;
        if !cfg.templates.is_dir() {
            return Err(EmailSetupError::Templates(cfg.templates.clone()));
        }
        let transport_err = |e: lettre::transport::smtp::Error| EmailSetupError::Transport {
            host: cfg.smtp_host.clone(),
            message: e.to_string(),
        };
        let mut builder = match cfg.tls {
            SmtpTls::None => SmtpTransport::builder_dangerous(&cfg.smtp_host),
            SmtpTls::Starttls => {
                SmtpTransport::starttls_relay(&cfg.smtp_host).map_err(transport_err)?
            }
            SmtpTls::Tls => SmtpTransport::relay(&cfg.smtp_host).map_err(transport_err)?,
        }
        .port(cfg.smtp_port)
        .timeout(Some(Duration::from_secs(cfg.timeout_secs)));
        if let Some(user) = &cfg.username {
            let password = std::env::var("WAYMARK_SMTP_PASSWORD")
                .ok()
                .or_else(|| cfg.password.clone())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(EmailProvider {
            transport: builder.build(),
            from,
            templates: cfg.templates.clone(),
        })
    }

    /// Renders a command with its template (the variant's folder when it has one).
    pub fn render(&self, command: &InterventionCommand) -> Result<Rendered, DeliveryError> {
        render(&self.templates, command)
    }

    /// The message for a command: rendered, addressed to its `email` attribute, with the
    /// command id as `Message-ID` (so a receiving system can drop a repeat).
    pub fn message(&self, command: &InterventionCommand) -> Result<Message, DeliveryError> {
        let to_text = command
            .attributes
            .get("email")
            .or_else(|| command.params.get("email"))
            .ok_or_else(|| {
                DeliveryError::permanent(
                    "no_address",
                    format!(
                        "command {} for customer {} has no `email` attribute; add `email` to the journey's `profile` and to the customer's events",
                        command.command_id, command.customer_id
                    ),
                )
            })?;
        let to: Mailbox = to_text.parse().map_err(|_| {
            DeliveryError::permanent(
                "bad_address",
                format!(
                    "`{to_text}` (customer {}) is not an email address",
                    command.customer_id
                ),
            )
        })?;
        let r = self.render(command)?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(r.subject)
            .message_id(Some(format!("<{}@waymark>", command.command_id)));
        let built = match r.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(r.text, html)),
            None => builder.header(ContentType::TEXT_PLAIN).body(r.text),
        };
        built.map_err(|e| DeliveryError::permanent("unbuildable", e.to_string()))
    }
}

/// Renders `subject.txt`, `body.txt` and (optional) `body.html` of the command's template
/// (see [`super::templates`]).
pub fn render(root: &Path, command: &InterventionCommand) -> Result<Rendered, DeliveryError> {
    let dir = super::templates::dir_for(root, command, "subject.txt and body.txt")?;
    let required = |file: &str| {
        super::templates::render(&dir, file, command)?.ok_or_else(|| {
            DeliveryError::permanent(
                "no_template",
                format!("{} is missing", dir.join(file).display()),
            )
        })
    };
    Ok(Rendered {
        subject: required("subject.txt")?.trim().to_owned(),
        text: required("body.txt")?,
        html: super::templates::render(&dir, "body.html", command)?,
    })
}

impl Provider for EmailProvider {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn deliver(&self, command: &InterventionCommand) -> Result<String, DeliveryError> {
        let message = self.message(command)?;
        match self.transport.send(&message) {
            Ok(response) => Ok(format!(
                "accepted: {} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => Err(DeliveryError::permanent(
                "rejected",
                format!("the SMTP server rejected the message: {e}"),
            )),
            Err(e) => Err(DeliveryError::transient(
                "unreachable",
                format!("SMTP delivery failed, will retry: {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_str::format_compact;

    fn command(template: &str, variant: Option<&str>) -> InterventionCommand {
        InterventionCommand {
            command_id: "c-1".into(),
            journey: "b2b-onboarding".into(),
            journey_version: 1,
            customer_id: "cust-1".into(),
            instance: 1,
            rule: "payment-account-nudge".into(),
            action: "invite-email".into(),
            channel: Channel::Email,
            due_at: 0,
            template: Some(template.into()),
            variant: variant.map(Into::into),
            params: [("link".into(), "https://billing.example.com/x".into())].into(),
            attributes: [("email".into(), "ana@example.com".into())].into(),
        }
    }

    fn templates() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/templates/email")
    }

    #[test]
    fn the_payment_account_invite_carries_the_link_in_both_parts() {
        let r = render(&templates(), &command("payment-account-invite", None)).unwrap();
        assert!(!r.subject.is_empty() && !r.subject.contains('\n'));
        assert!(
            r.text.contains("https://billing.example.com/x"),
            "{}",
            r.text
        );
        assert!(r.html.unwrap().contains("https://billing.example.com/x"));
    }

    #[test]
    fn a_variant_folder_wins_and_an_unknown_variant_falls_back() {
        let plain = render(&templates(), &command("payment-account-invite", None)).unwrap();
        let b = render(&templates(), &command("payment-account-invite", Some("b"))).unwrap();
        assert_ne!(plain.subject, b.subject);
        let z = render(&templates(), &command("payment-account-invite", Some("z"))).unwrap();
        assert_eq!(plain, z);
    }

    #[test]
    fn a_missing_template_or_variable_is_a_permanent_error_that_says_what_to_do() {
        let e = render(&templates(), &command("nope", None)).unwrap_err();
        assert!(e.permanent && e.message.contains("subject.txt"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/subject.txt"), "Hi {{ attributes.name }}").unwrap();
        std::fs::write(dir.path().join("t/body.txt"), "x").unwrap();
        let e = render(dir.path(), &command("t", None)).unwrap_err();
        assert!(e.permanent && e.message.contains("subject.txt"), "{e}");
    }

    /// Every email and SMS a shipped journey can send (each variant too) has its template,
    /// and every email renders with only the journey's profile attributes filled in.
    #[test]
    fn every_shipped_journey_has_the_templates_it_sends() {
        use crate::journey::JourneySet;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut sets = vec![JourneySet::load(&root.join("deploy/journeys")).unwrap()];
        for example in ["b2b-onboarding-ab.yaml", "email-bounce-fallback.yaml"] {
            sets.push(JourneySet::load(&root.join("deploy/examples").join(example)).unwrap());
        }
        let mut checked = 0;
        for journey in sets.iter().flat_map(|s| s.iter()) {
            for rule in &journey.rules {
                for action in &rule.actions {
                    let mut sends = vec![(action.channel, action.template.clone(), None)];
                    for v in action.experiment.iter().flat_map(|x| &x.variants) {
                        let template = v.template.clone().or(action.template.clone());
                        sends.push((
                            v.channel.unwrap_or(action.channel),
                            template,
                            Some(v.id.clone()),
                        ));
                    }
                    for (channel, template, variant) in sends {
                        let mut c = command(
                            template.as_deref().unwrap_or(&action.id),
                            variant.as_deref(),
                        );
                        c.journey = journey.name.as_str().into();
                        c.action = action.id.as_str().into();
                        c.params = action
                            .params
                            .iter()
                            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                            .collect();
                        c.attributes = journey
                            .profile
                            .iter()
                            .map(|p| (p.as_str().into(), format_compact!("<{p}>")))
                            .collect();
                        let what =
                            format!("{}: {}.{} on {channel}", journey.name, rule.id, action.id);
                        match channel {
                            Channel::Email => {
                                render(&root.join("deploy/templates/email"), &c)
                                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                            }
                            Channel::Sms => {
                                let dir = super::super::templates::dir_for(
                                    &root.join("deploy/templates/sms"),
                                    &c,
                                    "body.txt",
                                )
                                .unwrap_or_else(|e| panic!("{what}: {e}"));
                                super::super::templates::render(&dir, "body.txt", &c)
                                    .unwrap_or_else(|e| panic!("{what}: {e}"))
                                    .unwrap_or_else(|| panic!("{what}: no body.txt"));
                            }
                            Channel::ContactCenter => continue,
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 8, "only {checked} templates checked");
    }
}
