//! The controller: watches Pipelines (and the children they own), applies the rendered children
//! with server-side apply under one field manager, deletes the children the spec no longer asks
//! for, rescales the processor through zero, and writes status and Events.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use sluice_crds::Pipeline;

use crate::{
    render::{self, Children, names},
    status::{self, Observed, Rescale},
};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "sluice-operator";

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// What every reconcile shares.
pub struct Context {
    /// The client.
    pub client: Client,
    /// Events.
    pub recorder: Recorder,
    /// The operator's settings: the data-plane image, the administrator's Kafka properties.
    pub settings: crate::render::Settings,
    /// Reconciles by result, for `/metrics`.
    pub metrics: Arc<crate::server::Metrics>,
    /// What the autoscaler loop saw, for status.
    pub scalers: Arc<crate::scaler::Scalers>,
}

/// Run the controller until `shutdown` resolves. `namespace`: watch one namespace, else all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    settings: crate::render::Settings,
    metrics: Arc<crate::server::Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api = |c: &Client| match &namespace {
        Some(ns) => Api::<Pipeline>::namespaced(c.clone(), ns),
        None => Api::<Pipeline>::all(c.clone()),
    };
    fn children<K>(c: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let recorder = Recorder::new(client.clone(), reporter);
    let scalers = Arc::new(crate::scaler::Scalers::default());
    let context = Arc::new(Context {
        recorder: recorder.clone(),
        client: client.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        scalers: scalers.clone(),
    });
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice-operator");
    let controller = Controller::new(api(&client), watcher::Config::default());
    // A referenced Secret that appears or changes reconciles the Pipelines that use it (their pod
    // templates carry its digest). Only Secrets' metadata is watched, never their data.
    let pipelines = controller.store();
    let secrets: Api<kube::core::PartialObjectMeta<Secret>> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = controller.watches(
        secrets,
        watcher::Config::default(),
        move |secret: kube::core::PartialObjectMeta<Secret>| {
            let (ns, name) = (secret.namespace(), secret.name_any());
            pipelines
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns && references(p, &name))
                .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        },
    );
    // The autoscaler reads the Pipelines from the controller's cache.
    let scaling =
        tokio::spawn(crate::scaler::run(client.clone(), controller.store(), scalers, recorder, metrics, settings));
    controller
        .owns(children::<ConfigMap>(&client, &namespace), owned.clone())
        .owns(children::<StatefulSet>(&client, &namespace), owned.clone())
        .owns(children::<Deployment>(&client, &namespace), owned.clone())
        .owns(children::<Service>(&client, &namespace), owned.clone())
        .owns(children::<PodDisruptionBudget>(&client, &namespace), owned.clone())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile stream");
            }
        })
        .await;
    scaling.abort();
}

/// Whether a Pipeline reads the Secret `name`.
fn references(p: &Pipeline, name: &str) -> bool {
    let k = &p.spec.kafka;
    k.sasl.as_ref().is_some_and(|s| s.secret_ref.name == name)
        || k.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()).is_some_and(|r| r.name == name)
}

/// A digest of the referenced Secrets' data (`missing` for one that does not exist yet).
async fn secrets_digest(client: &Client, ns: &str, names: &[String]) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut parts = Vec::new();
    for name in names {
        let digest = match secrets.get_opt(name).await.map_err(kube_err(format!("reading Secret {name}")))? {
            Some(s) => {
                let data: Vec<String> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", render::hash(&[&String::from_utf8_lossy(&v.0)])))
                    .collect();
                render::hash(&data.iter().map(String::as_str).collect::<Vec<_>>())
            }
            None => "missing".into(),
        };
        parts.push(format!("{name}:{digest}"));
    }
    Ok(parts.join(","))
}

fn error_policy(pipeline: Arc<Pipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile("error");
    tracing::warn!(pipeline = %pipeline.name_any(), namespace = ?pipeline.namespace(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(kube_err(format!("applying {} {name}", K::kind(&()))))
}

async fn reconcile(pipeline: Arc<Pipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_children(&pipeline, &ctx).await;
    if let Err(e) = &result {
        report_failure(&pipeline, &ctx, e).await;
    }
    result
}

/// A reconcile that failed (the apiserver refused an object, say) is retried; meanwhile the
/// Pipeline says so: `Ready=False` with reason `ReconcileFailed` and the error, and one Warning
/// Event per distinct error — not only the operator's log.
async fn report_failure(pipeline: &Pipeline, ctx: &Context, e: &Error) {
    let message = e.to_string();
    let mut next = pipeline.status.clone().unwrap_or_default();
    let unchanged =
        next.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "ReconcileFailed" && c.message == message);
    if unchanged {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: Some(message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pipeline.object_ref(&())).await {
        tracing::warn!(error = %err, "publishing an Event");
    }
    next.conditions.retain(|c| c.type_ != "Ready");
    next.conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Ready".into(),
        status: "False".into(),
        reason: "ReconcileFailed".into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: pipeline.metadata.generation,
    });
    let ns = pipeline.namespace().unwrap_or_default();
    let api: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline", "status": next});
    if let Err(err) =
        api.patch_status(&pipeline.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await
    {
        tracing::warn!(error = %err, "writing the failure into status");
    }
}

async fn reconcile_children(pipeline: &Arc<Pipeline>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let ns = pipeline.namespace().unwrap_or_default();
    let name = pipeline.name_any();
    let client = &ctx.client;
    let pipelines: Api<Pipeline> = Api::namespaced(client.clone(), &ns);
    let mut observed = Observed { generation: pipeline.metadata.generation, ..Observed::default() };
    let plan = match render::plan(pipeline, &ctx.settings) {
        Ok(plan) => plan,
        Err(e) => {
            observed.invalid = Some((e.sql, e.to_string()));
            let already = pipeline.status.as_ref().is_some_and(|s| {
                s.observed_generation == observed.generation && s.phase == Some(sluice_crds::pipeline::Phase::Failed)
            });
            if !already {
                let event = Event {
                    type_: EventType::Warning,
                    reason: if e.sql { "InvalidSql" } else { "InvalidSpec" }.into(),
                    note: Some(e.to_string()),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(err) = ctx.recorder.publish(&event, &pipeline.object_ref(&())).await {
                    tracing::warn!(error = %err, "publishing an Event");
                }
            }
            write_status(&pipelines, pipeline, &observed).await?;
            ctx.metrics.reconcile("invalid");
            // Nothing to retry until the spec changes; what runs is left as it was.
            return Ok(Action::await_change());
        }
    };
    let mut plan = plan;
    plan.secrets_digest = secrets_digest(client, &ns, &plan.secret_names()).await?;
    let children = render::render(&plan);
    observed.queries = plan.queries.clone();
    // Functions' lag and replicas change without any object changing: look again every 10 s so
    // that `kubectl get pl` stays current (status is written only when it changed).
    let mut requeue = if plan.functions.is_empty() { Duration::from_secs(60) } else { Duration::from_secs(10) };
    if !plan.external_topics.is_empty() {
        match crate::scaler::missing_topics(
            client,
            &ns,
            &plan.kafka,
            &ctx.settings.kafka_properties,
            &plan.external_topics,
        )
        .await
        {
            Ok(missing) => observed.missing_topics = missing,
            Err(e) => {
                tracing::warn!(pipeline = %name, error = %e, "checking the source topics");
                observed.kafka_error = Some(format!("{e:#}"));
                requeue = requeue.min(Duration::from_secs(10));
            }
        }
        if !observed.missing_topics.is_empty() {
            // The data plane waits for them; look again soon, so Ready follows their creation.
            requeue = Duration::from_secs(5);
        }
    }

    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let rescale = match (&children.processor, plan.processor.as_ref()) {
        (Some(_), Some(p)) => {
            let current = statefulsets
                .get_opt(&names::processor(&name))
                .await
                .map_err(kube_err("reading the processor StatefulSet"))?
                .and_then(|s| s.spec.replicas);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=processor");
            let alive = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(kube_err("listing processor pods"))?
                .items
                .len();
            status::rescale(current, p.replicas, alive)
        }
        _ => Rescale::Apply,
    };

    apply(&Api::<ServiceAccount>::namespaced(client.clone(), &ns), &children.service_account).await?;
    match rescale {
        Rescale::Apply => {
            apply(&Api::<ConfigMap>::namespaced(client.clone(), &ns), &children.config_map).await?;
        }
        Rescale::ScaleToZero => {
            tracing::info!(pipeline = %name, "processor replicas change: scaling to zero first");
            let patch = serde_json::json!({"spec": {"replicas": 0}});
            statefulsets
                .patch_scale(&names::processor(&name), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_err("scaling the processor to zero"))?;
            requeue = Duration::from_secs(2);
        }
        Rescale::WaitForPods => requeue = Duration::from_secs(2),
    }
    observed.processor = match (&children.processor, plan.processor.as_ref()) {
        (Some(p), Some(spec)) if rescale == Rescale::Apply => {
            let s = apply(&statefulsets, &p.stateful_set).await?;
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            apply(&services, &p.headless).await?;
            apply(&services, &p.client).await?;
            apply(&Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns), &p.disruption_budget).await?;
            let ready = s.status.as_ref().and_then(|st| st.ready_replicas).unwrap_or(0);
            Some((spec.replicas, ready, false))
        }
        (Some(_), Some(spec)) => {
            // Readiness as the StatefulSet reports it while the old pods go.
            let s = statefulsets
                .get_opt(&names::processor(&name))
                .await
                .map_err(kube_err("reading the processor StatefulSet"))?;
            let ready = s.and_then(|s| s.status).and_then(|st| st.ready_replicas).unwrap_or(0);
            Some((spec.replicas, ready, true))
        }
        _ => None,
    };
    let previous = pipeline.status.as_ref();
    if rescale == Rescale::Apply {
        apply_functions(client, &ns, &name, &children, &ctx.scalers, previous, &mut observed).await?;
        prune(client, &ns, &name, &children).await?;
    } else {
        // The functions' configs share the ConfigMap the rescale holds back: leave their
        // Deployments as they are until it is done, but keep reporting them.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        for f in &children.functions {
            let d = deployments
                .get_opt(&names::function(&name, &f.function))
                .await
                .map_err(kube_err("reading a function Deployment"))?;
            if let Some(d) = d {
                observed.functions.push(function_observed(&f.function, &d, &ctx.scalers, &ns, &name, previous));
            }
        }
    }
    write_status(&pipelines, pipeline, &observed).await?;
    ctx.metrics.reconcile("ok");
    Ok(Action::requeue(requeue))
}

async fn apply_functions(
    client: &Client,
    ns: &str,
    pipeline: &str,
    children: &Children,
    scalers: &crate::scaler::Scalers,
    previous: Option<&sluice_crds::pipeline::PipelineStatus>,
    observed: &mut Observed,
) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for f in &children.functions {
        let d = apply(&deployments, &f.deployment).await?;
        apply(&services, &f.service).await?;
        observed.functions.push(function_observed(&f.function, &d, scalers, ns, pipeline, previous));
    }
    Ok(())
}

/// A function's status from its Deployment and what the autoscaler saw. Until the autoscaler
/// has read the lag (just after an operator restart), the last status's lag, partitions and
/// last decision stay: status is not lost by a restart.
fn function_observed(
    function: &str,
    d: &Deployment,
    scalers: &crate::scaler::Scalers,
    ns: &str,
    pipeline: &str,
    previous: Option<&sluice_crds::pipeline::PipelineStatus>,
) -> status::FunctionObserved {
    let st = d.status.as_ref();
    let seen = scalers.observation(ns, pipeline, function).unwrap_or_default();
    let before = previous.and_then(|p| p.functions.iter().find(|f| f.name == function));
    status::FunctionObserved {
        name: function.to_owned(),
        replicas: st.and_then(|s| s.replicas).unwrap_or(0),
        ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
        desired: seen.desired.or(d.spec.replicas).or_else(|| before.map(|b| b.desired_replicas)).unwrap_or(0),
        lag: seen.lag.or_else(|| before.and_then(|b| b.lag)),
        partitions: seen.partitions.or_else(|| before.and_then(|b| b.partitions)),
        last_scale: seen.last_scale.or_else(|| before.and_then(|b| b.last_scale.clone())),
    }
}

/// Delete the children this Pipeline owns that its spec no longer asks for: the Deployments and
/// Services of removed functions, and the processor's objects when the SQL is gone.
async fn prune(client: &Client, ns: &str, pipeline: &str, children: &Children) -> Result<(), Error> {
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Pipeline" && o.name == pipeline && o.controller == Some(true))
    };
    let keep: Vec<String> = children.functions.iter().map(|f| names::function(pipeline, &f.function)).collect();
    let selector = format!(
        "app.kubernetes.io/instance={pipeline},app.kubernetes.io/component=function,app.kubernetes.io/managed-by={MANAGER}"
    );
    let lp = ListParams::default().labels(&selector);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in deployments.list(&lp).await.map_err(kube_err("listing function Deployments"))?.items {
        let name = d.name_any();
        if owned(&d.metadata) && !keep.contains(&name) {
            tracing::info!(deployment = %name, "deleting the Deployment of a removed function");
            deployments
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(kube_err(format!("deleting {name}")))?;
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for s in services.list(&lp).await.map_err(kube_err("listing function Services"))?.items {
        let name = s.name_any();
        if owned(&s.metadata) && !keep.contains(&name) {
            services.delete(&name, &DeleteParams::background()).await.map_err(kube_err(format!("deleting {name}")))?;
        }
    }
    if children.processor.is_none() {
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
        let processor = names::processor(pipeline);
        if let Some(s) = statefulsets.get_opt(&processor).await.map_err(kube_err("reading the processor"))?
            && owned(&s.metadata)
        {
            statefulsets
                .delete(&processor, &DeleteParams::background())
                .await
                .map_err(kube_err("deleting the processor"))?;
        }
        for service in [processor.clone(), names::headless(pipeline)] {
            if let Some(s) = services.get_opt(&service).await.map_err(kube_err("reading a processor Service"))?
                && owned(&s.metadata)
            {
                services.delete(&service, &DeleteParams::background()).await.map_err(kube_err("deleting a Service"))?;
            }
        }
        if let Some(p) = pdbs.get_opt(&processor).await.map_err(kube_err("reading the PDB"))?
            && owned(&p.metadata)
        {
            pdbs.delete(&processor, &DeleteParams::background()).await.map_err(kube_err("deleting the PDB"))?;
        }
    }
    Ok(())
}

async fn write_status(api: &Api<Pipeline>, pipeline: &Pipeline, observed: &Observed) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // The status as stored now, not as the cache had it when this reconcile began: a reconcile
    // queued while the previous one wrote status would otherwise see none, and reset every
    // condition's transition time.
    let current = match api.get_status(&pipeline.name_any()).await {
        Ok(p) => p.status,
        Err(_) => pipeline.status.clone(),
    };
    let next = status::status(current.as_ref(), observed, now);
    if current.as_ref() == Some(&next) {
        return Ok(()); // unchanged: no write
    }
    let patch = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Pipeline",
        "status": next,
    });
    api.patch_status(&pipeline.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err("writing status"))?;
    Ok(())
}
