//! Cost of signed config per value: signing, the check every read of a
//! signed value makes, parsing, and secrets (age) at a few sizes.
//!
//! Run: `cargo bench --bench signing` (prints medians; asserts nothing).

mod support;

use std::hint::black_box;

use edgeconf::signing::{
    keys, secrets, Binding, Identities, Keyring, OnExpiry, Op, PrefixTrust, SignedChange,
    TrustPolicy,
};

const BINDING: Binding = Binding {
    cluster_id: 0xc1,
    root_version: 0,
};

use support::per_call;

fn main() {
    let signer = keys::generate_signing_key().unwrap();
    let trust = TrustPolicy {
        keys: vec![signer.verifying_key().to_bytes()],
        prefixes: vec![PrefixTrust {
            prefix: b"/app/".to_vec(),
            keys: Vec::new(),
            threshold: 1,
            on_expiry: OnExpiry::Refuse,
        }],
        allow_unsigned: true,
        cluster_id: Some(BINDING.cluster_id),
        root_version: 0,
    };
    println!("{:<44} {:>12}", "operation", "median µs");
    for size in [64usize, 4096, 65536] {
        let value = vec![b'x'; size];
        let sign = per_call(2_000, || {
            black_box(
                SignedChange::sign(
                    &signer,
                    b"/app/k".to_vec(),
                    Op::Put,
                    1,
                    false,
                    value.clone(),
                    BINDING,
                )
                .unwrap(),
            );
        });
        let stored = SignedChange::sign(
            &signer,
            b"/app/k".to_vec(),
            Op::Put,
            1,
            false,
            value,
            BINDING,
        )
        .unwrap()
        .to_stored();
        let parse = per_call(20_000, || {
            black_box(SignedChange::from_stored(&stored).unwrap());
        });
        let check = per_call(2_000, || {
            black_box(trust.check_stored(b"/app/k", &stored, Some(1)).unwrap());
        });
        let keyring = Keyring::new(trust.clone(), Identities::none(), Vec::new());
        let seen = per_call(20_000, || {
            black_box(keyring.check_stored(b"/app/k", &stored, Some(1)).unwrap());
        });
        println!("{:<44} {sign:>12.1}", format!("sign a {size} B value"));
        println!(
            "{:<44} {parse:>12.2}",
            format!("parse a stored {size} B change")
        );
        println!(
            "{:<44} {check:>12.1}",
            format!("check before serving ({size} B)")
        );
        println!(
            "{:<44} {seen:>12.2}",
            format!("  the same value again (remembered)")
        );
    }
    threshold(&signer);
    root_update();
    let plain = per_call(200_000, || {
        black_box(
            trust
                .check_stored(b"/free/k", b"plain value", None)
                .unwrap(),
        );
    });
    println!(
        "{:<44} {plain:>12.3}",
        "check an unsigned, unprotected value"
    );

    let dir = tempfile::tempdir().unwrap();
    let recipient = secrets::generate_identity(&dir.path().join("fleet.age")).unwrap();
    let identities = Identities::load(&[dir.path().join("fleet.age")]).unwrap();
    for size in [64usize, 4096] {
        let secret = vec![b's'; size];
        let encrypt = per_call(500, || {
            black_box(secrets::encrypt(std::slice::from_ref(&recipient), &secret).unwrap());
        });
        let ciphertext = secrets::encrypt(std::slice::from_ref(&recipient), &secret).unwrap();
        let decrypt = per_call(500, || {
            black_box(identities.decrypt(&ciphertext).unwrap());
        });
        println!(
            "{:<44} {encrypt:>12.1}",
            format!("encrypt a {size} B secret (1 recipient)")
        );
        println!(
            "{:<44} {decrypt:>12.1}",
            format!("decrypt a {size} B secret")
        );
    }
}

/// A 2-of-3 prefix: checking a change that carries two signatures.
fn threshold(global: &ed25519_dalek::SigningKey) {
    let (b, c) = (
        keys::generate_signing_key().unwrap(),
        keys::generate_signing_key().unwrap(),
    );
    let trust = TrustPolicy {
        keys: vec![global.verifying_key().to_bytes()],
        prefixes: vec![PrefixTrust {
            prefix: b"/secure/".to_vec(),
            keys: vec![b.verifying_key().to_bytes(), c.verifying_key().to_bytes()],
            threshold: 2,
            on_expiry: OnExpiry::Refuse,
        }],
        allow_unsigned: true,
        cluster_id: Some(BINDING.cluster_id),
        root_version: 0,
    };
    let mut change = SignedChange::sign(
        &b,
        b"/secure/k".to_vec(),
        Op::Put,
        1,
        false,
        vec![b'x'; 4096],
        BINDING,
    )
    .unwrap();
    change.add_signature(global).unwrap();
    let stored = change.to_stored();
    let check = per_call(2_000, || {
        black_box(trust.check_stored(b"/secure/k", &stored, Some(1)).unwrap());
    });
    println!(
        "{:<44} {check:>12.1}",
        "check a 2-of-3 change before serving (4 KiB)"
    );
}

/// A root update: version 2 (three root keys, two must sign, ten operator
/// keys over five prefixes) checked against version 1, and the walk an
/// agent makes over both.
fn root_update() {
    use edgeconf::signing::root::{
        check_successor, root_key, walk, PinnedRoot, Role, Root, SignedRoot,
    };
    let root_keys: Vec<_> = (0..3)
        .map(|_| keys::generate_signing_key().unwrap())
        .collect();
    let public = |k: &ed25519_dalek::SigningKey| k.verifying_key().to_bytes();
    let operators: Vec<[u8; 32]> = (0..10)
        .map(|_| public(&keys::generate_signing_key().unwrap()))
        .collect();
    let root = |version| Root {
        cluster_id: BINDING.cluster_id,
        version,
        expires_unix: u64::MAX,
        root_keys: root_keys.iter().map(public).collect(),
        root_threshold: 2,
        keys: operators[..2].to_vec(),
        prefixes: (0..5)
            .map(|i| Role {
                prefix: format!("/p{i}/").into_bytes(),
                keys: operators[2 + i..4 + i].to_vec(),
                threshold: 2,
                on_expiry: OnExpiry::Refuse,
            })
            .collect(),
        allow_unsigned: false,
        audiences: Vec::new(),
    };
    let sign = |root: Root| {
        let mut signed = SignedRoot::new(root);
        signed.sign(&root_keys[0]).unwrap();
        signed.sign(&root_keys[1]).unwrap();
        signed
    };
    let pinned = PinnedRoot {
        keys: root_keys.iter().map(public).collect(),
        threshold: 2,
    };
    let (v1, v2) = (sign(root(1)), sign(root(2)));
    let check = per_call(2_000, || {
        check_successor(Some(&v1.root), &pinned, &v2, BINDING.cluster_id, Some(0)).unwrap();
    });
    let (k1, k2, s1, s2) = (root_key(1), root_key(2), v1.to_stored(), v2.to_stored());
    let walked = per_call(1_000, || {
        let (newest, problem) = walk(
            &pinned,
            BINDING.cluster_id,
            [(&k1[..], &s1[..]), (&k2[..], &s2[..])],
        );
        assert!(newest.is_some() && problem.is_none());
    });
    println!(
        "{:<44} {check:>12.1}",
        "check a root update (2 of 3 root keys)"
    );
    println!(
        "{:<44} {walked:>12.1}",
        "walk a chain of 2 roots from the pins"
    );
}
