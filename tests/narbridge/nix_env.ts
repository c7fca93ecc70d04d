/**
 * Running Debian's real `nix` (nix-bin 2.8) in tests, without a daemon.
 *
 * How: we run as root, so `nix` opens a local store directly. Each test gets
 * a temp dir holding
 * - a chroot store (`--store <dir>/store`: store paths are still
 *   `/nix/store/…` but their files live under `<dir>/store/nix/store`), so
 *   the machine's `/nix` is never touched;
 * - `NIX_CONFIG` with the `nix-command` feature, `sandbox = false` and no
 *   substituters (nothing is fetched from the internet), and an empty
 *   `NIX_CONF_DIR`/`NIX_USER_CONF_FILES` so no machine-wide config leaks in;
 * - its own `XDG_CACHE_HOME`/`HOME`: Nix caches narinfo lookups per cache
 *   URL in `~/.cache/nix/binary-cache-v6.sqlite`, so each environment starts
 *   empty. The narinfo cache TTLs stay Nix's defaults (a month for a path
 *   found or uploaded, an hour for an absent one), as on users' machines: the
 *   bridge must keep working for a client that remembers what it uploaded.
 *
 * @module
 */
import { join } from "node:path";

/** A private Nix environment under a temp dir. */
export class NixEnv {
  private constructor(readonly dir: string) {}

  /** Creates the temp dir and config. */
  static async create(): Promise<NixEnv> {
    const dir = await Deno.makeTempDir({ prefix: "narbridge-nix-" });
    await Deno.mkdir(join(dir, "conf"));
    await Deno.mkdir(join(dir, "home"));
    return new NixEnv(dir);
  }

  /** The local chroot store URL to pass as `--store`. */
  get store(): string {
    return join(this.dir, "store");
  }

  /** Environment for `nix` processes. */
  env(): Record<string, string> {
    return {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: join(this.dir, "home"),
      XDG_CACHE_HOME: join(this.dir, "cache"),
      NIX_CONF_DIR: join(this.dir, "conf"),
      NIX_USER_CONF_FILES: join(this.dir, "conf", "none.conf"),
      NIX_CONFIG: [
        "experimental-features = nix-command",
        "sandbox = false",
        "substituters =",
        "require-sigs = false",
      ].join("\n"),
    };
  }

  /** Runs a nix tool; returns exit status, stdout and stderr. */
  async run(
    cmd: string,
    args: string[],
  ): Promise<{ code: number; stdout: string; stderr: string; raw: Uint8Array }> {
    const out = await new Deno.Command(cmd, {
      args,
      env: this.env(),
      clearEnv: true,
      stdin: "null",
    }).output();
    const td = new TextDecoder();
    return {
      code: out.code,
      stdout: td.decode(out.stdout),
      stderr: td.decode(out.stderr),
      raw: out.stdout,
    };
  }

  /** Like {@linkcode run} but throws unless the command succeeds. */
  async ok(cmd: string, args: string[]): Promise<string> {
    const r = await this.run(cmd, args);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /**
   * Adds a text-CA path (`builtins.toFile`, `text:sha256`) that references
   * another such path to the local store; returns its store path.
   */
  async addPathWithReference(): Promise<string> {
    const out = await this.ok("nix", [
      "--store",
      this.store,
      "eval",
      "--raw",
      "--expr",
      `builtins.toFile "withref" "refers to \${builtins.toFile "dep" "x"}"`,
    ]);
    return out.trim();
  }

  /** Removes the temp dir (the chroot store holds read-only files: make them writable first). */
  async cleanup(): Promise<void> {
    await new Deno.Command("chmod", { args: ["-R", "u+w", this.dir] }).output();
    await Deno.remove(this.dir, { recursive: true });
  }
}
