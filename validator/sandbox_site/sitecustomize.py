"""Loaded at interpreter start in processes that `pgolf validate --run` sandboxes (via PYTHONPATH).

* Network off: an audit hook refuses socket connections and name lookups to anything but loopback.
* Data-access audit: every open (builtin open, io.open, os.open, np.memmap, ...) is resolved and identified by
  (st_dev, st_ino) against the data files listed in PGOLF_SANDBOX_WATCH (written by the validator, which made
  them): a read through a symlink, a hard link or any other name is still a read of that shard. Those reads, and
  writes/renames of model artifacts, are appended with a timestamp to the JSONL file named by PGOLF_SANDBOX_AUDIT.
* With PGOLF_SANDBOX_BLOCK (comma-separated top-level names, e.g. core,plugins,pgolf), those modules
  cannot be imported unless the script's own folder (PGOLF_SANDBOX_FOLDER) ships them: a records folder
  must run without pgolf installed.
"""

import json
import os
import sys
import time

_AUDIT = os.environ.get("PGOLF_SANDBOX_AUDIT")
_BLOCK = {n for n in os.environ.get("PGOLF_SANDBOX_BLOCK", "").split(",") if n}
_FOLDER = os.environ.get("PGOLF_SANDBOX_FOLDER", "")
_ARTIFACT_SUFFIXES = (".ptz", ".pt", ".pth", ".bin.xz", ".zst", ".br", ".lzma", ".xz", ".npz", ".npy", ".safetensors")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}
_log = open(_AUDIT, "a", buffering=1, encoding="utf-8") if _AUDIT else None  # noqa: SIM115 - lives all run
_WATCH = {}
if os.environ.get("PGOLF_SANDBOX_WATCH"):
    try:
        with open(os.environ["PGOLF_SANDBOX_WATCH"], encoding="utf-8") as _fh:
            _WATCH = {(int(e["dev"]), int(e["ino"])): e["kind"] for e in json.load(_fh)}
    except Exception:  # noqa: BLE001 - an unreadable watch list: fall back to names
        _WATCH = {}


def _emit(kind, **fields):
    if _log is not None:
        try:
            _log.write(json.dumps({"t": time.time(), "kind": kind, **fields}, default=str) + "\n")
        except Exception:  # noqa: BLE001 - auditing must never break the audited program
            pass


def _interesting(name):
    base = os.path.basename(name)
    return base.startswith("fineweb_") or "model" in base.lower() or base.endswith(_ARTIFACT_SUFFIXES)


def _host(address):
    if isinstance(address, tuple) and address:
        return address[0]
    if isinstance(address, (str, bytes)):
        return "unix"  # AF_UNIX sockets are local
    return None


def _hook(event, args):
    if event == "open":
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        try:
            name = os.fsdecode(path)
        except TypeError:
            return
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        write = bool(mode and any(c in str(mode) for c in "wax+")) or bool(
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        data = None
        if _WATCH and not write:
            try:
                st = os.stat(name)  # follows symlinks: the file actually read
                data = _WATCH.get((st.st_dev, st.st_ino))
            except OSError:
                data = None
        if data is not None:
            _emit("open", path=os.path.realpath(name), write=False, data=data, via=os.path.abspath(name))
        elif _interesting(name):
            _emit("open", path=os.path.abspath(name), write=write)
    elif event == "os.rename":
        dst = os.fsdecode(args[1]) if not isinstance(args[1], int) else ""
        if dst and _interesting(dst):
            _emit("open", path=os.path.abspath(dst), write=True, rename=True)
    elif event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        host = _host(args[1]) if len(args) > 1 else None
        if host not in _LOCAL and host != "unix":
            _emit("network", event=event, address=str(args[1]))
            raise PermissionError(f"network disabled by pgolf validate --run ({event} {args[1]})")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host not in _LOCAL:
            _emit("network", event=event, address=f"{host}:{args[1]}")
            raise PermissionError(f"network disabled by pgolf validate --run (lookup of {host})")


class _BlockPgolf:
    """Meta-path finder: the blocked names resolve only to modules shipped in the folder itself."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in _BLOCK:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, [_FOLDER]) if _FOLDER else None
        if spec is not None:
            return spec
        _emit("blocked_import", module=fullname)
        raise ModuleNotFoundError(f"No module named {fullname!r} (pgolf is not importable here: a records folder "
                                  "must run without pgolf installed)", name=fullname)


sys.addaudithook(_hook)
if _BLOCK:
    sys.meta_path.insert(0, _BlockPgolf)
_emit("start", pid=os.getpid(), argv=list(getattr(sys, "argv", [])))
