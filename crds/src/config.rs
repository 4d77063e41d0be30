//! The data-plane config files (CONTRACTS.md, "Data-plane config files"): what the operator
//! renders into a ConfigMap and `sluice run` renders locally, and what `sluice-processor run
//! --config` and `sluice-function-runner run --config` read.
//!
//! Secrets never appear in these files: SASL credentials are read from environment variables
//! (which the operator fills from the referenced Secret) and the CA from a mounted file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Duration,
    pipeline::{FunctionSpec, KafkaSpec, SaslMechanism, SecurityProtocol},
};

/// Environment variable holding the SASL username.
pub const SASL_USERNAME_ENV: &str = "SLUICE_KAFKA_SASL_USERNAME";
/// Environment variable holding the SASL password.
pub const SASL_PASSWORD_ENV: &str = "SLUICE_KAFKA_SASL_PASSWORD";

/// Kafka connection settings of a data-plane component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers.
    pub bootstrap_servers: String,
    /// Security protocol.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL: the mechanism; credentials come from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
    /// Path of a PEM file with the CA that signs the brokers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Extra librdkafka properties from the Pipeline, passed through. Keys that run a command,
    /// load code or read files ([`crate::kafka_properties::refusal`]) are refused here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties set by the cluster administrator (the operator's `--kafka-property`),
    /// never from a Pipeline: they may hold the keys refused in `properties` (Kerberos, an
    /// OpenSSL engine), and they win over `properties`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trusted_properties: BTreeMap<String, String>,
}

/// SASL settings: the mechanism and the environment variables holding the credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaslConfig {
    /// Mechanism.
    pub mechanism: SaslMechanism,
    /// Variable with the username.
    #[serde(default = "default_username_env")]
    pub username_env: String,
    /// Variable with the password.
    #[serde(default = "default_password_env")]
    pub password_env: String,
}

fn default_username_env() -> String {
    SASL_USERNAME_ENV.into()
}
fn default_password_env() -> String {
    SASL_PASSWORD_ENV.into()
}

/// Why client properties could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A credential variable is unset or empty.
    #[error("environment variable {0} is not set (it carries the Kafka SASL credentials)")]
    MissingEnv(String),
    /// A property that runs a command, loads code or reads files, from a Pipeline.
    #[error("kafka.properties: {0}")]
    Refused(String),
    /// A config file did not parse.
    #[error("{path}: {message}")]
    Invalid {
        /// Field path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl KafkaConfig {
    /// The data-plane form of a Pipeline's `kafka` section; `ca_file` is where the CA Secret is
    /// mounted (the operator decides the path).
    pub fn from_spec(spec: &KafkaSpec, ca_file: Option<&str>) -> Self {
        KafkaConfig {
            bootstrap_servers: spec.bootstrap_servers.clone(),
            security_protocol: spec.security_protocol,
            sasl: spec.sasl.as_ref().map(|s| SaslConfig {
                mechanism: s.mechanism,
                username_env: default_username_env(),
                password_env: default_password_env(),
            }),
            ca_file: spec.tls.as_ref().and(ca_file.map(str::to_owned)),
            properties: spec.properties.clone(),
            trusted_properties: BTreeMap::new(),
        }
    }

    /// The first property of `properties` a Pipeline may not set, as an error.
    pub fn check_properties(&self) -> Result<(), ConfigError> {
        match self.properties.keys().find_map(|k| crate::kafka_properties::refusal_message(k)) {
            Some(message) => Err(ConfigError::Refused(message)),
            None => Ok(()),
        }
    }

    /// librdkafka client properties, with credentials read through `env`. Our settings win
    /// over `properties` for the keys they set, so a typo there cannot, say, disable TLS.
    pub fn client_properties(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        self.check_properties()?;
        let mut props = self.properties.clone();
        props.extend(self.trusted_properties.clone());
        // librdkafka's other names for the keys set here would race them (a map has no order).
        props.remove("metadata.broker.list");
        props.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        props.insert("security.protocol".into(), self.security_protocol.as_str().into());
        if let Some(sasl) = &self.sasl {
            let get =
                |name: &str| env(name).filter(|v| !v.is_empty()).ok_or_else(|| ConfigError::MissingEnv(name.into()));
            props.remove("sasl.mechanisms");
            props.insert("sasl.mechanism".into(), sasl.mechanism.as_str().into());
            props.insert("sasl.username".into(), get(&sasl.username_env)?);
            props.insert("sasl.password".into(), get(&sasl.password_env)?);
        }
        if let Some(ca) = &self.ca_file {
            props.insert("ssl.ca.location".into(), ca.clone());
        }
        Ok(props)
    }

    /// The properties of a client that runs outside the data plane (the operator's lag reader):
    /// the connection settings, then only the keys of
    /// [`crate::kafka_properties::OPERATOR_ALLOWED`] from `properties`, then
    /// `trusted_properties`.
    pub fn operator_client_properties(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let allowed = crate::kafka_properties::OPERATOR_ALLOWED;
        let narrowed = KafkaConfig {
            properties: self
                .properties
                .iter()
                .filter(|(k, _)| allowed.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..self.clone()
        };
        narrowed.client_properties(env)
    }
}

/// `sluice-processor run --config`: one processor replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessorConfig {
    /// `<namespace>.<pipeline>`: the consumer group, and the prefix of internal topics and
    /// transactional ids.
    pub application_id: String,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// The SQL.
    pub sql: String,
    /// Replicas of the StatefulSet.
    #[serde(default = "one")]
    pub replicas: i32,
    /// This replica's ordinal; default: the number after the last `-` of `$POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<i32>,
    /// Where RocksDB keeps the state.
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// Exactly-once through Kafka transactions.
    #[serde(default = "yes")]
    pub exactly_once: bool,
    /// Commit interval.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Duration,
    /// ksqlDB-style query properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// HTTP listen address.
    #[serde(default = "default_processor_listen")]
    pub listen: String,
    /// Peer HTTP addresses by ordinal (the StatefulSet's stable names), for routing pull queries
    /// to the owner of a key's partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// How the processor creates the topics it writes (sinks, changelog, repartition and
    /// processing-log topics): with the admin API (the default), or by asking for their
    /// metadata on a cluster that creates topics on first use (`sluice run`'s embedded demo
    /// Kafka, which has no admin API).
    #[serde(default, skip_serializing_if = "TopicCreation::is_admin")]
    pub topic_creation: TopicCreation,
    /// Topics the Pipeline's functions write (outputs, dead-letter topics). When the SQL reads
    /// one that does not exist yet, the processor creates it as given here rather than wait for
    /// a function that may only start once the processor has produced its input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub function_topics: Vec<TopicSpec>,
}

/// A topic as it is created when missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic.
    pub topic: String,
    /// Its partitions; else those of `partitionsOf`; else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The topic whose partition count it takes when `partitions` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions_of: Option<String>,
    /// Its replication factor; else the broker's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
}

/// How missing topics are created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TopicCreation {
    /// `CreateTopics`, with the partition counts the queries need.
    #[default]
    Admin,
    /// Metadata requests that let the cluster create them with its defaults.
    AutoCreate,
}

impl TopicCreation {
    fn is_admin(&self) -> bool {
        *self == TopicCreation::Admin
    }
}

impl ProcessorConfig {
    /// This replica's ordinal: `ordinal`, else the number after the last `-` of `pod_name`.
    pub fn resolve_ordinal(&self, pod_name: Option<&str>) -> Result<i32, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: "ordinal".into(), message };
        let ordinal = match (self.ordinal, pod_name) {
            (Some(o), _) => o,
            (None, Some(name)) => name
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse().ok())
                .ok_or_else(|| invalid(format!("not set, and POD_NAME {name:?} does not end in -<ordinal>")))?,
            (None, None) => return Err(invalid("not set, and POD_NAME is not set".into())),
        };
        if !(0..self.replicas).contains(&ordinal) {
            return Err(invalid(format!("{ordinal} is outside 0..{} (replicas {})", self.replicas, self.replicas)));
        }
        Ok(ordinal)
    }
}

/// `sluice-function-runner run --config`: one runner replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerConfig {
    /// The Pipeline's name.
    pub pipeline: String,
    /// The Pipeline's namespace (for the default group; `default` locally).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Consumer group; default `<namespace>.<pipeline>.<function>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where the Lambda Runtime API is served.
    #[serde(default = "default_runtime_api_listen")]
    pub runtime_api_listen: String,
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    #[serde(default = "default_runner_listen")]
    pub listen: String,
    /// The function, with the Pipeline's field names.
    pub function: FunctionSpec,
}

impl RunnerConfig {
    /// The consumer group.
    pub fn group(&self) -> String {
        self.group.clone().unwrap_or_else(|| format!("{}.{}.{}", self.namespace, self.pipeline, self.function.name))
    }
}

/// Where the runner serves the Runtime API inside a function's pod, as the function container
/// is told in `AWS_LAMBDA_RUNTIME_API`.
pub const RUNTIME_API_IN_POD: &str = "127.0.0.1:9001";

/// The environment a Lambda runtime expects, for function `name` reaching the Runtime API at
/// `runtime_api` (`host:port`): what the runner gives a local process and the operator gives a
/// function container. The Rust `lambda_runtime` refuses to start without the function name,
/// memory size and version; `awslambdaric` reads the handler from its argument, others from
/// `_HANDLER`.
pub fn lambda_env(
    name: &str,
    runtime_api: &str,
    timeout: std::time::Duration,
    memory_mb: u64,
    handler: &str,
) -> Vec<(String, String)> {
    let pairs = [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.to_string()),
        ("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout.as_secs().max(1).to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        ("AWS_LAMBDA_LOG_STREAM_NAME", format!("sluice/{name}")),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("_HANDLER", handler.to_owned()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Parse a config file (YAML or JSON) with field paths in errors.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let deserializer = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| ConfigError::Invalid { path: e.path().to_string(), message: e.into_inner().to_string() })
}

fn one() -> i32 {
    1
}
fn yes() -> bool {
    true
}
fn default_state_dir() -> String {
    "/var/lib/sluice".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_static("100ms")
}
fn default_processor_listen() -> String {
    "0.0.0.0:8088".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn default_runtime_api_listen() -> String {
    "127.0.0.1:9001".into()
}
fn default_runner_listen() -> String {
    "0.0.0.0:9090".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_config_defaults_and_ordinal() {
        let c: ProcessorConfig = parse(
            "applicationId: default.trades\nkafka: {bootstrapServers: 'k:9092'}\nsql: 'CREATE STREAM S (A INT) WITH (kafka_topic=''s'', value_format=''json'');'\nreplicas: 3\n",
        )
        .unwrap();
        assert!(c.exactly_once);
        assert_eq!(c.listen, "0.0.0.0:8088");
        assert_eq!(c.commit_interval.get().as_millis(), 100);
        assert_eq!(c.resolve_ordinal(Some("trades-processor-2")).unwrap(), 2);
        assert!(c.resolve_ordinal(Some("trades-processor-5")).unwrap_err().to_string().contains("outside 0..3"));
        assert!(c.resolve_ordinal(Some("weird")).is_err());
        assert!(c.resolve_ordinal(None).is_err());
    }

    #[test]
    fn runner_config_uses_the_pipelines_field_names() {
        let c: RunnerConfig = parse(
            r#"
pipeline: trades
namespace: prod
kafka: {bootstrapServers: "k:9092"}
function:
  name: settle
  source: {topic: user_trades}
  runtime: {http: {url: "http://settle:8080/"}}
"#,
        )
        .unwrap();
        assert_eq!(c.group(), "prod.trades.settle");
        assert_eq!(c.runtime_api_listen, "127.0.0.1:9001");
        assert_eq!(c.function.batch.max_records, 100);
        let e = parse::<RunnerConfig>("pipeline: p\nkafka: {bootstrapServers: k}\nfunction: {name: f, source: {topic: t}, runtime: {}, batch: {maxRecords: x}}\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("function.batch.maxRecords"), "{e}");
    }

    #[test]
    fn the_environment_real_lambda_runtimes_need() {
        let env = lambda_env("settle", RUNTIME_API_IN_POD, std::time::Duration::from_secs(30), 128, "settle.handler");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), Some("settle"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("128"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), Some("$LATEST"));
        assert_eq!(get("_HANDLER"), Some("settle.handler"));
    }

    #[test]
    fn client_properties_take_secrets_from_the_environment() {
        let c = KafkaConfig {
            bootstrap_servers: "k:9093".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl: Some(SaslConfig {
                mechanism: SaslMechanism::ScramSha512,
                username_env: SASL_USERNAME_ENV.into(),
                password_env: SASL_PASSWORD_ENV.into(),
            }),
            ca_file: Some("/etc/sluice/kafka-ca/ca.crt".into()),
            properties: BTreeMap::from([
                ("security.protocol".into(), "PLAINTEXT".into()),
                ("client.rack".into(), "a".into()),
            ]),
            trusted_properties: BTreeMap::new(),
        };
        let env = |name: &str| match name {
            SASL_USERNAME_ENV => Some("alice".to_string()),
            SASL_PASSWORD_ENV => Some("secret".to_string()),
            _ => None,
        };
        let props = c.client_properties(env).unwrap();
        assert_eq!(props["security.protocol"], "SASL_SSL", "our setting wins over properties");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "alice");
        assert_eq!(props["ssl.ca.location"], "/etc/sluice/kafka-ca/ca.crt");
        assert_eq!(props["client.rack"], "a");
        let missing = c.client_properties(|_| None).unwrap_err();
        assert_eq!(missing, ConfigError::MissingEnv(SASL_USERNAME_ENV.into()));
        // And the rendered file never contains a secret.
        let yaml = serde_norway::to_string(&c).unwrap();
        assert!(!yaml.contains("secret") && !yaml.contains("alice"), "{yaml}");
    }

    #[test]
    fn properties_that_run_or_load_are_refused_unless_trusted() {
        let mut c = KafkaConfig {
            bootstrap_servers: "k:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            ca_file: None,
            properties: BTreeMap::from([("sasl.kerberos.kinit.cmd".into(), "sh -c 'id > /tmp/pwned'".into())]),
            trusted_properties: BTreeMap::new(),
        };
        let e = c.client_properties(|_| None).unwrap_err().to_string();
        assert!(e.starts_with("kafka.properties: \"sasl.kerberos.kinit.cmd\" may not be set"), "{e}");
        let operator = c.operator_client_properties(|_| None).unwrap();
        assert!(!operator.contains_key("sasl.kerberos.kinit.cmd"), "never in the operator's clients: {operator:?}");
        // The same key from the administrator is taken as is.
        c.trusted_properties = std::mem::take(&mut c.properties);
        let props = c.client_properties(|_| None).unwrap();
        assert_eq!(props["sasl.kerberos.kinit.cmd"], "sh -c 'id > /tmp/pwned'");
    }

    #[test]
    fn the_operator_takes_only_allowed_keys_from_a_pipeline() {
        let mut c = KafkaConfig {
            bootstrap_servers: "k:9092".into(),
            security_protocol: SecurityProtocol::Ssl,
            sasl: None,
            ca_file: None,
            properties: BTreeMap::from([
                ("client.rack".into(), "a".into()),
                ("debug".into(), "all".into()),
                ("sasl.oauthbearer.token.endpoint.url".into(), "http://169.254.169.254/".into()),
                ("security.protocol".into(), "PLAINTEXT".into()),
            ]),
            trusted_properties: BTreeMap::from([("socket.nagle.disable".into(), "true".into())]),
        };
        let props = c.operator_client_properties(|_| None).unwrap();
        assert_eq!(
            props.keys().map(String::as_str).collect::<Vec<_>>(),
            ["bootstrap.servers", "client.rack", "security.protocol", "socket.nagle.disable"]
        );
        assert_eq!(props["security.protocol"], "SSL");
        // The data plane takes the rest, never a URL to fetch.
        let e = c.client_properties(|_| None).unwrap_err();
        assert!(e.to_string().contains("sasl.oauthbearer.token.endpoint.url"), "{e}");
        c.properties.remove("sasl.oauthbearer.token.endpoint.url");
        assert!(c.client_properties(|_| None).unwrap().contains_key("debug"));
    }
}
