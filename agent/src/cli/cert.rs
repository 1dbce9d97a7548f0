//! `edgeconf cert`: a small CA for the client API, without OpenSSL
//! incantations. Private keys are written with mode 0600 and never
//! overwritten.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::signing::keys::write_secret_file;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a certificate authority: ca.crt and ca.key in --out-dir.
    Ca(CaArgs),
    /// Issue a certificate signed by the CA: NAME.crt and NAME.key. It
    /// serves as a server certificate (for its --ip/--dns) and as a client
    /// certificate whose common name is NAME (the user, with auth).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "edgeconf CA")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Common name: the agent's or the user's name.
    #[arg(long)]
    pub name: String,
    /// IP addresses the certificate is valid for (repeat).
    #[arg(long = "ip")]
    pub ips: Vec<std::net::IpAddr>,
    /// DNS names the certificate is valid for (repeat).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Where ca.crt and ca.key are.
    #[arg(long, default_value = ".")]
    pub ca_dir: PathBuf,
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
}

pub fn run(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Ca(args) => ca(args),
        CertCommand::Issue(args) => issue(args),
    }
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            path.display()
        );
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn ca(args: CaArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, &args.name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    let (cert_path, key_path) = (args.out_dir.join("ca.crt"), args.out_dir.join("ca.key"));
    write_secret_file(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, &cert.pem())?;
    println!(
        "wrote {} and {} (keep the key private)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    let read = |name: &str| {
        let path = args.ca_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (make a CA with `edgeconf cert ca`)",
                path.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?).context("ca.key is not a PEM private key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.crt")?, ca_key)
        .context("ca.crt is not a PEM CA certificate")?;
    if args.name.is_empty() {
        bail!("--name is empty: give the agent's or user's name");
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, &args.name);
    params.subject_alt_names = args
        .ips
        .iter()
        .map(|ip| Ok(SanType::IpAddress(*ip)))
        .chain(args.dns.iter().map(|name| {
            Ok(SanType::DnsName(name.clone().try_into().with_context(
                || format!("--dns {name:?} is not a DNS name"),
            )?))
        }))
        .collect::<anyhow::Result<_>>()?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(&args.out_dir)?;
    let cert_path = args.out_dir.join(format!("{}.crt", args.name));
    let key_path = args.out_dir.join(format!("{}.key", args.name));
    write_secret_file(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, &cert.pem())?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    Ok(())
}
