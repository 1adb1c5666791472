//! `insertDefaults=true`: a service's spec with Docker's defaults for what it leaves unset, as
//! `docker service inspect` shows it. Specs are stored as given (an update sends back what
//! `insertDefaults=false` returned), so the defaults are filled only on the way out.

use bollard::models;

/// Sets `slot` to `value` when it is unset or Docker's empty value `empty`.
fn fill<T: PartialEq>(slot: &mut Option<T>, empty: T, value: T) {
    if slot.as_ref().is_none_or(|v| *v == empty) {
        *slot = Some(value);
    }
}

/// Docker's default update and rollback settings (`docker service create --help`).
fn update_defaults(config: &mut models::ServiceSpecUpdateConfig) {
    use models::{
        ServiceSpecUpdateConfigFailureActionEnum as Action,
        ServiceSpecUpdateConfigOrderEnum as Order,
    };
    config.parallelism.get_or_insert(1);
    fill(&mut config.failure_action, Action::EMPTY, Action::PAUSE);
    config.monitor.get_or_insert(5_000_000_000);
    config.max_failure_ratio.get_or_insert(0.0);
    fill(&mut config.order, Order::EMPTY, Order::STOP_FIRST);
}

fn rollback_defaults(config: &mut models::ServiceSpecRollbackConfig) {
    use models::{
        ServiceSpecRollbackConfigFailureActionEnum as Action,
        ServiceSpecRollbackConfigOrderEnum as Order,
    };
    config.parallelism.get_or_insert(1);
    fill(&mut config.failure_action, Action::EMPTY, Action::PAUSE);
    config.monitor.get_or_insert(5_000_000_000);
    config.max_failure_ratio.get_or_insert(0.0);
    fill(&mut config.order, Order::EMPTY, Order::STOP_FIRST);
}

/// Fills Docker's defaults into `spec` where it sets nothing.
pub(crate) fn insert(spec: &mut models::ServiceSpec) {
    let task = spec.task_template.get_or_insert_with(Default::default);
    let container = task.container_spec.get_or_insert_with(Default::default);
    container.stop_grace_period.get_or_insert(10_000_000_000);
    fill(
        &mut container.isolation,
        models::TaskSpecContainerSpecIsolationEnum::EMPTY,
        models::TaskSpecContainerSpecIsolationEnum::DEFAULT,
    );
    let restart = task.restart_policy.get_or_insert_with(Default::default);
    fill(
        &mut restart.condition,
        models::TaskSpecRestartPolicyConditionEnum::EMPTY,
        models::TaskSpecRestartPolicyConditionEnum::ANY,
    );
    restart.delay.get_or_insert(5_000_000_000);
    restart.max_attempts.get_or_insert(0);
    task.resources.get_or_insert_with(Default::default);
    task.placement.get_or_insert_with(Default::default);
    task.force_update.get_or_insert(0);
    task.runtime.get_or_insert_with(|| "container".into());
    update_defaults(spec.update_config.get_or_insert_with(Default::default));
    rollback_defaults(spec.rollback_config.get_or_insert_with(Default::default));
    fill(
        &mut spec.endpoint_spec.get_or_insert_with(Default::default).mode,
        models::EndpointSpecModeEnum::EMPTY,
        models::EndpointSpecModeEnum::VIP,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_get_dockers_defaults_and_set_ones_stay() {
        let mut spec: models::ServiceSpec = serde_json::from_str(
            r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"host"},
            "RestartPolicy":{"Condition":"on-failure"}},"UpdateConfig":{"Parallelism":2}}"#,
        )
        .unwrap();
        insert(&mut spec);
        let shown = serde_json::to_value(&spec).unwrap();
        assert_eq!(shown["UpdateConfig"]["Parallelism"], 2);
        assert_eq!(shown["UpdateConfig"]["Order"], "stop-first");
        assert_eq!(shown["UpdateConfig"]["Monitor"], 5_000_000_000_i64);
        assert_eq!(shown["RollbackConfig"]["FailureAction"], "pause");
        assert_eq!(
            shown["TaskTemplate"]["RestartPolicy"]["Condition"],
            "on-failure"
        );
        assert_eq!(
            shown["TaskTemplate"]["RestartPolicy"]["Delay"],
            5_000_000_000_i64
        );
        assert_eq!(
            shown["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"],
            10_000_000_000_i64
        );
        assert_eq!(shown["EndpointSpec"]["Mode"], "vip");
    }
}
