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
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`, written digit by digit: every request
    // formats one, and `format!` with padding costs ten times as much.
    let mut out = String::with_capacity(24);
    let year = u32::try_from(t.year()).unwrap_or(0).min(9999);
    for (n, width, sep) in [
        (year, 4, '-'),
        (u32::from(u8::from(t.month())), 2, '-'),
        (u32::from(t.day()), 2, 'T'),
        (u32::from(t.hour()), 2, ':'),
        (u32::from(t.minute()), 2, ':'),
        (u32::from(t.second()), 2, '.'),
        (u32::from(t.millisecond()), 3, 'Z'),
    ] {
        for i in (0..width).rev() {
            let digit = (n / 10u32.pow(i)) % 10;
            out.push(char::from_digit(digit, 10).unwrap_or('0'));
        }
        out.push(sep);
    }
    out
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
            ..Default::default()
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

#[cfg(test)]
mod tests {
    #[test]
    fn audit_times_are_rfc3339_utc_with_milliseconds() {
        let t = time::macros::datetime!(2026-03-04 05:06:07.089 +02:00);
        assert_eq!(super::audit_time(t), "2026-03-04T03:06:07.089Z");
        let t = time::macros::datetime!(0999-12-31 23:59:59.999 UTC);
        assert_eq!(super::audit_time(t), "0999-12-31T23:59:59.999Z");
    }
}
