//! The chart's CRD is crdgen's output, and `helm template --include-crds` ships it unchanged.

use serde_json::Value;

use crate::helm::{VALUES, chart_dir, parse_yaml_stream, render, workspace};

#[test]
fn the_chart_crd_is_crdgens_output() {
    let path = workspace().join(vramkeeper_crds::CRD_PATH);
    assert!(path.starts_with(chart_dir().join("crds")));
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == vramkeeper_crds::crd_yaml(),
        "{} is stale: run `cargo run -p vramkeeper-crds --bin crdgen`",
        path.display()
    );
    let generated: Vec<Value> = parse_yaml_stream(&vramkeeper_crds::crd_yaml());
    for values in VALUES {
        let r = render(values);
        let shipped = r.of_kind("CustomResourceDefinition");
        assert_eq!(shipped.len(), 1, "{values}");
        assert_eq!(shipped[0], &generated[0], "{values}: helm changed the CRD");
    }
}
