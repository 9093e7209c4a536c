//! Azurite, the Azure Storage emulator, started for one test: blob service only, in memory,
//! over HTTPS with a throwaway certificate, and in OAuth mode so that requests must carry a
//! bearer token as they do in Azure.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, Transport, Url};
use time::OffsetDateTime;

use super::{TempDir, repo, temp_dir};

/// A running Azurite blob service; killed on drop.
pub struct Azurite {
    child: Child,
    port: u16,
    ca_pem: Vec<u8>,
    _dir: TempDir,
}

impl Azurite {
    /// Starts Azurite from the repository's `node_modules` and waits until it listens.
    ///
    /// Panics, failing the test, when Azurite or openssl is missing: a blob test that
    /// skipped itself would pass without testing anything.
    pub fn start() -> Self {
        let root = repo();
        let program = root.join("node_modules").join(".bin").join("azurite-blob");
        assert!(
            program.exists(),
            "azurite is not installed ({} is missing): run `npm ci` in {} to install the \
             Azure Storage emulator the blob checkpoint tests run against",
            program.display(),
            root.display()
        );
        let dir = temp_dir("azurite");
        let (cert, key, ca_pem) = make_certificate(&dir);
        let port = free_port();
        let log = dir.join("azurite.log");

        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--oauth", "basic", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
            .current_dir(&*dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the azurite log"))
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let mut azurite = Azurite {
            child,
            port,
            ca_pem,
            _dir: dir,
        };
        azurite.wait_until_listening(&log);
        azurite
    }

    fn wait_until_listening(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                panic!("azurite exited with {status} before listening:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "azurite did not listen on 127.0.0.1:{} within 20 s",
            self.port
        );
    }

    /// The blob service endpoint of Azurite's default account.
    pub fn service_url(&self) -> Url {
        Url::parse(&format!("https://127.0.0.1:{}/devstoreaccount1", self.port))
            .expect("a valid URL")
    }

    /// Client options whose transport trusts Azurite's certificate, as production's
    /// default transport trusts Azure's.
    pub fn client_options(&self) -> ClientOptions {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem).expect("a PEM certificate");
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            ..Default::default()
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago; Azurite takes a port number, not a listener.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a local address").port()
}

/// Makes a throwaway CA and a server certificate for 127.0.0.1 signed by it, and returns
/// the server certificate, its key and the CA certificate. A self-signed server certificate
/// would not do: rustls refuses a CA certificate used as a server's.
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let ca_key = dir.join("ca-key.pem");
    let ca = dir.join("ca.pem");
    let key = dir.join("key.pem");
    let csr = dir.join("server.csr");
    let cert = dir.join("cert.pem");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .expect("write the certificate extensions");

    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=threatfox-sentinel test CA",
        "-keyout",
        path(&ca_key),
        "-out",
        path(&ca),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        path(&key),
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&ca),
        "-CAkey",
        path(&ca_key),
        "-set_serial",
        "1",
        "-days",
        "2",
        "-extfile",
        path(&ext),
        "-out",
        path(&cert),
    ]);
    let ca_pem = std::fs::read(&ca).expect("read the CA certificate");
    (cert, key, ca_pem)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run openssl ({err}): install it to make the azurite test certificate")
        });
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A credential that mints the unsigned-but-plausible tokens Azurite's basic OAuth mode
/// accepts: it checks the audience, the issuer's prefix and the lifetime, not the signature.
#[derive(Debug)]
pub struct FakeStorageCredential;

#[async_trait]
impl TokenCredential for FakeStorageCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        assert_eq!(scopes, ["https://storage.azure.com/.default"]);
        let now = OffsetDateTime::now_utc();
        let expires = now + time::Duration::hours(1);
        let claims = serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            "iat": now.unix_timestamp(),
            "nbf": now.unix_timestamp() - 60,
            "exp": expires.unix_timestamp(),
            "oid": "00000000-0000-0000-0000-000000000001",
        });
        let header = azure_core::base64::encode_url_safe(r#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = azure_core::base64::encode_url_safe(claims.to_string());
        let token = format!("{header}.{payload}.c2lnbmF0dXJl");
        Ok(AccessToken::new(token, expires))
    }
}
