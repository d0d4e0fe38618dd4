#!/usr/bin/env python3
"""Seconds from start to READY=1 of `smartbin run`, as systemd would see them.

Binds a Unix datagram socket, starts the binary with NOTIFY_SOCKET pointing at
it (under qemu-aarch64 for an aarch64 build), and times READY=1, then stops it
with SIGTERM and waits for STOPPING=1. The source replays photos in a loop.

    python3 cross/ready-time.py [--runs 5] [--model PATH] [--qemu] BINARY
"""
import argparse, os, signal, socket, statistics, struct, subprocess, sys, tempfile, time, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes([128] * 3 * w) for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def config(tmp, model):
    photos = os.path.join(tmp, "photos")
    os.makedirs(photos, exist_ok=True)
    # one small grey PNG is enough: READY comes before the first frame is classified
    with open(os.path.join(photos, "item.png"), "wb") as f:
        f.write(png(64, 48))
    path = os.path.join(tmp, "smartbin.toml")
    with open(path, "w") as f:
        f.write(f'[model]\npath = "{model}"\n\n[source]\nspec = "images:{photos}"\n'
                f'loop = true\nrate_hz = 5\n\n[log]\nevents = "{tmp}/events.jsonl"\n')
    return path


def one_run(cmd, env, sock):
    start = time.monotonic()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    try:
        while ready is None:
            sock.settimeout(600)
            for line in sock.recv(4096).decode().splitlines():
                if line == "READY=1":
                    ready = time.monotonic() - start
        child.send_signal(signal.SIGTERM)
        while b"STOPPING=1" not in sock.recv(4096):
            pass
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    return ready


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/resnet18-ours-trashnet.safetensors"))
    ap.add_argument("--qemu", action="store_true", help="run under qemu-aarch64 -L /usr/aarch64-linux-gnu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(tmp, os.path.abspath(args.model))
        cmd = [os.path.abspath(args.binary), "run", "--config", cfg]
        if args.qemu:
            cmd = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"] + cmd
        addr = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(addr)
        env = dict(os.environ, NOTIFY_SOCKET=addr, RUST_LOG="warn")
        times = [one_run(cmd, env, sock) for _ in range(args.runs)]
    print(f"{os.path.basename(args.model)}: READY after median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {len(times)} runs)")


if __name__ == "__main__":
    sys.exit(main())
