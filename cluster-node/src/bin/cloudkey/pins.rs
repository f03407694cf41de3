//! Where the CLI gets PINs. Never from its own command line, where every user of the machine
//! sees them (`ps`, `/proc/<pid>/cmdline`, shell history). In order:
//!
//! 1. standard input, with `--pin-stdin`: one PIN per line, in the order the command asks for
//!    them (for scripts: `printf '%s\n' "$SO_PIN" "$USER_PIN" | cloudkey --pin-stdin token
//!    create t`);
//! 2. the command's environment variable (`CLOUDKEY_SO_PIN`, `CLOUDKEY_USER_PIN`,
//!    `CLOUDKEY_OFFICER_PIN`), which only the same user and root can read;
//! 3. a prompt on the terminal, without echo, when standard input is a terminal.
//!
//! A PIN is held in a [`Zeroizing`] string and wiped when dropped.

use std::io::{BufRead as _, IsTerminal as _};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};
use zeroize::Zeroizing;

static FROM_STDIN: AtomicBool = AtomicBool::new(false);

/// Takes PINs from standard input from now on (`--pin-stdin`).
pub fn from_stdin(on: bool) {
    FROM_STDIN.store(on, Ordering::Relaxed);
}

/// Whether a PIN must be given or may be left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The command cannot go on without it.
    Required,
    /// The command has a meaning without it (an empty answer leaves it out).
    Optional,
}

/// The PIN `what` (e.g. "SO PIN"), from the sources of the [module docs](self); `None` when it
/// is [`Need::Optional`] and none was given.
///
/// # Errors
/// A required PIN that no source gives; standard input that cannot be read.
pub fn read(what: &str, env: &str, need: Need) -> anyhow::Result<Option<Zeroizing<String>>> {
    let pin = if FROM_STDIN.load(Ordering::Relaxed) {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .with_context(|| format!("reading the {what} from standard input"))?;
        Some(Zeroizing::new(
            line.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    } else if let Ok(v) = std::env::var(env) {
        Some(Zeroizing::new(v))
    } else if std::io::stdin().is_terminal() {
        let optional = if need == Need::Optional {
            " (empty: none)"
        } else {
            ""
        };
        let pin = rpassword::prompt_password(format!("{what}{optional}: "))
            .with_context(|| format!("reading the {what} from the terminal"))?;
        Some(Zeroizing::new(pin))
    } else {
        None
    };
    match (pin, need) {
        (Some(p), _) if !p.is_empty() => Ok(Some(p)),
        (_, Need::Optional) => Ok(None),
        (_, Need::Required) => bail!(
            "no {what}: give it on standard input with --pin-stdin, in ${env}, or at the \
             prompt (standard input a terminal)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_named_with_its_sources() {
        if std::io::stdin().is_terminal() {
            // Run by hand at a terminal: the prompt would wait for an answer.
            return;
        }
        assert!(read("test PIN", "CLOUDKEY_TEST_PIN_UNSET", Need::Optional)
            .unwrap()
            .is_none());
        let e = read("test PIN", "CLOUDKEY_TEST_PIN_UNSET", Need::Required).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--pin-stdin") && e.contains("$CLOUDKEY_TEST_PIN_UNSET"),
            "{e}"
        );
    }
}
