//! The command line: the clap tree of every command, its flags, and the parsers of their
//! values (members, identities, guarded operations, object ids).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cloudkey_protocol::gov::GuardedOp;
use cloudkey_protocol::msg::{Member, ObjectId};
use cloudkey_protocol::tls::{PeerIdentity, Role as PeerRole, URI_PREFIX};
use cloudkey_protocol::{ck, vendor};

use cloudkey_node::dev;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "cloudkey",
    version,
    about = "cloudkey operator CLI: cluster PKI, bootstrap, membership, tokens, keys and a local \
             development cluster"
)]
pub struct Cli {
    /// Client settings (TOML with endpoints, ca, cert, key). Default: $CLOUDKEY_CONFIG, else
    /// .cloudkey-dev/operator.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read PINs from standard input, one per line, in the order the command asks for them.
    /// Without it a PIN comes from the command's environment variable, else from a prompt.
    /// PINs are never taken on the command line.
    #[arg(long, global = true)]
    pub pin_stdin: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster CA and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Bootstrap a new cluster: sends Init with every member to the first member's address.
    Init {
        /// A member, `ID=ADDR` (e.g. `1=127.0.0.1:7001`); repeat for each.
        #[arg(long = "member", value_name = "ID=ADDR", required = true, value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The chip registry: the chips the domain key may be exported to.
    #[command(subcommand)]
    Chip(ChipCommand),
    /// Asks every configured node for its status: members, leader, term, applied index, chips.
    Status,
    /// Tokens (PKCS#11 slots).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Keys and other objects.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Officers: the people who approve operations that a policy puts under quorum control.
    #[command(subcommand)]
    Officer(OfficerCommand),
    /// Quorum (M-of-N) policies: which operations need approvals, where, from whom.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Approval requests: list, approve, reject.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// The tamper-evident audit chain: export it, verify an export offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Terminal master-key (TMK) injection.
    #[command(subcommand)]
    Tmk(TmkCommand),
    /// A local development cluster of `cloudkey-node` processes on loopback.
    #[command(subcommand)]
    Dev(DevCommand),
}

/// `cloudkey pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Makes a new cluster CA and certificates for nodes, operators and clients.
    Init {
        /// Directory for the CA and the certificates (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node certificates for ids 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// An operator certificate (repeatable).
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
        /// A client certificate (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Replace an existing CA (every certificate of the old one is removed).
        #[arg(long)]
        force: bool,
    },
    /// Issues one more certificate from the existing CA in DIR.
    Issue {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing certificate of the same identity.
        #[arg(long)]
        force: bool,
        /// Role of the certificate.
        role: Role,
        /// Node id, or operator or client name.
        name: String,
    },
    /// Issues every node, operator and client certificate in DIR again, with a fresh key and
    /// a fresh lifetime (leaf certificates last 90 days). Restart each node and hand out the
    /// new files afterwards.
    Rotate {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Certificate roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A cluster node (server and client authentication).
    Node,
    /// An operator (administration).
    Operator,
    /// A client (applications, the PKCS#11 module).
    Client,
}

/// `cloudkey node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Adds a node (learner, then voter). Start it first with a certificate from the CA.
    Add {
        /// Raft node id.
        id: u64,
        /// Its address, `host:port`.
        addr: String,
    },
    /// Removes a node from the membership.
    Remove {
        /// Raft node id.
        id: u64,
    },
}

/// `cloudkey chip ...`
#[derive(Debug, Subcommand)]
pub enum ChipCommand {
    /// Lists the enrolled chips: node, fingerprint, model, serial, who enrolled them and when.
    List,
    /// Enrols the chips of a member (after a chip was added or replaced; `node add` enrols a
    /// new node's chips itself). Each chip proves that it holds its identity key; compare the
    /// fingerprints printed with the chips' own. Under a `govern` quorum rule this opens an
    /// approval request.
    Enroll {
        /// The member's node id.
        #[arg(long)]
        node: u64,
    },
    /// Retires a chip: the domain key is never exported to it again.
    Retire {
        /// Its fingerprint (64 hex digits, as `chip list` prints it).
        fingerprint: String,
    },
}

/// `cloudkey token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token.
    /// The SO PIN, then the user PIN, come from standard input (`--pin-stdin`), from
    /// $CLOUDKEY_SO_PIN and $CLOUDKEY_USER_PIN, or from prompts; without a user PIN, C_InitPIN
    /// sets it later.
    Create {
        /// Label (at most 32 bytes).
        label: String,
    },
    /// Lists tokens.
    List,
    /// Deletes a token and all its objects.
    Delete {
        /// Token id or label.
        token: String,
    },
    /// Clears a token's failed-login counters and PIN locks.
    Unlock {
        /// Token id or label.
        token: String,
    },
}

/// `cloudkey key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Lists objects (all tokens, or one).
    List {
        /// Token id or label.
        #[arg(long)]
        token: Option<String>,
    },
}

/// `cloudkey officer ...`
#[derive(Debug, Subcommand)]
pub enum OfficerCommand {
    /// Registers an officer; the PIN comes from $CLOUDKEY_OFFICER_PIN.
    Add {
        /// Unique name.
        name: String,
        /// The certificate identity the officer must connect with: `operator/NAME` or
        /// `client/NAME`.
        #[arg(long, value_name = "ROLE/NAME", value_parser = parse_officer_identity)]
        identity: String,
    },
    /// Lists officers.
    List,
}

/// Where a policy applies: exactly one of `--token`, `--key`, `--cluster`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// Every object of a token (label or id).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
    /// One key (its object id, 32 hex digits, as `cloudkey key list` shows).
    #[arg(long, value_name = "HEXID", value_parser = parse_object_id)]
    pub key: Option<ObjectId>,
    /// The whole cluster (terminal master-key injection).
    #[arg(long)]
    pub cluster: bool,
}

/// Key types a `generate` rule can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyTypeArg {
    /// `CKK_AES`.
    Aes,
    /// `CKK_EC`.
    Ec,
    /// `CKK_RSA`.
    Rsa,
    /// `CKK_SM2` (vendor).
    Sm2,
    /// `CKK_SM4` (vendor).
    Sm4,
    /// `CKK_GENERIC_SECRET`.
    Generic,
}

impl KeyTypeArg {
    /// The `CKK_*` value.
    #[must_use]
    pub fn ckk(self) -> u64 {
        match self {
            Self::Aes => ck::CKK_AES,
            Self::Ec => ck::CKK_EC,
            Self::Rsa => ck::CKK_RSA,
            Self::Sm2 => vendor::CKK_SM2,
            Self::Sm4 => vendor::CKK_SM4,
            Self::Generic => ck::CKK_GENERIC_SECRET,
        }
    }
}

/// `cloudkey policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Puts an operation under quorum control in a scope: replaces the scope's rule for that
    /// operation (and key type), or adds one.
    Set {
        /// Where.
        #[command(flatten)]
        scope: ScopeArgs,
        /// The operation: generate, wrap, destroy, set-attributes, sign or tmk-inject.
        #[arg(long, value_parser = parse_op)]
        op: GuardedOp,
        /// Approvals needed (M).
        #[arg(long)]
        quorum: u32,
        /// An officer who may approve (repeat for each of the N); default: any officer.
        #[arg(long = "officer", value_name = "NAME")]
        officers: Vec<String>,
        /// Only for `--op generate`: guard only keys of this type.
        #[arg(long, value_enum)]
        key_type: Option<KeyTypeArg>,
        /// How long a request stays open, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Removes a scope's rules for one operation (all key types), or all its rules.
    Clear {
        /// Where.
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only this operation's rules.
        #[arg(long, value_parser = parse_op)]
        op: Option<GuardedOp>,
    },
    /// Lists every policy.
    List,
}

/// `cloudkey approval ...`
#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Lists open approval requests.
    List {
        /// Also approved, rejected, expired and consumed ones.
        #[arg(long)]
        all: bool,
    },
    /// Shows a pending request, then approves exactly its parameters (PIN from
    /// $CLOUDKEY_OFFICER_PIN).
    Approve {
        /// Request id.
        id: u64,
        /// The approving officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// Rejects a pending request (PIN from $CLOUDKEY_OFFICER_PIN).
    Reject {
        /// Request id.
        id: u64,
        /// The rejecting officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
}

/// `cloudkey audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Exports the whole audit chain with the audit key to a JSON file.
    Export {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verifies an export offline against the cluster CA: hashes, links, checkpoints and the
    /// audit key's endorsement. Exit status 1 names the first bad record.
    Verify {
        /// The export (`cloudkey audit export`).
        file: PathBuf,
        /// The cluster CA certificate(s), PEM.
        #[arg(long, value_name = "CA_PEM")]
        ca: PathBuf,
    },
}

/// `cloudkey tmk ...`
#[derive(Debug, Subcommand)]
pub enum TmkCommand {
    /// Terminals.
    #[command(subcommand)]
    Terminal(TerminalCommand),
    /// As the terminal: opens an injection application and shows its QR code.
    Request {
        /// Terminal number.
        id: String,
        /// Also write the QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
    /// As the first administrator: has a one-time code sent to the officer's phone (PIN from
    /// $CLOUDKEY_OFFICER_PIN).
    Sms {
        /// Terminal number.
        id: String,
        /// The officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// As the first administrator: applies for the injection with the scanned QR payload and
    /// the one-time code (PIN from $CLOUDKEY_OFFICER_PIN); opens the approval request the
    /// second administrator approves.
    Apply {
        /// Terminal number.
        id: String,
        /// The scanned QR payload (`CKTMK1.<terminal>.<application>.<nonce>`).
        #[arg(long, value_name = "P")]
        payload: String,
        /// The one-time code.
        #[arg(long, value_name = "CODE")]
        sms_code: String,
        /// The applying officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// As the terminal: fetches the approved TMK, encrypted under the terminal's key; with
    /// --private-key decrypts it locally and checks its KCV (the key is never shown).
    Fetch {
        /// Terminal number.
        id: String,
        /// The terminal's QR payload.
        #[arg(long, value_name = "P")]
        payload: String,
        /// The applicant officer's name, as entered on the terminal.
        #[arg(long, value_name = "NAME")]
        admin: String,
        /// The terminal's private key (PKCS#8 PEM, as `tmk terminal keygen` writes).
        #[arg(long, value_name = "PEM")]
        private_key: Option<PathBuf>,
        /// Write the encrypted key (binary) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `cloudkey tmk terminal ...`
#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Registers (or replaces) a terminal with its public key and administrators.
    #[command(group(clap::ArgGroup::new("terminal_key").required(true)))]
    Add {
        /// Terminal number (1 to 64 of A-Z a-z 0-9 - _).
        id: String,
        /// RSA public key (2048 bits or more), SubjectPublicKeyInfo PEM: the TMK is AES-256.
        #[arg(long, value_name = "PEM", group = "terminal_key")]
        rsa_public_key: Option<PathBuf>,
        /// SM2 public key, SubjectPublicKeyInfo PEM: the TMK is SM4.
        #[arg(long, value_name = "PEM", group = "terminal_key")]
        sm2_public_key: Option<PathBuf>,
        /// An officer responsible for the terminal (repeat; the two administrators).
        #[arg(long = "admin", value_name = "NAME", required = true)]
        admins: Vec<String>,
        /// Bind the terminal to this certificate identity (`client/NAME`).
        #[arg(long, value_name = "client/NAME", value_parser = parse_terminal_identity)]
        identity: Option<String>,
    },
    /// Lists terminals.
    List,
    /// Development helper playing the terminal: writes a new key pair, `terminal.key.pem`
    /// (PKCS#8) and `terminal.pub.pem`, RSA-2048 or SM2.
    Keygen {
        /// Directory for the two files (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// An SM2 key pair instead of RSA-2048.
        #[arg(long)]
        sm2: bool,
    },
}

/// `cloudkey dev ...`
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Starts (or reports) a local cluster: PKI, node configs, N detached nodes, init, token `dev`.
    Up {
        /// State directory.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Software chips per node.
        #[arg(long, default_value_t = 2)]
        chips_per_node: u32,
    },
    /// Stops the local cluster (SIGTERM, then SIGKILL after a bound); keeps the data unless
    /// --purge.
    Down {
        /// State directory.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// Also delete the PKI, configs, logs and node data.
        #[arg(long)]
        purge: bool,
    },
}

fn parse_member(s: &str) -> Result<Member, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=ADDR"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: the id is not a number"))?;
    let addr = addr.trim();
    if addr.is_empty() || !addr.contains(':') {
        return Err(format!("{s:?}: the address must be host:port"));
    }
    Ok(Member {
        id,
        addr: addr.to_owned(),
    })
}

fn parse_identity(s: &str, roles: &[&str]) -> Result<String, String> {
    let id = PeerIdentity::from_uri(&format!("{URI_PREFIX}{s}")).map_err(|e| e.to_string())?;
    let role = match id.role {
        PeerRole::Node(_) => "node",
        PeerRole::Operator => "operator",
        PeerRole::Client => "client",
    };
    if roles.contains(&role) {
        Ok(s.to_owned())
    } else {
        let forms: Vec<String> = roles.iter().map(|r| format!("{r}/NAME")).collect();
        Err(format!("{s:?}: expected {}", forms.join(" or ")))
    }
}

fn parse_officer_identity(s: &str) -> Result<String, String> {
    parse_identity(s, &["operator", "client"])
}

fn parse_terminal_identity(s: &str) -> Result<String, String> {
    parse_identity(s, &["client"])
}

fn parse_op(s: &str) -> Result<GuardedOp, String> {
    GuardedOp::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = GuardedOp::ALL.iter().map(|o| o.name()).collect();
        format!("{s:?}: expected one of {}", names.join(", "))
    })
}

fn parse_object_id(s: &str) -> Result<ObjectId, String> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(s.trim(), &mut id)
        .map_err(|_| format!("{s:?}: an object id is 32 hex digits"))?;
    Ok(ObjectId(id))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_lines_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&["cloudkey", "status", "--config", "x.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(matches!(cli.command, Command::Status));
        let cli = parse(&[
            "cloudkey",
            "init",
            "--member",
            "1=127.0.0.1:1",
            "--member",
            "2=127.0.0.1:2",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Init { ref members } if members.len() == 2));
        assert!(parse(&["cloudkey", "init"]).is_err(), "init needs members");
        let cli = parse(&["cloudkey", "--pin-stdin", "token", "create", "t"]).unwrap();
        assert!(cli.pin_stdin);
        assert!(matches!(
            cli.command,
            Command::Token(TokenCommand::Create { ref label }) if label == "t"
        ));
        // A PIN is never an argument.
        assert!(parse(&["cloudkey", "token", "create", "t", "--so-pin", "12345678"]).is_err());
        let cli = parse(&["cloudkey", "pki", "issue", "--dir", "p", "client", "app"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Pki(PkiCommand::Issue { role: Role::Client, ref name, .. }) if name == "app"
        ));
        let cli = parse(&["cloudkey", "dev", "up"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dev(DevCommand::Up { nodes: 3, chips_per_node: 2, ref dir })
                if dir == Path::new(dev::DEFAULT_DIR)
        ));
        assert!(parse(&["cloudkey", "node", "add", "4", "127.0.0.1:4"]).is_ok());
        assert!(parse(&["cloudkey", "key", "list", "--token", "dev"]).is_ok());
    }

    #[test]
    fn members_parse() {
        let m = parse_member("2=127.0.0.1:7002").unwrap();
        assert_eq!((m.id, m.addr.as_str()), (2, "127.0.0.1:7002"));
        assert!(parse_member("x=1:2").is_err());
        assert!(parse_member("1").is_err());
        assert!(parse_member("1=nohost").is_err());
    }
    #[test]
    fn governance_command_lines_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&[
            "cloudkey",
            "policy",
            "set",
            "--token",
            "dev",
            "--op",
            "generate",
            "--quorum",
            "2",
            "--officer",
            "alice",
            "--officer",
            "bob",
            "--key-type",
            "sm4",
        ])
        .unwrap();
        match cli.command {
            Command::Policy(PolicyCommand::Set {
                scope,
                op,
                quorum,
                officers,
                key_type,
                ttl_secs,
            }) => {
                assert_eq!(scope.token.as_deref(), Some("dev"));
                assert!(scope.key.is_none() && !scope.cluster);
                assert_eq!((op, quorum, ttl_secs), (GuardedOp::Generate, 2, 3600));
                assert_eq!(officers, ["alice", "bob"]);
                assert_eq!(key_type.map(KeyTypeArg::ckk), Some(vendor::CKK_SM4));
            }
            other => panic!("{other:?}"),
        }
        let id = "00112233445566778899aabbccddeeff";
        let cli = parse(&["cloudkey", "policy", "clear", "--key", id, "--op", "sign"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy(PolicyCommand::Clear { ref scope, op: Some(GuardedOp::Sign) })
                if scope.key.map(|k| k.to_string()).as_deref() == Some(id)
        ));
        // Exactly one scope.
        assert!(parse(&["cloudkey", "policy", "clear"]).is_err());
        assert!(parse(&["cloudkey", "policy", "clear", "--cluster", "--token", "dev"]).is_err());
        assert!(parse(&["cloudkey", "policy", "clear", "--key", "abc"]).is_err());
        assert!(parse(&[
            "cloudkey",
            "policy",
            "set",
            "--cluster",
            "--op",
            "fly",
            "--quorum",
            "1"
        ])
        .is_err());
        let cli = parse(&[
            "cloudkey",
            "officer",
            "add",
            "alice",
            "--identity",
            "operator/alice",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Officer(OfficerCommand::Add { ref identity, .. }) if identity == "operator/alice"
        ));
        assert!(parse(&["cloudkey", "officer", "add", "a", "--identity", "node/1"]).is_err());
        assert!(parse(&["cloudkey", "officer", "add", "a", "--identity", "alice"]).is_err());
        assert!(parse(&["cloudkey", "approval", "approve", "7", "--officer", "bob"]).is_ok());
        assert!(parse(&["cloudkey", "approval", "approve", "7"]).is_err());
        assert!(parse(&["cloudkey", "audit", "verify", "a.json", "--ca", "ca.pem"]).is_ok());
        assert!(parse(&["cloudkey", "audit", "export", "--out", "a.json"]).is_ok());
        let cli = parse(&[
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "ATM-1",
            "--sm2-public-key",
            "p.pem",
            "--admin",
            "alice",
            "--admin",
            "bob",
            "--identity",
            "client/atm1",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Tmk(TmkCommand::Terminal(TerminalCommand::Add {
                rsa_public_key: None,
                sm2_public_key: Some(_),
                ref admins,
                ..
            })) if admins.len() == 2
        ));
        let both = [
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "A",
            "--sm2-public-key",
            "p",
            "--rsa-public-key",
            "q",
            "--admin",
            "a",
        ];
        assert!(parse(&both).is_err(), "one key only");
        assert!(parse(&["cloudkey", "tmk", "terminal", "add", "A", "--admin", "a"]).is_err());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "A",
            "--rsa-public-key",
            "p",
            "--admin",
            "a",
            "--identity",
            "operator/x",
        ])
        .is_err());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "apply",
            "A",
            "--payload",
            "P",
            "--sms-code",
            "123456",
            "--officer",
            "alice",
        ])
        .is_ok());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "fetch",
            "A",
            "--payload",
            "P",
            "--admin",
            "alice",
            "--private-key",
            "k.pem",
            "--out",
            "tmk.bin",
        ])
        .is_ok());
        assert!(parse(&["cloudkey", "tmk", "terminal", "keygen", "--out", "d", "--sm2"]).is_ok());
        assert!(parse(&["cloudkey", "tmk", "request", "A", "--png", "qr.png"]).is_ok());
    }
}
