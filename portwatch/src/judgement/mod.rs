//! Judging listeners: the policy file, the alert engine (dedup, rate limit, summaries), the canary
//! that notices blinding, the exec hook, and `baseline`.
pub mod alert;
pub mod baseline;
pub mod canary;
pub mod hook;
pub mod policy;
