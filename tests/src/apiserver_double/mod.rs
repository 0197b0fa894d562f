//! `ApiServerDouble`: an in-memory API server double. It is not a Kubernetes API server and
//! does not pretend to be one: it serves, over real HTTP on 127.0.0.1, the few resources and
//! verbs vramkeeper uses (GpuModels with their status subresource, Pods, Secrets, Events,
//! Leases; list, watch, get, create, update, JSON/merge patch, server-side apply, delete with
//! finalizers), so that the real controller and real agents can run against it in tests and
//! benchmarks. Where it is as strict as the real one (schema, defaulting and CEL of GpuModel
//! writes, `resourceVersion` preconditions, `410 Gone` after a compaction, bookmarks),
//! [`strict`] says so, with links to the Kubernetes documentation.
//!
//! Server-side apply and field ownership follow the real server where vramkeeper depends on
//! them ([`managed_fields`]): ownership per field path, `metadata.managedFields` in the
//! `FieldsV1` format on every object, list maps merged by key and sets by value as the CRD
//! schema marks them ([`topology`], [`merge`]), conflicts as `409` with the real message,
//! `force`, and `Update` ownership for every other write. What it simplifies:
//! - only GpuModels have a schema; other kinds are unstructured (every list atomic), where the
//!   real server knows, say, a Pod's `containers` are a list map;
//! - an apply to an object that does not exist is `404` (the real one creates it); an apply's
//!   configuration is neither defaulted nor converted between versions (there is one);
//! - through a status subresource only `status` is owned (the real one also records, without
//!   applying, any `metadata` sent there);
//! - the order of merged list items approximates structured-merge-diff's (the configuration's
//!   order, items only the live object has staying where they were).
//!
//! Tests set up and change objects through its methods (not logged; as `kubectl-create` and
//! `kubectl-patch`); every HTTP request is logged with the RBAC verb it needs, so tests can
//! check the operator's permissions.

pub mod field_set;
mod http;
pub mod managed_fields;
pub mod merge;
pub mod patch;
#[cfg(test)]
mod ssa_http_tests;
#[cfg(test)]
mod ssa_tests;
pub mod store;
pub mod strict;
pub mod topology;
#[cfg(test)]
mod watch_tests;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::sync::broadcast;

pub use http::RequestRecord;
use store::{Change, Key, Resource, Store};

/// State shared by the HTTP handlers and the test's handle.
pub struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    requests: Mutex<Vec<RequestRecord>>,
    /// A test's outage: while true every request is answered 503 and open watches end.
    outage: tokio::sync::watch::Sender<bool>,
    /// Requests refused during outages.
    refused: std::sync::atomic::AtomicU64,
    /// How often watches that allow bookmarks get one.
    bookmark_every: std::time::Duration,
}

impl Shared {
    fn create(
        &self,
        r: &Resource,
        namespace: Option<&str>,
        object: Value,
        manager: &str,
    ) -> Result<Change, (u16, String)> {
        let writer = patch::writer_of(r, manager, managed_fields::Operation::Update, false);
        let object = patch::finish_create(r, object, &writer)?;
        let mut store = self.store.lock().unwrap();
        let change = store.create(r, namespace, object)?;
        let _ = self.changes.send(change.clone());
        Ok(change)
    }

    fn delete(&self, key: &Key) -> Option<Value> {
        let mut store = self.store.lock().unwrap();
        let (object, change) = store.delete(key)?;
        if let Some(c) = change {
            let _ = self.changes.send(c);
        }
        Some(object)
    }
}

/// A running in-memory API server double; dropping it stops it.
pub struct ApiServerDouble {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServerDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_of(object: &Value) -> &'static Resource {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    store::RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
        .unwrap_or_else(|| panic!("the double serves no {api_version} {kind}"))
}

impl ApiServerDouble {
    /// Starts one on 127.0.0.1 with a port the OS picks.
    pub async fn start() -> ApiServerDouble {
        let (changes, _) = broadcast::channel(1 << 16);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            requests: Mutex::new(vec![]),
            outage: tokio::sync::watch::Sender::new(false),
            refused: Default::default(),
            bookmark_every: std::time::Duration::from_secs(1),
        });
        let app = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API server double");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiServerDouble { url, shared, task }
    }

    /// Starts (`true`) or ends an outage: meanwhile every request is answered 503 Service
    /// Unavailable and open watches end, as when a real API server goes away and its clients
    /// must back off and list and watch again on its return. The objects are kept.
    pub fn set_down(&self, down: bool) {
        self.shared.outage.send_replace(down);
    }

    /// How many requests were refused during outages.
    pub fn refused(&self) -> u64 {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A kube client talking to the double.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("the double's URL"));
        kube::Client::try_from(config).expect("a client for the double")
    }

    /// Writes a kubeconfig pointing at the double (for a process, such as the operator binary).
    pub fn write_kubeconfig(&self, path: &Path) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: double\n    namespace: default\ncurrent-context: double\nusers:\n- name: double\n  user: {{}}\n",
            self.url
        );
        std::fs::write(path, yaml).expect("write the kubeconfig");
    }

    /// Creates `object` (its `apiVersion` and `kind` say where) as `kubectl create` would
    /// (field manager `kubectl-create`); returns it as stored.
    pub fn create(&self, object: Value) -> Value {
        let r = resource_of(&object);
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        match self
            .shared
            .create(r, namespace.as_deref(), object, "kubectl-create")
        {
            Ok(c) => c.object,
            Err((code, m)) => panic!("create failed ({code}): {m}"),
        }
    }

    fn key(group: &str, plural: &str, namespace: Option<&str>, name: &str) -> Key {
        let r = Resource::find(group, plural).unwrap_or_else(|| panic!("no {group}/{plural}"));
        Key::new(r, namespace, name)
    }

    /// The object, if it exists.
    pub fn get(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = Self::key(group, plural, namespace, name);
        self.shared
            .store
            .lock()
            .unwrap()
            .objects
            .get(&key)
            .map(|s| s.object.clone())
    }

    /// Every object of a resource (in one namespace, or all), oldest first.
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        let mut items: Vec<Value> = store
            .objects
            .iter()
            .filter(|(k, _)| {
                k.resource == (group.to_string(), plural.to_string())
                    && (namespace.is_none() || k.namespace.as_deref() == namespace)
            })
            .map(|(_, s)| s.object.clone())
            .collect();
        let rv = |v: &Value| {
            v["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let created = |v: &Value| {
            v["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        items.sort_by_key(|v| (created(v), rv(v)));
        items
    }

    /// A merge patch, as `kubectl patch --type merge` would send (the spec change of a test;
    /// field manager `kubectl-patch`).
    pub fn merge_patch(
        &self,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Value {
        let key = Self::key(group, plural, namespace, name);
        let r = Resource::find(group, plural).unwrap();
        let mut store = self.shared.store.lock().unwrap();
        let stored = store.objects.get(&key).expect("the object exists");
        let old = stored.object.clone();
        let writer = patch::writer_of(r, "kubectl-patch", managed_fields::Operation::Update, false);
        let (next, base) = patch::apply_patch(&patch::PatchKind::Merge, &old, patch, &writer, r)
            .expect("the merge patch applies");
        let next = match patch::finish_update(r, &old, next, base, &writer) {
            Ok(next) => next,
            Err((code, m)) => panic!("the merge patch is invalid ({code}): {m}"),
        };
        match store.write(&key, next) {
            Some(c) => {
                let _ = self.shared.changes.send(c.clone());
                c.object
            }
            None => store.objects[&key].object.clone(),
        }
    }

    /// Deletes an object as `kubectl delete` would (finalizers hold it until removed).
    pub fn delete(&self, group: &str, plural: &str, namespace: Option<&str>, name: &str) {
        let key = Self::key(group, plural, namespace, name);
        self.shared.delete(&key).expect("the object exists");
    }

    /// Compacts the change log (as etcd does): watches from an older version get `410 Gone`
    /// and must list again.
    pub fn compact(&self) {
        self.shared.store.lock().unwrap().compact();
    }

    /// Every HTTP request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many objects the double holds.
    pub fn len(&self) -> usize {
        self.shared.store.lock().unwrap().objects.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
