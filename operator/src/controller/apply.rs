//! Server-side apply with the operator's one field manager.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::controller::Error;
use crate::names::MANAGER;

/// A namespaced object the operator writes whole (a child of one of its resources).
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

fn params() -> PatchParams {
    // `force`: the operator owns these fields; a conflicting manager (e.g. someone's kubectl edit
    // of a child) is overridden, which is what keeps children level-triggered.
    PatchParams::apply(MANAGER).force()
}

/// Server-side applies `obj` (created when missing).
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Child,
{
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    Ok(api.patch(&obj.name_any(), &params(), &Patch::Apply(obj)).await?)
}

/// Server-side applies `obj` unless this process applied the same object recently (see
/// [`crate::controller::applied`]): a resync with nothing changed writes nothing.
pub async fn apply_changed<K>(ctx: &crate::controller::Context, obj: &K) -> Result<(), Error>
where
    K: Child,
{
    let key = memo_key(obj);
    let (key, digest) = crate::controller::applied::Applied::digest(&key, obj);
    let ttl = ctx.config.resync_interval * crate::controller::applied::MEMO_RESYNCS;
    if ctx.applied.is_current(&key, &digest, ttl) {
        return Ok(());
    }
    apply(&ctx.client, obj).await?;
    ctx.applied.remember(key, digest, ttl);
    Ok(())
}

/// The memo key of a child: `Kind/namespace/name`.
pub fn memo_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    memo_key_of::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// The memo key of the `K` named `name` in `ns`.
pub fn memo_key_of<K: Resource<DynamicType = ()>>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", K::kind(&()))
}

/// Creates `obj` unless this process saw it exist recently, or it exists (objects the operator
/// must not take over, e.g. a claim).
pub async fn ensure_exists<K>(ctx: &crate::controller::Context, obj: &K) -> Result<(), Error>
where
    K: Child,
{
    let key = memo_key(obj);
    let ttl = ctx.config.resync_interval * crate::controller::applied::MEMO_RESYNCS;
    if ctx.applied.is_current(&key, "exists", ttl) {
        return Ok(());
    }
    create_if_missing(&ctx.client, obj).await?;
    ctx.applied.remember(key, "exists".into(), ttl);
    Ok(())
}

/// Server-side applies the status of `obj`.
pub async fn apply_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
    S: Serialize,
{
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &params(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Creates `obj` unless it exists (objects the operator must not take over, e.g. a claim).
pub async fn create_if_missing<K>(client: &Client, obj: &K) -> Result<(), Error>
where
    K: Child,
{
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes a Job and its pods.
pub async fn delete_job(client: &Client, ns: &str, name: &str) -> Result<(), Error> {
    delete::<k8s_openapi::api::batch::v1::Job>(client, ns, name).await
}

/// Deletes the `K` named `name` and, in the background, what it owns; gone already is fine.
pub async fn delete<K: Child>(client: &Client, ns: &str, name: &str) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sets a Job's `spec.suspend` (a merge patch of that one field: the Job's template is immutable
/// and Kueue also writes `suspend`, so the Job is not re-applied whole).
pub async fn suspend_job(client: &Client, ns: &str, name: &str, suspend: bool) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    api.patch(name, &pp, &Patch::Merge(json!({ "spec": { "suspend": suspend } }))).await?;
    Ok(())
}

/// The object as the API server has it now. The watch cache can lag behind this controller's own
/// status writes, and the state machines decide from status (a stale rollout would be rolled back
/// twice), so each reconcile starts from a fresh read. None when it is gone.
pub async fn fresh<K>(client: &Client, obj: &K) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    Ok(api.get_opt(&obj.name_any()).await?)
}
