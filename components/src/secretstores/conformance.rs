//! The checks every secret store runs, one test each per backend through
//! [`secretstore_conformance!`](crate::secretstore_conformance).
//!
//! A backend's setup takes the secrets a check needs (single-valued,
//! name → value) and gives a store holding them (and possibly others).

use super::{SecretError, SecretStore};

/// Secrets the checks put in the store: plain, with separators and
/// spaces, unicode, and an empty value.
pub fn secrets(run: &str) -> Vec<(String, String)> {
    vec![
        (format!("{run}PLAIN"), "alpha".to_string()),
        (format!("{run}WITH_SIGNS"), "p@ss=w0rd; x y".to_string()),
        (format!("{run}UNICODE"), "clé-秘密".to_string()),
        (format!("{run}EMPTY"), String::new()),
    ]
}

/// A name prefix of its own for one check.
pub fn run_prefix(check: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("CONF_{}_{}_", &id[..8], check.to_ascii_uppercase())
}

/// Writes one `#[tokio::test]` per check for a backend, in a module named
/// after it: `secretstore_conformance!(file, file_store)`, where `file_store`
/// is an async fn taking `Vec<(String, String)>` (the secrets) and giving
/// an `Arc<dyn SecretStore>` holding them.
#[macro_export]
macro_rules! secretstore_conformance {
    ($(#[$attr:meta])* $backend:ident, $setup:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::secretstore_conformance!(@tests [$(#[$attr])*] $setup;
                get_answers_name_and_value, a_missing_secret_is_not_found,
                bulk_get_holds_every_secret);
        }
    };
    (@tests $attrs:tt $setup:expr; $check:ident $(, $rest:ident)*) => {
        $crate::secretstore_conformance!(@one $attrs $setup; $check);
        $crate::secretstore_conformance!(@tests $attrs $setup; $($rest),*);
    };
    (@tests $attrs:tt $setup:expr;) => {};
    (@one [$(#[$attr:meta])*] $setup:expr; $check:ident) => {
        $(#[$attr])*
        #[tokio::test]
        async fn $check() {
            let run = $crate::secretstores::conformance::run_prefix(stringify!($check));
            let secrets = $crate::secretstores::conformance::secrets(&run);
            let store = ($setup)(secrets.clone()).await;
            $crate::secretstores::conformance::$check(&*store, &secrets).await;
        }
    };
}

/// Each secret reads back as `{name: value}`, byte for byte.
pub async fn get_answers_name_and_value(store: &dyn SecretStore, secrets: &[(String, String)]) {
    for (name, value) in secrets {
        let got = store
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("[get] secret '{name}': {e}"));
        assert_eq!(
            got.len(),
            1,
            "[get] secret '{name}' has one value: {:?}",
            got.keys()
        );
        assert_eq!(got.get(name), Some(value), "[get] secret '{name}'");
    }
}

/// A name the store does not hold is NotFound, naming it, and the error
/// carries no other secret's value.
pub async fn a_missing_secret_is_not_found(store: &dyn SecretStore, secrets: &[(String, String)]) {
    let missing = format!("{}NO_SUCH_SECRET", secrets[0].0);
    match store.get(&missing).await {
        Err(e @ SecretError::NotFound { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&missing), "[missing] {text}");
            assert!(!text.contains("alpha"), "[missing] leaks a value: {text}");
        }
        other => panic!("[missing] expected NotFound, got {other:?}"),
    }
}

/// Bulk reading holds every secret with its value.
pub async fn bulk_get_holds_every_secret(store: &dyn SecretStore, secrets: &[(String, String)]) {
    let all = store.bulk_get().await.expect("[bulk] bulk_get");
    for (name, value) in secrets {
        let got = all
            .get(name)
            .unwrap_or_else(|| panic!("[bulk] secret '{name}' is missing"));
        assert_eq!(got.get(name), Some(value), "[bulk] secret '{name}'");
    }
}
