/**
 * Generated trees for import tests: every case Nix's NAR format cares
 * about (exec bits, symlink kinds, empty files/directories, odd names, deep
 * nesting, files around chunk and buffering boundaries), plus helpers that
 * ask the real `nix-store` (Debian nix-bin) about them.
 *
 * @module
 */
import { pseudoRandom } from "../fixtures.ts";
import { createHash } from "node:crypto";
import { join } from "node:path";

const KiB = 1024;

/** Writes the edge-case tree under `root` (which must not exist). */
export async function writeEdgeCaseTree(root: string): Promise<void> {
  await Deno.mkdir(root);
  const file = async (rel: string, data: Uint8Array | string, mode = 0o644) => {
    const p = join(root, rel);
    await Deno.writeFile(p, typeof data === "string" ? new TextEncoder().encode(data) : data);
    await Deno.chmod(p, mode);
  };
  await file("plain", "plain text\n");
  await file("exec.sh", "#!/bin/sh\necho hi\n", 0o755);
  await file("group-exec-only", "x", 0o654); // owner bit unset: not executable for Nix
  await file("owner-exec-only", "x", 0o744);
  await file("empty", "");
  await file("empty-exec", "", 0o700);
  await Deno.mkdir(join(root, "emptydir"));
  await file("name with spaces", "spaces");
  await file("ünïcödé-名前 ☃", "utf8");
  await file(".hidden", "dot");
  await Deno.symlink("plain", join(root, "link-relative"));
  await Deno.symlink("/etc/hostname", join(root, "link-absolute"));
  await Deno.symlink("does/not/exist", join(root, "link-dangling"));
  await Deno.symlink("emptydir", join(root, "link-to-dir"));
  await Deno.symlink("../" + "x".repeat(200), join(root, "link-long"));
  let deep = root;
  for (let i = 0; i < 40; i++) {
    deep = join(deep, `d${i}`);
    await Deno.mkdir(deep);
  }
  await Deno.writeFile(join(deep, "bottom"), new TextEncoder().encode("deep"));
  await Deno.mkdir(join(root, "sizes"));
  const sizes = [
    1,
    7,
    8,
    9,
    64 * KiB,
    256 * KiB - 1,
    256 * KiB,
    256 * KiB + 1,
    512 * KiB,
    1024 * KiB - 1,
    1024 * KiB,
    1024 * KiB + 1,
    4 * 1024 * KiB + 17,
  ];
  for (const [i, size] of sizes.entries()) {
    await file(`sizes/f${size}`, pseudoRandom(size, i + 1), i % 3 === 0 ? 0o755 : 0o644);
  }
  // Duplicate contents under different names and modes.
  await file("sizes/dup-a", pseudoRandom(300 * KiB, 99));
  await file("sizes/dup-b", pseudoRandom(300 * KiB, 99), 0o755);
  // Names that sort differently as bytes than as UTF-16 or locale strings.
  await Deno.mkdir(join(root, "order"));
  for (const n of ["B", "a", "_", "Z", "é", "e", "\u{1F600}", "\uFF61", "a.b", "a-b", "a b"]) {
    await file(`order/${n}`, n);
  }
}

/** Runs a command; returns stdout bytes, throwing with stderr on failure. */
export async function run(
  cmd: string,
  args: string[],
  env?: Record<string, string>,
): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return out.stdout;
}

/** What the real Nix says about a local path. */
export interface NixOracle {
  /** `nix-store --add` output: the absolute store path ("" if not asked for). */
  storePath: string;
  /** `nix-store --dump` output. */
  nar: Uint8Array;
  narSha256: Uint8Array;
  /** `nix-hash --type sha256 --base32`. */
  nixHashBase32: string;
}

/**
 * Asks `nix-store`/`nix-hash` about `path`, adding it to a throwaway local
 * store under `storeRoot` (skipped without one: very deep trees exceed
 * PATH_MAX below such a store's prefix).
 */
export async function nixOracle(path: string, storeRoot?: string): Promise<NixOracle> {
  const td = new TextDecoder();
  const storePath = storeRoot === undefined
    ? ""
    : td.decode(await run("nix-store", ["--store", storeRoot, "--add", path])).trim();
  const nar = await run("nix-store", ["--dump", path]);
  const nixHashBase32 = td.decode(await run("nix-hash", ["--type", "sha256", "--base32", path]))
    .trim();
  return {
    storePath,
    nar,
    narSha256: new Uint8Array(createHash("sha256").update(nar).digest()),
    nixHashBase32,
  };
}
