//! The flags `service create` and `service update` share for what a task may use and how it
//! runs: `--reserve-*`, `--limit-*`, `--replicas-max-per-node`, `--placement-pref`, `--mount`,
//! `--read-only`, `--user`, `--workdir`, `--hostname`, `--stop-signal`, `--stop-grace-period`,
//! `--init`; and their parsers, which take what the docker CLI takes.

use shoal_api::service::{Mount, MountKind, PlacementPreference, TaskSpec, TmpfsOptions};

use super::text::go_duration;

/// The flags both commands take, each changing only what it names.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct TaskFlags {
    /// Reserve CPUs (0.5, 2)
    #[arg(long, value_parser = cpus)]
    reserve_cpu: Option<u64>,
    /// Reserve memory (512m, 1g)
    #[arg(long, value_parser = memory_bytes)]
    reserve_memory: Option<u64>,
    /// Limit CPUs (0.5, 2)
    #[arg(long, value_parser = cpus)]
    limit_cpu: Option<u64>,
    /// Limit memory (512m, 1g)
    #[arg(long, value_parser = memory_bytes)]
    limit_memory: Option<u64>,
    /// Limit the number of processes (0: no limit)
    #[arg(long)]
    limit_pids: Option<u64>,
    /// Maximum number of tasks per node (0: no limit)
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    /// Mount the container's root filesystem as read only
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    read_only: Option<bool>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// Container hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Signal to stop the container (SIGTERM, TERM, 15)
    #[arg(long, value_parser = signal)]
    stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long, value_parser = go_duration)]
    stop_grace_period: Option<u64>,
    /// Use an init inside each service container to forward signals and reap processes
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    init: Option<bool>,
}

impl TaskFlags {
    /// Applies the flags given to `task`.
    pub(crate) fn apply(&self, task: &mut TaskSpec) {
        let r = &mut task.resources;
        let set = |to: &mut u64, from: Option<u64>| {
            if let Some(n) = from {
                *to = n;
            }
        };
        set(&mut r.reservations.nano_cpus, self.reserve_cpu);
        set(&mut r.reservations.memory_bytes, self.reserve_memory);
        set(&mut r.limits.nano_cpus, self.limit_cpu);
        set(&mut r.limits.memory_bytes, self.limit_memory);
        set(&mut r.limits.pids, self.limit_pids);
        set(&mut task.placement.max_replicas, self.replicas_max_per_node);
        let c = &mut task.container_spec;
        let text = |to: &mut String, from: &Option<String>| {
            if let Some(value) = from {
                to.clone_from(value);
            }
        };
        text(&mut c.user, &self.user);
        text(&mut c.dir, &self.workdir);
        text(&mut c.hostname, &self.hostname);
        text(&mut c.stop_signal, &self.stop_signal);
        if let Some(read_only) = self.read_only {
            c.read_only = read_only;
        }
        if let Some(grace) = self.stop_grace_period {
            c.stop_grace_period = Some(grace);
        }
        if let Some(init) = self.init {
            c.init = Some(init);
        }
    }
}

/// `--mount-add` / `--mount-rm TARGET` and `--placement-pref-add` / `--placement-pref-rm`,
/// applied to `task` (removals first, as the docker CLI does).
pub(crate) fn edit_lists(
    task: &mut TaskSpec,
    mount_add: &[Mount],
    mount_rm: &[String],
    pref_add: &[PlacementPreference],
    pref_rm: &[PlacementPreference],
) -> Result<(), String> {
    let mounts = &mut task.container_spec.mounts;
    for target in mount_rm {
        let before = mounts.len();
        mounts.retain(|m| m.target != *target);
        if mounts.len() == before {
            return Err(format!(
                "invalid --mount-rm {target:?}: the service mounts nothing there"
            ));
        }
    }
    for mount in mount_add {
        mounts.retain(|m| m.target != mount.target);
        mounts.push(mount.clone());
    }
    let prefs = &mut task.placement.preferences;
    for pref in pref_rm {
        let before = prefs.len();
        prefs.retain(|p| p != pref);
        if prefs.len() == before {
            return Err(format!(
                "invalid --placement-pref-rm {:?}: the service has no such preference",
                pref.text()
            ));
        }
    }
    for pref in pref_add {
        if !prefs.contains(pref) {
            prefs.push(pref.clone());
        }
    }
    Ok(())
}

/// `--secret source=NAME,target=FILE,uid=,gid=,mode=` (or `NAME`): the managers fill in the ID.
pub(crate) fn secret(text: &str) -> Result<shoal_api::secret::SecretReference, String> {
    let (name, file) = shoal_api::secret::parse_reference(text, str::to_owned)?;
    Ok(shoal_api::secret::SecretReference {
        file,
        secret_id: String::new(),
        secret_name: name,
    })
}

/// `--config source=NAME,target=PATH,uid=,gid=,mode=` (or `NAME`, at `/NAME`).
pub(crate) fn config(text: &str) -> Result<shoal_api::secret::ConfigReference, String> {
    let (name, file) = shoal_api::secret::parse_reference(text, |n| format!("/{n}"))?;
    Ok(shoal_api::secret::ConfigReference {
        file,
        config_id: String::new(),
        config_name: name,
    })
}

/// `service update --secret-add/--secret-rm/--config-add/--config-rm`: a removal names a
/// secret (or config) the service uses, by name or ID; an addition replaces one of the same
/// target.
pub(crate) fn edit_data_refs(
    spec: &mut shoal_api::service::ContainerSpec,
    secret_add: &[shoal_api::secret::SecretReference],
    secret_rm: &[String],
    config_add: &[shoal_api::secret::ConfigReference],
    config_rm: &[String],
) -> Result<(), String> {
    for rm in secret_rm {
        let before = spec.secrets.len();
        spec.secrets
            .retain(|r| r.secret_name != *rm && r.secret_id != *rm);
        if spec.secrets.len() == before {
            return Err(format!(
                "invalid --secret-rm {rm:?}: the service uses no such secret"
            ));
        }
    }
    for add in secret_add {
        spec.secrets.retain(|r| r.file.name != add.file.name);
        spec.secrets.push(add.clone());
    }
    for rm in config_rm {
        let before = spec.configs.len();
        spec.configs
            .retain(|r| r.config_name != *rm && r.config_id != *rm);
        if spec.configs.len() == before {
            return Err(format!(
                "invalid --config-rm {rm:?}: the service uses no such config"
            ));
        }
    }
    for add in config_add {
        spec.configs.retain(|r| r.file.name != add.file.name);
        spec.configs.push(add.clone());
    }
    Ok(())
}

/// CPUs as a decimal (`0.5`, `2`), in billionths.
pub(crate) fn cpus(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid CPUs {text:?}: {why}");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(bad("want a number of CPUs, as in 0.5 or 2"));
    }
    if fraction.len() > 9 {
        return Err(bad("the value is too precise (at most 9 decimals)"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad("too many CPUs"))?
    };
    let fraction: u64 = format!("{fraction:0<9}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(fraction))
        .filter(|n| *n < 1 << 53)
        .ok_or_else(|| bad("too many CPUs"))
}

/// A size as Docker's `RAMInBytes` takes it: a number, an optional unit `b`, `k`, `m`, `g`, `t`
/// or `p` (powers of 1024, any case, with or without `b` or `ib`).
pub(crate) fn memory_bytes(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?}: want a number and a unit, as in 512m or 1.5g");
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_start();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return Err(bad()),
    };
    let bytes = value * 1024_f64.powi(power);
    if !bytes.is_finite() || bytes >= 2_f64.powi(63) {
        return Err(format!("invalid size {text:?}: too large"));
    }
    Ok(bytes as u64)
}

/// A stop signal as Docker takes it: `SIGTERM`, `TERM` or `15` (kept as written, checked).
pub(crate) fn signal(text: &str) -> Result<String, String> {
    shoal_api::service::signal_number(text).map(|_| text.to_owned())
}

/// `--placement-pref spread=node.labels.<name>`.
pub(crate) fn placement_pref(text: &str) -> Result<PlacementPreference, String> {
    PlacementPreference::parse(text)
}

/// `--mount`, Docker's CSV: `type=bind|volume|tmpfs`, `source|src`, `target|destination|dst`,
/// `readonly|ro[=true|false]`, `tmpfs-size`, `tmpfs-mode`.
pub(crate) fn mount(text: &str) -> Result<Mount, String> {
    let mut mount = Mount::default();
    let mut tmpfs = TmpfsOptions::default();
    let mut tmpfs_given = false;
    for field in text.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let value_of = |key: &str| {
            value.ok_or_else(|| format!("invalid field '{key}' must be a key=value pair"))
        };
        match key.as_str() {
            "readonly" | "ro" => {
                mount.read_only = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("1" | "true") => true,
                    Some("0" | "false") => false,
                    Some(v) => return Err(format!("invalid value for {key}: {v}")),
                }
            }
            "type" => {
                mount.kind = match value_of(&key)? {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(format!(
                            "invalid mount type {other:?}: want bind, volume or tmpfs"
                        ));
                    }
                }
            }
            "source" | "src" => mount.source = value_of(&key)?.to_owned(),
            "target" | "destination" | "dst" => mount.target = value_of(&key)?.to_owned(),
            "tmpfs-size" => {
                tmpfs.size_bytes = memory_bytes(value_of(&key)?)?;
                tmpfs_given = true;
            }
            "tmpfs-mode" => {
                let v = value_of(&key)?;
                tmpfs.mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("invalid tmpfs-mode {v:?}: want octal bits, as 1770"))?;
                tmpfs_given = true;
            }
            "bind-propagation" | "bind-recursive" | "bind-nonrecursive" | "consistency"
            | "volume-driver" | "volume-label" | "volume-nocopy" | "volume-opt"
            | "volume-subpath" => {
                return Err(format!("mount option {key:?} is not supported by Shoal"));
            }
            _ => return Err(format!("unexpected key '{key}' in '{text}'")),
        }
    }
    if tmpfs_given {
        mount.tmpfs_options = Some(tmpfs);
    }
    mount.check()?;
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_and_sizes_parse_as_docker_s() {
        assert_eq!(cpus("0.5"), Ok(500_000_000));
        assert_eq!(cpus("2"), Ok(2_000_000_000));
        assert_eq!(cpus(".25"), Ok(250_000_000));
        assert!(cpus("half").unwrap_err().contains("want a number"));
        assert!(cpus("-1").unwrap_err().contains("want a number"));
        assert!(cpus("0.0000000001").unwrap_err().contains("too precise"));
        assert_eq!(memory_bytes("512m"), Ok(512 << 20));
        assert_eq!(memory_bytes("1g"), Ok(1 << 30));
        assert_eq!(memory_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(memory_bytes("64 kb"), Ok(64 << 10));
        assert_eq!(memory_bytes("100"), Ok(100));
        assert!(memory_bytes("12x").unwrap_err().contains("as in 512m"));
        assert!(memory_bytes("m").unwrap_err().contains("invalid size"));
        assert!(memory_bytes("99999999p").unwrap_err().contains("too large"));
    }

    #[test]
    fn mounts_parse_docker_s_csv_and_say_what_is_wrong() {
        let m = mount("type=bind,source=/srv/data,target=/data,readonly").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str(), m.read_only),
            (MountKind::Bind, "/srv/data", "/data", true)
        );
        let t = mount("type=tmpfs,dst=/scratch,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        assert_eq!(
            t.tmpfs_options,
            Some(TmpfsOptions {
                size_bytes: 64 << 20,
                mode: 0o1770
            })
        );
        assert_eq!(
            mount("src=cache,dst=/cache").unwrap().kind,
            MountKind::Volume
        );
        for (bad, says) in [
            ("type=nfs,dst=/x", "invalid mount type"),
            ("type=bind,dst=/x", "the source is missing"),
            ("type=bind,src=rel,dst=/x", "must be an absolute path"),
            ("type=tmpfs,src=/a,dst=/x", "has no source"),
            ("type=tmpfs", "the target is missing"),
            ("type=bind,src=/a,dst=x", "invalid mount target"),
            ("type=bind,src=/a,dst=/x/../y", "invalid mount target"),
            ("type=bind,src=/a,dst=/", "cannot replace the root"),
            (
                "type=bind,src=/a,dst=/x,colour=red",
                "unexpected key 'colour'",
            ),
            ("type=bind,src=/a,dst=/x,ro=maybe", "invalid value for ro"),
            ("type,src=/a,dst=/x", "must be a key=value pair"),
            ("type=volume,dst=/x,volume-driver=nfs", "not supported"),
            (
                "type=volume,dst=/x,tmpfs-size=1m",
                "apply only to type \"tmpfs\"",
            ),
            ("type=tmpfs,dst=/x,tmpfs-mode=999", "invalid tmpfs-mode"),
        ] {
            let e = mount(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn list_edits_replace_by_target_and_refuse_what_is_absent() {
        let mut task = TaskSpec::default();
        let data = mount("type=bind,src=/a,dst=/data").unwrap();
        let data_ro = mount("type=bind,src=/a,dst=/data,ro").unwrap();
        let zone = placement_pref("spread=node.labels.zone").unwrap();
        let zones = std::slice::from_ref(&zone);
        edit_lists(&mut task, &[data], &[], zones, &[]).unwrap();
        edit_lists(&mut task, std::slice::from_ref(&data_ro), &[], zones, &[]).unwrap();
        assert_eq!(task.container_spec.mounts, [data_ro]);
        assert_eq!(task.placement.preferences, zones);
        let e = edit_lists(&mut task, &[], &["/nope".into()], &[], &[]).unwrap_err();
        assert!(e.contains("mounts nothing there"), "{e}");
        edit_lists(&mut task, &[], &["/data".into()], &[], zones).unwrap();
        assert!(task.container_spec.mounts.is_empty() && task.placement.preferences.is_empty());
        assert!(placement_pref("pack=node.labels.zone").is_err());
        assert!(placement_pref("spread=node.hostname").is_err());
    }
}
