#!/usr/bin/env python3
"""Unpack an OCI image archive and run its entrypoint the way its config says (stdlib only).

    oci.py unpack ARCHIVE DIR [--ref TAG]
        DIR/rootfs: the layers applied in order (whiteouts honoured, owners and modes kept);
        DIR/config.json: the image config blob; DIR/manifest-digest. A DIR that already holds
        the same manifest is reused as it is.
    oci.py config DIR
        prints the runtime view: user, env, workdir, argv (entrypoint + cmd) as JSON.
    oci.py run DIR [options] -- [ARGS...]
    oci.py exec ARCHIVE [--ref TAG] [options] -- [ARGS...]
        run the image: argv = Entrypoint + (ARGS, or Cmd when none are given), environment = the
        image's Env plus --env (nothing from the caller's environment), working directory =
        WorkingDir, user and group = User (numeric, or a name from the image's /etc/passwd),
        no supplementary groups, no capabilities (a non-root uid from root drops them), and
        no_new_privs. The process runs in its own mount namespace, chrooted into the rootfs;
        the rootfs is mounted read-only like a pod's readOnlyRootFilesystem unless --writable.
        `run` execs in place (the caller's pid becomes the entrypoint's: signals reach it
        directly); `exec` unpacks into a temporary directory, runs the entrypoint as a child
        (SIGTERM/SIGINT/SIGHUP are forwarded), removes the directory and exits with its status.

Options for run/exec:
    --bind SRC:DST[:ro]   bind-mount a host path (a writable data directory, like a volume)
    --tmpfs DST           an empty tmpfs (like an emptyDir)
    --env K=V             add or override an environment variable
    --user UID[:GID]      override the image's User
    --workdir DIR         override WorkingDir
    --entrypoint PATH     override the Entrypoint (then Cmd is not used)
    --writable            do not mount the rootfs read-only
    --no-host-files       do not provide /proc, /dev, /etc/hosts and /etc/resolv.conf
    --die-with-parent     SIGKILL the entrypoint when the process that started oci.py exits
                          (a test node agent's containers must not outlive it)
By default, as a container runtime does, the process gets the host's /proc, a tmpfs /dev with
the usual device nodes (null, zero, full, random, urandom, tty) and /dev/shm, and the
host's /etc/hosts and /etc/resolv.conf (the image has no /etc; the network is the host's,
so loopback addresses work as they are). Needs root (chroot, mounts, setuid).
"""
import ctypes
import hashlib
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "r|",
    "application/vnd.oci.image.layer.v1.tar+gzip": "r|gz",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "r|gz",
    "application/vnd.docker.image.rootfs.diff.tar": "r|",
}


def fail(message):
    print(f"oci.py: {message}", file=sys.stderr)
    sys.exit(2)


class Archive:
    """An OCI image layout stored as a tar (oci-archive)."""

    def __init__(self, path):
        self.path = path
        self.tar = tarfile.open(path, "r:")
        self.names = {m.name.lstrip("./"): m for m in self.tar.getmembers()}

    def member(self, name):
        member = self.names.get(name)
        if member is None:
            fail(f"{self.path}: no {name} in the archive (not an OCI layout tar?)")
        return member

    def read(self, name):
        return self.tar.extractfile(self.member(name)).read()

    def blob(self, digest):
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256":
            fail(f"unsupported digest {digest}")
        return f"blobs/sha256/{hexdigest}"

    def verified(self, digest):
        data = self.read(self.blob(digest))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            fail(f"{self.path}: blob {digest} does not match its digest")
        return data

    def manifest(self, ref=None):
        index = json.loads(self.read("index.json"))
        entries = index.get("manifests", [])
        if ref is not None:
            entries = [m for m in entries if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
            if not entries:
                fail(f"{self.path}: no image tagged {ref}")
        if not entries:
            fail(f"{self.path}: the index lists no image")
        digests = {m["digest"] for m in entries}
        if len(digests) > 1:
            fail(f"{self.path}: several images ({len(digests)}); choose one with --ref")
        digest = entries[0]["digest"]
        return digest, json.loads(self.verified(digest))


def safe_target(rootfs, name):
    """The host path for a layer entry, refusing paths that leave the rootfs."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        fail(f"layer entry {name!r} leaves the root filesystem")
    return os.path.join(rootfs, *parts) if parts else rootfs


def remove(path):
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


def apply_layer(archive, layer, rootfs):
    mode = LAYER_TYPES.get(layer["mediaType"])
    if mode is None:
        fail(f"unsupported layer media type {layer['mediaType']}")
    member = archive.member(archive.blob(layer["digest"]))
    digest = hashlib.sha256()
    with archive.tar.extractfile(member) as raw:
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
    if "sha256:" + digest.hexdigest() != layer["digest"]:
        fail(f"layer {layer['digest']} does not match its digest")
    with archive.tar.extractfile(member) as raw, tarfile.open(fileobj=raw, mode=mode) as layer_tar:
        for entry in layer_tar:
            directory, base = os.path.split(entry.name.rstrip("/"))
            if base == ".wh..wh..opq":  # opaque directory: drop what lower layers put there
                target = safe_target(rootfs, directory)
                if os.path.isdir(target):
                    for child in os.listdir(target):
                        remove(os.path.join(target, child))
                continue
            if base.startswith(".wh."):  # whiteout: the lower layers' file is deleted
                target = safe_target(rootfs, os.path.join(directory, base[len(".wh."):]))
                if os.path.lexists(target):
                    remove(target)
                continue
            target = safe_target(rootfs, entry.name)
            if entry.islnk():
                safe_target(rootfs, entry.linkname)
            if os.path.lexists(target) and not (entry.isdir() and os.path.isdir(target)):
                remove(target)
            # Owners, modes (setuid, sticky) and links are kept as the image has them: this is
            # a root filesystem, chrooted into, so absolute symlinks resolve inside it.
            if hasattr(tarfile, "fully_trusted_filter"):
                layer_tar.extract(entry, rootfs, numeric_owner=True, filter="fully_trusted")
            else:
                layer_tar.extract(entry, rootfs, numeric_owner=True)


def unpack(archive_path, directory, ref=None):
    archive = Archive(archive_path)
    digest, manifest = archive.manifest(ref)
    stamp = os.path.join(directory, "manifest-digest")
    rootfs = os.path.join(directory, "rootfs")
    if os.path.isfile(stamp) and open(stamp).read().strip() == digest and os.path.isdir(rootfs):
        return directory
    if os.path.isdir(rootfs):
        shutil.rmtree(rootfs)
    os.makedirs(rootfs)
    config = archive.verified(manifest["config"]["digest"])
    for layer in manifest["layers"]:
        apply_layer(archive, layer, rootfs)
    with open(os.path.join(directory, "config.json"), "wb") as f:
        f.write(config)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return directory


def runtime_view(directory, options=None):
    options = options or {}
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f).get("config") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    for item in options.get("env", []):
        key, _, value = item.partition("=")
        env[key] = value
    if options.get("entrypoint") is not None:
        entrypoint, cmd = [options["entrypoint"]], []
    else:
        entrypoint, cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
    args = options.get("args")
    argv = entrypoint + (args if args else cmd)
    if not argv:
        fail("the image has no Entrypoint or Cmd and no arguments were given")
    user = options.get("user") or config.get("User") or "0"
    uid, gid = resolve_user(os.path.join(directory, "rootfs"), user)
    return {
        "user": user,
        "uid": uid,
        "gid": gid,
        "env": [f"{k}={v}" for k, v in env.items()],
        "workdir": options.get("workdir") or config.get("WorkingDir") or "/",
        "argv": argv,
    }


def lookup(rootfs, table, name):
    try:
        with open(os.path.join(rootfs, "etc", table)) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name:
                    return fields
    except FileNotFoundError:
        pass
    return None


def resolve_user(rootfs, user):
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        gid = uid if not group else None
    else:
        entry = lookup(rootfs, "passwd", name)
        if entry is None:
            fail(f"user {name!r} is not numeric and not in the image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            entry = lookup(rootfs, "group", group)
            if entry is None:
                fail(f"group {group!r} is not numeric and not in the image's /etc/group")
            gid = int(entry[2])
    return uid, gid


libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        errno = ctypes.get_errno()
        fail(f"mount {source} on {target}: {os.strerror(errno)}")


def mount_point(rootfs, path, directory):
    target = safe_target(rootfs, path)
    if directory:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    return target


# Device nodes a container runtime gives every container (bind-mounted from the host into a
# tmpfs /dev, as runc does), and the /dev links programs expect.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def mount_host_dev(rootfs):
    """/dev as a fresh tmpfs holding the usual device nodes, never the host's /dev itself: a
    bind target under /dev (a pod's /dev/termination-log) then lands in the container's /dev
    instead of creating a file on the host's."""
    dev = mount_point(rootfs, "/dev", True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755")
    for name in DEVICES:
        source = os.path.join("/dev", name)
        if os.path.exists(source):
            target = os.path.join(dev, name)
            open(target, "a").close()
            mount(source, target, None, MS_BIND)
    for name, link in DEV_LINKS.items():
        os.symlink(link, os.path.join(dev, name))
    os.makedirs(os.path.join(dev, "shm"))
    mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def enter(directory, view, options):
    """In the current process: new mount namespace, mounts, chroot, drop to the user, exec."""
    rootfs = os.path.join(directory, "rootfs")
    parent = os.getppid()
    if libc.unshare(CLONE_NEWNS) != 0:
        fail(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())} (run as root)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # The rootfs as a mount of its own, so it can be made read-only and chrooted into.
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)
    binds = []
    if not options.get("no_host_files"):
        binds.append(("/proc", "/proc", True, False))
        for path in ("/etc/hosts", "/etc/resolv.conf"):
            if os.path.exists(path):
                binds.append((path, path, False, True))
    for spec in options.get("bind", []):
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ro"):
            fail(f"--bind {spec}: expected SRC:DST or SRC:DST:ro")
        source = os.path.abspath(parts[0])
        if not os.path.exists(source):
            fail(f"--bind {spec}: {source} does not exist")
        binds.append((source, parts[1], os.path.isdir(source), len(parts) == 3))
    if not options.get("no_host_files"):
        mount_host_dev(rootfs)
    # Each mount point is made just before its mount, so one under an earlier mount (a file
    # in the tmpfs /dev) is made there; the rootfs becomes read-only last (its submounts keep
    # their own flags).
    for source, path, directory_, read_only in binds:
        target = mount_point(rootfs, path, directory_)
        mount(source, target, None, MS_BIND | MS_REC)
        if read_only:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for path in options.get("tmpfs", []):
        mount("tmpfs", mount_point(rootfs, path, True), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    if not options.get("writable"):
        mount(None, rootfs, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chroot(rootfs)
    os.chdir("/")
    os.setgroups([])
    os.setgid(view["gid"])
    os.setuid(view["uid"])
    if options.get("die_with_parent"):
        # Changing credentials clears the parent-death signal a supervisor set before the
        # exec of this script; set it again, and stop if that parent is already gone.
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            fail("prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            fail("the parent process exited")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("prctl(PR_SET_NO_NEW_PRIVS) failed")
    try:
        os.chdir(view["workdir"])
    except OSError as e:
        fail(f"working directory {view['workdir']}: {e.strerror}")
    env = dict(item.split("=", 1) for item in view["env"])
    try:
        os.execve(view["argv"][0], view["argv"], env)
    except OSError as e:
        fail(f"exec {view['argv'][0]}: {e.strerror}")


def run_child(directory, view, options):
    pid = os.fork()
    if pid == 0:
        try:
            enter(directory, view, options)
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def remove_unpacked(directory):
    """Deletes a temporary unpack directory, unless something is still mounted inside it."""
    real = os.path.realpath(directory)
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f]
    if any(point == real or point.startswith(real + "/") for point in mounted):
        print(f"oci.py: {directory} still has mounts inside; left in place", file=sys.stderr)
        return
    shutil.rmtree(directory, ignore_errors=True)


def parse(argv):
    if "--" in argv:
        split = argv.index("--")
        argv, args = argv[:split], argv[split + 1:]
    else:
        args = []
    positional, options = [], {"env": [], "bind": [], "tmpfs": [], "args": args}
    multi = {"--env": "env", "--bind": "bind", "--tmpfs": "tmpfs"}
    single = {"--ref": "ref", "--user": "user", "--workdir": "workdir", "--entrypoint": "entrypoint"}
    flags = {"--writable": "writable", "--no-host-files": "no_host_files", "--die-with-parent": "die_with_parent"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in multi or a in single:
            if i + 1 >= len(argv):
                fail(f"{a} needs a value")
            if a in multi:
                options[multi[a]].append(argv[i + 1])
            else:
                options[single[a]] = argv[i + 1]
            i += 2
        elif a in flags:
            options[flags[a]] = True
            i += 1
        elif a.startswith("--"):
            fail(f"unknown option {a}")
        else:
            positional.append(a)
            i += 1
    return positional, options


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    command = sys.argv[1]
    positional, options = parse(sys.argv[2:])
    if command == "unpack" and len(positional) == 2:
        os.makedirs(positional[1], exist_ok=True)
        unpack(positional[0], positional[1], options.get("ref"))
        print(json.dumps(runtime_view(positional[1]), indent=2))
    elif command == "config" and len(positional) == 1:
        print(json.dumps(runtime_view(positional[0], options), indent=2))
    elif command == "run" and len(positional) == 1:
        enter(positional[0], runtime_view(positional[0], options), options)
    elif command == "exec" and len(positional) == 1:
        directory = tempfile.mkdtemp(prefix="oci-run.")
        try:
            unpack(positional[0], directory, options.get("ref"))
            code = run_child(directory, runtime_view(directory, options), options)
        finally:
            remove_unpacked(directory)
        sys.exit(code)
    else:
        fail(f"bad arguments for {command!r}; see oci.py --help")


if __name__ == "__main__":
    main()
