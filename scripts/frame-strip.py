#!/usr/bin/env python3
"""Lays the PNG frames osp writes (`osp generate --out DIR/`: frame_0000.png, ...) side by side in
one PNG, each frame enlarged SCALE times (nearest neighbour), for the README and the model card.
Standard library only (zlib): reads 8-bit RGB / RGBA, non-interlaced PNGs — what osp writes.

    python3 scripts/frame-strip.py DIR OUT.png [--scale 2]
"""
import argparse
import glob
import os
import struct
import zlib


def read_png(path):
    """-> (width, height, rows) with rows a list of bytes objects, RGB, 3 bytes per pixel."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise SystemExit(f"{path}: only 8-bit RGB/RGBA non-interlaced PNGs (osp's frames)")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = line
        rgb = line if bpp == 3 else bytearray(v for i, v in enumerate(line) if i % 4 != 3)
        rows.append(bytes(rgb))
    return w, h, rows


def write_png(path, w, h, rows):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\x00" + r for r in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("frames", help="folder of frame_NNNN.png")
    ap.add_argument("out", help="output PNG")
    ap.add_argument("--scale", type=int, default=2)
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.frames, "frame_*.png")))
    if not paths:
        raise SystemExit(f"{a.frames}: no frame_*.png")
    frames = [read_png(p) for p in paths]
    w, h = frames[0][0], frames[0][1]
    if any(f[0] != w or f[1] != h for f in frames):
        raise SystemExit("frames differ in size")
    s = a.scale
    rows = []
    for y in range(h * s):
        line = bytearray()
        for _, _, fr in frames:
            src = fr[y // s]
            for x in range(w * s):
                line += src[3 * (x // s):3 * (x // s) + 3]
        rows.append(bytes(line))
    write_png(a.out, w * s * len(frames), h * s, rows)
    print(f"wrote {a.out}: {len(frames)} frames of {w}x{h}, x{s}")


if __name__ == "__main__":
    main()
