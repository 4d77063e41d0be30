//! The `Pipeline` resource (`sluice.dev/v1alpha1`): SQL for the processor and the functions
//! between its topics, declared in one object.
//!
//! Doc comments on fields become the CRD's OpenAPI descriptions; `#[x_kube(validation)]` rules
//! become `x-kubernetes-validations` that the apiserver enforces (and `sluice validate` evaluates
//! locally with the same rules, see [`crate::validate`]).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{duration::Duration, quantity::ByteSize};

/// DNS-1123 label: what Kubernetes object names derived from it must be.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Legal Kafka topic names.
pub const TOPIC_PATTERN: &str = r"^[a-zA-Z0-9._-]+$";

/// Longest Pipeline name: leaves room for the `-processor-<ordinal>` pod names and the
/// `controller-revision-hash` label the StatefulSet controller derives from them.
pub const MAX_PIPELINE_NAME: usize = 40;
/// Longest `<pipeline>-<function>` Deployment name (a label value must fit in 63 characters).
pub const MAX_FUNCTION_OBJECT_NAME: usize = 52;

/// A Pipeline: stateful SQL (the processor) and stateless functions between Kafka topics.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    plural = "pipelines",
    shortname = "pl",
    namespaced,
    status = "PipelineStatus",
    derive = "PartialEq",
    doc = "A Pipeline: ksqlDB-dialect SQL run by the processor, and functions that consume, transform and produce Kafka records, scaled on consumer lag.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Pending, Running, Degraded or Failed"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag", description = "Consumer lag summed over all functions"),
    printcolumn(name = "Replicas", type_ = "string", json_path = ".status.replicas", description = "Processor ready/desired and function replicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters (it prefixes the names of the pipeline's pods)"),
    validation = kube::core::Rule::new("!has(self.spec.functions) || self.spec.functions.all(f, size(self.metadata.name) + 1 + size(f.name) <= 52)").message("<pipeline name>-<function name> must be at most 52 characters (it names the function's Deployment)"),
)]
#[x_kube(validation = kube::core::Rule::new("has(self.processor) || size(self.functions) > 0").message("a Pipeline needs a processor, at least one function, or both"))]
#[x_kube(validation = kube::core::Rule::new("self.functions.all(f, self.functions.exists_one(g, g.name == f.name))").message("function names must be unique").field_path(".functions"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    /// How to reach the Kafka cluster the pipeline reads and writes.
    pub kafka: KafkaSpec,

    /// The data-plane container image (processor and function runner). Defaults to the image
    /// of the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The stateful SQL processor. Optional: a Pipeline may hold functions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<ProcessorSpec>,

    /// Stateless functions, each consuming one topic in batches and producing the records it
    /// returns.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub functions: Vec<FunctionSpec>,
}

/// Connection to the Kafka cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!(self.securityProtocol in ['SASL_PLAINTEXT', 'SASL_SSL']) || has(self.sasl)").message("sasl is required when securityProtocol is SASL_PLAINTEXT or SASL_SSL"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.sasl) || self.securityProtocol in ['SASL_PLAINTEXT', 'SASL_SSL']").message("sasl is set but securityProtocol is not SASL_PLAINTEXT or SASL_SSL"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.tls) || self.securityProtocol in ['SSL', 'SASL_SSL']").message("tls is set but securityProtocol is not SSL or SASL_SSL"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of bootstrap brokers.
    #[schemars(length(min = 1, max = 4096))]
    pub bootstrap_servers: String,

    /// The security protocol of the broker listener.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,

    /// SASL authentication; the credentials come from a Secret (keys `username`, `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,

    /// TLS settings: the CA that signs the brokers' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Extra librdkafka client properties, passed through to the processor's and the runners'
    /// clients (for example `client.rack` or `socket.keepalive.enable`). Keys that make the
    /// client run a command, load code or read files (`sasl.kerberos.*`, `plugin.*`,
    /// `ssl.engine.*`, `ssl.providers`, `offset.store.*`, `sasl.oauthbearer.metadata.*`,
    /// `test.*`, any key ending in `.location`, `.file`, `.path`, `.paths`, `.cmd` or `.url`, and
    /// the `topic.` forms of these) are refused: a cluster administrator sets those for every
    /// Pipeline with the operator's `--kafka-property`.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 128))]
    #[x_kube(validation = crate::kafka_properties::cel_rule())]
    pub properties: BTreeMap<String, String>,
}

/// Kafka security protocol.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS, no SASL.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL over plaintext.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

/// SASL settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaslSpec {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// The Secret in the Pipeline's namespace holding the keys `username` and `password`.
    pub secret_ref: SecretRef,
}

/// SASL mechanism.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Username and password in the clear (use with SASL_SSL).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A reference to a Secret in the Pipeline's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to one key of a Secret in the Pipeline's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// TLS settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// The CA certificate (PEM) that signs the brokers' certificates. Without it the system
    /// trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// The stateful SQL processor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessorSpec {
    /// ksqlDB-dialect statements: `CREATE STREAM/TABLE`, `CREATE ... AS SELECT`, `INSERT INTO`.
    #[x_kube(validation = kube::core::Rule::new("self.trim().size() > 0").message("sql must not be empty"))]
    #[schemars(length(max = 1048576))]
    pub sql: String,

    /// Number of processor pods. Pod N of R owns the source partitions p with p mod R == N.
    /// Changing it stops all pods before starting the new count.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1024))]
    pub replicas: i32,

    /// Exactly-once processing through Kafka transactions. When false: at-least-once with an
    /// idempotent producer.
    #[serde(default = "default_true")]
    pub exactly_once: bool,

    /// How often the processor commits: produces its outputs and changelogs, commits the input
    /// offsets and (with exactly-once) the transaction.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Duration,

    /// The persistent volume each processor pod keeps its RocksDB state on. Fixed once the
    /// Pipeline exists: a StatefulSet's volume claims cannot change (a claim's size can be
    /// expanded on the PersistentVolumeClaim itself where its storage class allows it).
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("processor.storage cannot be changed once the Pipeline exists: a StatefulSet's volume claims are fixed when it is created (expand the PersistentVolumeClaims themselves, or create a new Pipeline)"))]
    pub storage: StorageSpec,

    /// Compute resources of the processor container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// ksqlDB-style query properties (for example `ksql.streams.cache.max.bytes.buffering`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,

    /// Scheduling and identity of the processor's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,
}

/// What a Pipeline may set on the pods the operator makes for it: scheduling, identity, image
/// pull credentials, metadata. The containers, their security context and volumes stay the
/// operator's (a typed section rather than a pod-template overlay: the schema validates it at
/// apply time, and nothing can drop the non-root, read-only settings).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSettings {
    /// Labels added to the pods. The operator's own (`app.kubernetes.io/name`, `instance`,
    /// `component`, `managed-by`, `sluice.dev/*`) select the pods and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/managed-by'] || k.startsWith('sluice.dev/')))").message("pod.labels may not set the labels the operator selects its pods with (app.kubernetes.io/name, instance, component, managed-by, sluice.dev/*)"))]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the pods (`sluice.dev/*` are the operator's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, !k.startsWith('sluice.dev/'))").message("pod.annotations may not set sluice.dev/* annotations (the operator's)"))]
    pub annotations: BTreeMap<String, String>,

    /// The ServiceAccount the pods run as, for code that calls cloud APIs with workload
    /// identity (IRSA, GKE Workload Identity). Default: the Pipeline's own, which has no
    /// permissions. No Kubernetes API token is mounted either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,

    /// Secrets (in the Pipeline's namespace) with credentials for pulling the pods' images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Nodes the pods may run on, by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

/// A processor pod's persistent volume.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// Size of the volume claim.
    #[serde(default = "default_storage_size")]
    pub size: ByteSize,
    /// Storage class of the volume claim; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_storage_size(), storage_class_name: None }
    }
}

/// A stateless function.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSpec {
    /// The function's name, unique within the Pipeline (a DNS label).
    #[schemars(length(min = 1, max = 40), pattern(DNS_LABEL_PATTERN))]
    pub name: String,

    /// The topic the function consumes.
    pub source: SourceSpec,

    /// How records are grouped into one invocation.
    #[serde(default)]
    pub batch: BatchSpec,

    /// How the function is invoked: exactly one of `lambda` or `http`.
    pub runtime: RuntimeSpec,

    /// Where returned records go when they name no topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,

    /// `atLeastOnce`: outputs are produced and acknowledged before the input offsets are
    /// committed. `exactlyOnce`: outputs and input offsets are committed in one Kafka transaction.
    #[serde(default)]
    pub delivery: Delivery,

    /// `partition`: one batch in flight per partition. `key`: records of different keys of a
    /// partition in flight together, each key in order.
    #[serde(default)]
    pub ordering: Ordering,

    /// Retries, batch bisection and the dead-letter topic.
    #[serde(default)]
    pub on_failure: OnFailureSpec,

    /// Lag-based autoscaling of the function's runners.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Compute resources of the runner container (the function container's are
    /// `runtime.lambda.resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_resources: Option<ResourceRequirements>,

    /// Scheduling and identity of the function's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSettings>,
}

/// The topic a function consumes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Topic name.
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub topic: String,
    /// Where a new consumer group starts: `latest` or `earliest`.
    #[serde(default)]
    pub starting_position: StartingPosition,
}

/// Where a consumer group without committed offsets starts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StartingPosition {
    /// Only records produced after the group first starts.
    #[default]
    Latest,
    /// Everything still retained in the topic.
    Earliest,
}

/// Batching of records into one invocation (per partition).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSpec {
    /// Most records in one invocation.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_records: i32,
    /// Most bytes of one invocation's event (default: Lambda's 6 MiB payload limit).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Longest a batch waits to fill before it is sent.
    #[serde(default = "default_max_wait")]
    pub max_wait: Duration,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec { max_records: default_max_records(), max_bytes: default_max_bytes(), max_wait: default_max_wait() }
    }
}

/// How the function is invoked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.lambda) != has(self.http)").message("exactly one of runtime.lambda and runtime.http must be set"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpec {
    /// A container (or, with `sluice run`, a local process) that speaks the AWS Lambda Runtime
    /// API; it finds the API at `AWS_LAMBDA_RUNTIME_API`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaRuntime>,
    /// An HTTP endpoint that receives the event as a POST body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRuntime>,
}

/// A Lambda Runtime API function.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.image) || size(self.command) > 0").message("runtime.lambda needs an image (on Kubernetes) or a command (for sluice run)"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LambdaRuntime {
    /// The function's container image, used on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// When the kubelet pulls `image` (`Always`, `IfNotPresent`, `Never`); default: Kubernetes'
    /// (`Always` for a `:latest` or untagged image, else `IfNotPresent`). `Never` runs an image
    /// loaded into the nodes by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// The container's command; the local process that `sluice run` starts.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables of the function container.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Longest one invocation may run before it fails.
    #[serde(default = "default_invoke_timeout")]
    pub timeout: Duration,
    /// Runtimes polling the Runtime API per replica: the invocations in flight at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: i32,
    /// Compute resources of the function container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// An HTTP function.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuntime {
    /// The URL the event is POSTed to.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Longest one invocation may run before it fails.
    #[serde(default = "default_invoke_timeout")]
    pub timeout: Duration,
    /// Most requests in flight at once per replica.
    #[serde(default = "default_http_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrency: i32,
}

/// Default destination of returned records.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// Topic for returned records that name none. Created when missing (by the runner, or by
    /// the processor when its SQL reads it), with `partitions` and `replicationFactor`.
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub topic: String,
    /// Partitions of the output topic when it is created; default: those of the source topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,
    /// Replication factor of the output topic when it is created; default: the broker's
    /// `default.replication.factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
}

/// Delivery guarantee of a function's outputs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Outputs acknowledged before input offsets are committed; a crash may repeat a batch.
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets in one Kafka transaction.
    ExactlyOnce,
}

/// Concurrency within a partition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Ordering {
    /// One batch in flight per partition.
    #[default]
    Partition,
    /// Different keys of a partition in flight together; each key strictly in order.
    Key,
}

/// What happens when an invocation fails.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnFailureSpec {
    /// Retries of a failing record before it is dead-lettered (when a dead-letter topic is set).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_retries: i32,
    /// Exponential backoff between retries, with jitter.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// Split a failing batch in halves to isolate the failing record.
    #[serde(default = "default_true")]
    pub bisect_batch: bool,
    /// Where records go after `maxRetries`; without one, the partition retries forever
    /// (backoff capped) and never skips a record. Created when missing, with the source
    /// topic's partitions and the broker's default replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub dead_letter_topic: Option<String>,
}

impl Default for OnFailureSpec {
    fn default() -> Self {
        OnFailureSpec {
            max_retries: default_max_retries(),
            backoff: BackoffSpec::default(),
            bisect_batch: true,
            dead_letter_topic: None,
        }
    }
}

/// Exponential backoff.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    /// The first wait.
    #[serde(default = "default_backoff_initial")]
    pub initial: Duration,
    /// The longest wait.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        BackoffSpec { initial: default_backoff_initial(), max: default_backoff_max() }
    }
}

/// Lag-based autoscaling of a function's runner Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScalingSpec {
    /// Fewest replicas; 0 allows scaling to zero.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Most replicas; the source topic's partition count caps it further.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Lag (records) one replica is expected to keep up with: desired = ceil(lag / this).
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: i64,
    /// Lag at which a function at zero replicas is started.
    #[serde(default = "default_one_i64")]
    #[schemars(range(min = 1))]
    pub activation_lag: i64,
    /// Scale to zero after this long with no lag and no new records (when minReplicas is 0).
    #[serde(default = "default_scale_to_zero_after")]
    pub scale_to_zero_after: Duration,
    /// Scale down only to the highest recommendation seen during this window.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,
    /// How often lag is read.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        ScalingSpec {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_lag_per_replica: default_target_lag(),
            activation_lag: 1,
            scale_to_zero_after: default_scale_to_zero_after(),
            scale_down_stabilization: default_scale_down_stabilization(),
            poll_interval: default_poll_interval(),
        }
    }
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Ready`, `SqlValid`, `ProcessorReady`, `FunctionsReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The processor's StatefulSet and queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<ProcessorStatus>,
    /// One entry per function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionStatus>,
    /// Consumer lag summed over all functions (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Replicas in one line for `kubectl get`, e.g. `processor 1/1, functions 3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
}

/// Lifecycle phase.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; workloads not yet ready.
    Pending,
    /// Every workload ready.
    Running,
    /// Running with problems (a workload not ready, lag unreadable, a rescale in progress).
    Degraded,
    /// Not runnable as specified (for example invalid SQL); running workloads were left as they were.
    Failed,
}

/// The processor's observed state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorStatus {
    /// Desired pods.
    pub replicas: i32,
    /// Pods ready (state restored, processing).
    pub ready_replicas: i32,
    /// The persistent queries of the SQL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryStatus>,
}

/// One persistent query.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueryStatus {
    /// Query id, as ksqlDB names them (e.g. `CSAS_USER_TRADES_1`).
    pub id: String,
    /// The stream or table it writes.
    pub sink: String,
    /// Its state.
    pub state: String,
}

/// A function's observed state and last scaling decision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function's name.
    pub name: String,
    /// Current replicas of its Deployment.
    pub replicas: i32,
    /// Replicas the autoscaler asks for.
    pub desired_replicas: i32,
    /// Consumer lag of its group, in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Partitions of its source topic (the replica cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The last change of replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleEvent>,
}

/// One scaling decision that changed the replicas.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    /// When it was applied.
    pub time: Time,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, e.g. `lag 1200 > 4 x 100` or `idle for 5m`.
    pub reason: String,
}

fn default_one() -> i32 {
    1
}
fn default_one_i64() -> i64 {
    1
}
fn default_true() -> bool {
    true
}
fn default_commit_interval() -> Duration {
    Duration::from_static("100ms")
}
fn default_storage_size() -> ByteSize {
    ByteSize::from_static("1Gi")
}
fn default_max_records() -> i32 {
    100
}
fn default_max_bytes() -> ByteSize {
    ByteSize::from_static("6Mi")
}
fn default_max_wait() -> Duration {
    Duration::from_static("500ms")
}
/// A value the schema admits but Sluice cannot run with: the field (relative to its object, e.g.
/// `runtime.lambda.timeout`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Field path relative to the object checked.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Largest invocation timeout (Lambda's own limit is 15 minutes; HTTP functions get more).
pub const MAX_INVOCATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest batching window (Lambda's `MaximumBatchingWindowInSeconds` limit).
pub const MAX_BATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// Largest event (Lambda's invocation payload limit).
pub const MAX_EVENT_BYTES: u64 = 6 * 1024 * 1024;

impl FunctionSpec {
    /// The topics this function writes, as they are created when missing: the output topic
    /// (its `partitions` and `replicationFactor`, else the source's partitions and the broker's
    /// default replication) and the dead-letter topic (the source's partitions).
    pub fn written_topics(&self) -> Vec<crate::config::TopicSpec> {
        let mut topics = Vec::new();
        if let Some(o) = &self.output {
            topics.push(crate::config::TopicSpec {
                topic: o.topic.clone(),
                partitions: o.partitions,
                partitions_of: Some(self.source.topic.clone()),
                replication_factor: o.replication_factor,
            });
        }
        if let Some(t) = &self.on_failure.dead_letter_topic
            && !topics.iter().any(|x| &x.topic == t)
        {
            topics.push(crate::config::TopicSpec {
                topic: t.clone(),
                partitions: None,
                partitions_of: Some(self.source.topic.clone()),
                replication_factor: None,
            });
        }
        topics
    }

    /// The checks the CRD's schema cannot express (bounds and relations of durations and sizes,
    /// duplicate environment variables), shared by the operator, `sluice validate` and the
    /// runner, so that a Pipeline the operator accepts never makes a runner crash-loop.
    pub fn check(&self) -> Result<(), FieldProblem> {
        use std::time::Duration as D;
        let problem = |path: &str, message: String| Err(FieldProblem { path: path.into(), message });
        let within = |path: &str, d: &Duration, min: D, max: D| -> Result<(), FieldProblem> {
            let v = d.get();
            if v < min || v > max {
                return problem(path, format!("{d} is out of range: must be from {min:?} to {max:?}"));
            }
            Ok(())
        };
        let (timeout_path, timeout) = match (&self.runtime.lambda, &self.runtime.http) {
            (Some(l), _) => ("runtime.lambda.timeout", &l.timeout),
            (None, Some(h)) => ("runtime.http.timeout", &h.timeout),
            (None, None) => {
                return problem("runtime", "exactly one of runtime.lambda and runtime.http must be set".into());
            }
        };
        within(timeout_path, timeout, D::from_millis(1), MAX_INVOCATION_TIMEOUT)?;
        within("batch.maxWait", &self.batch.max_wait, D::ZERO, MAX_BATCH_WAIT)?;
        let bytes = self.batch.max_bytes.bytes();
        if !(1024..=MAX_EVENT_BYTES).contains(&bytes) {
            return problem(
                "batch.maxBytes",
                format!(
                    "{} is out of range: must be from 1Ki (an event with one record) to 6Mi (Lambda's payload limit)",
                    self.batch.max_bytes
                ),
            );
        }
        let backoff = &self.on_failure.backoff;
        within("onFailure.backoff.max", &backoff.max, D::from_millis(1), D::from_secs(3600))?;
        within("onFailure.backoff.initial", &backoff.initial, D::from_millis(1), backoff.max.get())?;
        let s = &self.scaling;
        within("scaling.pollInterval", &s.poll_interval, D::from_millis(100), D::from_secs(600))?;
        within("scaling.scaleToZeroAfter", &s.scale_to_zero_after, D::ZERO, D::from_secs(7 * 24 * 3600))?;
        within("scaling.scaleDownStabilization", &s.scale_down_stabilization, D::ZERO, D::from_secs(24 * 3600))?;
        if let Some(l) = &self.runtime.lambda {
            for (i, var) in l.env.iter().enumerate() {
                if l.env[..i].iter().any(|earlier| earlier.name == var.name) {
                    return problem(
                        &format!("runtime.lambda.env[{i}].name"),
                        format!("duplicate variable {:?}", var.name),
                    );
                }
            }
        }
        Ok(())
    }
}

impl LambdaRuntime {
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`: the container's memory limit in MiB, else Lambda's
    /// default of 128.
    pub fn memory_mb(&self) -> u64 {
        self.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|limits| limits.get("memory"))
            .and_then(|q| q.0.parse::<crate::ByteSize>().ok())
            .map_or(128, |b| (b.bytes() / (1024 * 1024)).max(1))
    }
}

fn default_invoke_timeout() -> Duration {
    Duration::from_static("30s")
}
fn default_http_concurrency() -> i32 {
    8
}
fn default_max_retries() -> i32 {
    3
}
fn default_backoff_initial() -> Duration {
    Duration::from_static("100ms")
}
fn default_backoff_max() -> Duration {
    Duration::from_static("30s")
}
fn default_max_replicas() -> i32 {
    50
}
fn default_target_lag() -> i64 {
    100
}
fn default_scale_to_zero_after() -> Duration {
    Duration::from_static("5m")
}
fn default_scale_down_stabilization() -> Duration {
    Duration::from_static("60s")
}
fn default_poll_interval() -> Duration {
    Duration::from_static("10s")
}
