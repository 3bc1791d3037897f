//! Who may attach to an engine. The kernel says who is at the other end of
//! the socket (SO_PEERCRED); nothing the client sends is trusted for this.
//! Root, the engine's own user, and members of one configured group are
//! admitted; anyone else is refused with a reason that names the fix.

/// The engine's admission rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The engine's user id.
    pub engine_uid: u32,
    /// A group whose members may attach too (`xsock engine --group`).
    pub group: Option<(u32, String)>,
}

/// Why a process was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Policy {
    /// Decides for a process of user `uid` whose groups (primary and
    /// supplementary, as /proc/PID/status lists them) are `groups`.
    pub fn admit(&self, uid: u32, groups: &[u32]) -> Result<(), Refusal> {
        if uid == 0 || uid == self.engine_uid {
            return Ok(());
        }
        if let Some((gid, _)) = &self.group
            && groups.contains(gid)
        {
            return Ok(());
        }
        Err(Refusal(match &self.group {
            Some((gid, name)) => format!(
                "uid {uid} may not attach to this engine: it admits uid {} and the group {name} ({gid}); add the \
                 user to that group (`usermod -aG {name} USER`, then log in again)",
                self.engine_uid
            ),
            None => format!(
                "uid {uid} may not attach to this engine: it admits only uid {} (start the engine with --group \
                 GROUP to admit a group's members)",
                self.engine_uid
            ),
        }))
    }
}

/// The groups in the text of /proc/PID/status ("Gid:" gives the primary
/// group, "Groups:" the supplementary ones). Unparseable entries are
/// skipped: they admit no one.
pub fn groups_from_status(status: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            out.extend(rest.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        } else if let Some(rest) = line.strip_prefix("Gid:") {
            // real, effective, saved, filesystem: the effective one counts.
            if let Some(g) = rest.split_whitespace().nth(1).and_then(|g| g.parse::<u32>().ok()) {
                out.push(g);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_the_engine_user_and_the_group_are_admitted() {
        let p = Policy { engine_uid: 1000, group: Some((300, "hpc".into())) };
        assert!(p.admit(0, &[]).is_ok());
        assert!(p.admit(1000, &[]).is_ok());
        assert!(p.admit(1001, &[5, 300]).is_ok());
        let e = p.admit(1002, &[5]).unwrap_err();
        assert!(e.0.contains("usermod -aG hpc"), "{e}");
        let p = Policy { engine_uid: 0, group: None };
        assert!(p.admit(1001, &[300]).unwrap_err().0.contains("--group"));
    }

    #[test]
    fn groups_come_from_the_status_file() {
        let s = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t101\t100\t100\nGroups:\t4 24 x 300\n";
        assert_eq!(groups_from_status(s), vec![101, 4, 24, 300]);
        assert!(groups_from_status("garbage").is_empty());
    }
}
