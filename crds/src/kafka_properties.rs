//! Which librdkafka properties a Pipeline may pass through `spec.kafka.properties`.
//!
//! librdkafka runs some of its settings: `sasl.kerberos.kinit.cmd` is a shell command it starts
//! at client creation and on every relogin (with the other `sasl.kerberos.*` values substituted
//! into it), `plugin.library.paths`, `ssl.engine.*` and `ssl.providers` load shared objects, and
//! the `*.location`/`*.file`/`*.path` keys read (or, for `offset.store.*`, write) files of the
//! process that runs the client. None of that belongs to whoever may create a Pipeline: the
//! operator's own clients would run it with the operator's ServiceAccount.
//!
//! So a Pipeline may not carry these keys ([`refusal`]): the CRD refuses them with a CEL rule
//! ([`CEL_RULE`], the same predicate), `sluice validate` evaluates that rule, the operator's
//! planner checks again, and the data-plane binaries refuse them in their config files. A
//! cluster administrator who needs one (Kerberos, an OpenSSL engine) sets it in the operator's
//! settings (`--kafka-property`, chart value `dataPlane.kafkaProperties`), from where it reaches
//! the data plane as [`crate::config::KafkaConfig::trusted_properties`].
//!
//! The operator's own clients (the autoscaler's lag reader) go further and take only the keys of
//! [`OPERATOR_ALLOWED`] from a Pipeline.

/// How a refused key is recognised.
enum Match {
    Prefix(&'static str),
    Suffix(&'static str),
    Exact(&'static str),
}

/// The refused keys, each with the reason given to the user. [`CEL_RULE`] is built from the same
/// list (a test checks that both agree on every key of librdkafka's configuration).
const REFUSED: &[(Match, &str)] = &[
    (Match::Prefix("sasl.kerberos."), "librdkafka runs a shell command (kinit) built from the Kerberos settings"),
    (Match::Prefix("plugin."), "it loads shared libraries into the client"),
    (Match::Prefix("ssl.engine."), "it loads an OpenSSL engine (a shared library) into the client"),
    (Match::Prefix("ssl_engine_"), "it configures an OpenSSL engine loaded into the client"),
    (Match::Exact("ssl.providers"), "it loads OpenSSL providers (shared libraries) into the client"),
    (Match::Prefix("offset.store."), "it makes the client write offset files"),
    (Match::Suffix(".location"), "it makes the client read a file of its own container"),
    (Match::Suffix(".file"), "it makes the client read a file of its own container"),
    (Match::Suffix(".path"), "it makes the client read or write a file of its own container"),
    (Match::Suffix(".paths"), "it makes the client load files of its own container"),
    (Match::Suffix(".cmd"), "it makes the client run a command"),
    (Match::Suffix(".url"), "it makes the client fetch a URL with the pod's network identity"),
    (
        Match::Prefix("sasl.oauthbearer.metadata."),
        "it makes the client fetch credentials from the node's metadata service",
    ),
    (Match::Prefix("test."), "it switches on librdkafka's test behaviour (a mock cluster instead of the brokers)"),
];

/// librdkafka also takes every topic property with a `topic.` prefix (it strips it and tries
/// again): `topic.offset.store.path` is `offset.store.path`.
const TOPIC_PREFIX: &str = "topic.";

/// Why `key` may not come from a Pipeline, or `None` when it may.
pub fn refusal(key: &str) -> Option<&'static str> {
    let stripped = key.strip_prefix(TOPIC_PREFIX);
    REFUSED
        .iter()
        .find(|(m, _)| {
            std::iter::once(key).chain(stripped).any(|key| match m {
                Match::Prefix(p) => key.starts_with(p),
                Match::Suffix(s) => key.ends_with(s),
                Match::Exact(e) => key == *e,
            })
        })
        .map(|(_, why)| *why)
}

/// The message for a refused key (the same text the CEL rule's `messageExpression` builds).
pub fn refusal_message(key: &str) -> Option<String> {
    refusal(key).map(|why| format!("{key:?} may not be set in a Pipeline: {why}; {ADMIN_HINT}"))
}

const ADMIN_HINT: &str =
    "a cluster administrator can set it for every Pipeline with the --kafka-property setting of the operator";

/// The CEL predicate "key `k` is refused", from [`REFUSED`].
fn cel_predicate(var: &str) -> String {
    REFUSED
        .iter()
        .map(|(m, _)| match m {
            Match::Prefix(p) => format!("{var}.startsWith('{p}') || {var}.startsWith('{TOPIC_PREFIX}{p}')"),
            Match::Suffix(s) => format!("{var}.endsWith('{s}')"),
            Match::Exact(e) => format!("{var} == '{e}' || {var} == '{TOPIC_PREFIX}{e}'"),
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The rule on `spec.kafka.properties` (a map): no refused key.
pub static CEL_RULE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("self.all(k, !({}))", cel_predicate("k")));

/// Its message, naming the first refused key.
pub static CEL_MESSAGE_EXPRESSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "'\"' + self.filter(k, {})[0] + '\" may not be set in a Pipeline: it runs a command, loads code or reads files in the client; {ADMIN_HINT}'",
        cel_predicate("k")
    )
});

/// The CEL rule as kube's schema derive takes it.
pub fn cel_rule() -> kube::core::Rule {
    kube::core::Rule::new(CEL_RULE.as_str())
        .message(kube::core::Message::Expression(CEL_MESSAGE_EXPRESSION.clone()))
        .reason(kube::core::Reason::FieldValueForbidden)
}

/// The keys the operator's own Kafka clients take from a Pipeline's properties; every other key
/// is left to the data plane. The connection settings (`bootstrap.servers`, `security.protocol`,
/// SASL mechanism and credentials, the CA) come from the Pipeline's typed fields.
pub const OPERATOR_ALLOWED: &[&str] = &[
    "ssl.endpoint.identification.algorithm",
    "client.dns.lookup",
    "broker.address.family",
    "socket.timeout.ms",
    "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable",
    "client.rack",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every property librdkafka 2.12 documents (CONFIGURATION.md, global and topic), with
    /// whether a Pipeline may set it. Reviewed by hand: a key here that reads a file, loads code
    /// or runs a command must be `false`.
    const LIBRDKAFKA: &[(&str, bool)] = &[
        ("builtin.features", true),
        ("client.id", true),
        ("metadata.broker.list", true),
        ("bootstrap.servers", true),
        ("message.max.bytes", true),
        ("receive.message.max.bytes", true),
        ("max.in.flight.requests.per.connection", true),
        ("topic.metadata.refresh.interval.ms", true),
        ("debug", true),
        ("socket.timeout.ms", true),
        ("socket.keepalive.enable", true),
        ("socket.nagle.disable", true),
        ("broker.address.family", true),
        ("client.dns.lookup", true),
        ("client.rack", true),
        ("api.version.request", true),
        ("broker.version.fallback", true),
        ("security.protocol", true),
        ("ssl.cipher.suites", true),
        ("ssl.curves.list", true),
        ("ssl.sigalgs.list", true),
        ("ssl.key.location", false),
        ("ssl.key.password", true),
        ("ssl.key.pem", true),
        ("ssl.certificate.location", false),
        ("ssl.certificate.pem", true),
        ("ssl.ca.location", false),
        ("https.ca.location", false),
        ("https.ca.pem", true),
        ("ssl.ca.pem", true),
        ("ssl.ca.certificate.stores", true),
        ("ssl.crl.location", false),
        ("ssl.keystore.location", false),
        ("ssl.keystore.password", true),
        ("ssl.providers", false),
        ("ssl.engine.location", false),
        ("ssl.engine.id", false),
        ("ssl_engine_callback_data", false),
        ("enable.ssl.certificate.verification", true),
        ("ssl.endpoint.identification.algorithm", true),
        ("sasl.mechanisms", true),
        ("sasl.mechanism", true),
        ("sasl.kerberos.service.name", false),
        ("sasl.kerberos.principal", false),
        ("sasl.kerberos.kinit.cmd", false),
        ("sasl.kerberos.keytab", false),
        ("sasl.kerberos.min.time.before.relogin", false),
        ("sasl.username", true),
        ("sasl.password", true),
        ("sasl.oauthbearer.config", true),
        ("sasl.oauthbearer.method", true),
        ("sasl.oauthbearer.token.endpoint.url", false),
        ("sasl.oauthbearer.metadata.authentication.type", false),
        ("sasl.oauthbearer.client.id", true),
        ("sasl.oauthbearer.scope", true),
        ("sasl.oauthbearer.assertion.private.key.file", false),
        ("sasl.oauthbearer.assertion.private.key.pem", true),
        ("sasl.oauthbearer.assertion.file", false),
        ("sasl.oauthbearer.assertion.jwt.template.file", false),
        ("plugin.library.paths", false),
        ("group.id", true),
        ("group.protocol", true),
        ("partition.assignment.strategy", true),
        ("session.timeout.ms", true),
        ("enable.auto.commit", true),
        ("offset.store.path", false),
        ("offset.store.method", false),
        ("offset.store.sync.interval.ms", false),
        ("isolation.level", true),
        ("fetch.max.bytes", true),
        ("linger.ms", true),
        ("compression.type", true),
        ("acks", true),
        ("auto.offset.reset", true),
        // The `topic.` forms of topic properties.
        ("topic.offset.store.method", false),
        ("topic.offset.store.path", false),
        ("topic.acks", true),
        ("topic.auto.offset.reset", true),
        // librdkafka's hidden test settings.
        ("test.mock.num.brokers", false),
        ("test.mock.broker.rtt", false),
    ];

    #[test]
    fn refused_keys_are_those_that_run_load_or_read() {
        for (key, allowed) in LIBRDKAFKA {
            assert_eq!(refusal(key).is_none(), *allowed, "{key}");
        }
    }

    #[test]
    fn the_cel_rule_and_the_rust_predicate_agree() {
        for (key, allowed) in LIBRDKAFKA {
            let yaml = format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  kafka:\n    bootstrapServers: k:9092\n    properties: {{{key:?}: x}}\n  functions:\n  - name: f\n    source: {{topic: t}}\n    runtime: {{http: {{url: 'http://f:8080/'}}}}\n"
            );
            let result = crate::validate::load_pipelines(&yaml);
            assert_eq!(result.is_ok(), *allowed, "{key}: {result:?}");
            if let Err(problems) = result {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].path, "spec.kafka.properties", "{problems:?}");
                assert!(problems[0].message.starts_with(&format!("{key:?} may not be set")), "{problems:?}");
            }
        }
    }
}
