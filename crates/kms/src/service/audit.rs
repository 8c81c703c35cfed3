//! The audit hook: writes make their record durable before they commit.

use atrest_store::WriteTx;

use super::{Call, KeyService};
use crate::KmsError;

/// Where audit records go. Implemented by the server over `atrest-audit`.
pub trait AuditSink: Send + Sync {
    /// Makes `entry` durable; an error means the request must not take
    /// effect.
    fn record_blocking(&self, entry: atrest_audit::Entry) -> Result<(), String>;
}

/// RFC 3339 UTC with milliseconds, the audit log's time format.
#[must_use]
pub fn audit_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

impl KeyService {
    /// Makes `entry` (an event of an atrest service, such as a disk being
    /// attached) durable in the audit trail, when there is one.
    pub fn record_event(&self, entry: atrest_audit::Entry) -> Result<(), KmsError> {
        match self.audit.get() {
            Some(sink) => sink.record_blocking(entry).map_err(|e| {
                KmsError::Internal(format!("the audit trail cannot record the event ({e})"))
            }),
            None => Ok(()),
        }
    }

    /// The audit entry for a call with `result` (`Success` or an error type).
    #[must_use]
    pub fn audit_entry(&self, call: &Call<'_>, result: &str) -> atrest_audit::Entry {
        let c = call.caller;
        let f = call.facts();
        atrest_audit::Entry {
            time: audit_time(call.meta.time),
            request_id: call.meta.request_id.clone(),
            region: Some(c.region.clone()),
            // A service principal acts for the owner of the key it uses:
            // the call is that account's (metering and audit, K9).
            account: Some(
                f.billed_account
                    .or_else(|| {
                        let service =
                            matches!(c.principal.kind, atrest_policy::PrincipalKind::Service(_));
                        f.key_arn
                            .as_deref()
                            .filter(|_| service)
                            .and_then(|arn| arn.split(':').nth(4))
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| c.account.as_str().to_owned()),
            ),
            principal: Some(c.principal_arn()),
            access_key_id: call.meta.access_key_id.clone(),
            source: Some(call.meta.source.clone()),
            operation: call.operation.get().to_owned(),
            key_arn: f.key_arn,
            via_service: c.via_service.clone(),
            grant_id: f.grant_id,
            context_keys: f.context_keys,
            result: result.to_owned(),
        }
    }

    /// Commits a write after making its success record durable. If the
    /// record cannot be written, the transaction is dropped: nothing changes.
    pub(crate) fn commit(
        &self,
        tx: Box<dyn WriteTx + '_>,
        call: &Call<'_>,
    ) -> Result<(), KmsError> {
        if let Some(sink) = self.audit.get() {
            sink.record_blocking(self.audit_entry(call, "Success"))
                .map_err(|e| {
                    KmsError::Internal(format!(
                        "the audit trail cannot record the request ({e}); it was not carried out"
                    ))
                })?;
            call.recorded.set(true);
        }
        tx.commit()?;
        Ok(())
    }
}
