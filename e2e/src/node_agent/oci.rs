//! Containers run from an OCI image archive (the images `scripts/build-images.sh` built in
//! this run) instead of a host binary, so the e2e suite tests what ships: the archive is
//! unpacked once per node (`scripts/lib/oci.py unpack`), and each container start is
//! `oci.py run DIR --bind HOST:PATH ... --env K=V ... -- ARGS`, which execs the image's
//! entrypoint in place (the container's pid is the relay's: SIGTERM reaches it directly)
//! as the image's user, with its env and workdir, chrooted into a read-only root, with
//! the pod's volumes bind-mounted at their mount paths.

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use tokio::process::Command;
use tracing::info;

/// The unpacker and runner (stdlib Python, the same one `scripts/check-images.sh` tests), in
/// the checkout the agent runs from: cargo sets `CARGO_MANIFEST_DIR` for the test that
/// starts the agent, which stays right when a cached binary was built from another checkout.
fn oci_py() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../scripts/lib/oci.py")
}

/// Whether an `--image` target is an image archive (`NAME.oci.tar`) rather than a binary.
pub(super) fn is_archive(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "tar")
}

/// The archive's unpacked root filesystem and config under the node's work directory,
/// unpacked on first use (oci.py keeps a directory that already holds the same manifest).
pub(super) fn unpacked(work_dir: &Path, archive: &Path) -> anyhow::Result<PathBuf> {
    let name = archive.file_name().map(|n| n.to_string_lossy().replace('.', "-")).unwrap_or_default();
    let dir = work_dir.join("images").join(name);
    if dir.join("manifest-digest").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let output = StdCommand::new("python3")
        .arg(oci_py())
        .arg("unpack")
        .arg(archive)
        .arg(&dir)
        .output()
        .context("running python3 scripts/lib/oci.py unpack")?;
    if !output.status.success() {
        bail!("unpacking {}: {}", archive.display(), String::from_utf8_lossy(&output.stderr));
    }
    info!(archive = %archive.display(), dir = %dir.display(), "image unpacked");
    Ok(dir)
}

/// The uid and gid the image's config runs as (`User`, numeric or from its /etc/passwd).
fn image_user(dir: &Path) -> anyhow::Result<(u32, u32)> {
    let output = StdCommand::new("python3").arg(oci_py()).arg("config").arg(dir).output()?;
    if !output.status.success() {
        bail!("oci.py config: {}", String::from_utf8_lossy(&output.stderr));
    }
    let view: Value = serde_json::from_slice(&output.stdout)?;
    let id = |key: &str| {
        view[key].as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| anyhow!("no {key} in {view}"))
    };
    Ok((id("uid")?, id("gid")?))
}

/// The process's uid and gid as the kubelet would choose them: the container's
/// `runAsUser`/`runAsGroup`, else the pod's, else the image's.
pub(super) fn process_user(pod: &Pod, container: &Container, dir: &Path) -> anyhow::Result<(u32, u32)> {
    let (image_uid, image_gid) = image_user(dir)?;
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let pick = |own: Option<i64>, pod: Option<i64>, image: u32| {
        own.or(pod).and_then(|v| u32::try_from(v).ok()).unwrap_or(image)
    };
    let uid = pick(own.and_then(|c| c.run_as_user), pod_context.and_then(|c| c.run_as_user), image_uid);
    let gid = pick(own.and_then(|c| c.run_as_group), pod_context.and_then(|c| c.run_as_group), image_gid);
    Ok((uid, gid))
}

/// The pod's `fsGroup`, the group its writable volumes belong to.
pub(super) fn fs_group(pod: &Pod) -> Option<u32> {
    let context = pod.spec.as_ref()?.security_context.as_ref()?;
    u32::try_from(context.fs_group?).ok()
}

/// Gives a volume to the process's user, as the kubelet's `fsGroup` handling would: the
/// volumes are host directories created by this (root) agent, and the image runs as a
/// non-root user.
pub(super) fn give_to(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            give_to(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Each volume mount as an `oci.py --bind` value (`HOST:PATH`, `:ro` when read-only), plus
/// the termination message file.
pub(super) fn binds(
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
    termination: (&str, &Path),
) -> Vec<String> {
    let mut binds: Vec<String> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|mount| {
            let host = super::rewrite::host_path(mount, volumes)?;
            let read_only = if mount.read_only == Some(true) { ":ro" } else { "" };
            Some(format!("{}:{}{read_only}", host.display(), mount.mount_path))
        })
        .collect();
    // Shorter container paths first, so a nested mount lands inside its parent's.
    binds.sort_by_key(|bind| bind.split(':').nth(1).map_or(0, str::len));
    binds.push(format!("{}:{}", termination.1.display(), termination.0));
    binds
}

/// `python3 oci.py run DIR --die-with-parent --user UID:GID --bind ... --env ... -- ARGS`.
pub(super) fn command(
    dir: &Path,
    user: (u32, u32),
    binds: &[String],
    env: &[(String, String)],
    args: &[String],
) -> Command {
    let mut command = Command::new("python3");
    command.arg(oci_py()).arg("run").arg(dir).arg("--die-with-parent");
    command.arg("--user").arg(format!("{}:{}", user.0, user.1));
    for bind in binds {
        command.arg("--bind").arg(bind);
    }
    for (key, value) in env {
        command.arg("--env").arg(format!("{key}={value}"));
    }
    command.arg("--").args(args);
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::VolumeMount;

    #[test]
    fn archives_are_told_from_binaries_by_their_name() {
        assert!(is_archive(Path::new("/cache/images/relay.oci.tar")));
        assert!(!is_archive(Path::new("/target/debug/relay")));
    }

    #[test]
    fn mounts_become_binds_parents_first_and_read_only_kept() {
        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        let container = Container {
            volume_mounts: Some(vec![mount("token", "/data/secret", true), mount("data", "/data", false)]),
            ..Container::default()
        };
        let volumes = HashMap::from([
            ("data".to_string(), PathBuf::from("/h/data")),
            ("token".to_string(), PathBuf::from("/h/token")),
        ]);
        let binds = binds(&container, &volumes, ("/dev/termination-log", Path::new("/h/log")));
        assert_eq!(binds, ["/h/data:/data", "/h/token:/data/secret:ro", "/h/log:/dev/termination-log"]);
    }
}
