use super::*;

fn env(pairs: &[(&str, &str)]) -> EnvVars {
    EnvVars::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn defaults_without_file_or_env() {
    let (s, r) = Settings::load(&env(&[])).unwrap();
    assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(s.database_path(), PathBuf::from("orchestrator.db"));
    assert_eq!(s.reaper_finalize_grace_s, 300);
    assert_eq!(s.merge_retest_timeout_s, 900);
    assert_eq!(s.plane_write_mode, PlaneWriteMode::Live);
    assert_eq!(s.plane.statuses.monitoring, "Monitoring after Deploy");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn precedence_default_then_file_then_env() {
    let f =
        toml_file("bind = \"127.0.0.1:9000\"\nreaper_interval_s = 7\nagent_command = \"file\"\n");
    let (s, _) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(s.bind.port(), 9000);
    assert_eq!(s.reaper_interval_s, 7);
    assert_eq!(
        s.reconciler_interval_s, 60,
        "untouched key keeps its default"
    );

    let e = env(&[
        ("ORCH_REAPER_INTERVAL_S", "11"),
        ("ORCH_AGENT_COMMAND", "env"),
    ]);
    let (s, _) = Settings::load_with(Some(f.path()), &e).unwrap();
    assert_eq!(s.bind.port(), 9000, "file beats default");
    assert_eq!(s.reaper_interval_s, 11, "env beats file");
    assert_eq!(s.agent_command, "env");
}

#[test]
fn orch_config_names_the_file() {
    let f = toml_file("reaper_interval_s = 5\n");
    let e = env(&[("ORCH_CONFIG", f.path().to_str().unwrap())]);
    let (s, r) = Settings::load(&e).unwrap();
    assert_eq!(s.reaper_interval_s, 5);
    assert_eq!(r.file.as_deref(), Some(f.path()));
    assert!(
        r.warnings.is_empty(),
        "ORCH_CONFIG is not a setting: {:?}",
        r.warnings
    );
}

#[test]
fn bad_bind_fails_naming_the_key() {
    let err = Settings::load(&env(&[("ORCH_BIND", "nonsense")])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ORCH_BIND"), "{msg}");
    assert!(msg.contains("nonsense"), "{msg}");
}

#[test]
fn bad_value_with_safe_default_falls_back_with_warning() {
    let e = env(&[
        ("ORCH_REAPER_INTERVAL_S", "soon"),
        ("ORCH_MERGE_RETEST_TIMEOUT_S", "0"),
        ("ORCH_PLANE_WRITE_MODE", "yolo"),
    ]);
    let (s, r) = Settings::load(&e).unwrap();
    assert_eq!(s.reaper_interval_s, 30);
    assert_eq!(s.merge_retest_timeout_s, 900);
    assert_eq!(s.plane_write_mode, PlaneWriteMode::Live);
    let all = r.warnings.join("\n");
    for key in [
        "ORCH_REAPER_INTERVAL_S",
        "ORCH_MERGE_RETEST_TIMEOUT_S",
        "ORCH_PLANE_WRITE_MODE",
    ] {
        assert!(all.contains(key), "no warning names {key}: {all}");
    }
}

#[test]
fn unknown_key_warns() {
    let (_, r) = Settings::load(&env(&[("ORCH_REAPR_INTERVAL_S", "5")])).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("ORCH_REAPR_INTERVAL_S")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn project_without_repo_url_fails_naming_the_key() {
    let f = toml_file("[[projects]]\nname = \"demo\"\nwork_item_prefix = \"DEMO\"\n");
    let err = Settings::load_with(Some(f.path()), &env(&[])).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("projects[0].repo_url"), "{msg}");
}

#[test]
fn projects_and_plane_table_parse() {
    let f = toml_file(
        r#"
[plane]
workspace = "acme"
statuses = { stop = "Halt" }

[[projects]]
name = "demo"
plane_project_id = "c1d2"
work_item_prefix = "DEMO"
repo_url = "/srv/git/demo.git"
gitea_repo = "team/demo"
test_command = "cargo test"

[projects.agents.developer]
command = "my-agent"
"#,
    );
    let (s, _) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(s.plane.workspace, "acme");
    assert_eq!(s.plane.statuses.stop, "Halt");
    assert_eq!(
        s.plane.statuses.done, "Done",
        "unset status keeps its default"
    );
    let p = s.project("demo").unwrap();
    assert_eq!(p.default_branch, "main");
    assert_eq!(p.agents["developer"].command.as_deref(), Some("my-agent"));
}

#[test]
fn broken_toml_names_file_and_line() {
    let f = toml_file("bind = \"127.0.0.1:8080\"\nreaper_interval_s = = 3\n");
    let err = Settings::load_with(Some(f.path()), &env(&[])).unwrap_err();
    match &err {
        ConfigError::Syntax { path, line, .. } => {
            assert_eq!(path, f.path());
            assert_eq!(*line, 2);
        }
        other => panic!("expected a syntax error, got {other}"),
    }
    assert!(err.to_string().contains(&f.path().display().to_string()));
}

#[test]
fn secrets_are_redacted() {
    let e = env(&[
        ("ORCH_ADMIN_TOKEN", "hunter2"),
        ("ORCH_PLANE_API_KEY", "k-123"),
    ]);
    let (s, _) = Settings::load(&e).unwrap();
    assert_eq!(s.admin_token.expose(), "hunter2");
    let shown = format!("{s:?}{}", serde_json::to_string(&s).unwrap());
    assert!(
        !shown.contains("hunter2") && !shown.contains("k-123"),
        "{shown}"
    );
}

#[test]
fn sandbox_projects_from_comma_list() {
    let (s, _) = Settings::load(&env(&[("ORCH_PLANE_SANDBOX_PROJECTS", "a, b,,c")])).unwrap();
    assert_eq!(s.plane_sandbox_projects, vec!["a", "b", "c"]);
}

#[test]
fn database_url_forms() {
    assert_eq!(
        database_path("sqlite:///tmp/x.db"),
        PathBuf::from("/tmp/x.db")
    );
    assert_eq!(
        database_path("sqlite://x.db?mode=rwc"),
        PathBuf::from("x.db")
    );
    assert_eq!(database_path("/var/o.db"), PathBuf::from("/var/o.db"));
}

#[test]
fn alert_dedup_window_defaults_allows_zero_and_falls_back_when_invalid() {
    let (s, _) = Settings::load(&env(&[])).unwrap();
    assert_eq!(s.alert_dedup_window_s, 3600);
    let (s, r) = Settings::load(&env(&[("ORCH_ALERT_DEDUP_WINDOW_S", "0")])).unwrap();
    assert_eq!(s.alert_dedup_window_s, 0, "0 = no dedup");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    for bad in ["-5", "hourly", "1.5"] {
        let (s, r) = Settings::load(&env(&[("ORCH_ALERT_DEDUP_WINDOW_S", bad)])).unwrap();
        assert_eq!(s.alert_dedup_window_s, 3600, "{bad}");
        let all = r.warnings.join("\n");
        assert!(
            all.contains("ORCH_ALERT_DEDUP_WINDOW_S") && all.contains("3600"),
            "{bad}: {all}"
        );
    }
}

#[test]
fn artifact_max_bytes_defaults_to_one_mib_and_must_be_positive() {
    let (s, _) = Settings::load(&env(&[])).unwrap();
    assert_eq!(s.artifact_max_bytes, 1048576);
    let (s, r) = Settings::load(&env(&[("ORCH_ARTIFACT_MAX_BYTES", "4096")])).unwrap();
    assert_eq!(s.artifact_max_bytes, 4096);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    for bad in ["0", "-1", "big"] {
        let (s, r) = Settings::load(&env(&[("ORCH_ARTIFACT_MAX_BYTES", bad)])).unwrap();
        assert_eq!(s.artifact_max_bytes, 1048576, "{bad}");
        let all = r.warnings.join("\n");
        assert!(
            all.contains("ORCH_ARTIFACT_MAX_BYTES") && all.contains("1048576"),
            "{bad}: {all}"
        );
    }
}

#[test]
fn prices_from_the_file_lay_over_the_built_in_table() {
    let f = toml_file(
        "[prices]\ndefault_model = \"house\"\n[prices.models.house]\ninput = 2.0\noutput = 6.0\n\
         [prices.models.gpt-5-codex]\ninput = 9.0\noutput = 9.0\n",
    );
    let (s, r) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(s.prices.price(None).unwrap().output, 6.0);
    assert_eq!(s.prices.price(Some("gpt-5-codex")).unwrap().input, 9.0);
    assert_eq!(s.prices.price(Some("claude-haiku-4-5")).unwrap().input, 1.0);
    let (d, _) = Settings::load(&env(&[])).unwrap();
    assert_eq!(d.prices, crate::domain::prices::PriceTable::default());
}

#[test]
fn a_bad_price_fails_start_up_naming_it() {
    for (text, named) in [
        (
            "[prices.models.m]\ninput = -1.0\noutput = 1.0\n",
            "prices.models.m.input",
        ),
        ("[prices.models.m]\ninput = 1.0\n", "[prices]"),
        ("[prices]\nmodel = \"x\"\n", "[prices]"),
    ] {
        let f = toml_file(text);
        let Err(ConfigError::Invalid(errors)) = Settings::load_with(Some(f.path()), &env(&[]))
        else {
            panic!("{text:?} must fail");
        };
        assert!(
            errors
                .iter()
                .any(|e| e.contains(named) && e.contains("prices")),
            "{text:?}: {errors:?}"
        );
    }
}

#[test]
fn a_numeric_secret_is_a_secret_kept_whole_and_never_printed() {
    let (s, r) = Settings::load(&env(&[
        ("ORCH_ADMIN_TOKEN", "0123456"),
        ("ORCH_GITEA_TOKEN", "42"),
        ("ORCH_PLANE_API_KEY", "true"),
    ]))
    .unwrap();
    assert_eq!(s.admin_token.expose(), "0123456", "leading zero kept");
    assert_eq!(s.gitea_token.expose(), "42");
    assert_eq!(s.plane_api_key.expose(), "true");
    let all = format!("{r:?}");
    assert!(!all.contains("0123456") && !all.contains("123456"), "{all}");

    let f = toml_file("admin_token = 987654\n");
    let (s, r) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(s.admin_token.expose(), "987654");
    assert!(!format!("{r:?}").contains("987654"));

    let f = toml_file("admin_token = [1, 2]\n");
    let Err(ConfigError::Invalid(errors)) = Settings::load_with(Some(f.path()), &env(&[])) else {
        panic!("a list is no secret");
    };
    assert!(
        errors.iter().any(|e| e.contains("admin_token")),
        "{errors:?}"
    );
}

#[test]
fn each_project_gets_its_tracker_and_forge_local_by_default() {
    let f = toml_file(
        "[[projects]]\nname = \"a\"\nrepo_url = \"/r/a.git\"\ngitea_repo = \"t/a\"\n\n\
         [[projects]]\nname = \"b\"\nrepo_url = \"/r/b.git\"\n\n\
         [[projects]]\nname = \"c\"\nrepo_url = \"/r/c.git\"\ntracker = \"local\"\nforge = \"local\"\ngitea_repo = \"t/c\"\n",
    );
    // No Plane, no Gitea: the built-in pair everywhere.
    let (s, _) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
    for p in &s.projects {
        assert_eq!(
            (p.tracker, p.forge),
            (Some(TrackerKind::Local), Some(ForgeKind::Local)),
            "{}",
            p.name
        );
    }
    assert_eq!(s.project("a").unwrap().forge_name(), "a");
    // With both configured: Plane for all, Gitea where a repo is named,
    // and an explicit choice wins.
    let both = env(&[
        ("ORCH_PLANE_BASE_URL", "http://plane"),
        ("ORCH_GITEA_BASE_URL", "http://gitea"),
    ]);
    let (s, _) = Settings::load_with(Some(f.path()), &both).unwrap();
    let kinds = |n: &str| {
        let p = s.project(n).unwrap();
        (p.tracker_kind(), p.forge_kind())
    };
    assert_eq!(kinds("a"), (TrackerKind::Plane, ForgeKind::Gitea));
    assert_eq!(kinds("b"), (TrackerKind::Plane, ForgeKind::Local));
    assert_eq!(kinds("c"), (TrackerKind::Local, ForgeKind::Local));
    assert_eq!(s.project("a").unwrap().forge_name(), "t/a");
}

#[test]
fn a_remote_adapter_without_its_base_url_is_an_error() {
    let f = toml_file(
        "[[projects]]\nname = \"a\"\nrepo_url = \"/r/a.git\"\ntracker = \"plane\"\nforge = \"gitea\"\n",
    );
    let err = Settings::load_with(Some(f.path()), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`projects[0].tracker` is \"plane\" but ORCH_PLANE_BASE_URL"),
        "{err}"
    );
    assert!(err.contains("`projects[0].forge` is \"gitea\""), "{err}");
    let f = toml_file("[[projects]]\nname = \"a\"\nrepo_url = \"/r\"\ntracker = \"jira\"\n");
    assert!(Settings::load_with(Some(f.path()), &env(&[])).is_err());
}

#[test]
fn an_environment_value_with_escapes_and_multibyte_characters_is_a_plain_string() {
    // figment's own value parser panicked on this (tests/parsers_proptest.rs).
    let (s, r) = Settings::load(&env(&[
        ("ORCH_LOG_LEVEL", "$\u{1EE4F}.\\\u{2BBF}"),
        ("ORCH_AGENT_COMMAND", "echo \"a\\tb\" [x]"),
        ("ORCH_MAX_CONCURRENT_JOBS", "3"),
    ]))
    .expect("loads");
    assert_eq!(s.agent_command, "echo \"a\\tb\" [x]");
    assert_eq!(s.max_concurrent_jobs, 3);
    assert!(
        r.warnings.iter().any(|w| w.contains("ORCH_LOG_LEVEL")),
        "{r:?}"
    );
}

#[test]
fn a_log_filter_with_multibyte_characters_falls_back_instead_of_panicking() {
    for bad in [
        "\u{a0}=\u{1F600} ",
        "info,\u{2028}x=debug",
        "  \u{10FFFF}[",
        "dé bug",
    ] {
        let (s, r) = Settings::load(&env(&[("ORCH_LOG_LEVEL", bad)])).expect("loads");
        assert_eq!(s.log_level, "info", "{bad:?}");
        assert!(
            r.warnings.iter().any(|w| w.contains("ORCH_LOG_LEVEL")),
            "{r:?}"
        );
    }
}

#[test]
fn retention_days_take_fractions_and_refuse_negatives() {
    let (s, _) = Settings::load(&env(&[])).unwrap();
    assert_eq!(s.retention_days, 30.0);
    let (s, _) = Settings::load(&env(&[("ORCH_RETENTION_DAYS", "0.5")])).unwrap();
    assert_eq!(s.retention_days, 0.5);
    let (s, _) = Settings::load(&env(&[("ORCH_RETENTION_DAYS", "0")])).unwrap();
    assert_eq!(s.retention_days, 0.0, "0 = keep everything");
    for bad in ["-1", "soon", "NaN"] {
        let (s, r) = Settings::load(&env(&[("ORCH_RETENTION_DAYS", bad)])).unwrap();
        assert_eq!(s.retention_days, 30.0, "{bad}");
        assert!(
            r.warnings.iter().any(|w| w.contains("ORCH_RETENTION_DAYS")),
            "{bad}: {r:?}"
        );
    }
}
