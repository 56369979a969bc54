//! TLS material read from files: the CA certificates a `ca_file` setting names. A leaf: it
//! uses nothing else of the gateway (config checks the file with it, the platform client
//! trusts what it returns).

/// The certificates of a PEM file (`[platform] ca_file`); the error names the file.
pub(crate) fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
