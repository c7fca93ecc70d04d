/**
 * A tree whose names and symlink targets are not valid UTF-8, for the
 * import, NAR, FUSE and binary cache tests of byte names. Deno strings
 * cannot spell such names, so python3 writes the tree and describes trees
 * (names as hex) for comparisons.
 *
 * @module
 */

/** Size of the file that is streamed in pieces (more than the walk's one-read limit). */
export const BIG_FILE_BYTES = 300 * 1024;

const WRITE_TREE = String.raw`
import os, sys
root = os.fsencode(sys.argv[1])
big = int(sys.argv[2])
def write(rel, data, mode=0o644):
    p = os.path.join(root, rel)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
os.mkdir(root)
write(b"\xff\xfe-bad.txt", b"bad name\n")
write(b"plain.txt", b"plain\n")
os.symlink(b"\xff-target", os.path.join(root, b"link-to-bad-target"))
d = os.path.join(root, b"\xc3(dir")
os.mkdir(d)
write(b"\xc3(dir/inner\xe9.txt", b"inner\n")
write(b"\xc3(dir/exec\x80", b"#!/bin/sh\necho hi\n", 0o755)
write(b"\xc3(dir/utf8-\xc3\xbc", b"valid name below a raw one\n")
os.symlink(b"../\xff\xfe-bad.txt", os.path.join(d, b"link\xfe"))
os.symlink(b"../plain.txt", os.path.join(d, b"link-plain"))
os.mkdir(os.path.join(d, b"empty\xfd"))
os.mkdir(os.path.join(d, b"sub\xff"))
write(b"\xc3(dir/sub\xff/deep.txt", b"deep\n")
write(b"\xc3(dir/sub\xff/big\xff.bin", bytes((i * 7919) % 251 for i in range(big)))
# A name with U+FFFD itself, next to a byte that a lossy listing turns into U+FFFD.
os.mkdir(os.path.join(root, b"collide"))
write(b"collide/\xef\xbf\xbd", b"genuine U+FFFD\n")
write(b"collide/\xff", b"raw 0xff\n")
# Only a genuine U+FFFD: string paths reach it.
os.mkdir(os.path.join(root, b"genuine"))
write(b"genuine/\xef\xbf\xbd-only", b"genuine only\n")
`;

const DESCRIBE_TREE = String.raw`
import hashlib, json, os, stat, sys
def describe(p):
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return ["symlink", os.readlink(p).hex()]
    if stat.S_ISDIR(st.st_mode):
        return ["directory", [[n.hex(), describe(os.path.join(p, n))] for n in sorted(os.listdir(p))]]
    with open(p, "rb") as f:
        data = f.read()
    return ["file", bool(st.st_mode & 0o100), hashlib.sha256(data).hexdigest(), len(data)]
print(json.dumps(describe(os.fsencode(sys.argv[1]))))
`;

async function python(script: string, args: string[]): Promise<string> {
  const out = await new Deno.Command("/usr/bin/python3", {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const td = new TextDecoder();
  if (!out.success) throw new Error(`python3 failed: ${td.decode(out.stderr)}`);
  return td.decode(out.stdout);
}

/**
 * Writes under `root` (which must not exist) files, directories and
 * symlinks named by bytes that are not UTF-8, symlinks with such targets,
 * a name with a genuine U+FFFD beside a lossy one, and a streamed file.
 */
export async function writeNonUtf8Tree(root: string): Promise<void> {
  await python(WRITE_TREE, [root, String(BIG_FILE_BYTES)]);
}

/**
 * The tree at `path` as python3 reads it with byte paths: names and
 * targets as hex, files as executable bit, SHA-256 and size (a symlink at
 * `path` itself is not followed).
 */
export async function describeTree(path: string): Promise<unknown> {
  return JSON.parse(await python(DESCRIBE_TREE, [path]));
}
