//! Server-side apply's merge of an applied configuration into the live object, and the removal
//! of fields a manager no longer applies.
//! <https://kubernetes.io/docs/reference/using-api/server-side-apply/#merge-strategy>

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    field_set::{Display, Path, PathElement, item_element},
    topology::{ListType, Topology},
};

/// `live` with `config` merged in, favouring `config`: objects merge by field (unless
/// `x-kubernetes-map-type: atomic`), list maps by key and sets by value (items keep the
/// configuration's order, items only the live object has stay where they were), anything else
/// is replaced. `Err` names a duplicate key of the configuration.
pub fn merge(live: Option<&Value>, config: &Value, t: Topology<'_>) -> Result<Value, String> {
    merge_at(live, config, t, &mut vec![])
}

fn merge_at(
    live: Option<&Value>,
    config: &Value,
    t: Topology<'_>,
    path: &mut Path,
) -> Result<Value, String> {
    match (live, config) {
        (Some(Value::Object(l)), Value::Object(c)) if !t.atomic_map() || path.is_empty() => {
            let mut out = l.clone();
            for (k, v) in c {
                path.push(PathElement::Field(k.clone()));
                let merged = merge_at(l.get(k), v, t.field(k), path)?;
                path.pop();
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        (Some(Value::Array(l)), Value::Array(c)) if t.list_type() != ListType::Atomic => {
            merge_list(l, c, t, path).map(Value::Array)
        }
        _ => Ok(config.clone()),
    }
}

fn merge_list(
    live: &[Value],
    config: &[Value],
    t: Topology<'_>,
    path: &mut Path,
) -> Result<Vec<Value>, String> {
    let list = t.list_type();
    let key = |v: &Value| item_element(&list, v).expect("a mergeable list");
    let mut in_config = BTreeSet::new();
    for c in config {
        if !in_config.insert(key(c)) {
            return Err(format!(
                "{}: duplicate entries for key {}",
                Display(path),
                Display(&[key(c)])
            ));
        }
    }
    let merge_item = |c: &Value, path: &mut Path| -> Result<Value, String> {
        if list == ListType::Set {
            return Ok(c.clone());
        }
        let k = key(c);
        path.push(k.clone());
        let merged = merge_at(live.iter().find(|l| key(l) == k), c, t.items(), path);
        path.pop();
        merged
    };
    let mut out = Vec::with_capacity(live.len() + config.len());
    let mut emitted = BTreeSet::new();
    let mut next = 0;
    for l in live {
        let k = key(l);
        if !in_config.contains(&k) {
            out.push(l.clone());
            continue;
        }
        // A shared item: the configuration's items up to it come first, in its order.
        while next < config.len() && !emitted.contains(&k) {
            let c = &config[next];
            next += 1;
            if emitted.insert(key(c)) {
                out.push(merge_item(c, path)?);
            }
        }
    }
    for c in &config[next..] {
        if emitted.insert(key(c)) {
            out.push(merge_item(c, path)?);
        }
    }
    Ok(out)
}

/// Removes the field or item at `path` from `object` (nothing if it is not there).
pub fn remove(object: &mut Value, path: &[PathElement], t: Topology<'_>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = object;
    let mut t = t;
    for pe in parents {
        let next = match (pe, &mut *node) {
            (PathElement::Field(name), Value::Object(m)) => {
                t = t.field(name);
                m.get_mut(name)
            }
            (pe, Value::Array(items)) => {
                let list = t.list_type();
                t = t.items();
                items.iter_mut().find(|i| item_matches(&list, i, pe))
            }
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node) {
        (PathElement::Field(name), Value::Object(m)) => {
            m.remove(name);
        }
        (pe, Value::Array(items)) => {
            let list = t.list_type();
            let mut at = 0;
            items.retain(|i| {
                at += 1;
                !match pe {
                    PathElement::Index(n) => *n == at - 1,
                    pe => item_matches(&list, i, pe),
                }
            });
        }
        _ => {}
    }
}

fn item_matches(list: &ListType, item: &Value, pe: &PathElement) -> bool {
    item_element(list, item).as_ref() == Some(pe)
}
