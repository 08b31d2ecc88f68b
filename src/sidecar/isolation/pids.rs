//! The pids check: is the number of processes in this pod bounded? The
//! sidecar shares the pod's cgroup with the agent, so it reads `pids.max`
//! of its own cgroup and of every ancestor it can see.
//!
//! What it can see is the limit of the check. The kubelet's `podPidsLimit`
//! sits on the pod's cgroup, the parent of each container's; with a cgroup
//! namespace (cgroup v2, the default with containerd and CRI-O) or a
//! bind-mounted cgroup v1 hierarchy, a container sees only its own cgroup.
//! So: a limit found anywhere is `True`; no limit in a hierarchy seen up to
//! its real root is `False`; no limit in the part it sees, with the rest
//! hidden, is `Unknown` — which does not hold the agent back, because the
//! limit may well be there.

use std::path::{Path, PathBuf};

use super::{Check, Status};
use crate::api::PIDS_LIMITED;

/// The most processes a sandbox pod may run for the check to hold: the
/// seed's sandbox runs with `--pids-limit 100`. The pod's limit covers the
/// sidecar too, which runs a current-thread runtime (a few threads).
pub const SANDBOX_PIDS_LIMIT: u64 = 100;

/// Where the cgroup files are read from (fixed paths in a pod; temporary
/// directories in tests).
#[derive(Clone, Debug)]
pub struct CgroupFiles {
    /// `/proc/self/cgroup`.
    pub proc_self_cgroup: PathBuf,
    /// The cgroup v2 mount, or the v1 `pids` controller's: `/sys/fs/cgroup`.
    pub mount: PathBuf,
}

impl Default for CgroupFiles {
    fn default() -> Self {
        CgroupFiles {
            proc_self_cgroup: PathBuf::from("/proc/self/cgroup"),
            mount: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// The pids check, reading the files with `read` (`None`: the file does
/// not exist or cannot be read).
pub fn check(files: &CgroupFiles, read: impl Fn(&Path) -> Option<String>) -> Check {
    let unknown =
        |message: String| Check::new(PIDS_LIMITED, Status::Unknown, "NotVisible", message, true);
    let Some(membership) = read(&files.proc_self_cgroup) else {
        return unknown(format!(
            "{} cannot be read",
            files.proc_self_cgroup.display()
        ));
    };
    // cgroup v2: `0::/path`; v1: `N:pids:/path` under the `pids` mount.
    let (own_path, mount) = match membership.lines().find_map(|line| line.strip_prefix("0::")) {
        Some(path) => (path.to_owned(), files.mount.clone()),
        None => match membership.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == "pids")
                .then(|| path.to_owned())
        }) {
            Some(path) => (path, files.mount.join("pids")),
            None => return unknown("this process is in no pids cgroup".into()),
        },
    };
    // The cgroup as mounted here: its path under the mount, or the mount
    // itself when the path is not there (a namespaced or bind-mounted view).
    let relative = own_path.trim_start_matches('/');
    let mut dir = mount.join(relative);
    if relative.is_empty() || read(&dir.join("pids.max")).is_none() {
        dir = mount.clone();
    }
    // Every limit up to the root counts: the tightest one binds.
    let mut tightest: Option<(u64, String)> = None;
    let mut seen = Vec::new();
    let whole_hierarchy_seen = loop {
        match read(&dir.join("pids.max")).map(|value| value.trim().to_owned()) {
            Some(limit) if limit != "max" => {
                let Ok(limit) = limit.parse::<u64>() else {
                    return unknown(format!(
                        "{} holds {limit:?}, not a number",
                        dir.join("pids.max").display()
                    ));
                };
                if tightest.as_ref().is_none_or(|(least, _)| limit < *least) {
                    tightest = Some((limit, cgroup_name(&dir, &mount)));
                }
            }
            Some(_) => seen.push(cgroup_name(&dir, &mount)),
            // The real root has no pids.max: the whole hierarchy was seen.
            None if dir == mount => break true,
            None => {}
        }
        if dir == mount {
            break false;
        }
        dir = dir
            .parent()
            .map_or_else(|| mount.clone(), Path::to_path_buf);
    };
    match tightest {
        Some((limit, place)) if limit <= SANDBOX_PIDS_LIMIT => Check::new(
            PIDS_LIMITED,
            Status::True,
            "Limited",
            format!("pids.max = {limit} ({place})"),
            true,
        ),
        Some((limit, place)) => Check::new(
            PIDS_LIMITED,
            Status::False,
            "AboveLimit",
            format!(
                "pids.max = {limit} ({place}), above the sandbox's {SANDBOX_PIDS_LIMIT} (the seed's --pids-limit): set the kubelet's podPidsLimit to {SANDBOX_PIDS_LIMIT} or less on the nodes that run sandboxes"
            ),
            false,
        ),
        None if whole_hierarchy_seen => Check::new(
            PIDS_LIMITED,
            Status::False,
            "Unlimited",
            format!(
                "no pids limit anywhere up to the root cgroup (pids.max = max in {}): set the kubelet's podPidsLimit",
                seen.join(", ")
            ),
            false,
        ),
        None => unknown(
            "this container's cgroup sets no pids limit (pids.max = max) and the pod's cgroup, where the kubelet's podPidsLimit applies, is not visible from inside the container; check the kubelet's podPidsLimit (docs/security.md)"
                .into(),
        ),
    }
}

fn cgroup_name(dir: &Path, mount: &Path) -> String {
    match dir.strip_prefix(mount) {
        Ok(relative) if relative.as_os_str().is_empty() => "this container's cgroup".to_owned(),
        Ok(relative) => format!("/{}", relative.display()),
        Err(_) => dir.display().to_string(),
    }
}

/// Reads a file of the real filesystem.
pub fn read_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn files() -> CgroupFiles {
        CgroupFiles {
            proc_self_cgroup: "/proc/self/cgroup".into(),
            mount: "/sys/fs/cgroup".into(),
        }
    }

    fn run(entries: &[(&str, &str)]) -> Check {
        let fs: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(path, content)| (PathBuf::from(path), content.to_string()))
            .collect();
        check(&files(), |path| fs.get(path).cloned())
    }

    #[test]
    fn a_namespaced_cgroup_with_its_own_limit() {
        let check = run(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/pids.max", "100\n"),
        ]);
        assert_eq!((check.status, check.reason), (Status::True, "Limited"));
        assert_eq!(check.message, "pids.max = 100 (this container's cgroup)");
    }

    #[test]
    fn a_limit_above_the_seeds_100_fails() {
        let check = run(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/pids.max", "1024\n"),
        ]);
        assert_eq!(
            (check.status, check.reason, check.holds),
            (Status::False, "AboveLimit", false)
        );
        assert_eq!(
            check.message,
            "pids.max = 1024 (this container's cgroup), above the sandbox's 100 (the seed's --pids-limit): set the kubelet's podPidsLimit to 100 or less on the nodes that run sandboxes"
        );
        let garbage = run(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/pids.max", "lots\n"),
        ]);
        assert_eq!(garbage.status, Status::Unknown, "{}", garbage.message);
    }

    #[test]
    fn a_namespaced_cgroup_without_one_cannot_see_the_pods() {
        let check = run(&[
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/pids.max", "max\n"),
        ]);
        assert_eq!(
            (check.status, check.reason),
            (Status::Unknown, "NotVisible")
        );
        assert!(
            check.holds,
            "an invisible limit does not hold the agent back"
        );
        assert!(check.message.contains("podPidsLimit"));
    }

    #[test]
    fn a_full_hierarchy_finds_the_pod_limit_above_the_container() {
        let pod = "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice";
        let container = format!("{pod}/cri-containerd-a.scope");
        let entries = [
            (
                "/proc/self/cgroup",
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-a.scope\n",
            ),
            (&format!("{container}/pids.max") as &str, "4096"),
            (&format!("{pod}/pids.max") as &str, "100"),
            ("/sys/fs/cgroup/kubepods.slice/pids.max", "max"),
        ];
        let check = run(&entries);
        assert_eq!(check.status, Status::True);
        assert_eq!(
            check.message, "pids.max = 100 (/kubepods.slice/kubepods-pod1.slice)",
            "the tightest limit up the hierarchy binds"
        );
    }

    #[test]
    fn a_full_hierarchy_without_any_limit_fails() {
        let check = run(&[
            ("/proc/self/cgroup", "0::/kubepods.slice/pod1\n"),
            ("/sys/fs/cgroup/kubepods.slice/pod1/pids.max", "max"),
            ("/sys/fs/cgroup/kubepods.slice/pids.max", "max"),
        ]);
        assert_eq!(
            (check.status, check.reason, check.holds),
            (Status::False, "Unlimited", false)
        );
        assert!(
            check
                .message
                .contains("/kubepods.slice/pod1, /kubepods.slice"),
            "{}",
            check.message
        );
    }

    #[test]
    fn cgroup_v1_reads_the_pids_controller() {
        let check = run(&[
            (
                "/proc/self/cgroup",
                "12:memory:/kubepods/pod1/c\n3:pids:/kubepods/pod1/c\n",
            ),
            ("/sys/fs/cgroup/pids/pids.max", "64"),
        ]);
        assert_eq!(check.status, Status::True, "{}", check.message);
    }

    #[test]
    fn unreadable_files_are_unknown_not_a_panic() {
        for entries in [&[][..], &[("/proc/self/cgroup", "garbage")][..]] {
            assert_eq!(run(entries).status, Status::Unknown);
        }
    }

    #[test]
    fn this_machine_gets_a_verdict() {
        let check = check(&CgroupFiles::default(), read_file);
        assert!(!check.message.is_empty());
    }
}
