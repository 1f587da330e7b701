//! The coordinator's domain errors, and the one place they become gRPC status codes (the edge).

use spotbatch_plan::PlanError;
use spotbatch_store::StorageError;
use tonic::{Code, Status};

/// Why a coordinator call could not be served; each variant knows its gRPC code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The manifest is over the size limit.
    #[error("manifest is {bytes} bytes; the limit is {limit}")]
    ManifestTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The client's base folder is not usable.
    #[error("base_url: {0:?} is not a file:// folder URL")]
    BadBase(String),
    /// The manifest has problems: one line per problem, each naming the field.
    #[error("{}", .0.join("\n"))]
    InvalidManifest(Vec<String>),
    /// The output URI climbs out of its folder.
    #[error("output.uri: must not contain `..` segments")]
    OutputDotDot,
    /// The output is outside the prefixes the coordinator allows.
    #[error("output.uri: {output} is outside the coordinator's output prefixes ({allowed})")]
    OutputNotAllowed {
        /// The job's output.
        output: String,
        /// The allowed prefixes, comma-separated.
        allowed: String,
    },
    /// The job could not be planned (inputs missing or unreadable).
    #[error("{0}")]
    Plan(PlanError),
    /// The queue would not take the job's shards.
    #[error("{0}")]
    Enqueue(PlanError),
    /// No such job.
    #[error("no job {0}")]
    NoJob(String),
    /// A worker the coordinator does not know (it restarted): the worker registers again.
    #[error("unknown worker {0}: register again")]
    UnknownWorker(String),
    /// The state prefix failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Something that should not happen (a poisoned lock, a record that would not encode).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The gRPC code a client gets for it.
    pub fn code(&self) -> Code {
        match self {
            ApiError::ManifestTooLarge { .. }
            | ApiError::BadBase(_)
            | ApiError::InvalidManifest(_)
            | ApiError::OutputDotDot => Code::InvalidArgument,
            ApiError::OutputNotAllowed { .. } => Code::PermissionDenied,
            ApiError::Plan(_) => Code::FailedPrecondition,
            ApiError::Enqueue(_) => Code::Unavailable,
            ApiError::NoJob(_) | ApiError::UnknownWorker(_) => Code::NotFound,
            ApiError::Storage(_) | ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_says_what_to_do() {
        let cases = [
            (
                ApiError::InvalidManifest(vec!["a: x".into(), "b: y".into()]),
                Code::InvalidArgument,
                "a: x\nb: y",
            ),
            (
                ApiError::OutputNotAllowed {
                    output: "s3://b/x/".into(),
                    allowed: "s3://b/ok/".into(),
                },
                Code::PermissionDenied,
                "output.uri: s3://b/x/ is outside the coordinator's output prefixes (s3://b/ok/)",
            ),
            (ApiError::NoJob("j-1".into()), Code::NotFound, "no job j-1"),
            (
                ApiError::UnknownWorker("w-1".into()),
                Code::NotFound,
                "unknown worker w-1: register again",
            ),
        ];
        for (e, code, msg) in cases {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
