//! The operator's signed rollout plan.
//!
//! The plan carries the new value as a signed change of the target key,
//! made exactly like a signed write (sequence one above the stored one), so
//! completing the rollout is storing that change, and every agent checks
//! the value it renders with the usual trust policy. The plan itself (the
//! selector, stages and gate) is signed by the same operator key over a
//! domain tag and the plan's JSON text; its id is a hash of that text.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Plan, PlanError};
use crate::signing::keys::{format_public_key, parse_public_key};
use crate::signing::{Op, SignedChange, SigningError, TrustPolicy};

const DOMAIN_TAG: &[u8] = b"edgeconf rollout plan v1\0";

/// What the operator signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    pub key: String,
    /// The new value: a signed change of `key` (its JSON form).
    pub change: String,
    /// As given: `--selector`, `--stages`, `--gate`, `--max-unhealthy`.
    pub selector: String,
    pub stages: String,
    pub gate: String,
    pub max_unhealthy: String,
    pub created_unix_ms: i64,
}

/// A plan and its signature, as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPlan {
    /// The JSON text of a [`PlanBody`]: exactly the signed bytes.
    pub body: String,
    /// `ed25519:BASE64`.
    pub signer: String,
    /// Base64.
    pub signature: String,
}

/// A plan whose signatures verified and whose signer may sign its key.
#[derive(Debug, Clone)]
pub struct VerifiedPlan {
    pub id: String,
    pub body: PlanBody,
    pub plan: Plan,
    pub change: SignedChange,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutPlanError {
    #[error("rollout plan: {0}")]
    Malformed(String),
    #[error("rollout plan: {0}")]
    Signing(#[from] SigningError),
    #[error("rollout plan: {0}")]
    Plan(#[from] PlanError),
}

impl SignedPlan {
    /// Signs `body` with the operator key.
    pub fn sign(signing_key: &SigningKey, body: &PlanBody) -> SignedPlan {
        let text = serde_json::to_string(body).expect("a plan body encodes");
        let signature = signing_key.sign(&message(&text));
        SignedPlan {
            body: text,
            signer: format_public_key(signing_key.verifying_key().as_bytes()),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        }
    }

    /// The rollout's id: the first 12 hex digits of the body's SHA-256.
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.body.as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a signed plan encodes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SignedPlan, RolloutPlanError> {
        serde_json::from_slice(bytes)
            .map_err(|err| RolloutPlanError::Malformed(format!("not a signed plan: {err}")))
    }

    /// Checks a new plan: both signatures against `trust` and the plan's
    /// shape; its new value must be bound to this cluster and the trust
    /// root in force, as any new write.
    pub fn verify(&self, trust: &TrustPolicy) -> Result<VerifiedPlan, RolloutPlanError> {
        self.verify_with(trust, true)
    }

    /// Checks a plan already stored (a rollout under way or done): as
    /// [`Self::verify`], except that its value may have been signed under
    /// an earlier trust root (or before changes were bound), as stored
    /// values may: a root update does not break a rollout whose signers
    /// are still trusted.
    pub fn verify_stored(&self, trust: &TrustPolicy) -> Result<VerifiedPlan, RolloutPlanError> {
        self.verify_with(trust, false)
    }

    fn verify_with(
        &self,
        trust: &TrustPolicy,
        new_write: bool,
    ) -> Result<VerifiedPlan, RolloutPlanError> {
        let malformed = |problem: String| RolloutPlanError::Malformed(problem);
        let signer = parse_public_key(&self.signer).map_err(malformed)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| malformed("the signature is not 64 bytes of base64".into()))?;
        let key = VerifyingKey::from_bytes(&signer)
            .map_err(|_| malformed("the signer is not an ed25519 public key".into()))?;
        let body: PlanBody = serde_json::from_str(&self.body)
            .map_err(|err| malformed(format!("the plan body: {err}")))?;
        key.verify_strict(&message(&self.body), &signature)
            .map_err(|_| {
                malformed(format!(
                    "bad signature on the plan for {:?} (signer {}): it was altered after signing",
                    body.key, self.signer
                ))
            })?;
        let change = SignedChange::from_json(&body.change)?;
        if change.key != body.key.as_bytes() {
            return Err(malformed(format!(
                "the new value was signed for {:?}, not for {:?}",
                String::from_utf8_lossy(&change.key),
                body.key
            )));
        }
        if change.op != Op::Put {
            return Err(malformed(
                "the new value must be a put, not a delete".into(),
            ));
        }
        if !change.signers().any(|value_signer| *value_signer == signer) {
            return Err(malformed(
                "the plan's signer did not sign its new value".into(),
            ));
        }
        // The signer may sign the key, and the value's signature holds.
        if new_write {
            trust.check_change(&change)?;
        } else {
            trust.check_stored_change(&change)?;
        }
        let plan = Plan::parse(
            &body.stages,
            &body.gate,
            &body.max_unhealthy,
            &body.selector,
        )?;
        Ok(VerifiedPlan {
            id: self.id(),
            body,
            plan,
            change,
        })
    }
}

fn message(body: &str) -> Vec<u8> {
    let mut message = DOMAIN_TAG.to_vec();
    message.extend_from_slice(body.as_bytes());
    message
}

/// The cluster id test plans are signed for.
#[cfg(test)]
pub(crate) const TEST_CLUSTER: u64 = 0xc1;

/// A plan for tests: `operator` signs sequence 1 of `/app/a` = "v" and a
/// plan of `stages` (no selector, 1 s gates), which it signs too.
#[cfg(test)]
pub(crate) fn sample_plan(operator: &SigningKey, stages: &str) -> (SignedChange, SignedPlan) {
    let change = SignedChange::sign(
        operator,
        b"/app/a".to_vec(),
        Op::Put,
        1,
        false,
        b"v".to_vec(),
        crate::signing::Binding {
            cluster_id: TEST_CLUSTER,
            root_version: 0,
        },
    )
    .expect("a small change signs");
    let body = PlanBody {
        key: "/app/a".into(),
        change: change.to_json(),
        selector: String::new(),
        stages: stages.into(),
        gate: "1s".into(),
        max_unhealthy: "0%".into(),
        created_unix_ms: 1,
    };
    let signed = SignedPlan::sign(operator, &body);
    (change, signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(key: &SigningKey) -> PlanBody {
        let change = SignedChange::sign(
            key,
            b"/app/conf".to_vec(),
            Op::Put,
            4,
            false,
            b"v2".to_vec(),
            crate::signing::Binding {
                cluster_id: TEST_CLUSTER,
                root_version: 0,
            },
        )
        .unwrap();
        PlanBody {
            key: "/app/conf".into(),
            change: change.to_json(),
            selector: "region=eu".into(),
            stages: "10,100".into(),
            gate: "5s".into(),
            max_unhealthy: "0%".into(),
            created_unix_ms: 1,
        }
    }

    fn trusting(key: &SigningKey) -> TrustPolicy {
        TrustPolicy {
            keys: vec![key.verifying_key().to_bytes()],
            prefixes: Vec::new(),
            allow_unsigned: false,
            cluster_id: Some(TEST_CLUSTER),
            root_version: 0,
        }
    }

    #[test]
    fn a_signed_plan_verifies_and_tampering_is_caught() {
        let operator = SigningKey::from_bytes(&[7; 32]);
        let signed = SignedPlan::sign(&operator, &body(&operator));
        let verified = signed.verify(&trusting(&operator)).unwrap();
        assert_eq!(verified.id, signed.id());
        assert_eq!(verified.id.len(), 12);
        assert_eq!(verified.change.value, b"v2");
        assert_eq!(verified.plan.stages, [10.0, 100.0]);
        let round = SignedPlan::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(round, signed);

        // Another operator's key is not trusted.
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let err = signed.verify(&trusting(&stranger)).unwrap_err().to_string();
        assert!(err.contains("not trusted"), "{err}");

        // A widened selector breaks the plan's signature.
        let mut widened = signed.clone();
        widened.body = widened.body.replace("region=eu", "");
        let err = widened
            .verify(&trusting(&operator))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad signature"), "{err}");

        // A value signed for another key is refused.
        let mut other = body(&operator);
        other.key = "/app/other".into();
        let err = SignedPlan::sign(&operator, &other)
            .verify(&trusting(&operator))
            .unwrap_err()
            .to_string();
        assert!(err.contains("signed for"), "{err}");
    }

    #[test]
    fn a_stored_plan_survives_a_trust_root_update_that_a_new_plan_does_not() {
        let operator = SigningKey::from_bytes(&[7; 32]);
        // Signed under root version 0; the policy is now root version 1.
        let signed = SignedPlan::sign(&operator, &body(&operator));
        let updated = TrustPolicy {
            root_version: 1,
            ..trusting(&operator)
        };
        signed.verify_stored(&updated).unwrap();
        let err = signed.verify(&updated).unwrap_err().to_string();
        assert!(err.contains("trust root version 0"), "{err}");
    }
}
