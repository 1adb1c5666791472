//! `service inspect --pretty`: a service in the docker CLI's human layout (tab-aligned
//! sections: mode, update status, placement, update and rollback configuration, container
//! spec, mounts, resources, networks, endpoint mode, ports, health check).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use shoal_api::service::{
    ContainerSpec, HealthConfig, Mount, Placement, PortConfig, ResourceRequirements, Resources,
    Service, UpdateConfig, UpdateStatus,
};

use shoal_api::wire_name as wire;

/// Nanoseconds as Go prints a `time.Duration`: `0s`, `500ms`, `1.5s`, `1m30s`, `2h0m0s`.
pub(crate) fn go_duration_text(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    let fraction = |value: u64, unit: u64, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return format!("{whole}{suffix}");
        }
        let digits = unit.ilog10() as usize;
        let text = format!("{rest:0digits$}");
        format!("{whole}.{}{suffix}", text.trim_end_matches('0'))
    };
    match ns {
        0 => "0s".to_owned(),
        n if n < US => format!("{n}ns"),
        n if n < MS => fraction(n, US, "µs"),
        n if n < S => fraction(n, MS, "ms"),
        n => {
            let (hours, minutes) = (n / (3_600 * S), (n / (60 * S)) % 60);
            let seconds = fraction(n % (60 * S), S, "s");
            match (hours, minutes) {
                (0, 0) => seconds,
                (0, m) => format!("{m}m{seconds}"),
                (h, m) => format!("{h}h{m}m{seconds}"),
            }
        }
    }
}

fn update_config(out: &mut String, title: &str, order: &str, c: &UpdateConfig) {
    let _ = writeln!(out, "{title}:");
    let _ = writeln!(out, " Parallelism:\t{}", c.parallelism);
    if c.delay > 0 {
        let _ = writeln!(out, " Delay:\t\t{}", go_duration_text(c.delay));
    }
    let _ = writeln!(out, " On failure:\t{}", wire(&c.failure_action));
    if c.monitor > 0 {
        let _ = writeln!(out, " Monitoring Period: {}", go_duration_text(c.monitor));
    }
    let _ = writeln!(out, " Max failure ratio: {}", c.max_failure_ratio.0);
    let _ = writeln!(out, " {order} order:      {}", wire(&c.order));
}

/// `service` as `docker service inspect --pretty` prints it.
pub(crate) fn service(service: &Service) -> String {
    let spec = &service.spec;
    let task = &spec.task_template;
    let container = &task.container_spec;
    let mut out = String::new();
    let _ = writeln!(out, "\nID:\t\t{}", service.id);
    let _ = writeln!(out, "Name:\t\t{}", spec.name);
    labels(&mut out, &spec.labels);
    match spec.mode.replicated.as_ref() {
        Some(r) => {
            let _ = writeln!(out, "Service Mode:\tReplicated\n Replicas:\t{}", r.replicas);
        }
        None => out.push_str("Service Mode:\tGlobal\n"),
    }
    if let Some(status) = &service.update_status {
        update_status(&mut out, status);
    }
    placement(&mut out, &task.placement);
    if let Some(c) = &spec.update_config {
        update_config(&mut out, "UpdateConfig", "Update", c);
    }
    if let Some(c) = &spec.rollback_config {
        update_config(&mut out, "RollbackConfig", "Rollback", c);
    }
    container_spec(&mut out, container);
    mounts(&mut out, &container.mounts);
    resources(&mut out, &task.resources);
    if !task.networks.is_empty() {
        let names: String = task
            .networks
            .iter()
            .map(|n| format!(" {}", n.target))
            .collect();
        let _ = writeln!(out, "Networks:{names} ");
    }
    let _ = writeln!(out, "Endpoint Mode:\t{}", wire(&spec.endpoint_spec.mode));
    let published = if service.endpoint.ports.is_empty() {
        &spec.endpoint_spec.ports
    } else {
        &service.endpoint.ports
    };
    ports(&mut out, published);
    if let Some(h) = &container.healthcheck {
        healthcheck(&mut out, h);
    }
    out
}

/// The `Labels:` section (none without labels).
fn labels(out: &mut String, labels: &BTreeMap<String, String>) {
    if !labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in labels {
            let _ = writeln!(
                out,
                " {k}{}",
                if v.is_empty() {
                    String::new()
                } else {
                    format!("={v}")
                }
            );
        }
    }
}

/// The `UpdateStatus:` section.
fn update_status(out: &mut String, status: &UpdateStatus) {
    let _ = writeln!(out, "UpdateStatus:\n State:\t\t{}", wire(&status.state));
    if !status.started_at.is_empty() {
        let _ = writeln!(out, " Started:\t{}", status.started_at);
    }
    if !status.completed_at.is_empty() {
        let _ = writeln!(out, " Completed:\t{}", status.completed_at);
    }
    let _ = writeln!(out, " Message:\t{}", status.message);
}

/// The `Placement:` section: constraints, preferences and the per-node replica cap.
fn placement(out: &mut String, placement: &Placement) {
    out.push_str("Placement:\n");
    if !placement.constraints.is_empty() {
        let _ = writeln!(out, " Constraints:\t[{}]", placement.constraints.join(" "));
    }
    if !placement.preferences.is_empty() {
        let spread: Vec<String> = placement
            .preferences
            .iter()
            .map(|p| format!("spread={}", p.spread.spread_descriptor))
            .collect();
        let _ = writeln!(out, " Preferences:\t[{}]", spread.join(" "));
    }
    if placement.max_replicas > 0 {
        let _ = writeln!(out, " Max Replicas Per Node:   {}", placement.max_replicas);
    }
}

/// Each item of `list` followed by a space, as the docker CLI prints a command or env.
fn words(list: &[String]) -> String {
    list.iter().map(|a| format!("{a} ")).collect::<String>()
}

/// The `ContainerSpec:` section: image, command, args, env, dir, user, stop grace period.
fn container_spec(out: &mut String, container: &ContainerSpec) {
    let _ = writeln!(out, "ContainerSpec:\n Image:\t\t{}", container.image);
    if !container.command.is_empty() {
        let _ = writeln!(out, " Command:\t{}", words(&container.command));
    }
    if !container.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{}", words(&container.args));
    }
    if !container.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{}", words(&container.env));
    }
    if !container.dir.is_empty() {
        let _ = writeln!(out, " Dir:\t\t{}", container.dir);
    }
    if !container.user.is_empty() {
        let _ = writeln!(out, " User: {}", container.user);
    }
    if let Some(grace) = container.stop_grace_period {
        let _ = writeln!(out, " StopGracePeriod: {}", go_duration_text(grace));
    }
}

/// The `Mounts:` section (none without mounts).
fn mounts(out: &mut String, mounts: &[Mount]) {
    if !mounts.is_empty() {
        out.push_str("Mounts:\n");
        for m in mounts {
            let _ = writeln!(
                out,
                " Target:\t{}\n  Source:\t{}\n  ReadOnly:\t{}\n  Type:\t\t{}",
                m.target,
                m.source,
                m.read_only,
                wire(&m.kind)
            );
        }
    }
}

/// Whether `r` asks for any CPU or memory.
fn has_resources(r: &Resources) -> bool {
    r.nano_cpus > 0 || r.memory_bytes > 0
}

/// The `Resources:` section: reservations, then limits (none when neither asks for anything).
fn resources(out: &mut String, resources: &ResourceRequirements) {
    let (limits, reservations) = (&resources.limits, &resources.reservations);
    if has_resources(limits) || has_resources(reservations) {
        out.push_str("Resources:\n");
        for (title, r) in [("Reservations", reservations), ("Limits", limits)] {
            if !has_resources(r) {
                continue;
            }
            let _ = writeln!(out, " {title}:");
            if r.nano_cpus > 0 {
                let _ = writeln!(out, "  CPU:\t\t{}", r.nano_cpus as f64 / 1e9);
            }
            if r.memory_bytes > 0 {
                let _ = writeln!(
                    out,
                    "  Memory:\t{}",
                    crate::output::human_bytes(r.memory_bytes)
                );
            }
        }
    }
}

/// The `Ports:` section (none without ports).
fn ports(out: &mut String, ports: &[PortConfig]) {
    if !ports.is_empty() {
        out.push_str("Ports:\n");
        for p in ports {
            let _ = writeln!(
                out,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published_port,
                wire(&p.protocol),
                p.target_port,
                wire(&p.publish_mode)
            );
        }
    }
}

/// The health check's lines.
fn healthcheck(out: &mut String, h: &HealthConfig) {
    let _ = writeln!(
        out,
        " Healthcheck:\n  Interval = {}\n  Retries = {}\n  StartPeriod = 0s\n  Timeout = {}",
        go_duration_text(h.interval),
        h.retries,
        go_duration_text(h.timeout)
    );
    if !h.test.is_empty() {
        let _ = writeln!(out, "  Tests:\n\tTest = {}", h.test.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        for (ns, text) in [
            (0, "0s"),
            (500, "500ns"),
            (1_500, "1.5µs"),
            (500_000_000, "500ms"),
            (1_500_000_000, "1.5s"),
            (5_000_000_000, "5s"),
            (90_000_000_000, "1m30s"),
            (7_200_000_000_000, "2h0m0s"),
        ] {
            assert_eq!(go_duration_text(ns), text, "{ns}");
        }
    }

    #[test]
    fn a_service_reads_as_docker_lays_it_out() {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "ID": "s1", "Version": {"Index": 3}, "CreatedAt": "", "UpdatedAt": "",
            "Spec": {
                "Name": "web",
                "Labels": {"tier": "front"},
                "Mode": {"Replicated": {"Replicas": 3}},
                "TaskTemplate": {"ContainerSpec": {"Image": "nginx:1.27", "Env": ["A=1"]},
                                 "Placement": {"Constraints": ["node.role==worker"]}},
                "EndpointSpec": {"Mode": "vip"},
            },
        }))
        .unwrap();
        service.endpoint.ports = serde_json::from_value(serde_json::json!([
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}
        ]))
        .unwrap();
        let text = service_text(&service);
        for line in [
            "ID:\t\ts1",
            "Name:\t\tweb",
            " tier=front",
            "Service Mode:\tReplicated",
            " Replicas:\t3",
            " Constraints:\t[node.role==worker]",
            " Image:\t\tnginx:1.27",
            " Env:\t\tA=1 ",
            "Endpoint Mode:\tvip",
            " PublishedPort = 8080",
            "  Protocol = tcp",
            "  TargetPort = 80",
            "  PublishMode = ingress",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    fn service_text(s: &Service) -> String {
        service(s)
    }
}
