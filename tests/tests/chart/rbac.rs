//! The chart's RBAC equals what the code uses: the operator's rules come from
//! `vramkeeper_operator::rbac::RBAC_RULES`; the agent's from `vramkeeper_crds::rbac::AGENT_RBAC_RULES`
//! (a reflector over GpuModels: list and watch; server-side apply of their status: patch).

use std::collections::BTreeSet;

use vramkeeper_crds::rbac::AGENT_RBAC_RULES;
use vramkeeper_operator::rbac::{RBAC_RULES, Scope};

use crate::helm::{NAMESPACE, Rendered, VALUES, name, render};

/// One granted permission: where (`cluster` or a namespace), group, resource, verb, names.
type Grant = (String, String, String, String, Vec<String>);

/// Everything the chart grants one ServiceAccount, through every binding that names it.
fn grants(r: &Rendered, service_account: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for binding in r
        .of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(r.of_kind("RoleBinding"))
    {
        let subjects = binding["subjects"].as_array().expect("subjects");
        let ours = subjects.iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == service_account
                && s["namespace"] == NAMESPACE
        });
        if !ours {
            continue;
        }
        assert_eq!(subjects.len(), 1, "{}: one subject", name(binding));
        let role_ref = &binding["roleRef"];
        let kind = role_ref["kind"].as_str().unwrap();
        let role = r.get(kind, role_ref["name"].as_str().unwrap());
        let scope = match binding["kind"].as_str().unwrap() {
            "ClusterRoleBinding" => "cluster".to_string(),
            _ => binding["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        if kind == "Role" {
            assert_eq!(
                role["metadata"]["namespace"],
                binding["metadata"]["namespace"]
            );
        }
        for rule in role["rules"].as_array().expect("rules") {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            let names = list("resourceNames");
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        assert!(
                            group != "*" && resource != "*" && verb != "*",
                            "{}: no wildcards",
                            name(role)
                        );
                        out.insert((
                            scope.clone(),
                            group.clone(),
                            resource.clone(),
                            verb,
                            names.clone(),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Drops the resource names: the code's rules do not have them.
fn unnamed(grants: &BTreeSet<Grant>) -> BTreeSet<(String, String, String, String)> {
    grants
        .iter()
        .map(|(s, g, r, v, _)| (s.clone(), g.clone(), r.clone(), v.clone()))
        .collect()
}

fn operator_sa(r: &Rendered) -> String {
    r.operator().unwrap()["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_operator_is_granted_exactly_what_its_code_uses() {
    for values in VALUES {
        let r = render(values);
        if r.operator().is_none() {
            assert!(
                r.of_kind("Role").is_empty() && r.of_kind("RoleBinding").is_empty(),
                "{values}: no operator, no operator RBAC"
            );
            continue;
        }
        let granted = grants(&r, &operator_sa(&r));
        let mut expected = BTreeSet::new();
        for rule in RBAC_RULES {
            // The chart runs the agents and the operator in the release namespace.
            let scope = match rule.scope {
                Scope::Cluster => "cluster",
                Scope::AgentNamespace | Scope::OperatorNamespace => NAMESPACE,
                Scope::DefaultNamespace => "default",
            };
            for group in rule.api_groups {
                for resource in rule.resources {
                    for verb in rule.verbs {
                        expected.insert((
                            scope.to_string(),
                            group.to_string(),
                            resource.to_string(),
                            verb.to_string(),
                        ));
                    }
                }
            }
        }
        let granted_unnamed = unnamed(&granted);
        let extra: Vec<_> = granted_unnamed.difference(&expected).collect();
        let missing: Vec<_> = expected.difference(&granted_unnamed).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{values}: the operator's RBAC differs from vramkeeper_operator::rbac::RBAC_RULES\n\
             granted but unused: {extra:?}\nused but not granted: {missing:?}"
        );
        // Names narrow the Secrets to the agents' token; nothing else is narrowed.
        let operator = crate::helm::container(r.operator().unwrap(), "operator");
        let args = crate::helm::args(operator);
        let secret = crate::helm::flag(&args, "--agent-token-secret").unwrap();
        for (_, _, resource, _, names) in &granted {
            if resource == "secrets" {
                assert_eq!(names, &[secret.to_string()], "{values}");
            } else {
                assert!(names.is_empty(), "{values}: {resource}: {names:?}");
            }
        }
    }
}

#[test]
fn the_agent_is_granted_exactly_what_its_reporting_uses() {
    let mut expected = BTreeSet::new();
    for (group, resource, verbs) in AGENT_RBAC_RULES {
        for verb in *verbs {
            expected.insert((
                "cluster".to_string(),
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                vec![],
            ));
        }
    }
    for values in VALUES {
        let r = render(values);
        let sa = r.agent()["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(grants(&r, &sa), expected, "{values}");
    }
}

/// Every Role and ClusterRole is bound, to one of the chart's two ServiceAccounts.
#[test]
fn no_role_is_left_unbound() {
    for values in VALUES {
        let r = render(values);
        for role in r
            .of_kind("ClusterRole")
            .into_iter()
            .chain(r.of_kind("Role"))
        {
            let bound = r
                .of_kind("ClusterRoleBinding")
                .into_iter()
                .chain(r.of_kind("RoleBinding"))
                .any(|b| {
                    b["roleRef"]["name"] == role["metadata"]["name"]
                        && b["roleRef"]["kind"] == role["kind"]
                });
            assert!(bound, "{values}: {} is bound to nobody", name(role));
        }
    }
}
