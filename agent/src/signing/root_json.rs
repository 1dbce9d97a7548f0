//! The JSON form of a trust root: what `edgeconf trust` prints, edits and
//! signs offline, and `trust push` submits. The signatures cover the root's
//! binary form (`root.rs`), never these bytes, so whitespace and field order
//! here change nothing.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::envelope::KeySignature;
use super::keys::{format_public_key, parse_public_key};
use super::root::{Audience, Role, Root, RootError, SignedRoot, JSON_FORMAT};
use super::trust::OnExpiry;

impl SignedRoot {
    pub fn to_json(&self) -> String {
        let keys = |keys: &[[u8; 32]]| keys.iter().map(|k| format_public_key(k)).collect();
        let json = JsonRoot {
            format: JSON_FORMAT.into(),
            cluster_id: format!("{:x}", self.root.cluster_id),
            version: self.root.version,
            expires_unix: self.root.expires_unix,
            root_keys: keys(&self.root.root_keys),
            root_threshold: self.root.root_threshold,
            keys: keys(&self.root.keys),
            prefixes: self
                .root
                .prefixes
                .iter()
                .map(|role| JsonRole {
                    prefix: String::from_utf8_lossy(&role.prefix).into_owned(),
                    keys: keys(&role.keys),
                    threshold: role.threshold,
                    on_expiry: role.on_expiry,
                })
                .collect(),
            allow_unsigned: self.root.allow_unsigned,
            audiences: self
                .root
                .audiences
                .iter()
                .map(|audience| JsonAudience {
                    name: audience.name.clone(),
                    recipients: audience.recipients.clone(),
                })
                .collect(),
            signatures: self
                .signatures
                .iter()
                .map(|s| JsonSignature {
                    signer: format_public_key(&s.signer),
                    signature: base64::engine::general_purpose::STANDARD.encode(&s.signature),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&json).expect("encoding JSON into memory cannot fail")
    }

    pub fn from_json(text: &str) -> Result<Self, RootError> {
        let malformed = |problem: String| RootError::Malformed(problem);
        let json: JsonRoot = serde_json::from_str(text)
            .map_err(|err| malformed(format!("not a trust root: {err}")))?;
        if json.format != JSON_FORMAT {
            return Err(malformed(format!(
                "format is {:?}, expected {JSON_FORMAT:?}",
                json.format
            )));
        }
        let keys = |field: &str, texts: &[String]| {
            texts
                .iter()
                .map(|text| parse_public_key(text).map_err(|p| malformed(format!("{field}: {p}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let root = Root {
            cluster_id: u64::from_str_radix(&json.cluster_id, 16).map_err(|_| {
                malformed(format!(
                    "cluster_id {:?} is not a hex number",
                    json.cluster_id
                ))
            })?,
            version: json.version,
            expires_unix: json.expires_unix,
            root_keys: keys("root_keys", &json.root_keys)?,
            root_threshold: json.root_threshold,
            keys: keys("keys", &json.keys)?,
            prefixes: json
                .prefixes
                .iter()
                .map(|role| {
                    Ok(Role {
                        prefix: role.prefix.clone().into_bytes(),
                        keys: keys("prefixes.keys", &role.keys)?,
                        threshold: role.threshold,
                        on_expiry: role.on_expiry,
                    })
                })
                .collect::<Result<_, RootError>>()?,
            allow_unsigned: json.allow_unsigned,
            audiences: json
                .audiences
                .into_iter()
                .map(|audience| Audience {
                    name: audience.name,
                    recipients: audience.recipients,
                })
                .collect(),
        };
        root.check_shape()?;
        let signatures = json
            .signatures
            .iter()
            .map(|s| {
                Ok(KeySignature {
                    signer: parse_public_key(&s.signer)
                        .map_err(|p| malformed(format!("signatures: {p}")))?,
                    signature: base64::engine::general_purpose::STANDARD
                        .decode(&s.signature)
                        .map_err(|err| malformed(format!("signatures: {err}")))?,
                })
            })
            .collect::<Result<_, RootError>>()?;
        Ok(SignedRoot { root, signatures })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRoot {
    format: String,
    cluster_id: String,
    version: u64,
    expires_unix: u64,
    root_keys: Vec<String>,
    root_threshold: u32,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    prefixes: Vec<JsonRole>,
    allow_unsigned: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    audiences: Vec<JsonAudience>,
    #[serde(default)]
    signatures: Vec<JsonSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRole {
    prefix: String,
    keys: Vec<String>,
    threshold: u32,
    #[serde(default, skip_serializing_if = "is_refuse")]
    on_expiry: OnExpiry,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAudience {
    name: String,
    recipients: Vec<String>,
}

fn is_refuse(on_expiry: &OnExpiry) -> bool {
    *on_expiry == OnExpiry::Refuse
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSignature {
    signer: String,
    signature: String,
}
