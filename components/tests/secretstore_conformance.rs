//! Secret stores: the conformance suite on every backend
//! (`secretstore_conformance!`), one test per check.

use std::sync::Arc;

use weft_components::secretstores::env::EnvSecretStore;
use weft_components::secretstores::file::FileSecretStore;
use weft_components::secretstores::SecretStore;
use weft_components::{secretstore_conformance, Metadata};

/// A JSON file holding `secrets`, opened as `secretstores.local.file`.
async fn file_store(secrets: Vec<(String, String)>) -> Arc<dyn SecretStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secrets.json");
    let doc: serde_json::Map<String, serde_json::Value> = secrets
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    let md = Metadata::new(
        "secrets",
        "secretstores.local.file",
        [(
            "secretsFile".to_string(),
            path.to_string_lossy().into_owned(),
        )],
    );
    // Read at start-up: the file may go once the store is open.
    Arc::new(FileSecretStore::open(&md).expect("open the secrets file"))
}

/// The same secrets as environment variables under a prefix of the
/// check's own, served by `secretstores.local.env` with that prefix.
async fn env_store(secrets: Vec<(String, String)>) -> Arc<dyn SecretStore> {
    let prefix = "WEFT_SECRET_TEST_";
    for (k, v) in &secrets {
        // Each check's names are unique (a run prefix), so parallel tests
        // never set the same variable.
        std::env::set_var(format!("{prefix}{k}"), v);
    }
    let md = Metadata::new(
        "secrets",
        "secretstores.local.env",
        [("prefix".to_string(), prefix.to_string())],
    );
    Arc::new(EnvSecretStore::new(&md))
}

secretstore_conformance!(local_file, file_store);
secretstore_conformance!(local_env, env_store);
