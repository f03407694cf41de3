//! fork() and the module (PKCS#11 3.0 §6.7.1; the module's README): a C program, compiled here
//! with `cc`, loads the built module, logs in and signs, then forks. The child finds the module
//! not initialised (`CKR_CRYPTOKI_NOT_INITIALIZED`, also for the parent's session), initialises
//! it again, logs in, signs and verifies; the parent, after the child's exit, still signs with
//! its session. Every signature is checked here with the key's public point (aws-lc-rs).
//!
//! Why C: a pre-forking C server is the application this protects, and forking is only
//! well-defined from a single application thread, which a Rust test process (libtest's and
//! tokio's threads) is not. Whatever builds this workspace has a C compiler (aws-lc-sys needs
//! one; `.ci/run` installs `build-essential`), so `cc` is there.

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use cloudkey_tests::{Cluster, P11_CONFIG_ENV, P11_USER_PIN};

use crate::p11::{self, tool_keypair};

const PROGRAM: &str = r#"
/* The fork test of cloudkey's PKCS#11 module: see tests/tests/it/pkcs11_fork.rs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { void *create, *destroy, *lock, *unlock; CK_ULONG flags; void *reserved; } INIT_ARGS;
typedef struct { CK_ULONG mechanism; void *param; CK_ULONG param_len; } MECHANISM;
typedef struct { CK_ULONG type; void *value; CK_ULONG value_len; } ATTRIBUTE;

#define CKR_OK 0x0UL
#define CKR_CRYPTOKI_NOT_INITIALIZED 0x190UL
#define CKF_OS_LOCKING_OK 0x2UL
#define CKF_RW_SESSION 0x2UL
#define CKF_SERIAL_SESSION 0x4UL
#define CKU_USER 1UL
#define CKA_CLASS 0x0UL
#define CKA_LABEL 0x3UL
#define CKA_EC_POINT 0x181UL
#define CKO_PUBLIC_KEY 2UL
#define CKO_PRIVATE_KEY 3UL
#define CKM_ECDSA 0x1041UL

static struct {
    CK_RV (*Initialize)(void *);
    CK_RV (*Finalize)(void *);
    CK_RV (*GetSlotList)(unsigned char, CK_ULONG *, CK_ULONG *);
    CK_RV (*OpenSession)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
    CK_RV (*CloseSession)(CK_ULONG);
    CK_RV (*Login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
    CK_RV (*FindObjectsInit)(CK_ULONG, ATTRIBUTE *, CK_ULONG);
    CK_RV (*FindObjects)(CK_ULONG, CK_ULONG *, CK_ULONG, CK_ULONG *);
    CK_RV (*FindObjectsFinal)(CK_ULONG);
    CK_RV (*GetAttributeValue)(CK_ULONG, CK_ULONG, ATTRIBUTE *, CK_ULONG);
    CK_RV (*SignInit)(CK_ULONG, MECHANISM *, CK_ULONG);
    CK_RV (*Sign)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);
    CK_RV (*VerifyInit)(CK_ULONG, MECHANISM *, CK_ULONG);
    CK_RV (*Verify)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG);
} p;

static const char *who = "parent";
static const char *label, *pin;
static unsigned char digest[32];

static int ok(const char *what, CK_RV rv, CK_RV want) {
    if (rv == want) return 1;
    printf("FAIL %s: %s returned 0x%lx, expected 0x%lx\n", who, what, rv, want);
    fflush(stdout);
    return 0;
}
#define CHECK(what, call) do { if (!ok(what, (call), CKR_OK)) return -1; } while (0)

static void hex(const char *tag, const unsigned char *b, CK_ULONG n) {
    printf("%s ", tag);
    for (CK_ULONG i = 0; i < n; i++) printf("%02x", b[i]);
    printf("\n");
    fflush(stdout);
}

static int find(CK_ULONG s, CK_ULONG class, CK_ULONG *out) {
    ATTRIBUTE t[2] = {
        { CKA_CLASS, &class, sizeof class },
        { CKA_LABEL, (void *)label, strlen(label) },
    };
    CK_ULONG n = 0;
    CHECK("C_FindObjectsInit", p.FindObjectsInit(s, t, 2));
    CHECK("C_FindObjects", p.FindObjects(s, out, 1, &n));
    CHECK("C_FindObjectsFinal", p.FindObjectsFinal(s));
    if (n != 1) { printf("FAIL %s: key %s not found\n", who, label); return -1; }
    return 0;
}

/* Opens a session and logs in; finds the key pair. */
static int open_login(CK_ULONG *s, CK_ULONG *priv, CK_ULONG *pub) {
    CK_ULONG slots[8], n = 8;
    CHECK("C_GetSlotList", p.GetSlotList(1, slots, &n));
    if (n < 1) { printf("FAIL %s: no slot\n", who); return -1; }
    CHECK("C_OpenSession", p.OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s));
    CHECK("C_Login", p.Login(*s, CKU_USER, (unsigned char *)pin, strlen(pin)));
    if (find(*s, CKO_PRIVATE_KEY, priv) || find(*s, CKO_PUBLIC_KEY, pub)) return -1;
    return 0;
}

/* Signs the digest, verifies the signature through the module, prints it. */
static int sign(CK_ULONG s, CK_ULONG priv, CK_ULONG pub, const char *tag) {
    MECHANISM m = { CKM_ECDSA, NULL, 0 };
    unsigned char sig[64];
    CK_ULONG len = sizeof sig;
    CHECK("C_SignInit", p.SignInit(s, &m, priv));
    CHECK("C_Sign", p.Sign(s, digest, sizeof digest, sig, &len));
    CHECK("C_VerifyInit", p.VerifyInit(s, &m, pub));
    CHECK("C_Verify", p.Verify(s, digest, sizeof digest, sig, len));
    hex(tag, sig, len);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5 || strlen(argv[4]) != 64) {
        fprintf(stderr, "usage: %s MODULE LABEL PIN SHA256-HEX\n", argv[0]);
        return 2;
    }
    label = argv[2];
    pin = argv[3];
    for (int i = 0; i < 32; i++) sscanf(argv[4] + 2 * i, "%2hhx", &digest[i]);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("FAIL dlopen: %s\n", dlerror()); return 1; }
#define SYM(f) if (!(*(void **)&p.f = dlsym(lib, "C_" #f))) { printf("FAIL no C_" #f "\n"); return 1; }
    SYM(Initialize) SYM(Finalize) SYM(GetSlotList) SYM(OpenSession) SYM(CloseSession) SYM(Login)
    SYM(FindObjectsInit) SYM(FindObjects) SYM(FindObjectsFinal) SYM(GetAttributeValue)
    SYM(SignInit) SYM(Sign) SYM(VerifyInit) SYM(Verify)

    INIT_ARGS args = { 0 };
    args.flags = CKF_OS_LOCKING_OK;
    CK_ULONG s, priv, pub;
    if (!ok("C_Initialize", p.Initialize(&args), CKR_OK)) return 1;
    if (open_login(&s, &priv, &pub)) return 1;
    unsigned char point[128];
    ATTRIBUTE a = { CKA_EC_POINT, point, sizeof point };
    if (!ok("C_GetAttributeValue", p.GetAttributeValue(s, pub, &a, 1), CKR_OK)) return 1;
    hex("point", point, a.value_len);
    if (sign(s, priv, pub, "parent-sig")) return 1;

    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        who = "child";
        CK_ULONG n = 0;
        MECHANISM m = { CKM_ECDSA, NULL, 0 };
        int good = ok("C_GetSlotList before C_Initialize", p.GetSlotList(1, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED)
            && ok("C_SignInit on the parent's session", p.SignInit(s, &m, priv), CKR_CRYPTOKI_NOT_INITIALIZED)
            && ok("C_Finalize before C_Initialize", p.Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
        if (good) { printf("child-not-initialised ok\n"); fflush(stdout); }
        CK_ULONG cs, cpriv, cpub;
        good = good && ok("C_Initialize", p.Initialize(&args), CKR_OK)
            && open_login(&cs, &cpriv, &cpub) == 0
            && sign(cs, cpriv, cpub, "child-sig") == 0
            && ok("C_CloseSession", p.CloseSession(cs), CKR_OK)
            && ok("C_Finalize", p.Finalize(NULL), CKR_OK);
        fflush(NULL);
        _exit(good ? 0 : 1);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) { perror("waitpid"); return 1; }
    printf("child-exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    if (sign(s, priv, pub, "parent-sig-after")) return 1;
    if (!ok("C_Finalize", p.Finalize(NULL), CKR_OK)) return 1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_child_initialises_again_and_signs() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token("fork").await?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        tool_keypair(&token, dir, "EC:prime256v1", "forkkey", "01")?;
        std::fs::write(dir.join("fork.c"), PROGRAM)?;
        p11::run(
            Command::new("cc")
                .current_dir(dir)
                .args(["-std=c11", "-Wall", "-o", "fork", "fork.c", "-ldl"]),
        )
        .context(
            "compiling the fork test program (a C compiler: apt-get install build-essential)",
        )?;

        let msg = b"signed before and after fork()";
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, msg);
        let out = p11::output_within(
            Command::new(dir.join("fork"))
                .env(P11_CONFIG_ENV, &token.config)
                .arg(&token.module)
                .args(["forkkey", P11_USER_PIN, &hex::encode(digest.as_ref())]),
            p11::TOOL_TIMEOUT,
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "the fork test program failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        let field = |tag: &str| -> Result<Vec<u8>> {
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')))
                .with_context(|| format!("no {tag:?} line:\n{stdout}"))?;
            Ok(hex::decode(line)?)
        };
        ensure!(
            stdout.contains("child-not-initialised ok") && stdout.contains("child-exit 0"),
            "{stdout}"
        );
        let point = p11::point_of(&field("point")?);
        for tag in ["parent-sig", "child-sig", "parent-sig-after"] {
            let sig = field(tag)?;
            if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .verify(msg, &sig)
                .is_err()
            {
                bail!("{tag} does not verify:\n{stdout}");
            }
        }
        Ok(())
    })
    .await?
}
