//! The JSON form of a signed change: what `edgeconf sign` prints (and adds
//! signatures to) and `edgeconf put --signed` reads.

use serde::{Deserialize, Serialize};

use super::*;

/// The JSON form, field by field (both versions).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonChange {
    format: String,
    /// Version 2: the cluster id in hex, as `edgeconf status` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root_version: Option<u64>,
    /// Version 2: when the change expires (Unix seconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_unix: Option<u64>,
    key: String,
    op: Op,
    sequence: u64,
    #[serde(default)]
    encrypted: bool,
    /// The value as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// The value as base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    /// Version 1: the one signer and signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    /// Version 2: every signature so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signatures: Vec<JsonSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSignature {
    signer: String,
    signature: String,
}

impl SignedChange {
    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        let (value, value_base64) = match std::str::from_utf8(&self.value) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64_encode(&self.value))),
        };
        let mut json = JsonChange {
            format: JSON_FORMAT_V2.to_string(),
            cluster_id: None,
            root_version: None,
            expires_unix: self.expires_unix,
            key: lossy(&self.key),
            op: self.op,
            sequence: self.sequence,
            encrypted: self.encrypted,
            value,
            value_base64,
            signer: None,
            signature: None,
            signatures: Vec::new(),
        };
        match (self.binding, self.signatures.as_slice()) {
            (None, [only]) => {
                json.format = JSON_FORMAT.to_string();
                json.signer = Some(format_public_key(&only.signer));
                json.signature = Some(base64_encode(&only.signature));
            }
            (binding, signatures) => {
                let binding = binding.unwrap_or(UNBOUND);
                json.cluster_id = Some(format!("{:x}", binding.cluster_id));
                json.root_version = Some(binding.root_version);
                json.signatures = signatures
                    .iter()
                    .map(|s| JsonSignature {
                        signer: format_public_key(&s.signer),
                        signature: base64_encode(&s.signature),
                    })
                    .collect();
            }
        }
        serde_json::to_string_pretty(&json).expect("encoding JSON into memory cannot fail")
    }

    /// Parses the JSON form. The signatures are not checked here.
    pub fn from_json(text: &str) -> Result<Self, SigningError> {
        let malformed = |problem: String| SigningError::Malformed(problem);
        let json: JsonChange = serde_json::from_str(text)
            .map_err(|err| malformed(format!("not a signed change: {err}")))?;
        let value = match (json.value, json.value_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|err| malformed(format!("value_base64: {err}")))?,
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err(malformed("both value and value_base64 are given".into()))
            }
        };
        let signature = |signer: &str, signature: &str| -> Result<KeySignature, SigningError> {
            Ok(KeySignature {
                signer: parse_public_key(signer).map_err(SigningError::Malformed)?,
                signature: base64::engine::general_purpose::STANDARD
                    .decode(signature)
                    .map_err(|err| malformed(format!("signature: {err}")))?,
            })
        };
        let (binding, signatures) = if json.format == JSON_FORMAT {
            let (Some(signer), Some(sig), None, None, None, true) = (
                json.signer.as_deref(),
                json.signature.as_deref(),
                &json.cluster_id,
                json.root_version,
                json.expires_unix,
                json.signatures.is_empty(),
            ) else {
                return Err(malformed(format!(
                    "a {JSON_FORMAT} change has one signer and signature and no cluster_id, root_version, expires_unix or signatures"
                )));
            };
            (None, vec![signature(signer, sig)?])
        } else if json.format == JSON_FORMAT_V2 {
            let (Some(cluster_id), Some(root_version), None, None) = (
                json.cluster_id.as_deref(),
                json.root_version,
                &json.signer,
                &json.signature,
            ) else {
                return Err(malformed(format!(
                    "a {JSON_FORMAT_V2} change has cluster_id, root_version and signatures (no signer or signature)"
                )));
            };
            let cluster_id = u64::from_str_radix(cluster_id, 16)
                .map_err(|_| malformed(format!("cluster_id {cluster_id:?} is not a hex number")))?;
            let signatures = json
                .signatures
                .iter()
                .map(|s| signature(&s.signer, &s.signature))
                .collect::<Result<_, _>>()?;
            (
                Some(Binding {
                    cluster_id,
                    root_version,
                }),
                signatures,
            )
        } else {
            return Err(malformed(format!(
                "format is {:?}, expected {JSON_FORMAT_V2:?} (or {JSON_FORMAT:?})",
                json.format
            )));
        };
        let change = SignedChange {
            key: json.key.into_bytes(),
            op: json.op,
            sequence: json.sequence,
            encrypted: json.encrypted,
            value,
            binding,
            expires_unix: json.expires_unix,
            signatures,
        };
        change.check_shape()?;
        Ok(change)
    }
}
