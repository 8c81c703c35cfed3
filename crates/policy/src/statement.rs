//! The grammar and the evaluator. (To be written.)

use crate::{Evaluation, PolicyDocument, PolicyError, PolicyKind, Request};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement;

pub(crate) fn parse(_json: &str, _kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
    Err(PolicyError("not yet implemented".into()))
}

pub(crate) fn evaluate(_doc: &PolicyDocument, _request: &Request<'_>) -> Evaluation {
    Evaluation::default()
}
