//! Unit tests of [`ConnInfo`]'s public behaviour (no server needed).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use super::tls::Verify;
use super::*;

const SECRET: &str = "TopSecret";

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn pigsty_socket_url() {
    let info = ConnInfo::parse(
        "postgres://dbuser_monitor@:5432/postgres?host=/var/run/postgresql&sslmode=disable",
    )
    .unwrap();
    assert_eq!(info.user(), Some("dbuser_monitor"));
    assert_eq!(info.dbname(), Some("postgres"));
    assert_eq!(info.host(), Some("/var/run/postgresql"));
    assert_eq!(info.port(), Some("5432"));
    assert_eq!(info.sslmode().unwrap(), SslMode::Disable);
    assert!(info.has_sslmode() && !info.has_password() && info.is_url());
    let targets = info.targets().unwrap();
    assert_eq!(
        targets[0].describe(),
        "on socket \"/var/run/postgresql/.s.PGSQL.5432\""
    );
    assert_eq!(targets[0].pgpass_host, "localhost");
}

#[test]
fn common_forms() {
    let info =
        ConnInfo::parse("postgres://dbuser_monitor:pass@127.0.0.1:5432/postgres?sslmode=disable")
            .unwrap();
    assert_eq!(
        (info.host(), info.port(), info.dbname()),
        (Some("127.0.0.1"), Some("5432"), Some("postgres"))
    );
    assert!(info.has_password());

    let info = ConnInfo::parse("host=/tmp port=5432 user=x dbname=y").unwrap();
    assert_eq!(
        (info.host(), info.user(), info.dbname()),
        (Some("/tmp"), Some("x"), Some("y"))
    );
    assert!(!info.is_url() && !info.has_sslmode());
    assert_eq!(info.sslmode().unwrap(), SslMode::Prefer);

    let info: ConnInfo = "  postgresql://u:p%40ss%2Fw0rd@[::1]:6432/db%201\n"
        .parse()
        .unwrap();
    assert_eq!(
        (info.host(), info.port(), info.dbname()),
        (Some("::1"), Some("6432"), Some("db 1"))
    );
    assert_eq!(
        info.values.get("password").map(String::as_str),
        Some("p@ss/w0rd")
    );

    let info =
        ConnInfo::parse("postgresql://h1:5432,h2:5433/db?target_session_attrs=primary").unwrap();
    assert_eq!(info.targets().unwrap().len(), 2);

    let info = ConnInfo::parse("").unwrap();
    assert_eq!(
        (info.host(), info.user(), info.dbname()),
        (None, None, None)
    );
}

#[test]
fn validation_errors_name_keyword_and_value() {
    let cases = [
        (
            "sslmode=bogus",
            "invalid value \"bogus\" for connection option \"sslmode\"",
        ),
        ("postgres://h/d?sslmode=verify", "\"sslmode\""),
        (
            "port=abc",
            "invalid value \"abc\" for connection option \"port\"",
        ),
        ("connect_timeout=soon", "\"connect_timeout\""),
        ("hostaddr=example.com", "\"hostaddr\""),
        ("target_session_attrs=master", "\"target_session_attrs\""),
        (
            "gssencmode=require",
            "connection option \"gssencmode\" is not supported",
        ),
        (
            "service=mydb",
            "connection option \"service\" is not supported",
        ),
        ("requirepeer=postgres", "\"requirepeer\" is not supported"),
        ("replication=database", "\"replication\" is not supported"),
        (
            "sslnegotiation=direct",
            "weak sslmode \"prefer\" may not be used with sslnegotiation=direct",
        ),
        (
            "sslrootcert=system sslmode=require",
            "weak sslmode \"require\"",
        ),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "protocol version range",
        ),
        (
            "ssl_min_protocol_version=SSLv3",
            "\"ssl_min_protocol_version\"",
        ),
        (
            "nosuchoption=1",
            "invalid connection option \"nosuchoption\"",
        ),
        (
            "postgres://h/d?nosuchoption=1",
            "invalid URL query parameter \"nosuchoption\"",
        ),
        (
            "host=a,b port=1,2,3",
            "could not match 3 port numbers to 2 hosts",
        ),
    ];
    for (s, want) in cases {
        let err = ConnInfo::parse(s).expect_err(s).to_string();
        assert!(err.contains(want), "{s}: {err}");
    }
    // Accepted and ignored.
    for s in [
        "keepalives=1 keepalives_idle=30 gssencmode=disable krbsrvname=postgres client_encoding=UTF8",
        "sslcompression=0 gsslib=gssapi sslpassword=x sslsni=1 replication=false",
        "sslrootcert=system",
        "sslnegotiation=direct sslmode=require channel_binding=require load_balance_hosts=random",
    ] {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    assert_eq!(
        ConnInfo::parse("sslrootcert=system")
            .unwrap()
            .sslmode()
            .unwrap(),
        SslMode::VerifyFull
    );
}

#[test]
fn env_defaults_fill_only_unset_keywords() {
    let env = env(&[
        ("PGHOST", "db.example"),
        ("PGPORT", "6543"),
        ("PGUSER", "envuser"),
        ("PGPASSWORD", SECRET),
        ("PGDATABASE", "envdb"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", "/etc/ca.pem"),
        ("PGCONNECT_TIMEOUT", "7"),
        ("PGAPPNAME", "envapp"),
        ("PGPASSFILE", "/etc/pgpass"),
        ("PGTARGETSESSIONATTRS", "read-write"),
        ("HOME", "/home/envuser"),
    ]);
    let info = ConnInfo::parse("postgres://u@:5432/?host=")
        .unwrap()
        .with_env_from(&env);
    // `host=` set to empty in the string stops PGHOST; the URL's user and port stay.
    assert_eq!(info.get("host"), Some(""));
    assert_eq!(info.host(), None);
    assert_eq!(
        (info.user(), info.port(), info.dbname()),
        (Some("u"), Some("5432"), Some("envdb"))
    );
    assert!(info.has_password() && info.has_sslmode());
    assert_eq!(
        info.get("password"),
        None,
        "secrets are never returned by get"
    );
    assert_eq!(info.sslmode().unwrap(), SslMode::VerifyFull);
    assert_eq!(info.get("sslrootcert"), Some("/etc/ca.pem"));
    assert_eq!(info.get("connect_timeout"), Some("7"));
    assert_eq!(info.get("application_name"), Some("envapp"));
    assert_eq!(info.get("passfile"), Some("/etc/pgpass"));
    assert_eq!(info.get("target_session_attrs"), Some("read-write"));
    assert_eq!(
        info.home.as_deref(),
        Some(std::path::Path::new("/home/envuser"))
    );
    // The environment's values are not part of the printed string.
    assert_eq!(info.masked(), "postgres://u@:5432/?host=");

    let info = ConnInfo::parse("").unwrap().with_env_from(&env);
    assert_eq!(
        (info.host(), info.port(), info.user()),
        (Some("db.example"), Some("6543"), Some("envuser"))
    );

    // An explicit password wins over PGPASSWORD.
    let info = ConnInfo::parse("password=mine")
        .unwrap()
        .with_env_from(&env);
    assert_eq!(
        info.values.get("password").map(String::as_str),
        Some("mine")
    );

    // Invalid environment values surface in validate().
    let info = ConnInfo::parse("")
        .unwrap()
        .with_env_from(env_fn_sslmode_bogus);
    let err = info.validate().unwrap_err().to_string();
    assert!(err.contains("\"sslmode\""), "{err}");
    assert!(info.sslmode().is_err());
}

fn env_fn_sslmode_bogus(name: &str) -> Option<String> {
    (name == "PGSSLMODE").then(|| "sometimes".to_owned())
}

#[test]
fn with_dbname_rewrites_the_string() {
    let url = ConnInfo::parse("postgres://mon:pw@127.0.0.1:5432/postgres?sslmode=disable").unwrap();
    let other = url.with_dbname("app");
    assert_eq!(other.dbname(), Some("app"));
    assert_eq!(
        other.masked(),
        "postgres://mon:xxxxx@127.0.0.1:5432/app?sslmode=disable"
    );
    assert_eq!(url.dbname(), Some("postgres"), "the original is unchanged");

    let query = ConnInfo::parse("postgres://mon@:5432/?host=/tmp&dbname=postgres").unwrap();
    let other = query.with_dbname("app db");
    assert_eq!(other.dbname(), Some("app db"));
    assert_eq!(
        other.masked(),
        "postgres://mon@:5432/app%20db?host=/tmp&dbname=app%20db"
    );
    // The rewritten string parses back to the same keywords.
    assert_eq!(ConnInfo::parse(&other.raw).unwrap(), other);

    let kv = ConnInfo::parse("host=/tmp user=mon password=pw").unwrap();
    let other = kv.with_dbname("app");
    assert_eq!(
        other.masked(),
        "host=/tmp user=mon password=xxxxx dbname=app"
    );
    assert_eq!(ConnInfo::parse(&other.raw).unwrap(), other);

    // A database from PGDATABASE is replaced too.
    let env_db = ConnInfo::parse("host=h")
        .unwrap()
        .with_env_from(env(&[("PGDATABASE", "envdb")]));
    assert_eq!(env_db.with_dbname("app").dbname(), Some("app"));
}

#[test]
fn pgbouncer_detection() {
    assert!(
        ConnInfo::parse("postgres://u@h:6432/pgbouncer")
            .unwrap()
            .is_pgbouncer()
    );
    assert!(ConnInfo::parse("dbname=pgbouncer").unwrap().is_pgbouncer());
    assert!(ConnInfo::parse("user=pgbouncer").unwrap().is_pgbouncer());
    assert!(
        !ConnInfo::parse("postgres://u@h:6432/pgbouncer2")
            .unwrap()
            .is_pgbouncer()
    );
    assert!(
        !ConnInfo::parse("postgres://pgbouncer@h:6432/postgres")
            .unwrap()
            .is_pgbouncer()
    );
    assert!(!ConnInfo::parse("dbname=PgBouncer").unwrap().is_pgbouncer());
}

#[test]
fn passwords_never_printed() {
    let inputs = [
        format!("postgres://mon:{SECRET}@127.0.0.1:5432/postgres?sslmode=disable"),
        format!("postgres://mon@h/db?password={SECRET}&sslpassword={SECRET}"),
        format!("host=h user=mon password='{SECRET} x' sslpassword={SECRET}"),
        format!("postgres://mon:{SECRET}@ss@h/db"),
    ];
    for input in &inputs {
        let info = ConnInfo::parse(input).unwrap();
        for printed in [
            format!("{info}"),
            format!("{info:?}"),
            format!("{info:#?}"),
            info.masked(),
        ] {
            assert!(!printed.contains(SECRET), "{printed}");
        }
        assert!(format!("{info:?}").contains("xxxxx"));
        let with_env = info.with_env_from(env(&[("PGPASSWORD", SECRET)]));
        assert!(!format!("{with_env:?}").contains(SECRET));
    }
    let from_env = ConnInfo::parse("host=h")
        .unwrap()
        .with_env_from(env(&[("PGPASSWORD", SECRET)]));
    assert!(!format!("{from_env:?} {from_env}").contains(SECRET));
}

#[test]
fn errors_never_contain_passwords() {
    let inputs = [
        format!("postgres://mon:{SECRET}@h:notaport/db"),
        format!("postgres://mon:{SECRET}@h/db?bogus=1"),
        "postgres://mon:Top/Secret@h/db".to_owned(),
        "postgres://mon:Top?Secret@h/db".to_owned(),
        "postgres://mon:Top%zzSecret@h/db".to_owned(),
        format!("password={SECRET} port=x"),
        "password=Top Secret user=u".to_owned(),
        "password=Top Secret=1".to_owned(),
        format!("host=h password='{SECRET}"),
        format!("postgres://mon:{SECRET}@h/db?sslmode=bogus"),
    ];
    for input in &inputs {
        let err = ConnInfo::parse(input).expect_err(input);
        for printed in [err.to_string(), format!("{err:?}")] {
            assert!(!printed.contains("Secret"), "{input}: {printed}");
        }
    }
}

#[test]
fn tls_settings_follow_libpq() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    fs::create_dir_all(home.join(".postgresql")).unwrap();
    let home_env = env(&[("HOME", home.to_str().unwrap())]);
    let settings = |s: &str| {
        ConnInfo::parse(s)
            .unwrap()
            .with_env_from(&home_env)
            .tls_settings()
    };

    assert_eq!(settings("sslmode=disable").unwrap(), None);
    for mode in ["allow", "prefer", "require"] {
        let s = settings(&format!("sslmode={mode}")).unwrap().unwrap();
        assert_eq!(s.verify, Verify::Nothing, "{mode}");
        assert!(s.tls12 && s.tls13 && s.sni && s.client_cert.is_none());
    }
    // verify-* without a root certificate: an error naming the file.
    let err = settings("sslmode=verify-ca").unwrap_err().to_string();
    let default_root = home.join(".postgresql/root.crt");
    assert!(
        err.contains(&format!(
            "root certificate file \"{}\" does not exist",
            default_root.display()
        )),
        "{err}"
    );
    let err = settings("sslmode=verify-full sslrootcert=/nope/ca.pem")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"/nope/ca.pem\" does not exist"), "{err}");
    // require with an explicit, missing sslrootcert: no verification, like libpq.
    assert_eq!(
        settings("sslmode=require sslrootcert=/nope/ca.pem")
            .unwrap()
            .unwrap()
            .verify,
        Verify::Nothing
    );

    // With ~/.postgresql/root.crt, require behaves like verify-ca (prefer too, as libpq).
    fs::write(&default_root, "x").unwrap();
    for (mode, verify) in [
        ("require", Verify::Chain),
        ("prefer", Verify::Chain),
        ("verify-ca", Verify::Chain),
        ("verify-full", Verify::Full),
    ] {
        let s = settings(&format!("sslmode={mode}")).unwrap().unwrap();
        assert_eq!(
            (s.verify, s.root_cert.as_deref()),
            (verify, Some(default_root.as_path())),
            "{mode}"
        );
    }
    // CRLs as libpq: sslcrl and sslcrldir as set, ~/.postgresql/root.crl when neither is.
    let crls = |s: &str| {
        let s = settings(&format!("sslmode=verify-ca {s}"))
            .unwrap()
            .unwrap();
        (s.crl, s.crl_dir)
    };
    assert_eq!(
        crls(""),
        (Some((home.join(".postgresql/root.crl"), false)), None)
    );
    assert_eq!(
        crls("sslcrl=/a.crl sslcrldir=/crls"),
        (Some(("/a.crl".into(), true)), Some("/crls".into()))
    );
    assert_eq!(crls("sslcrldir=/crls"), (None, Some("/crls".into())));
    assert_eq!(
        settings("sslmode=require sslcrl=/a.crl sslrootcert=/nope.crt")
            .unwrap()
            .unwrap()
            .crl,
        None,
        "nothing verified, no CRL"
    );

    // Client certificate: used when the file exists; the key must exist then.
    let cert = dir.path().join("client.crt");
    fs::write(&cert, "x").unwrap();
    let err = settings(&format!("sslmode=require sslcert={}", cert.display()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("private key file") && err.contains("does not exist"),
        "{err}"
    );
    let key = dir.path().join("client.key");
    fs::write(&key, "x").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let s = settings(&format!(
        "sslmode=require sslcert={} sslkey={}",
        cert.display(),
        key.display()
    ))
    .unwrap()
    .unwrap();
    assert_eq!(s.client_cert, Some((cert.clone(), key.clone())));
    let s = settings(&format!(
        "sslmode=require sslcert={} sslcertmode=disable",
        cert.display()
    ))
    .unwrap()
    .unwrap();
    assert_eq!(s.client_cert, None);
    assert!(
        settings("sslmode=require sslcert=/nope.crt")
            .unwrap()
            .unwrap()
            .client_cert
            .is_none()
    );

    let s = settings("ssl_min_protocol_version=TLSv1.3 sslsni=0")
        .unwrap()
        .unwrap();
    assert!(!s.tls12 && s.tls13 && !s.sni);
    let s = settings("ssl_max_protocol_version=tlsv1.2")
        .unwrap()
        .unwrap();
    assert!(s.tls12 && !s.tls13);
}

#[test]
fn connect_reports_invalid_environment_before_connecting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let info = ConnInfo::parse("host=127.0.0.1")
        .unwrap()
        .with_env_from(env(&[("PGPORT", "http")]));
    let err = rt
        .block_on(info.connect(Duration::from_secs(5)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid value \"http\" for connection option \"port\""),
        "{err}"
    );
}

#[test]
fn connect_errors_name_the_server_and_hide_the_password() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let info = ConnInfo::parse(&format!(
        "postgres://mon:{SECRET}@127.0.0.1:{port},127.0.0.1:{port}/db?sslmode=disable"
    ))
    .unwrap();
    let err = rt
        .block_on(info.connect(Duration::from_secs(5)))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConnInfoError::AllFailed(ref v) if v.len() == 2),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "connection to server at \"127.0.0.1\", port {port} failed"
        )),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !format!("{err:?}").contains(SECRET));

    // prefer tries TLS first; a refused TCP connection is not retried without TLS.
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port}")).unwrap();
    let err = rt
        .block_on(info.connect(Duration::from_secs(5)))
        .unwrap_err();
    assert!(matches!(err, ConnInfoError::Connect { .. }), "{err}");
}

#[test]
fn overall_timeout() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A listener that never answers the startup packet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} sslmode=disable")).unwrap();
    let err = rt
        .block_on(info.connect(Duration::from_millis(300)))
        .unwrap_err();
    assert!(matches!(err, ConnInfoError::Timeout(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "timeout expired after 300ms while connecting"
    );
    drop(listener);
}

#[test]
fn connect_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let info = ConnInfo::parse("host=127.0.0.1").unwrap();
    assert_send(&info.connect(Duration::from_secs(1)));
    assert_send(&info.connect_db(crate::connection::Protocol::Simple, Duration::from_secs(1)));
}
