#!/usr/bin/env python3
"""The kernel's CPU cost of the disk buffer's write pattern, without the buffer (issue 11).

Writes 448 MiB in 256 KiB `pwrite`s into 64 MiB segment files, the way the disk buffer does, and
finishes the segment before the previous one when a new one starts: either deleted (a new file
is created for the next segment) or reused (renamed and overwritten from the start). Prints the
CPU time (user + system) per 1,300 bytes, the size of the bench's records, with and without an
`fdatasync` every 32 MiB. Run it in the filesystem the buffer uses:
`python3 scripts/segment-reuse.py [dir]` (default: $TMPDIR or /tmp).
"""
import os
import sys
import tempfile
import time

CHUNK = 256 * 1024
SEGMENT = 64 * 1024 * 1024
TOTAL = 448 * 1024 * 1024
RECORD = 1300


def run(d, mode, sync_every=None):
    data = os.urandom(CHUNK)
    t0, w0 = os.times(), time.time()
    written, n, done, spares, fd, at, path = 0, 0, [], [], None, 0, None
    while written < TOTAL:
        if fd is None or at >= SEGMENT:
            if fd is not None:
                os.close(fd)
                done.append(path)
                if len(done) > 1:
                    old = done.pop(0)
                    if mode == "delete":
                        os.unlink(old)
                    else:
                        spares.append(old)
            n += 1
            path = f"{d}/{n:020}.seg"
            if spares:
                os.rename(spares.pop(0), path)
                fd = os.open(path, os.O_WRONLY)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            at = 0
        os.pwrite(fd, data, at)
        at += CHUNK
        written += CHUNK
        if sync_every and written % sync_every == 0:
            os.fdatasync(fd)
    os.close(fd)
    t1, w1 = os.times(), time.time()
    records = TOTAL / RECORD
    cpu = (t1.user + t1.system) - (t0.user + t0.system)
    print(f"{mode:7s} fdatasync every {sync_every or 0:>8} B: "
          f"{1e9 * cpu / records:5.0f} ns CPU per {RECORD} B (system "
          f"{1e9 * (t1.system - t0.system) / records:.0f}), {w1 - w0:.2f} s")
    for name in os.listdir(d):
        os.unlink(f"{d}/{name}")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        for _ in range(2):
            for sync_every in (None, 32 * 1024 * 1024):
                run(d, "delete", sync_every)
                run(d, "reuse", sync_every)


if __name__ == "__main__":
    main()
