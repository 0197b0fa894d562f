//! The host names the agent answers for (`--allowed-hosts`, the node name, `localhost` and any
//! IP literal); `api::host` refuses requests addressed to others (DNS rebinding).

use std::net::IpAddr;

/// The host names the agent answers for.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    names: Vec<String>,
}

impl HostPolicy {
    /// `localhost`, the node name and the allowed names; each allowed name must be a host name
    /// (a port, if given, is dropped).
    pub(crate) fn new(node: Option<&str>, allowed: &[String]) -> anyhow::Result<Self> {
        let mut names = vec!["localhost".to_string()];
        names.extend(node.map(normalise));
        for name in allowed {
            let n = normalise(host_part(name.trim()));
            if n.is_empty() || n.contains(['/', ' ', '@']) {
                anyhow::bail!(
                    "--allowed-hosts {name:?} is not a host name (give names like \
                     agent.example.com, without a scheme or path)"
                );
            }
            names.push(n);
        }
        Ok(Self { names })
    }

    /// Whether a request addressed to `host` (a `Host` header) is answered.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let name = host_part(host);
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalise(name);
        self.names.contains(&name)
    }
}

/// Lower case, without the trailing dot of a fully qualified name.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host of `host[:port]` or `[v6][:port]`.
pub(crate) fn host_part(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_localhost_node_and_allowed_names_pass() {
        let p = HostPolicy::new(Some("gpu-node-7"), &["Agent.Example.com".into()]).unwrap();
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8470",
            "10.2.3.4:80",
            "[::1]:8470",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:8470",
            "localhost.",
            "gpu-node-7:8470",
            "agent.example.com",
            "agent.example.com.:9000",
        ] {
            assert!(p.allows(ok), "{ok} is answered");
        }
        for refused in [
            "evil.example",
            "evil.example:8470",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "gpu-node-7.evil.example",
            "example.com",
            "",
        ] {
            assert!(!p.allows(refused), "{refused} is refused");
        }
    }

    #[test]
    fn allowed_names_are_host_names() {
        assert!(HostPolicy::new(None, &["http://x/".into()]).is_err());
        assert!(HostPolicy::new(None, &["".into()]).is_err());
        let p = HostPolicy::new(None, &["svc.local:8470".into()]).unwrap();
        assert!(p.allows("svc.local:1"));
    }
}
