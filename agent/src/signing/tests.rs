use rand::{Rng as _, SeedableRng as _};

use super::envelope::STORED_MAGIC_V2;
use super::*;
use crate::store::{Command, DeleteRangeRequest, KeyRange, PutRequest};

/// The cluster the tests' policies belong to.
const CLUSTER: u64 = 0xc1;
const BINDING: Binding = Binding {
    cluster_id: CLUSTER,
    root_version: 0,
};

fn key() -> ed25519_dalek::SigningKey {
    keys::generate_signing_key().unwrap()
}

fn policy(
    global: &[&ed25519_dalek::SigningKey],
    app: &[&ed25519_dalek::SigningKey],
) -> TrustPolicy {
    TrustPolicy {
        keys: global
            .iter()
            .map(|k| k.verifying_key().to_bytes())
            .collect(),
        prefixes: vec![PrefixTrust {
            prefix: b"/app/".to_vec(),
            keys: app.iter().map(|k| k.verifying_key().to_bytes()).collect(),
            threshold: 1,
            on_expiry: OnExpiry::Refuse,
        }],
        allow_unsigned: true,
        cluster_id: Some(CLUSTER),
        root_version: 0,
    }
}

fn put(signer: &ed25519_dalek::SigningKey, key: &str, sequence: u64, value: &str) -> SignedChange {
    SignedChange::sign(
        signer,
        key.as_bytes().to_vec(),
        Op::Put,
        sequence,
        false,
        value.as_bytes().to_vec(),
        BINDING,
    )
    .unwrap()
}

#[test]
fn stored_and_json_forms_round_trip_and_verify() {
    let signer = key();
    let change = put(&signer, "/app/x", 7, "v1");
    let stored = change.to_stored();
    assert!(SignedChange::is_stored(&stored));
    assert_eq!(
        SignedChange::from_stored(&stored).unwrap(),
        Some(change.clone())
    );
    assert_eq!(SignedChange::from_json(&change.to_json()).unwrap(), change);
    change.verify_signature().unwrap();
    // Binary values travel as base64 in JSON.
    let binary = SignedChange::sign(
        &signer,
        b"/b".to_vec(),
        Op::Put,
        1,
        false,
        vec![0xff, 0, 1],
        BINDING,
    )
    .unwrap();
    assert!(binary.to_json().contains("value_base64"));
    assert_eq!(SignedChange::from_json(&binary.to_json()).unwrap(), binary);
    // A plain value is not a signed change.
    assert_eq!(SignedChange::from_stored(b"plain").unwrap(), None);
}

#[test]
fn every_altered_field_breaks_the_signature() {
    let signer = key();
    let change = put(&signer, "/app/x", 7, "v1");
    let mut other_key = change.clone();
    other_key.key = b"/app/y".to_vec();
    let mut other_value = change.clone();
    other_value.value = b"v2".to_vec();
    let mut other_sequence = change.clone();
    other_sequence.sequence = 8;
    let mut other_flag = change.clone();
    other_flag.encrypted = true;
    let mut other_signer = change.clone();
    other_signer.signatures[0].signer = key().verifying_key().to_bytes();
    let mut other_cluster = change.clone();
    other_cluster.binding = Some(Binding {
        cluster_id: CLUSTER + 1,
        root_version: 0,
    });
    let mut other_root = change.clone();
    other_root.binding = Some(Binding {
        cluster_id: CLUSTER,
        root_version: 1,
    });
    let mut unbound = change.clone();
    unbound.binding = None;
    for altered in [
        other_key,
        other_value,
        other_sequence,
        other_flag,
        other_signer,
        other_cluster,
        other_root,
        unbound,
    ] {
        assert!(altered.verify_signature().is_err(), "{altered:?} verified");
    }
}

#[test]
fn tampered_stored_bytes_never_verify_and_never_panic() {
    let signer = key();
    let stored = put(&signer, "/app/x", 7, "some value").to_stored();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for index in STORED_MAGIC_V2.len()..stored.len() {
        for _ in 0..4 {
            let mut bytes = stored.clone();
            bytes[index] ^= rng.random_range(1..=255u8);
            if let Ok(Some(change)) = SignedChange::from_stored(&bytes) {
                assert!(
                    change.verify_signature().is_err(),
                    "flipped byte {index} still verifies"
                );
            }
        }
    }
    // Truncations and random garbage after the magic: errors, no panic.
    for len in 0..stored.len() {
        let _ = SignedChange::from_stored(&stored[..len]);
    }
    for _ in 0..5000 {
        let len = rng.random_range(0..200);
        let mut bytes = STORED_MAGIC.to_vec();
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        if let Ok(Some(change)) = SignedChange::from_stored(&bytes) {
            assert!(change.verify_signature().is_err());
        }
    }
}

#[test]
fn json_parsing_rejects_bad_input_with_errors() {
    let signer = key();
    let json = put(&signer, "/app/x", 7, "v1").to_json();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..3000 {
        let mut bytes = json.clone().into_bytes();
        let at = rng.random_range(0..bytes.len());
        bytes[at] = rng.random_range(b' '..=b'~');
        let text = String::from_utf8(bytes).unwrap();
        if let Ok(change) = SignedChange::from_json(&text) {
            if text != json {
                // Whitespace edits parse; anything else must fail to verify.
                let same = SignedChange::from_json(&json).unwrap();
                assert!(change == same || change.verify_signature().is_err());
            }
        }
    }
    for bad in ["", "{}", "[]", "null", "{\"format\":\"x\"}", "\u{0}"] {
        assert!(SignedChange::from_json(bad).is_err(), "{bad:?} parsed");
    }
    let wrong_format = json.replace("edgeconf-signed-change/2", "edgeconf-signed-change/9");
    let err = SignedChange::from_json(&wrong_format).unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");
}

#[test]
fn policy_decides_who_may_sign_what() {
    let admin = key();
    let app_team = key();
    let stranger = key();
    let trust = policy(&[&admin], &[&app_team]);
    trust.check_change(&put(&admin, "/app/x", 1, "v")).unwrap();
    trust
        .check_change(&put(&app_team, "/app/x", 1, "v"))
        .unwrap();
    trust.check_change(&put(&admin, "/other", 1, "v")).unwrap();
    // The app team's key is trusted for /app/ only.
    let err = trust
        .check_change(&put(&app_team, "/other", 1, "v"))
        .unwrap_err();
    assert!(matches!(err, SigningError::UntrustedSigner { .. }), "{err}");
    let err = trust
        .check_change(&put(&stranger, "/app/x", 1, "v"))
        .unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");

    trust.check_unsigned_put(b"/other").unwrap();
    let err = trust.check_unsigned_put(b"/app/x").unwrap_err();
    assert!(err.to_string().contains("/app/"), "{err}");
    trust
        .check_unsigned_delete(&KeyRange::single(b"/other".to_vec()))
        .unwrap();
    assert!(trust
        .check_unsigned_delete(&KeyRange::prefix(b"/".to_vec()))
        .is_err());
    assert!(trust
        .check_unsigned_delete(&KeyRange::single(b"/app/x".to_vec()))
        .is_err());

    let locked = TrustPolicy {
        allow_unsigned: false,
        ..trust.clone()
    };
    assert!(locked.check_unsigned_put(b"/other").is_err());
}

#[test]
fn admit_checks_commands_as_proposed() {
    let admin = key();
    let trust = policy(&[&admin], &[]);
    let change = put(&admin, "/app/x", 3, "v");
    let signed = Command::SignedPut {
        put: PutRequest::new("/app/x", change.to_stored()),
        sequence: 3,
    };
    trust.admit(&signed).unwrap();
    // The command must say what the signed change says.
    let lying = Command::SignedPut {
        put: PutRequest::new("/app/y", change.to_stored()),
        sequence: 3,
    };
    assert!(trust.admit(&lying).is_err());
    let unsigned = Command::Put(PutRequest::new("/app/x", "v"));
    assert!(trust.admit(&unsigned).is_err());
    // A forwarded signed put may not bring a lease (revoking it would
    // delete the key unsigned) nor keep the old value.
    for tweak in [
        (|put: &mut PutRequest| put.lease = 7) as fn(&mut PutRequest),
        |put| put.ignore_value = true,
        |put| put.ignore_lease = true,
    ] {
        let mut put = PutRequest::new("/app/x", change.to_stored());
        tweak(&mut put);
        let command = Command::SignedPut { put, sequence: 3 };
        assert!(trust.admit(&command).is_err(), "{command:?}");
    }
    // Sequences stay below 2^63, so no change can freeze a key.
    let frozen = SignedChange::sign(
        &admin,
        b"/app/x".to_vec(),
        Op::Put,
        u64::MAX,
        false,
        vec![],
        BINDING,
    );
    assert!(frozen.is_err());
    let delete = Command::DeleteRange(DeleteRangeRequest {
        range: KeyRange::prefix(b"/ap".to_vec()),
        prev_kv: false,
    });
    assert!(trust.admit(&delete).is_err());
}

#[test]
fn stored_values_are_checked_before_use() {
    let admin = key();
    let stranger = key();
    let trust = policy(&[&admin], &[]);
    let good = put(&admin, "/app/x", 5, "v").to_stored();
    assert_eq!(
        trust
            .check_stored(b"/app/x", &good, Some(5))
            .unwrap()
            .into_value(),
        b"v".to_vec()
    );
    // Moved to another key, replaced by an older change, forged, unsigned.
    assert!(matches!(
        trust.check_stored(b"/app/y", &good, None),
        Err(SigningError::WrongKey { .. })
    ));
    assert!(matches!(
        trust.check_stored(b"/app/x", &good, Some(6)),
        Err(SigningError::Replay { .. })
    ));
    let forged = put(&stranger, "/app/x", 9, "evil").to_stored();
    assert!(trust.check_stored(b"/app/x", &forged, Some(9)).is_err());
    assert!(matches!(
        trust.check_stored(b"/app/x", b"plain", None),
        Err(SigningError::UnsignedStored { .. })
    ));
    assert_eq!(
        trust.check_stored(b"/free", b"plain", None).unwrap(),
        Checked::Plain(b"plain".to_vec())
    );
}

#[test]
fn secrets_decrypt_only_with_a_recipient_identity() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.age");
    let other = dir.path().join("other.age");
    let recipient = secrets::generate_identity(&fleet).unwrap();
    secrets::generate_identity(&other).unwrap();
    assert!(
        secrets::generate_identity(&fleet).is_err(),
        "overwrote an identity"
    );
    let ciphertext = secrets::encrypt(std::slice::from_ref(&recipient), b"hunter2").unwrap();
    assert!(!ciphertext.windows(7).any(|w| w == b"hunter2"));
    assert!(ciphertext.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    let fleet_ids = Identities::load(&[fleet]).unwrap();
    assert_eq!(fleet_ids.decrypt(&ciphertext).unwrap(), b"hunter2");
    let other_ids = Identities::load(&[other]).unwrap();
    assert!(other_ids.decrypt(&ciphertext).is_err());
    assert!(Identities::none().decrypt(&ciphertext).is_err());
    assert!(Recipient::parse(&recipient.to_string()).is_ok());
    assert!(Recipient::parse("age1nope").is_err());
}

#[test]
fn operator_key_files_are_private_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operator.key");
    let signing_key = key();
    keys::write_signing_key(&path, &signing_key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        keys::read_signing_key(&path).unwrap().to_bytes(),
        signing_key.to_bytes()
    );
    assert!(keys::write_signing_key(&path, &signing_key).is_err());
    std::fs::write(dir.path().join("bad.key"), "nonsense").unwrap();
    let err = keys::read_signing_key(&dir.path().join("bad.key")).unwrap_err();
    assert!(err.to_string().contains("keygen"), "{err}");
}

#[test]
fn the_keyring_remembers_verified_changes_but_not_altered_ones() {
    let admin = key();
    let keyring = Keyring::new(policy(&[&admin], &[]), Identities::none(), Vec::new());
    let good = put(&admin, "/app/x", 5, "v").to_stored();
    for _ in 0..3 {
        assert_eq!(
            keyring
                .check_stored(b"/app/x", &good, Some(5))
                .unwrap()
                .into_value(),
            b"v"
        );
    }
    // One changed byte is another digest: checked from scratch, refused.
    let mut altered = good.clone();
    *altered.last_mut().unwrap() ^= 1;
    assert!(keyring.check_stored(b"/app/x", &altered, Some(5)).is_err());
    // Remembered signatures do not bypass the other checks.
    assert!(keyring.check_stored(b"/app/x", &good, Some(6)).is_err());
    assert!(keyring.check_stored(b"/app/y", &good, None).is_err());
}

/// A policy where `/app/` needs two of `signers`.
fn two_of(signers: &[&ed25519_dalek::SigningKey]) -> TrustPolicy {
    let mut trust = policy(&[], signers);
    trust.prefixes[0].threshold = 2;
    trust
}

#[test]
fn a_threshold_prefix_needs_that_many_distinct_trusted_signers() {
    let (a, b, c, stranger) = (key(), key(), key(), key());
    let trust = two_of(&[&a, &b, &c]);
    let mut change = put(&a, "/app/x", 1, "v");
    let err = trust.check_change(&change).unwrap_err();
    assert!(
        matches!(
            err,
            SigningError::TooFewSigners {
                needed: 2,
                trusted: 1,
                missing: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1 more needed"), "{err}");
    // The same signer twice counts once; a stranger's signature not at all.
    change.add_signature(&a).unwrap();
    assert_eq!(change.signatures.len(), 1);
    change.add_signature(&stranger).unwrap();
    assert!(trust.check_change(&change).is_err());
    change.add_signature(&b).unwrap();
    trust.check_change(&change).unwrap();
    // The signatures survive both encodings.
    let stored = SignedChange::from_stored(&change.to_stored())
        .unwrap()
        .unwrap();
    assert_eq!(stored, change);
    assert_eq!(SignedChange::from_json(&change.to_json()).unwrap(), change);
    trust
        .check_stored(b"/app/x", &change.to_stored(), Some(1))
        .unwrap();
    // A forged signature among enough good ones spoils the change.
    let mut forged = change.clone();
    forged.signatures[2].signature[0] ^= 1;
    assert!(matches!(
        trust.check_change(&forged),
        Err(SigningError::BadSignature { .. })
    ));
}

#[test]
fn a_change_signed_for_another_cluster_is_refused_as_write_and_as_stored_value() {
    let admin = key();
    let trust = policy(&[&admin], &[]);
    let elsewhere = SignedChange::sign(
        &admin,
        b"/app/x".to_vec(),
        Op::Put,
        1,
        false,
        b"v".to_vec(),
        Binding {
            cluster_id: CLUSTER + 1,
            root_version: 0,
        },
    )
    .unwrap();
    let err = trust.check_change(&elsewhere).unwrap_err();
    assert!(matches!(err, SigningError::WrongCluster { .. }), "{err}");
    assert!(err.to_string().contains("c2"), "{err}");
    assert!(matches!(
        trust.check_stored(b"/app/x", &elsewhere.to_stored(), None),
        Err(SigningError::WrongCluster { .. })
    ));
}

#[test]
fn version_1_changes_are_still_served_but_no_longer_written() {
    let admin = key();
    let trust = policy(&[&admin], &[]);
    let old = SignedChange::sign_v1(&admin, b"/app/x".to_vec(), Op::Put, 4, false, b"v".to_vec());
    let stored = old.to_stored();
    assert!(stored.starts_with(STORED_MAGIC), "stored as version 1");
    assert_eq!(
        SignedChange::from_stored(&stored).unwrap(),
        Some(old.clone())
    );
    assert_eq!(SignedChange::from_json(&old.to_json()).unwrap(), old);
    assert_eq!(
        trust
            .check_stored(b"/app/x", &stored, Some(4))
            .unwrap()
            .into_value(),
        b"v"
    );
    assert!(matches!(
        trust.check_change(&old),
        Err(SigningError::Unbound { .. })
    ));
    let command = Command::SignedPut {
        put: PutRequest::new("/app/x", stored),
        sequence: 4,
    };
    assert!(trust.admit(&command).is_err());
    // A version 1 change takes no second signature.
    let mut old = old;
    assert!(old.add_signature(&key()).is_err());
}

fn expiring(signer: &ed25519_dalek::SigningKey, expires_unix: u64) -> SignedChange {
    let mut change = SignedChange::unsigned(
        b"/app/x".to_vec(),
        Op::Put,
        3,
        false,
        b"v".to_vec(),
        BINDING,
    );
    change.expires_unix = Some(expires_unix);
    change.add_signature(signer).unwrap();
    change
}

#[test]
fn an_expiry_is_signed_and_stored_as_version_3() {
    let signer = key();
    let later = crate::consensus::now_unix_secs() + 3600;
    let change = expiring(&signer, later);
    let stored = change.to_stored();
    assert!(stored.starts_with(envelope::STORED_MAGIC_V3));
    assert_eq!(
        SignedChange::from_stored(&stored).unwrap(),
        Some(change.clone())
    );
    assert_eq!(SignedChange::from_json(&change.to_json()).unwrap(), change);
    change.verify_signature().unwrap();
    // The expiry is covered: moved or taken away, no signature holds.
    let mut moved = change.clone();
    moved.expires_unix = Some(later + 1);
    assert!(moved.verify_signature().is_err());
    let mut removed = change;
    removed.expires_unix = None;
    assert!(removed.verify_signature().is_err());
    // An expiry past the year 9999 is refused, not a crash when shown.
    let mut far =
        SignedChange::unsigned(b"/app/x".to_vec(), Op::Put, 3, false, Vec::new(), BINDING);
    far.expires_unix = Some(u64::MAX);
    let err = far.add_signature(&signer).unwrap_err().to_string();
    assert!(err.contains("after the year 9999"), "{err}");
    // A change without one keeps version 2's bytes.
    assert!(put(&signer, "/app/x", 3, "v")
        .to_stored()
        .starts_with(STORED_MAGIC_V2));
}

#[test]
fn expired_values_are_refused_or_kept_as_their_prefix_says() {
    let signer = key();
    let mut policy = policy(&[], &[&signer]);
    let now = crate::consensus::now_unix_secs();
    let fresh = expiring(&signer, now + 3600);
    let expired = expiring(&signer, now.saturating_sub(1));
    policy.check_change(&fresh).unwrap();
    policy
        .check_stored(b"/app/x", &fresh.to_stored(), Some(3))
        .unwrap();
    // A new write that has expired is refused whatever the policy.
    let err = policy.check_change(&expired).unwrap_err();
    assert!(matches!(err, SigningError::Expired { .. }), "{err}");
    // Stored: refused by default, naming the key, the time and the rule.
    let err = policy
        .check_stored(b"/app/x", &expired.to_stored(), Some(3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"/app/x\" expired at 20"), "{err}");
    assert!(err.contains("[[trust.prefix]] \"/app/\""), "{err}");
    // Kept where the prefix says so.
    policy.prefixes[0].on_expiry = OnExpiry::Keep;
    let kept = policy
        .check_stored(b"/app/x", &expired.to_stored(), Some(3))
        .unwrap();
    assert!(matches!(kept, Checked::Signed(change) if change.is_expired(now)));
    assert!(policy.check_change(&expired).is_err());
}
