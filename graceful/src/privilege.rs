//! Least privilege for workers (the `user` and `group` options, Linux).
//!
//! The master stays as it was started, root, so that it can bind any port
//! and start workers. Each worker runs `main` and takes its listeners with
//! the master's privileges, so root-only certificates and configuration can
//! be read, then gives them up before it accepts a connection or reports
//! ready, the way nginx and HAProxy workers do:
//!
//! 1. at the worker's start, before any thread: [`lock_exec`] sets
//!    `PR_SET_NO_NEW_PRIVS`, which every thread the runtime starts inherits
//!    (the flag is per thread, so it must come first);
//! 2. after its listeners: [`Identity::assume`] sets the supplementary
//!    groups (the user's, looked up by [`Identity::resolve`] at the start,
//!    as `initgroups` would, or none for a uid with no entry), then the gid,
//!    then all three uids. The C library applies each to every thread of the
//!    process, not only the caller;
//! 3. it checks the result: `setuid(0)` must fail, or the worker aborts, and
//!    the credentials read back must be exactly the ones asked for.
//!
//! The user and the group are looked up in the system's databases when the
//! master starts ([`check_master`], so a typo stops the start) and again by
//! every worker, which runs its own build's options.

use std::ffi::CString;
use std::fmt;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Config;
use crate::Error;

/// The credentials a worker serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `user` as configured, for messages.
    user: String,
    /// The user's name in the user database, if it has an entry.
    name: Option<String>,
    uid: Uid,
    gid: Gid,
    /// The supplementary groups: the user's groups and `gid`, or none for
    /// a uid with no entry.
    groups: Vec<Gid>,
}

/// A process's credentials, as the kernel has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    uids: [Uid; 3],
    gids: [Gid; 3],
    groups: Vec<Gid>,
}

fn invalid(option: &'static str, reason: String) -> Error {
    Error::InvalidOption { option, reason }
}

/// A numeric id, as `user = "65534"` or `group = "65534"` write it.
fn numeric(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Identity {
    /// Looks up the configured user and group; `None` when `user` is not
    /// set. Every error names the option and its value.
    pub(crate) fn resolve(config: &Config) -> Result<Option<Identity>, Error> {
        let Some(user) = config.user.as_deref() else {
            return Ok(None);
        };
        let entry = match numeric(user) {
            Some(uid) => User::from_uid(Uid::from_raw(uid)),
            None => User::from_name(user),
        }
        .map_err(|e| invalid("user", format!("{user:?}: cannot look it up: {e}")))?;
        let uid = match (&entry, numeric(user)) {
            (Some(entry), _) => entry.uid,
            (None, Some(uid)) => Uid::from_raw(uid),
            (None, None) => {
                return Err(invalid(
                    "user",
                    format!(
                        "{user:?} is not a user on this system (no entry in the user database)"
                    ),
                ))
            }
        };
        let gid = match config.group.as_deref() {
            Some(group) => match numeric(group) {
                Some(gid) => Gid::from_raw(gid),
                None => {
                    Group::from_name(group)
                        .map_err(|e| {
                            invalid("group", format!("{group:?}: cannot look it up: {e}"))
                        })?
                        .ok_or_else(|| {
                            invalid(
                                "group",
                                format!(
                                "{group:?} is not a group on this system (no entry in the group \
                                 database)"
                            ),
                            )
                        })?
                        .gid
                }
            },
            None => match &entry {
                Some(entry) => entry.gid,
                None => {
                    return Err(invalid(
                        "user",
                        format!(
                            "{user:?}: uid {uid} has no entry in the user database, so it has no \
                             group; set group too"
                        ),
                    ))
                }
            },
        };
        let groups = match &entry {
            Some(entry) => {
                let name = CString::new(entry.name.as_bytes()).map_err(|_| {
                    invalid("user", format!("{user:?}: its name contains a NUL byte"))
                })?;
                nix::unistd::getgrouplist(&name, gid).map_err(|e| {
                    invalid(
                        "user",
                        format!("{user:?}: cannot look up its supplementary groups: {e}"),
                    )
                })?
            }
            None => Vec::new(),
        };
        let identity = Identity {
            user: user.to_string(),
            name: entry.map(|entry| entry.name),
            uid,
            gid,
            groups: normalized(groups),
        };
        if identity.uid.is_root() {
            return Err(invalid(
                "user",
                format!(
                    "{user:?} is uid 0: its workers would keep every privilege of root; name an \
                     unprivileged user"
                ),
            ));
        }
        Ok(Some(identity))
    }

    /// Whether a master with effective ids `euid` and `egid` can start
    /// workers as this identity: only root can, or a master that already
    /// is this user and group (the options then only lock `execve`).
    fn startable_by(&self, euid: Uid, egid: Gid) -> Result<(), String> {
        if euid.is_root() || (euid == self.uid && egid == self.gid) {
            return Ok(());
        }
        Err(format!(
            "{:?}: the master runs as uid {euid} and gid {egid}, not as root, so its workers \
             cannot become uid {} and gid {}; start the master as root, or remove the option",
            self.user, self.uid, self.gid
        ))
    }

    /// Makes this process this identity, on every thread, then checks that
    /// it holds and that root cannot be had back. An error means the
    /// process is still as it was, or only partly changed: it must not
    /// serve.
    pub(crate) fn assume(&self) -> Result<(), Error> {
        let failed = |what: String, e: nix::Error| {
            Error::io(
                format!("cannot serve as {self}: {what}"),
                std::io::Error::from(e),
            )
        };
        let root = nix::unistd::geteuid().is_root();
        if root {
            nix::unistd::setgroups(&self.groups).map_err(|e| failed("setgroups".into(), e))?;
            nix::unistd::setresgid(self.gid, self.gid, self.gid)
                .map_err(|e| failed(format!("setresgid({})", self.gid), e))?;
            nix::unistd::setresuid(self.uid, self.uid, self.uid)
                .map_err(|e| failed(format!("setresuid({})", self.uid), e))?;
        }
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            crate::log::log_at!(
                Error,
                "{self}: setuid(0) succeeded after the privileges were dropped; aborting"
            );
            std::process::abort();
        }
        let now = Credentials::current()
            .map_err(|e| failed("cannot read the credentials back".into(), e))?;
        let locked = exec_locked();
        match self.mismatch(&now, root, locked) {
            None => Ok(()),
            Some(why) => Err(Error::io(
                format!("cannot serve as {self}"),
                std::io::Error::other(why),
            )),
        }
    }

    /// What differs between `now` and this identity; `None` if nothing.
    /// The supplementary groups are compared only if they were set, by a
    /// root process (one already this user keeps its own).
    fn mismatch(&self, now: &Credentials, groups_set: bool, exec_locked: bool) -> Option<String> {
        if now.uids.iter().any(|uid| *uid != self.uid) {
            return Some(format!(
                "the uids are {:?} (real, effective, saved), not all {}",
                now.uids.map(Uid::as_raw),
                self.uid
            ));
        }
        if now.gids.iter().any(|gid| *gid != self.gid) {
            return Some(format!(
                "the gids are {:?} (real, effective, saved), not all {}",
                now.gids.map(Gid::as_raw),
                self.gid
            ));
        }
        if groups_set && normalized(now.groups.clone()) != self.groups {
            return Some(format!(
                "the supplementary groups are {:?}, not {:?}",
                gid_list(&now.groups),
                gid_list(&self.groups)
            ));
        }
        if !exec_locked {
            return Some("no_new_privs is not set".into());
        }
        None
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "user {name} (uid {})", self.uid)?,
            None => write!(f, "uid {}", self.uid)?,
        }
        write!(f, ", gid {}, groups {:?}", self.gid, gid_list(&self.groups))
    }
}

fn gid_list(groups: &[Gid]) -> Vec<u32> {
    groups.iter().map(|gid| gid.as_raw()).collect()
}

/// Groups sorted and without repeats, for comparison.
fn normalized(mut groups: Vec<Gid>) -> Vec<Gid> {
    groups.sort_by_key(|gid| gid.as_raw());
    groups.dedup();
    groups
}

impl Credentials {
    fn current() -> nix::Result<Credentials> {
        let uids = nix::unistd::getresuid()?;
        let gids = nix::unistd::getresgid()?;
        Ok(Credentials {
            uids: [uids.real, uids.effective, uids.saved],
            gids: [gids.real, gids.effective, gids.saved],
            groups: nix::unistd::getgroups()?,
        })
    }
}

/// At a master's start: the configured identity, checked against the user
/// the master runs as. `None` when `user` is not set.
pub(crate) fn check_master(config: &Config) -> Result<Option<Identity>, Error> {
    let Some(identity) = Identity::resolve(config)? else {
        return Ok(None);
    };
    identity
        .startable_by(nix::unistd::geteuid(), nix::unistd::getegid())
        .map_err(|reason| invalid("user", reason))?;
    Ok(Some(identity))
}

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling thread, which threads started
/// after it inherit: no `execve` from this process gains privileges (setuid
/// and setgid bits and file capabilities are ignored).
pub(crate) fn lock_exec() -> Result<(), Error> {
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| Error::io("cannot set no_new_privs", std::io::Error::from(e)))
}

fn exec_locked() -> bool {
    nix::sys::prctl::get_no_new_privs().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    /// `nobody` (uid 65534, group `nogroup`, 65534) is in every Debian and
    /// most other systems' user database.
    const NOBODY: u32 = 65534;

    fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, String> {
        let config = Config {
            user: user.map(str::to_string),
            group: group.map(str::to_string),
            ..config()
        };
        Identity::resolve(&config).map_err(|e| e.to_string())
    }

    fn nobody() -> Identity {
        resolve(Some("nobody"), None).unwrap().unwrap()
    }

    #[test]
    fn ids_are_numeric_only_when_all_digits() {
        assert_eq!(numeric("65534"), Some(65534));
        assert_eq!(numeric("0"), Some(0));
        for text in ["", "www-data", "12a", "-1", " 1", "+1", "99999999999"] {
            assert_eq!(numeric(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_user_is_found_by_name_or_uid_with_its_group_and_groups() {
        assert_eq!(resolve(None, None).unwrap(), None);
        let by_name = nobody();
        assert_eq!(by_name.uid, Uid::from_raw(NOBODY));
        assert_eq!(by_name.gid, Gid::from_raw(NOBODY));
        assert!(by_name.groups.contains(&Gid::from_raw(NOBODY)));
        assert_eq!(by_name.name.as_deref(), Some("nobody"));
        let by_uid = resolve(Some("65534"), None).unwrap().unwrap();
        assert_eq!((by_uid.uid, by_uid.gid), (by_name.uid, by_name.gid));
        assert_eq!(by_uid.groups, by_name.groups);
        // A group given overrides the user's own, and is among its groups.
        let grouped = resolve(Some("nobody"), Some("4000001")).unwrap().unwrap();
        assert_eq!(grouped.gid, Gid::from_raw(4_000_001));
        assert!(grouped.groups.contains(&Gid::from_raw(4_000_001)));
        // A uid with no entry: the group must be given, and there are no
        // supplementary groups.
        let bare = resolve(Some("4000000"), Some("4000001")).unwrap().unwrap();
        assert_eq!(
            (bare.uid, bare.gid, bare.groups.len(), bare.name.clone()),
            (Uid::from_raw(4_000_000), Gid::from_raw(4_000_001), 0, None)
        );
        assert_eq!(
            bare.to_string(),
            "uid 4000000, gid 4000001, groups []".to_string()
        );
        assert!(by_name
            .to_string()
            .starts_with("user nobody (uid 65534), gid 65534, groups [65534"));
    }

    #[test]
    fn a_user_that_cannot_be_had_is_an_error_naming_it() {
        for (user, group, expected) in [
            (
                "graceful-no-such-user",
                None,
                "invalid option user: \"graceful-no-such-user\" is not a user on this system",
            ),
            (
                "nobody",
                Some("graceful-no-such-group"),
                "invalid option group: \"graceful-no-such-group\" is not a group on this system",
            ),
            (
                "4000000",
                None,
                "invalid option user: \"4000000\": uid 4000000 has no entry in the user \
                 database, so it has no group; set group too",
            ),
            (
                "root",
                None,
                "invalid option user: \"root\" is uid 0: its workers would keep every privilege",
            ),
            ("0", Some("65534"), "invalid option user: \"0\" is uid 0"),
        ] {
            let err = resolve(Some(user), group).unwrap_err();
            assert!(err.starts_with(expected), "{user:?} {group:?}: {err}");
        }
    }

    #[test]
    fn only_root_or_the_user_itself_can_start_its_workers() {
        let nobody = nobody();
        let root = (Uid::from_raw(0), Gid::from_raw(0));
        assert_eq!(nobody.startable_by(root.0, root.1), Ok(()));
        // Root by uid is enough: the master can set any group.
        assert_eq!(nobody.startable_by(root.0, Gid::from_raw(1000)), Ok(()));
        let (uid, gid) = (nobody.uid, nobody.gid);
        assert_eq!(nobody.startable_by(uid, gid), Ok(()));
        let err = nobody
            .startable_by(Uid::from_raw(1000), Gid::from_raw(1000))
            .unwrap_err();
        assert_eq!(
            err,
            "\"nobody\": the master runs as uid 1000 and gid 1000, not as root, so its workers \
             cannot become uid 65534 and gid 65534; start the master as root, or remove the option"
        );
        // The user, with another group, cannot change its group.
        assert!(nobody.startable_by(uid, Gid::from_raw(1000)).is_err());
        assert!(nobody.startable_by(Uid::from_raw(1000), gid).is_err());
    }

    #[test]
    fn the_credentials_read_back_must_be_exactly_the_identity() {
        let nobody = nobody();
        let (u, g) = (nobody.uid, nobody.gid);
        let exact = Credentials {
            uids: [u; 3],
            gids: [g; 3],
            groups: nobody.groups.iter().rev().copied().collect(),
        };
        assert_eq!(nobody.mismatch(&exact, true, true), None);
        let root = Uid::from_raw(0);
        for (i, name) in ["real", "effective", "saved"].iter().enumerate() {
            let mut uids = [u; 3];
            uids[i] = root;
            let now = Credentials {
                uids,
                ..exact.clone()
            };
            let why = nobody.mismatch(&now, true, true).unwrap();
            assert!(why.starts_with("the uids are"), "{name}: {why}");
            let mut gids = [g; 3];
            gids[i] = Gid::from_raw(0);
            let now = Credentials {
                gids,
                ..exact.clone()
            };
            let why = nobody.mismatch(&now, true, true).unwrap();
            assert!(why.starts_with("the gids are"), "{name}: {why}");
        }
        let extra = Credentials {
            groups: vec![g, Gid::from_raw(0)],
            ..exact.clone()
        };
        assert_eq!(
            nobody.mismatch(&extra, true, true).unwrap(),
            format!(
                "the supplementary groups are [65534, 0], not {:?}",
                gid_list(&nobody.groups)
            )
        );
        // Groups left as they were, by a master that already was the user,
        // are not compared.
        assert_eq!(nobody.mismatch(&extra, false, true), None);
        assert_eq!(
            nobody.mismatch(&exact, true, false).unwrap(),
            "no_new_privs is not set"
        );
    }
}
