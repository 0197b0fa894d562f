//! Writes the GpuModel CRD into the Helm chart (`charts/vramkeeper/crds/gpumodel.yaml`), or to
//! standard output with `--stdout`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let yaml = vramkeeper_crds::crd_yaml();
    if std::env::args().any(|a| a == "--stdout") {
        print!("{yaml}");
        return Ok(());
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(vramkeeper_crds::CRD_PATH);
    std::fs::write(&path, yaml)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
