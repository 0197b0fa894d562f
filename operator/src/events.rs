//! Events (`events.k8s.io/v1`) about GpuModels. Like kube's `Recorder`, an exact repeat within
//! a few minutes updates the first Event's series instead of creating another; unlike it, the
//! note is part of what makes a repeat, so "loaded tiny-b" never hides behind an earlier
//! "loaded tiny-a".

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};

/// How long a published Event counts for repeats.
const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Worth a look.
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RepeatKey {
    uid: Option<String>,
    name: Option<String>,
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

/// Publishes Events as one controller instance.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    seq: AtomicU64,
    published: Mutex<HashMap<RepeatKey, (String, String, i32)>>,
}

impl EventPublisher {
    /// A publisher reporting as `controller`, instance `instance` (the Pod name).
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            seq: AtomicU64::new(0),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes one Event about `regarding` at `now`. Cluster-scoped objects' Events go to
    /// the `default` namespace.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
        now: Timestamp,
    ) -> kube::Result<()> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = RepeatKey {
            uid: regarding.uid.clone(),
            name: regarding.name.clone(),
            type_,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
        };
        let repeat = {
            let mut published = self.published.lock().unwrap();
            published.retain(|_, (_, at, _)| {
                at.parse::<Timestamp>()
                    .is_ok_and(|t| t + REPEAT_WINDOW > now)
            });
            published.get(&key).cloned()
        };
        if let Some((name, _, count)) = repeat {
            let series = EventSeries {
                count: count + 1,
                last_observed_time: MicroTime(now),
            };
            let patch = serde_json::json!({ "series": series });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            self.published
                .lock()
                .unwrap()
                .insert(key, (name, now.to_string(), count + 1));
            return Ok(());
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{:x}{:04x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond(),
            seq & 0xffff
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note.into()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.published
            .lock()
            .unwrap()
            .insert(key, (name, now.to_string(), 1));
        Ok(())
    }
}
