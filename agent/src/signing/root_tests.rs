//! The trust root's rules, with hostile roots: too few signers, skipped or
//! replayed versions, another cluster, expiry, altered bytes.

use ed25519_dalek::SigningKey;

use super::keys::generate_signing_key;
use super::root::*;
use super::OnExpiry;

const CLUSTER: u64 = 0xc1;
const NOW: u64 = 1_800_000_000;

fn key() -> SigningKey {
    generate_signing_key().unwrap()
}

fn public(keys: &[&SigningKey]) -> Vec<[u8; 32]> {
    keys.iter().map(|k| k.verifying_key().to_bytes()).collect()
}

/// Version `version` with `root_keys` (2 of them must sign) and one
/// operator key for `/app/`.
fn root(version: u64, root_keys: &[&SigningKey], operator: &SigningKey) -> Root {
    Root {
        cluster_id: CLUSTER,
        version,
        expires_unix: NOW + 3600,
        root_keys: public(root_keys),
        root_threshold: 2,
        keys: Vec::new(),
        prefixes: vec![Role {
            prefix: b"/app/".to_vec(),
            keys: public(&[operator]),
            threshold: 1,
            on_expiry: OnExpiry::Refuse,
        }],
        allow_unsigned: true,
        audiences: Vec::new(),
    }
}

fn signed(root: Root, by: &[&SigningKey]) -> SignedRoot {
    let mut signed = SignedRoot::new(root);
    for key in by {
        signed.sign(key).unwrap();
    }
    signed
}

#[test]
fn the_first_root_needs_the_pinned_threshold_and_its_own() {
    let (r1, r2, r3, operator) = (key(), key(), key(), key());
    let pinned = PinnedRoot {
        keys: public(&[&r1, &r2, &r3]),
        threshold: 2,
    };
    let first = root(1, &[&r1, &r2, &r3], &operator);
    check_successor(
        None,
        &pinned,
        &signed(first.clone(), &[&r1, &r3]),
        CLUSTER,
        Some(NOW),
    )
    .unwrap();
    let err = check_successor(
        None,
        &pinned,
        &signed(first.clone(), &[&r1]),
        CLUSTER,
        Some(NOW),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            RootError::TooFewSignatures {
                needed: 2,
                valid: 1,
                missing: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("pinned in [trust]"), "{err}");
    // The same key twice is one signer.
    let mut twice = signed(first.clone(), &[&r1]);
    twice.signatures.push(twice.signatures[0].clone());
    assert!(check_successor(None, &pinned, &twice, CLUSTER, Some(NOW)).is_err());
    // Keys nobody pinned vouch for nothing, however many.
    let (x, y) = (key(), key());
    let usurper = root(1, &[&x, &y], &operator);
    let err = check_successor(
        None,
        &pinned,
        &signed(usurper, &[&x, &y]),
        CLUSTER,
        Some(NOW),
    )
    .unwrap_err();
    assert!(
        matches!(err, RootError::TooFewSignatures { valid: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_rotation_needs_the_old_and_the_new_root_keys() {
    let (a, b, c, d, operator) = (key(), key(), key(), key(), key());
    let pinned = PinnedRoot {
        keys: public(&[&a, &b]),
        threshold: 2,
    };
    let v1 = root(1, &[&a, &b], &operator);
    let v2 = root(2, &[&c, &d], &operator);
    let check = |by: &[&SigningKey]| {
        check_successor(
            Some(&v1),
            &pinned,
            &signed(v2.clone(), by),
            CLUSTER,
            Some(NOW),
        )
    };
    let err = check(&[&a, &b]).unwrap_err();
    assert!(err.to_string().contains("its own root keys"), "{err}");
    let err = check(&[&c, &d]).unwrap_err();
    assert!(err.to_string().contains("the current root's keys"), "{err}");
    check(&[&a, &b, &c, &d]).unwrap();
}

#[test]
fn versions_step_by_one_for_this_cluster_until_expiry() {
    let (a, b, operator) = (key(), key(), key());
    let pinned = PinnedRoot {
        keys: public(&[&a, &b]),
        threshold: 2,
    };
    let v1 = root(1, &[&a, &b], &operator);
    for version in [1, 3] {
        let err = check_successor(
            Some(&v1),
            &pinned,
            &signed(root(version, &[&a, &b], &operator), &[&a, &b]),
            CLUSTER,
            Some(NOW),
        )
        .unwrap_err();
        assert!(
            matches!(err, RootError::NotNext { expected: 2, .. }),
            "{err}"
        );
    }
    let mut elsewhere = root(2, &[&a, &b], &operator);
    elsewhere.cluster_id = CLUSTER + 1;
    let err = check_successor(
        Some(&v1),
        &pinned,
        &signed(elsewhere, &[&a, &b]),
        CLUSTER,
        Some(NOW),
    )
    .unwrap_err();
    assert!(matches!(err, RootError::WrongCluster { .. }), "{err}");
    let v2 = signed(root(2, &[&a, &b], &operator), &[&a, &b]);
    let err = check_successor(Some(&v1), &pinned, &v2, CLUSTER, Some(NOW + 3600)).unwrap_err();
    assert!(matches!(err, RootError::Expired { .. }), "{err}");
    check_successor(Some(&v1), &pinned, &v2, CLUSTER, Some(NOW + 3599)).unwrap();
}

#[test]
fn both_forms_round_trip_and_altered_bytes_lose_their_signatures() {
    let (a, b, operator) = (key(), key(), key());
    let pinned = PinnedRoot {
        keys: public(&[&a, &b]),
        threshold: 2,
    };
    let good = signed(root(1, &[&a, &b], &operator), &[&a, &b]);
    assert_eq!(SignedRoot::from_stored(&good.to_stored()).unwrap(), good);
    assert_eq!(SignedRoot::from_json(&good.to_json()).unwrap(), good);
    let stored = good.to_stored();
    for at in 20..stored.len() {
        let mut bytes = stored.clone();
        bytes[at] ^= 0x40;
        if let Ok(altered) = SignedRoot::from_stored(&bytes) {
            if altered != good {
                assert!(
                    check_successor(None, &pinned, &altered, CLUSTER, Some(NOW)).is_err(),
                    "byte {at} altered and still accepted"
                );
            }
        }
    }
    assert!(SignedRoot::from_stored(b"plain").is_err());
    assert!(SignedRoot::from_json("{}").is_err());
}

#[test]
fn malformed_roots_are_refused_with_the_field_at_fault() {
    let (a, operator) = (key(), key());
    let mut bad = root(1, &[&a], &operator);
    let err = bad.check_shape().unwrap_err();
    assert!(
        err.to_string()
            .contains("root_keys: threshold 2, expected 1 to 1"),
        "{err}"
    );
    bad.root_threshold = 1;
    bad.prefixes[0].threshold = 2;
    let err = bad.check_shape().unwrap_err();
    assert!(
        err.to_string().contains("prefix \"/app/\": threshold 2"),
        "{err}"
    );
    bad.prefixes[0].threshold = 1;
    bad.prefixes.push(bad.prefixes[0].clone());
    assert!(bad
        .check_shape()
        .unwrap_err()
        .to_string()
        .contains("listed twice"));
}

#[test]
fn a_root_sets_the_policy_signed_changes_are_checked_against() {
    let (a, b, operator) = (key(), key(), key());
    let mut root = root(3, &[&a, &b], &operator);
    root.prefixes[0].threshold = 1;
    let policy = root.policy();
    assert_eq!(policy.cluster_id, Some(CLUSTER));
    assert_eq!(policy.root_version, 3);
    assert!(policy.is_protected(b"/app/x"));
    assert!(!policy.is_protected(b"/other"));
    assert_eq!(policy.threshold(b"/app/x"), 1);
}

#[test]
fn puts_are_checked_at_their_version_key_and_the_chain_is_walked_from_the_pins() {
    let (a, b, c, operator) = (key(), key(), key(), key());
    let pinned = PinnedRoot {
        keys: public(&[&a, &b]),
        threshold: 2,
    };
    let v1 = signed(root(1, &[&a, &b], &operator), &[&a, &b]);
    let v2 = signed(root(2, &[&b, &c], &operator), &[&a, &b, &c]);
    let (k1, k2) = (root_key(1), root_key(2));
    check_put(None, &pinned, &k1, &v1.to_stored(), CLUSTER, NOW).unwrap();
    let err = check_put(None, &pinned, &k2, &v1.to_stored(), CLUSTER, NOW).unwrap_err();
    assert!(err.to_string().contains("belongs at"), "{err}");
    let err = check_put(
        None,
        &PinnedRoot::default(),
        &k1,
        &v1.to_stored(),
        CLUSTER,
        NOW,
    )
    .unwrap_err();
    assert!(err.to_string().contains("root_keys"), "{err}");
    check_put(Some(&v1.root), &pinned, &k2, &v2.to_stored(), CLUSTER, NOW).unwrap();

    let (s1, s2) = (v1.to_stored(), v2.to_stored());
    let (newest, problem) = walk(&pinned, CLUSTER, [(&k1[..], &s1[..]), (&k2[..], &s2[..])]);
    assert_eq!(newest.unwrap().version, 2);
    assert_eq!(problem, None);
    // A forged version 3 (signed by keys nobody trusts) ends the walk at 2.
    let (x, y) = (key(), key());
    let forged = signed(root(3, &[&x, &y], &x), &[&x, &y]).to_stored();
    let k3 = root_key(3);
    let (newest, problem) = walk(
        &pinned,
        CLUSTER,
        [
            (&k1[..], &s1[..]),
            (&k2[..], &s2[..]),
            (&k3[..], &forged[..]),
        ],
    );
    assert_eq!(newest.unwrap().version, 2);
    assert!(problem.unwrap().contains("0003"));
    // A gap (version 2 missing) ends it at 1.
    let (newest, problem) = walk(
        &pinned,
        CLUSTER,
        [(&k1[..], &s1[..]), (&k3[..], &forged[..])],
    );
    assert_eq!(newest.unwrap().version, 1);
    assert!(problem.is_some());
}

/// A recipient made fresh for a test.
fn recipient() -> String {
    let dir = tempfile::tempdir().unwrap();
    super::secrets::generate_identity(&dir.path().join("id.age"))
        .unwrap()
        .to_string()
}

#[test]
fn roots_without_new_features_keep_version_1s_bytes() {
    let (r1, r2, operator) = (key(), key(), key());
    let plain = signed(root(1, &[&r1, &r2], &operator), &[&r1, &r2]);
    let stored = plain.to_stored();
    assert!(stored.starts_with(b"\0edgeconf-root-v1\0"));
    assert_eq!(SignedRoot::from_stored(&stored).unwrap(), plain);
    // The same root behind version 2's magic is not a second form of it.
    let mut relabelled = b"\0edgeconf-root-v2\0".to_vec();
    relabelled.extend(postcard::to_stdvec(&plain).unwrap());
    assert!(SignedRoot::from_stored(&relabelled).is_err());
    assert_eq!(plain.valid_signers(&public(&[&r1, &r2])), 2);

    // Audiences and a prefix that keeps expired values need version 2,
    // whose signatures cover them.
    let mut rich = root(1, &[&r1, &r2], &operator);
    rich.prefixes[0].on_expiry = OnExpiry::Keep;
    rich.audiences.push(Audience {
        name: "eu".into(),
        recipients: vec![recipient()],
    });
    let rich = signed(rich, &[&r1, &r2]);
    let stored = rich.to_stored();
    assert!(stored.starts_with(b"\0edgeconf-root-v2\0"));
    let back = SignedRoot::from_stored(&stored).unwrap();
    assert_eq!(back, rich);
    assert_eq!(back.valid_signers(&public(&[&r1, &r2])), 2);
    assert_eq!(SignedRoot::from_json(&rich.to_json()).unwrap(), rich);
    assert_eq!(rich.root.policy().on_expiry(b"/app/x"), OnExpiry::Keep);
    assert_eq!(rich.root.policy().on_expiry(b"/other"), OnExpiry::Refuse);

    // Moving a member out of an audience after signing breaks every
    // signature.
    let mut altered = rich.clone();
    altered.root.audiences[0].recipients = vec![recipient()];
    assert_eq!(altered.valid_signers(&public(&[&r1, &r2])), 0);
    let mut altered = rich;
    altered.root.prefixes[0].on_expiry = OnExpiry::Refuse;
    assert_eq!(altered.valid_signers(&public(&[&r1, &r2])), 0);
}

#[test]
fn audiences_must_be_named_once_and_hold_age_recipients() {
    let (r1, r2, operator) = (key(), key(), key());
    let with = |name: &str, recipients: Vec<String>| {
        let mut root = root(1, &[&r1, &r2], &operator);
        root.audiences.push(Audience {
            name: name.into(),
            recipients,
        });
        root
    };
    with("eu", vec![recipient()]).check_shape().unwrap();
    let refused = |root: Root| root.check_shape().unwrap_err().to_string();
    assert!(refused(with("eu", vec!["age1nope".into()])).contains("not an age recipient"));
    assert!(refused(with("eu", Vec::new())).contains("0 recipients"));
    assert!(refused(with("", vec![recipient()])).contains("audience name"));
    assert!(refused(with("e u", vec![recipient()])).contains("audience name"));
    let mut twice = with("eu", vec![recipient()]);
    twice.audiences.push(twice.audiences[0].clone());
    assert!(refused(twice).contains("listed twice"));
}
