use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.ceilings, Limits::ceilings());
    assert_eq!(c.limits.wall_ms, 30_000);
    assert_eq!(c.limits.memory_mib, 512);
    assert_eq!(c.limits.pids, 64);
    assert_eq!(c.limits.output_bytes, 1 << 20);
    assert_eq!(c.limits.code_bytes, 100 << 10);
}

#[test]
fn unknown_key_is_rejected() {
    let err = Config::from_toml("[limits]\nwall_sec = 3\n").unwrap_err();
    assert!(err.to_string().contains("wall_sec"), "{err}");
    let err = Config::from_toml("colour = 1\n").unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn malformed_toml_is_a_parse_error() {
    assert!(matches!(
        Config::from_toml("[limits\n"),
        Err(PolicyError::Parse(_))
    ));
    assert!(matches!(
        Config::from_toml("[limits]\nwall_ms = \"soon\"\n"),
        Err(PolicyError::Parse(_))
    ));
}

#[test]
fn default_above_ceiling_is_rejected() {
    let err = Config::from_toml("[limits]\nmemory_mib = 4096\n[ceilings]\nmemory_mib = 1024\n")
        .unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::AboveCeiling {
                name: "memory_mib",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zero_limit_is_rejected() {
    let err = Config::from_toml("[limits]\npids = 0\n").unwrap_err();
    assert!(
        matches!(err, PolicyError::InvalidLimit { name: "pids", .. }),
        "{err}"
    );
}

#[test]
fn request_is_checked_against_ceiling() {
    let c = Config::from_toml("[ceilings]\nwall_ms = 60000\n").unwrap();
    let ok = c
        .resolve(&LimitRequest {
            wall_ms: Some(5_000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ok.wall_ms, 5_000);
    assert_eq!(ok.memory_mib, 512);
    let err = c
        .resolve(&LimitRequest {
            wall_ms: Some(120_000),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(
        err,
        PolicyError::AboveCeiling {
            name: "wall_ms",
            requested: 120_000,
            ceiling: 60_000
        }
    ));
}

#[test]
fn uid_range_must_be_unprivileged() {
    let err = Config::from_toml("[sandbox]\nuid_base = 0\n").unwrap_err();
    assert!(matches!(
        err,
        PolicyError::InvalidSandbox {
            name: "uid_base",
            ..
        }
    ));
    let err =
        Config::from_toml("[sandbox]\nuid_base = 4294967000\nuid_count = 1000\n").unwrap_err();
    assert!(matches!(
        err,
        PolicyError::InvalidSandbox {
            name: "uid_base",
            ..
        }
    ));
}

#[test]
fn cgroup_parent_must_be_plain_name() {
    for bad in ["", "../x", "a/b", ".hidden"] {
        let text = format!("[sandbox]\ncgroup_parent = {bad:?}\n");
        assert!(Config::from_toml(&text).is_err(), "{bad}");
    }
}

#[test]
fn partial_ceilings_keep_the_shipped_ceilings() {
    let c = Config::from_toml("[ceilings]\nwall_ms = 60000\n").unwrap();
    assert_eq!(c.ceilings.wall_ms, 60_000);
    assert_eq!(c.ceilings.memory_mib, Limits::ceilings().memory_mib);
    let c = Config::from_toml("[limits]\nwall_ms = 5000\n").unwrap();
    assert_eq!(c.limits.wall_ms, 5_000);
    assert_eq!(c.limits.memory_mib, 512);
}

#[test]
fn defaults_sit_within_the_ceilings() {
    let c = Config::default();
    c.validate().unwrap();
    assert!(c
        .resolve(&LimitRequest {
            wall_ms: Some(120_000),
            ..Default::default()
        })
        .is_ok());
}

#[test]
fn totals_must_hold_one_sandbox_at_its_ceiling() {
    let err = Config::from_toml("[sandbox]\ntotal_memory_mib = 100\n").unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::InvalidSandbox {
                name: "total_memory_mib",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn sessions_table_has_defaults_and_ceilings() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.sessions.idle_timeout_s, 600);
    assert_eq!(c.sessions.max_lifetime_s, 3_600);
    assert_eq!(c.sessions.resolve(None, None).unwrap(), (600, 3_600));
    assert_eq!(c.sessions.resolve(Some(60), Some(120)).unwrap(), (60, 120));
    let err = c.sessions.resolve(Some(7_200), None).unwrap_err();
    assert!(err.to_string().contains("idle_timeout_ceiling_s"), "{err}");
    assert!(c.sessions.resolve(None, Some(0)).is_err());
    let c = Config::from_toml("[sessions]\nidle_timeout_s = 30\nmax_sessions = 2\n").unwrap();
    assert_eq!(c.sessions.idle_timeout_s, 30);
    assert_eq!(c.sessions.max_sessions, 2);
    assert_eq!(c.sessions.max_lifetime_ceiling_s, 86_400);
}

#[test]
fn sessions_table_is_validated() {
    let err = Config::from_toml("[sessions]\nidle_timeout = 3\n").unwrap_err();
    assert!(err.to_string().contains("idle_timeout"), "{err}");
    for bad in [
        "[sessions]\nidle_timeout_s = 0\n",
        "[sessions]\nmax_sessions = 0\n",
        "[sessions]\nmax_lifetime_s = 90000\n",
        "[sessions]\nidle_timeout_s = 100\nidle_timeout_ceiling_s = 50\n",
    ] {
        assert!(
            matches!(
                Config::from_toml(bad),
                Err(PolicyError::InvalidSession { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn datasets_need_plain_names_and_absolute_paths() {
    let ok = Config::from_toml("[sandbox.datasets]\nsales = \"/srv/data/sales\"\n").unwrap();
    assert_eq!(
        ok.sandbox.datasets["sales"],
        std::path::PathBuf::from("/srv/data/sales")
    );
    for bad in [
        "\"../x\" = \"/srv\"",
        "sales = \"relative/dir\"",
        "sales = \"/srv/../etc\"",
    ] {
        let text = format!("[sandbox.datasets]\n{bad}\n");
        assert!(Config::from_toml(&text).is_err(), "{bad}");
    }
}

#[test]
fn server_keys_parse_with_defaults_and_reject_unknown_fields() {
    let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:9000\"\n[[server.keys]]\nid = \"alice\"\nsha256 = \"ab\"\nmax_sessions = 2\n").unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:9000");
    assert_eq!(c.server.keys[0].max_sessions, 2);
    assert_eq!(c.server.keys[0].max_concurrency, 4);
    assert!(
        Config::from_toml("[[server.keys]]\nid = \"a\"\nsha256 = \"ab\"\nsecret = \"x\"\n")
            .is_err()
    );
}

fn no_stdlib(_: &str) -> bool {
    false
}

#[test]
fn the_built_in_environment_allows_the_stack_and_denies_process_and_network_modules() {
    let c = Config::default();
    let env = c.environment(None).unwrap();
    for module in [
        "numpy",
        "pandas.core",
        "matplotlib.pyplot",
        "mpl_toolkits.mplot3d",
        "PIL",
    ] {
        assert_eq!(
            env.verdict(module, no_stdlib),
            ImportVerdict::Allowed,
            "{module}"
        );
    }
    for (module, denied) in [
        ("subprocess", "subprocess"),
        ("socket", "socket"),
        ("ctypes.util", "ctypes"),
        ("multiprocessing.pool", "multiprocessing"),
        ("urllib.request", "urllib.request"),
    ] {
        match env.verdict(module, |_| true) {
            ImportVerdict::Denied { module: m, reason } => {
                assert_eq!(m, denied);
                assert!(!reason.is_empty());
            }
            other => panic!("{module}: {other:?}"),
        }
    }
    // A denied submodule does not deny its parent or its siblings.
    assert_eq!(
        env.verdict("urllib.parse", |_| true),
        ImportVerdict::Allowed
    );
    assert_eq!(env.verdict("os", |_| true), ImportVerdict::Allowed);
    assert_eq!(
        env.verdict("socketserver_x", |_| true),
        ImportVerdict::Allowed
    );
    assert_eq!(
        env.verdict("requests", no_stdlib),
        ImportVerdict::NotAllowed {
            module: "requests".into()
        }
    );
}

#[test]
fn the_built_in_pins_match_the_runtime_lock_file() {
    let lock = include_str!("../../../envs/default/requirements.lock");
    let pins: std::collections::BTreeMap<String, String> = lock
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.split_once("=="))
        .map(|(n, v)| (normalize(n), v.to_string()))
        .collect();
    let c = Config::default();
    for (name, lib) in &c.environment(None).unwrap().libraries {
        assert_eq!(
            pins.get(&normalize(name)).map(String::as_str),
            Some(lib.version()),
            "{name} is allowed at {} but the lock pins {:?}",
            lib.version(),
            pins.get(&normalize(name))
        );
    }
}

#[test]
fn environments_in_kiln_toml_replace_or_add_and_are_validated() {
    let c = Config::from_toml(
        "[environments.lean]\ndescription = \"numpy only\"\nlibraries.numpy = \"1.26.4\"\n\
         libraries.scikit-learn = { version = \"1.5.0\", import = [\"sklearn\"], reason = \"models\" }\n\
         deny_modules.subprocess = \"no programs\"\n",
    )
    .unwrap();
    assert!(c.environments.contains_key("default"));
    let lean = c.environment(Some("lean")).unwrap();
    assert_eq!(
        lean.allowed_list(),
        ["numpy==1.26.4", "scikit-learn==1.5.0"]
    );
    assert_eq!(
        lean.verdict("sklearn.linear_model", no_stdlib),
        ImportVerdict::Allowed
    );
    assert!(matches!(
        lean.verdict("pandas", no_stdlib),
        ImportVerdict::NotAllowed { .. }
    ));
    match c.environment(Some("nope")) {
        Err(PolicyError::UnknownEnvironment { configured, .. }) => {
            assert_eq!(configured, "default, lean")
        }
        other => panic!("{other:?}"),
    }
    let replaced =
        Config::from_toml("[environments.default]\nlibraries.numpy = \"1.26.4\"\n").unwrap();
    assert_eq!(
        replaced.environment(None).unwrap().allowed_list(),
        ["numpy==1.26.4"]
    );

    for (bad, says) in [
        ("[environments.x]\nlibraries.numpy = \">=1.0\"\n", "exact pin"),
        ("[environments.x]\nlibraries.numpy = { version = \"1.0\", pin = true }\n", "unknown field `pin`"),
        ("[environments.x]\nlibrary.numpy = \"1.0\"\n", "unknown field `library`"),
        ("[environments.x]\ndeny_modules.\"os path\" = \"\"\n", "dotted Python name"),
        ("[environments.x]\nlibraries.a = \"1\"\nlibraries.A = \"1\"\n", "listed twice"),
        ("[environments.x]\nlibraries.foo = { version = \"1\", import = [\"os\"] }\ndeny_modules.os = \"\"\n", "is denied"),
        ("[environments.\"a b\"]\n", "environment name"),
        ("[environments.x]\nruntime = \"../etc\"\n", "runtime"),
    ] {
        let err = Config::from_toml(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}
