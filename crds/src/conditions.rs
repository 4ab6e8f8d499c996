//! Helpers for Kubernetes `Condition`s (kept in status as a list-type map keyed by `type`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets (or replaces) the condition of `type_`, keeping `lastTransitionTime` when the status did
/// not change, as Kubernetes API conventions require.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: now,
        }),
    }
}

/// The condition of `type_`, if set.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is set and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "Starting", "waiting", Some(1), t(10));
        set_condition(&mut c, "Ready", false, "Starting", "still waiting", Some(2), t(20));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, t(10), "same status keeps the transition time");
        assert_eq!(c[0].message, "still waiting");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, "Ready", true, "Available", "ok", Some(2), t(30));
        assert_eq!(c[0].last_transition_time, t(30));
        assert!(is_true(&c, "Ready"));
        assert!(!is_true(&c, "Missing"));
    }
}
