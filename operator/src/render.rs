//! From a Pipeline to the objects that run it, as pure functions: a validated [`Plan`] (SQL
//! analysed, defaults applied, errors with field paths), then the children — ConfigMap,
//! ServiceAccount, the processor's StatefulSet with its Services and PodDisruptionBudget, and per
//! function a Deployment and a metrics Service — each with the Pipeline as controlling owner.
//! The controller applies them whole with server-side apply; nothing here talks to a cluster.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
            EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
            VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;
use sha2::{Digest, Sha256};
use sluice_crds::{
    Pipeline,
    config::{KafkaConfig, ProcessorConfig, RUNTIME_API_IN_POD, RunnerConfig, lambda_env},
    pipeline::{FunctionSpec, KafkaSpec, PodSettings, ProcessorSpec},
};

/// Where the config files are mounted in every data-plane container.
pub const CONFIG_DIR: &str = "/etc/sluice";
/// Where the Kafka CA is mounted when `kafka.tls.caSecretRef` is set.
pub const CA_DIR: &str = "/etc/sluice/kafka-ca";
/// The processor's state directory (the PVC).
pub const STATE_DIR: &str = "/var/lib/sluice";
/// The annotation on pod templates that carries the hash of their config, so that a change of
/// SQL or settings rolls the pods.
pub const CONFIG_HASH: &str = "sluice.dev/config-hash";
/// The processor's HTTP port.
pub const PROCESSOR_PORT: i32 = 8088;
/// The runner's metrics and health port.
pub const RUNNER_PORT: i32 = 9090;
/// The non-root user the data-plane containers run as (distroless `nonroot`).
pub const USER_ID: i64 = 65532;

/// Why a Pipeline cannot be planned: the field, and what is wrong (SQL errors carry line and
/// column in the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    /// Field path, e.g. `spec.processor.sql`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Whether the SQL is at fault (condition `SqlValid=False`).
    pub sql: bool,
}

/// A Pipeline, checked and with everything the children need resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Namespace.
    pub namespace: String,
    /// Pipeline name.
    pub name: String,
    /// The owner reference every child carries.
    pub owner: OwnerReference,
    /// The data-plane image.
    pub image: String,
    /// Kafka settings as the pipeline gives them.
    pub kafka: KafkaSpec,
    /// The administrator's librdkafka properties ([`Settings::kafka_properties`]).
    pub kafka_properties: BTreeMap<String, String>,
    /// The data-plane containers' `imagePullPolicy` ([`Settings::image_pull_policy`]).
    pub image_pull_policy: Option<String>,
    /// The processor, if the Pipeline has SQL.
    pub processor: Option<ProcessorSpec>,
    /// Persistent queries the SQL defines (id and sink), for status.
    pub queries: Vec<(String, String)>,
    /// Topics the Pipeline reads that nothing in it writes (the SQL's sources, the functions'
    /// sources): the data plane waits for them, and status names those that are missing.
    pub external_topics: Vec<String>,
    /// The functions.
    pub functions: Vec<FunctionSpec>,
    /// A digest of the Secrets the pods read (set by the controller): part of the pod templates'
    /// config hash, so that changed credentials roll the pods. Empty: none referenced.
    pub secrets_digest: String,
}

impl Plan {
    /// The Secrets the pods read: the SASL credentials and the CA.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.kafka.sasl.iter().map(|s| s.secret_ref.name.clone()).collect();
        names.extend(self.kafka.tls.iter().flat_map(|t| t.ca_secret_ref.iter()).map(|r| r.name.clone()));
        names.sort();
        names.dedup();
        names
    }
}

/// What the operator's own settings (its flags, the chart's values) add to every Pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// The data-plane image for Pipelines that name none (the operator's own version).
    pub image: String,
    /// librdkafka properties the cluster administrator sets for every data-plane client,
    /// including keys a Pipeline may not set (see [`sluice_crds::kafka_properties`]).
    pub kafka_properties: BTreeMap<String, String>,
    /// `imagePullPolicy` of the data-plane containers (the chart's `image.pullPolicy`); unset:
    /// Kubernetes' default for the tag.
    pub image_pull_policy: Option<String>,
}

impl Settings {
    /// Settings with this default image and nothing else.
    pub fn new(image: impl Into<String>) -> Self {
        Settings { image: image.into(), ..Settings::default() }
    }
}

/// Check a Pipeline and resolve it with the operator's settings.
pub fn plan(pipeline: &Pipeline, settings: &Settings) -> Result<Plan, PlanError> {
    let meta = &pipeline.metadata;
    let name = meta.name.clone().ok_or_else(|| err("metadata.name", "missing"))?;
    let namespace = meta.namespace.clone().ok_or_else(|| err("metadata.namespace", "missing"))?;
    let owner =
        pipeline.controller_owner_ref(&()).ok_or_else(|| err("metadata.uid", "missing (not read from the cluster)"))?;
    let spec = &pipeline.spec;
    // The CRD refuses these already; a Pipeline stored under an older CRD is refused here.
    for key in spec.kafka.properties.keys() {
        if let Some(message) = sluice_crds::kafka_properties::refusal_message(key) {
            return Err(err("spec.kafka.properties", message));
        }
    }
    let mut seen = Vec::new();
    for (i, f) in spec.functions.iter().enumerate() {
        if seen.contains(&f.name) {
            return Err(err(&format!("spec.functions[{i}].name"), format!("duplicate function name {:?}", f.name)));
        }
        seen.push(f.name.clone());
        f.check().map_err(|p| err(&format!("spec.functions[{i}].{}", p.path), p.message))?;
    }
    let mut queries = Vec::new();
    let (mut read, mut written): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    if let Some(p) = &spec.processor {
        let mut engine = sluice_engine::Engine::default();
        engine.execute_script(&p.sql).map_err(|e| PlanError {
            path: "spec.processor.sql".into(),
            message: e.to_string(),
            sql: true,
        })?;
        if p.replicas > 1
            && let Some(q) = engine.queries.iter().find(|q| q.single_partition)
        {
            return Err(err(
                "spec.processor.replicas",
                format!(
                    "query {} re-groups a table, which keeps its state in one partition: it needs replicas: 1",
                    q.id
                ),
            ));
        }
        for q in &engine.queries {
            let sink = engine.catalog.get(&q.sink).map_or_else(|| q.sink.clone(), |s| s.topic.clone());
            queries.push((q.id.clone(), sink));
        }
        (read, written) = engine.topics();
    }
    for f in &spec.functions {
        read.push(f.source.topic.clone());
        written.extend(f.written_topics().into_iter().map(|t| t.topic));
    }
    let mut external_topics: Vec<String> = read.into_iter().filter(|t| !written.contains(t)).collect();
    external_topics.sort();
    external_topics.dedup();
    if spec.processor.is_none() && spec.functions.is_empty() {
        return Err(err("spec", "a Pipeline needs a processor, functions, or both"));
    }
    Ok(Plan {
        namespace,
        name,
        owner,
        image: spec.image.clone().unwrap_or_else(|| settings.image.clone()),
        kafka: spec.kafka.clone(),
        kafka_properties: settings.kafka_properties.clone(),
        image_pull_policy: settings.image_pull_policy.clone(),
        processor: spec.processor.clone(),
        queries,
        external_topics,
        functions: spec.functions.clone(),
        secrets_digest: String::new(),
    })
}

fn err(path: &str, message: impl Into<String>) -> PlanError {
    PlanError { path: path.into(), message: message.into(), sql: false }
}

/// Everything a Plan renders into.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The data-plane config files.
    pub config_map: ConfigMap,
    /// The pods' ServiceAccount.
    pub service_account: ServiceAccount,
    /// The processor's objects, when there is SQL.
    pub processor: Option<ProcessorChildren>,
    /// Per function.
    pub functions: Vec<FunctionChildren>,
}

/// The processor's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorChildren {
    /// One pod per replica, one PVC each.
    pub stateful_set: StatefulSet,
    /// Headless: the pods' stable DNS names, for routing pull queries.
    pub headless: Service,
    /// The client Service on 8088.
    pub client: Service,
    /// At most one replica down at a time.
    pub disruption_budget: PodDisruptionBudget,
}

/// A function's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionChildren {
    /// The function's name.
    pub function: String,
    /// Runner (and function container); its replicas are the autoscaler's, not set here.
    pub deployment: Deployment,
    /// The metrics Service.
    pub service: Service,
}

/// Object names, derived from the Pipeline's.
pub mod names {
    /// The ConfigMap.
    pub fn config_map(pipeline: &str) -> String {
        format!("{pipeline}-sluice-config")
    }
    /// The ServiceAccount.
    pub fn service_account(pipeline: &str) -> String {
        format!("{pipeline}-sluice")
    }
    /// The processor StatefulSet, its client Service and PDB.
    pub fn processor(pipeline: &str) -> String {
        format!("{pipeline}-processor")
    }
    /// The processor's headless Service.
    pub fn headless(pipeline: &str) -> String {
        format!("{pipeline}-processor-peers")
    }
    /// A function's Deployment and Service.
    pub fn function(pipeline: &str, function: &str) -> String {
        format!("{pipeline}-fn-{function}")
    }
    /// A function's config file in the ConfigMap.
    pub fn runner_file(function: &str) -> String {
        format!("function-{function}.yaml")
    }
    /// The processor's config file in the ConfigMap.
    pub const PROCESSOR_FILE: &str = "processor.yaml";
}

impl Plan {
    fn labels(&self, component: &str, function: Option<&str>) -> BTreeMap<String, String> {
        let mut l = self.selector(component, function);
        l.insert("app.kubernetes.io/managed-by".into(), "sluice-operator".into());
        l
    }

    fn selector(&self, component: &str, function: Option<&str>) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "sluice".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
            ("app.kubernetes.io/component".to_string(), component.to_string()),
        ]);
        if let Some(f) = function {
            l.insert("sluice.dev/function".into(), f.into());
        }
        l
    }

    fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn application_id(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    fn kafka_config(&self) -> KafkaConfig {
        let ca = self.kafka.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()).map(|r| format!("{CA_DIR}/{}", r.key));
        KafkaConfig {
            trusted_properties: self.kafka_properties.clone(),
            ..KafkaConfig::from_spec(&self.kafka, ca.as_deref())
        }
    }

    /// The processor's config file.
    pub fn processor_config(&self) -> Option<ProcessorConfig> {
        let p = self.processor.as_ref()?;
        let headless = names::headless(&self.name);
        let peers = (0..p.replicas)
            .map(|i| format!("{}-{i}.{headless}.{}.svc:{PROCESSOR_PORT}", names::processor(&self.name), self.namespace))
            .collect();
        Some(ProcessorConfig {
            application_id: self.application_id(),
            kafka: self.kafka_config(),
            sql: p.sql.clone(),
            replicas: p.replicas,
            ordinal: None,
            state_dir: STATE_DIR.into(),
            exactly_once: p.exactly_once,
            commit_interval: p.commit_interval.clone(),
            properties: p.properties.clone(),
            listen: format!("0.0.0.0:{PROCESSOR_PORT}"),
            peers,
            topic_creation: Default::default(),
            function_topics: self.functions.iter().flat_map(FunctionSpec::written_topics).collect(),
        })
    }

    /// A function's runner config file.
    pub fn runner_config(&self, f: &FunctionSpec) -> RunnerConfig {
        RunnerConfig {
            pipeline: self.name.clone(),
            namespace: self.namespace.clone(),
            kafka: self.kafka_config(),
            group: None,
            runtime_api_listen: RUNTIME_API_IN_POD.into(),
            listen: format!("0.0.0.0:{RUNNER_PORT}"),
            function: f.clone(),
        }
    }
}

fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    serde_norway::to_string(value).expect("config structs always serialize")
}

fn template_hash(plan: &Plan, config: &str) -> String {
    if plan.secrets_digest.is_empty() {
        hash(&[config, &plan.image])
    } else {
        hash(&[config, &plan.image, &plan.secrets_digest])
    }
}

/// A short, stable digest of the given parts.
pub fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(USER_ID),
        run_as_group: Some(USER_ID),
        fs_group: Some(USER_ID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(true), ..VolumeMount::default() }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// Render every child of a plan.
pub fn render(plan: &Plan) -> Children {
    let processor_config = plan.processor_config();
    let runner_configs: Vec<(String, String)> =
        plan.functions.iter().map(|f| (names::runner_file(&f.name), to_yaml(&plan.runner_config(f)))).collect();
    let mut data = BTreeMap::new();
    if let Some(c) = &processor_config {
        data.insert(names::PROCESSOR_FILE.to_string(), to_yaml(c));
    }
    data.extend(runner_configs.iter().cloned());
    let config_map = ConfigMap {
        metadata: plan.meta(names::config_map(&plan.name), plan.labels("config", None)),
        data: Some(data),
        ..ConfigMap::default()
    };
    let service_account = ServiceAccount {
        metadata: plan.meta(names::service_account(&plan.name), plan.labels("data-plane", None)),
        // The data plane never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let processor =
        plan.processor.as_ref().zip(processor_config.as_ref()).map(|(p, c)| render_processor(plan, p, &to_yaml(c)));
    let functions =
        plan.functions.iter().zip(&runner_configs).map(|(f, (_, config))| render_function(plan, f, config)).collect();
    Children { config_map, service_account, processor, functions }
}

/// Environment variables carrying Kafka SASL credentials from the referenced Secret (never copied
/// into the ConfigMap).
fn sasl_env(kafka: &KafkaSpec) -> Vec<EnvVar> {
    let Some(sasl) = &kafka.sasl else { return Vec::new() };
    [(sluice_crds::config::SASL_USERNAME_ENV, "username"), (sluice_crds::config::SASL_PASSWORD_ENV, "password")]
        .into_iter()
        .map(|(var, key)| EnvVar {
            name: var.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: sasl.secret_ref.name.clone(),
                    key: key.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect()
}

/// The volumes every data-plane pod has: the config files and, with TLS, the CA.
fn common_volumes(plan: &Plan) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::config_map(&plan.name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![mount("config", CONFIG_DIR)];
    if let Some(ca) = plan.kafka.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        volumes.push(Volume {
            name: "kafka-ca".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(ca.name.clone()), ..SecretVolumeSource::default() }),
            ..Volume::default()
        });
        mounts.push(mount("kafka-ca", CA_DIR));
    }
    (volumes, mounts)
}

/// A data-plane pod: the Pipeline's ServiceAccount (no token), the restricted security context,
/// and the config hash that rolls the pods when their config, image or Secrets change.
fn pod_template(
    plan: &Plan,
    labels: &BTreeMap<String, String>,
    config: &str,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    grace_seconds: i64,
    pod: Option<&PodSettings>,
) -> PodTemplateSpec {
    let pod = pod.cloned().unwrap_or_default();
    // The user's labels and annotations, then ours (the CRD refuses the keys we set).
    let mut all_labels = pod.labels;
    all_labels.extend(labels.clone());
    let mut annotations = pod.annotations;
    annotations.insert(CONFIG_HASH.to_string(), template_hash(plan, config));
    let some_map = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(all_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(pod.service_account_name.unwrap_or_else(|| names::service_account(&plan.name))),
            automount_service_account_token: Some(false),
            security_context: Some(pod_security()),
            termination_grace_period_seconds: Some(grace_seconds),
            containers,
            volumes: Some(volumes),
            image_pull_secrets: (!pod.image_pull_secrets.is_empty()).then_some(pod.image_pull_secrets),
            node_selector: some_map(pod.node_selector),
            tolerations: (!pod.tolerations.is_empty()).then_some(pod.tolerations),
            affinity: pod.affinity,
            priority_class_name: pod.priority_class_name,
            ..PodSpec::default()
        }),
    }
}

fn render_processor(plan: &Plan, p: &ProcessorSpec, config: &str) -> ProcessorChildren {
    let name = names::processor(&plan.name);
    let labels = plan.labels("processor", None);
    let selector = plan.selector("processor", None);
    let (volumes, mut mounts) = common_volumes(plan);
    mounts.push(VolumeMount { name: "state".into(), mount_path: STATE_DIR.into(), ..VolumeMount::default() });
    let mut env = vec![pod_name_env()];
    env.extend(sasl_env(&plan.kafka));
    let container = Container {
        name: "processor".into(),
        image: Some(plan.image.clone()),
        image_pull_policy: plan.image_pull_policy.clone(),
        command: Some(vec!["sluice-processor".into()]),
        args: Some(vec!["run".into(), "--config".into(), format!("{CONFIG_DIR}/{}", names::PROCESSOR_FILE)]),
        env: Some(env),
        ports: Some(vec![port("http", PROCESSOR_PORT)]),
        readiness_probe: Some(http_probe("/readyz", PROCESSOR_PORT, 5)),
        liveness_probe: Some(http_probe("/healthz", PROCESSOR_PORT, 10)),
        resources: p.resources.clone(),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut storage_requests = BTreeMap::new();
    storage_requests.insert("storage".to_string(), Quantity(p.storage.size.to_quantity_string()));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("state".into()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(storage_requests),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    // A clean stop commits the open transaction and checkpoints the state.
    let template = pod_template(plan, &labels, config, vec![container], volumes, 60, p.pod.as_ref());

    let stateful_set = StatefulSet {
        metadata: plan.meta(name.clone(), labels.clone()),
        spec: StatefulSetSpec {
            replicas: Some(p.replicas),
            service_name: Some(names::headless(&plan.name)),
            // Ownership is static (p mod replicas): pods may start together.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            template,
            volume_claim_templates: Some(vec![claim]),
            // The state is a cache of the changelog topics: the volumes go with the processor
            // (a deleted Pipeline, removed SQL) instead of lingering with stale state that a
            // later processor of the same name would pick up; a scale-down keeps them.
            persistent_volume_claim_retention_policy: Some(
                k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };
    let service_port = ServicePort {
        name: Some("http".into()),
        port: PROCESSOR_PORT,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let headless = Service {
        metadata: plan.meta(names::headless(&plan.name), labels.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers route pull queries to each other while not yet ready (restoring).
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(vec![service_port.clone()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let client = Service {
        metadata: plan.meta(name.clone(), labels.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![service_port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let disruption_budget = PodDisruptionBudget {
        metadata: plan.meta(name, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    ProcessorChildren { stateful_set, headless, client, disruption_budget }
}

fn render_function(plan: &Plan, f: &FunctionSpec, config: &str) -> FunctionChildren {
    let name = names::function(&plan.name, &f.name);
    let labels = plan.labels("function", Some(&f.name));
    let selector = plan.selector("function", Some(&f.name));
    let (mut volumes, mounts) = common_volumes(plan);
    let mut env = vec![pod_name_env()];
    env.extend(sasl_env(&plan.kafka));
    let runner = Container {
        name: "runner".into(),
        image: Some(plan.image.clone()),
        image_pull_policy: plan.image_pull_policy.clone(),
        resources: f.runner_resources.clone(),
        command: Some(vec!["sluice-function-runner".into()]),
        args: Some(vec!["run".into(), "--config".into(), format!("{CONFIG_DIR}/{}", names::runner_file(&f.name))]),
        env: Some(env),
        ports: Some(vec![port("metrics", RUNNER_PORT)]),
        readiness_probe: Some(http_probe("/readyz", RUNNER_PORT, 5)),
        liveness_probe: Some(http_probe("/healthz", RUNNER_PORT, 10)),
        security_context: Some(restricted()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let mut containers = vec![runner];
    let timeout = match (&f.runtime.lambda, &f.runtime.http) {
        (Some(l), _) => l.timeout.get(),
        (_, Some(h)) => h.timeout.get(),
        _ => std::time::Duration::from_secs(30),
    };
    if let Some(l) = &f.runtime.lambda {
        let memory_mb = l.memory_mb();
        let handler = l.args.last().cloned().unwrap_or_default();
        let mut env: Vec<EnvVar> = lambda_env(&f.name, RUNTIME_API_IN_POD, timeout, memory_mb, &handler)
            .into_iter()
            // Without args the image's own command names the handler (AWS's base images take it
            // as CMD): an empty _HANDLER would only hide that.
            .filter(|(k, v)| !(k == "_HANDLER" && v.is_empty()))
            .map(|(k, v)| env_value(&k, v))
            .collect();
        // The user's variables may override ours (a custom _HANDLER, say): one entry per name,
        // as the pod's `env` list is keyed by name (server-side apply refuses duplicates).
        for var in &l.env {
            match env.iter_mut().find(|e| e.name == var.name) {
                Some(ours) => *ours = var.clone(),
                None => env.push(var.clone()),
            }
        }
        volumes.push(Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        containers.push(Container {
            name: "function".into(),
            image: l.image.clone(),
            image_pull_policy: l.image_pull_policy.clone(),
            command: (!l.command.is_empty()).then(|| l.command.clone()),
            args: (!l.args.is_empty()).then(|| l.args.clone()),
            env: Some(env),
            resources: l.resources.clone(),
            // The runner knows when the function takes no work (every runtime stuck in a
            // handler past its timeout): the kubelet then restarts this container, as Lambda
            // resets an execution environment after a timeout. A probe may target any port of
            // the pod; this one is the runner's.
            liveness_probe: Some(http_probe("/function/healthz", RUNNER_PORT, 10)),
            security_context: Some(restricted()),
            // Lambda runtimes write to /tmp, the one writable path Lambda gives them too.
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        });
    }
    let grace = i64::try_from(timeout.as_secs()).unwrap_or(900).saturating_add(30);
    // SIGTERM lets in-flight invocations finish (bounded by the invocation timeout).
    let template = pod_template(plan, &labels, config, containers, volumes, grace, f.pod.as_ref());

    let deployment = Deployment {
        metadata: plan.meta(name.clone(), labels.clone()),
        spec: DeploymentSpec {
            // No `replicas`: the autoscaler owns them (through the scale subresource).
            replicas: None,
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy { type_: Some("RollingUpdate".into()), ..DeploymentStrategy::default() }),
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    let service = Service {
        metadata: plan.meta(name, labels),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: RUNNER_PORT,
                target_port: Some(IntOrString::String("metrics".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    FunctionChildren { function: f.name.clone(), deployment, service }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Pipeline {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/stocktrade/pipeline.yaml"))
                .expect("the example");
        let mut p = sluice_crds::validate::load_pipelines(&text).expect("the example is valid").remove(0);
        p.metadata.namespace = Some("prod".into());
        p.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".into());
        p
    }

    #[test]
    fn the_example_renders_its_children() {
        let plan = plan(&example(), &Settings::new("ghcr.io/sluice-dev/sluice:test")).unwrap();
        let children = render(&plan);
        insta::assert_yaml_snapshot!("example_config_map", children.config_map);
        let p = children.processor.as_ref().expect("the example has SQL");
        insta::assert_yaml_snapshot!(
            "example_processor",
            (&p.stateful_set, &p.headless, &p.client, &p.disruption_budget)
        );
        insta::assert_yaml_snapshot!(
            "example_functions",
            children.functions.iter().map(|f| (&f.deployment, &f.service)).collect::<Vec<_>>()
        );
        insta::assert_yaml_snapshot!("example_service_account", children.service_account);
    }

    #[test]
    fn every_child_is_owned_by_the_pipeline() {
        let plan = plan(&example(), &Settings::new("img")).unwrap();
        let c = render(&plan);
        let p = c.processor.as_ref().unwrap();
        let metas = [
            &c.config_map.metadata,
            &c.service_account.metadata,
            &p.stateful_set.metadata,
            &p.headless.metadata,
            &p.client.metadata,
            &p.disruption_budget.metadata,
        ]
        .into_iter()
        .chain(c.functions.iter().flat_map(|f| [&f.deployment.metadata, &f.service.metadata]));
        for m in metas {
            let owners = m.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Pipeline");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("prod"));
        }
    }

    #[test]
    fn a_sql_change_changes_the_processor_hash_only() {
        let base = render(&plan(&example(), &Settings::new("img")).unwrap());
        let mut changed = example();
        if let Some(p) = changed.spec.processor.as_mut() {
            p.sql.push_str("\n-- a comment\n");
        }
        let after = render(&plan(&changed, &Settings::new("img")).unwrap());
        let hash = |s: &StatefulSet| {
            s.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH].clone()
        };
        let dhash = |d: &Deployment| {
            d.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH].clone()
        };
        assert_ne!(hash(&base.processor.unwrap().stateful_set), hash(&after.processor.unwrap().stateful_set));
        assert_eq!(dhash(&base.functions[0].deployment), dhash(&after.functions[0].deployment));
    }

    #[test]
    fn bad_sql_is_a_sql_error_with_line_and_column() {
        let mut p = example();
        if let Some(proc) = p.spec.processor.as_mut() {
            proc.sql = "CREATE STREAM S (A INT) WITH (kafka_topic='s', value_format='json');\nSELECT FROM;".into();
        }
        let e = plan(&p, &Settings::new("img")).unwrap_err();
        assert!(e.sql);
        assert_eq!(e.path, "spec.processor.sql");
        assert!(e.message.contains("line 2"), "{e}");
    }

    #[test]
    fn a_re_grouped_table_needs_one_replica() {
        let mut p = example();
        if let Some(proc) = p.spec.processor.as_mut() {
            proc.sql.push_str(
                "\nCREATE TABLE PER_REGION AS SELECT regionid, COUNT(*) AS N FROM USERS GROUP BY regionid;\n",
            );
            proc.replicas = 1;
        }
        plan(&p, &Settings::new("img")).expect("one replica is fine");
        if let Some(proc) = p.spec.processor.as_mut() {
            proc.replicas = 3;
        }
        let e = plan(&p, &Settings::new("img")).unwrap_err();
        assert_eq!(e.path, "spec.processor.replicas");
        assert!(e.message.contains("needs replicas: 1"), "{e}");
    }

    #[test]
    fn a_user_variable_replaces_ours_of_the_same_name() {
        let mut p = example();
        let l = p.spec.functions[0].runtime.lambda.as_mut().expect("a Lambda function");
        l.env = vec![
            EnvVar { name: "_HANDLER".into(), value: Some("app.custom".into()), ..EnvVar::default() },
            EnvVar { name: "EXTRA".into(), value: Some("1".into()), ..EnvVar::default() },
        ];
        let c = render(&plan(&p, &Settings::new("img")).unwrap());
        let pod = c.functions[0].deployment.spec.template.spec.clone().unwrap();
        let env = pod.containers.iter().find(|c| c.name == "function").unwrap().env.clone().unwrap();
        let handlers: Vec<&EnvVar> = env.iter().filter(|e| e.name == "_HANDLER").collect();
        assert_eq!(handlers.len(), 1, "one entry per name: {env:?}");
        assert_eq!(handlers[0].value.as_deref(), Some("app.custom"));
        assert!(env.iter().any(|e| e.name == "EXTRA"));
        // Duplicates of the user's own are refused with the field.
        let l = p.spec.functions[0].runtime.lambda.as_mut().unwrap();
        l.env.push(EnvVar { name: "EXTRA".into(), value: Some("2".into()), ..EnvVar::default() });
        let e = plan(&p, &Settings::new("img")).unwrap_err();
        assert_eq!(e.path, "spec.functions[0].runtime.lambda.env[2].name");
    }

    #[test]
    fn changed_secrets_roll_the_pods() {
        let mut plan = plan(&example(), &Settings::new("img")).unwrap();
        let before = render(&plan);
        plan.secrets_digest = "kafka-user:1234".into();
        let after = render(&plan);
        let hash = |c: &Children| {
            c.functions[0].deployment.spec.template.metadata.clone().unwrap().annotations.unwrap()[CONFIG_HASH].clone()
        };
        assert_ne!(hash(&before), hash(&after));
    }

    #[test]
    fn secrets_stay_out_of_the_config_map() {
        let mut p = example();
        p.spec.kafka.sasl = Some(sluice_crds::pipeline::SaslSpec {
            mechanism: sluice_crds::pipeline::SaslMechanism::ScramSha512,
            secret_ref: sluice_crds::pipeline::SecretRef { name: "kafka-user".into() },
        });
        let c = render(&plan(&p, &Settings::new("img")).unwrap());
        let text = serde_json::to_string(&c.config_map).unwrap();
        assert!(text.contains("SLUICE_KAFKA_SASL_USERNAME") && !text.contains("kafka-user"), "{text}");
        let runner = &c.functions[0].deployment.spec.template.spec.as_ref().unwrap().containers[0];
        let env = runner.env.as_ref().unwrap();
        let user = env.iter().find(|e| e.name == "SLUICE_KAFKA_SASL_USERNAME").unwrap();
        let secret = user.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("kafka-user", "username"));
    }

    #[test]
    fn nested_sql_is_a_sql_error_not_a_crash() {
        // On a reconciler's stack (the operator's tokio workers get sluice_sql::SQL_STACK_SIZE).
        let e = std::thread::Builder::new()
            .stack_size(sluice_sql::SQL_STACK_SIZE)
            .spawn(|| {
                let mut p = example();
                if let Some(proc) = p.spec.processor.as_mut() {
                    proc.sql.push_str(&format!(
                        "\nCREATE STREAM DEEP AS SELECT * FROM STOCKTRADE WHERE quantity = {}1{};\n",
                        "(".repeat(5000),
                        ")".repeat(5000)
                    ));
                }
                plan(&p, &Settings::new("img")).unwrap_err()
            })
            .unwrap()
            .join()
            .expect("the planner thread died");
        assert!(e.sql && e.path == "spec.processor.sql", "{e}");
        assert!(e.message.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn command_running_kafka_properties_are_refused_and_the_administrators_reach_the_pods() {
        let mut p = example();
        p.spec.kafka.properties.insert("sasl.kerberos.kinit.cmd".into(), "sh -c 'id > /tmp/pwned'".into());
        let e = plan(&p, &Settings::new("img")).unwrap_err();
        assert_eq!(e.path, "spec.kafka.properties");
        assert!(e.message.starts_with("\"sasl.kerberos.kinit.cmd\" may not be set"), "{e}");

        let settings = Settings {
            kafka_properties: BTreeMap::from([("sasl.kerberos.service.name".into(), "kafka".into())]),
            ..Settings::new("img")
        };
        let c = render(&plan(&example(), &settings).unwrap());
        let files = c.config_map.data.unwrap();
        let runner: sluice_crds::config::RunnerConfig =
            sluice_crds::config::parse(&files[&names::runner_file("settle")]).unwrap();
        assert_eq!(runner.kafka.trusted_properties["sasl.kerberos.service.name"], "kafka");
        let processor: sluice_crds::config::ProcessorConfig =
            sluice_crds::config::parse(&files[names::PROCESSOR_FILE]).unwrap();
        assert!(processor.kafka.properties.is_empty());
        assert_eq!(processor.kafka.trusted_properties.len(), 1);
    }

    #[test]
    fn pod_settings_reach_the_pods_and_ours_stay() {
        let yaml = r#"
labels: {team: payments}
annotations: {prometheus.io/scrape: "true"}
serviceAccountName: settle-irsa
imagePullSecrets: [{name: regcred}]
nodeSelector: {pool: streaming}
tolerations: [{key: dedicated, operator: Equal, value: streaming, effect: NoSchedule}]
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {team: payments}}}
priorityClassName: high
"#;
        let pod: PodSettings = serde_norway::from_str(yaml).unwrap();
        let mut p = example();
        p.spec.functions[0].pod = Some(pod.clone());
        p.spec.functions[0].runner_resources = serde_norway::from_str("{limits: {memory: 128Mi}}").unwrap();
        p.spec.processor.as_mut().unwrap().pod = Some(pod);
        let settings = Settings { image_pull_policy: Some("Never".into()), ..Settings::new("img") };
        let c = render(&plan(&p, &settings).unwrap());
        let templates =
            [c.processor.unwrap().stateful_set.spec.template, c.functions[0].deployment.spec.template.clone()];
        for t in templates {
            let meta = t.metadata.unwrap();
            let labels = meta.labels.unwrap();
            assert_eq!(labels["team"], "payments");
            assert_eq!(labels["app.kubernetes.io/name"], "sluice", "ours are kept");
            let annotations = meta.annotations.unwrap();
            assert!(annotations.contains_key(CONFIG_HASH) && annotations.contains_key("prometheus.io/scrape"));
            let spec = t.spec.unwrap();
            assert_eq!(spec.service_account_name.as_deref(), Some("settle-irsa"));
            assert_eq!(spec.automount_service_account_token, Some(false));
            assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
            assert_eq!(spec.node_selector.unwrap()["pool"], "streaming");
            assert_eq!(spec.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
            assert!(spec.affinity.unwrap().pod_anti_affinity.is_some());
            assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
            assert_eq!(spec.security_context.unwrap().run_as_non_root, Some(true), "our security context stays");
            let ours = &spec.containers[0];
            assert_eq!(ours.image_pull_policy.as_deref(), Some("Never"));
            if ours.name == "runner" {
                assert_eq!(ours.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "128Mi");
                assert_eq!(spec.containers[1].image_pull_policy, None, "the function's image is the user's");
            }
        }
    }

    #[test]
    fn external_topics_are_those_nothing_in_the_pipeline_writes() {
        let plan = plan(&example(), &Settings::new("img")).unwrap();
        assert_eq!(plan.external_topics, ["stocktrade", "users"]);
    }
}
